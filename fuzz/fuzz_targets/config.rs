//! The config reader on any text: a Config or a list of errors, never a panic; every error
//! names something.
#![no_main]
use jwt_gate::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = Config::from_toml_str(text) {
        assert!(!errors.0.is_empty(), "rejected with no error listed");
        assert!(errors.0.iter().all(|e| !e.is_empty()));
    }
});
