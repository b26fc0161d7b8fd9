//! Path classification on any path: never panics; the callback in any letter case, with or
//! without one trailing slash, is always the callback; and a path whose single percent-decoding
//! is the callback is never passed through as an ordinary request.
#![no_main]
use jwt_gate::login::params::form_decode;
use jwt_gate::login::route::{classify, Route};
use libfuzzer_sys::fuzz_target;

const CALLBACK: &str = "/users/auth/jwt/callback";

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let route = classify(path, CALLBACK);
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.eq_ignore_ascii_case(CALLBACK) {
        assert_eq!(route, Route::Callback);
    }
    // `+` stays `+` in a path: decode only percent escapes
    if !path.contains('+') {
        if let Some(once) = form_decode(path.as_bytes()) {
            let once = String::from_utf8_lossy(&once).to_ascii_lowercase();
            let once = once.strip_suffix('/').unwrap_or(&once);
            if once == CALLBACK {
                assert_ne!(
                    route,
                    Route::Other,
                    "{path:?} decodes to the callback but passes"
                );
            }
        }
    }
});
