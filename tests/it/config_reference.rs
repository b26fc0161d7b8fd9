//! The configuration reference cannot drift from the reader: the keys the real reader knows
//! (read off its own "unknown key (expected one of …)" answer to a probe in every section)
//! are exactly the keys of README.md's reference table, and every one of them appears in
//! examples/jwt-gate.toml (set, or shown commented out).

use std::collections::BTreeSet;

use crate::common::*;

const SECTIONS: [&str; 8] = [
    "listen",
    "listen.tls",
    "admin",
    "upstream",
    "provider",
    "gate",
    "replay",
    "idp",
];

/// Every key the reader accepts, as `section.key`, from its errors for a probe key.
fn reader_keys() -> BTreeSet<String> {
    let mut probe = String::from("__probe__ = 0\n");
    for s in SECTIONS {
        probe.push_str(&format!("[{s}]\n__probe__ = 0\n"));
    }
    let errs = jwt_gate::Config::from_toml_str(&probe).unwrap_err().0;
    let mut keys = BTreeSet::new();
    for s in SECTIONS {
        let line = errs
            .iter()
            .find(|e| e.starts_with(&format!("{s}.__probe__: unknown key")))
            .unwrap_or_else(|| panic!("no probe answer for [{s}] in {errs:?}"));
        let list = line
            .split("expected one of: ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')');
        for k in list.split(", ") {
            keys.insert(format!("{s}.{k}"));
        }
    }
    keys
}

fn readme_keys() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("| key | type | default | meaning |")
        .nth(1)
        .expect("README.md has the configuration reference table");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let first = l.split('|').nth(1).unwrap().trim();
            assert!(
                first.starts_with('`') && first.ends_with('`') && first.matches('`').count() == 2,
                "one key per row: {l}"
            );
            first.trim_matches('`').to_string()
        })
        .collect()
}

#[test]
fn the_reference_table_names_exactly_the_keys_the_reader_knows() {
    let reader = reader_keys();
    let readme = readme_keys();
    let missing: Vec<_> = reader.difference(&readme).collect();
    let extra: Vec<_> = readme.difference(&reader).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README reference: missing {missing:?}, not read by the gate {extra:?}"
    );
    assert!(reader.len() > 50, "the probe found only {reader:?}");
}

#[test]
fn the_example_shows_every_key() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/jwt-gate.toml"
    ))
    .unwrap();
    // each key of a section, set or commented, within that section of the example
    let mut section = String::new();
    let mut shown = BTreeSet::new();
    for line in example.lines() {
        let t = line.trim_start_matches('#').trim();
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            if SECTIONS.contains(&name) {
                section = name.to_string();
                if let Some((parent, child)) = name.rsplit_once('.') {
                    shown.insert(format!("{parent}.{child}"));
                }
                continue;
            }
        }
        if let Some((key, _)) = t.split_once('=') {
            let key = key.trim();
            if !section.is_empty() && !key.is_empty() && !key.contains(' ') {
                shown.insert(format!("{section}.{key}"));
            }
        }
    }
    let missing: Vec<_> = reader_keys().difference(&shown).cloned().collect();
    assert!(
        missing.is_empty(),
        "examples/jwt-gate.toml does not show {missing:?}"
    );
    // and once its placeholder is replaced, check accepts it
    let dir = TempDir::new("example");
    let (code, text) = run_check(&filled_example(&dir));
    assert_eq!(code, 0, "{text}");
}

/// Every reason code the gate answers with: the login's (from the enum) and the request
/// guards', the plain listener's and the upstream's (each a string right after a status).
fn reason_codes() -> BTreeSet<String> {
    let mut codes: BTreeSet<String> = jwt_gate::login::Reason::ALL
        .iter()
        .map(|r| r.code().to_string())
        .collect();
    for file in [
        "src/server/pipeline.rs",
        "src/server/redirect.rs",
        "src/proxy/mod.rs",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("StatusCode::") {
            rest = &rest[i + "StatusCode::".len()..];
            let after = rest.trim_start_matches(|c: char| c.is_ascii_uppercase() || c == '_');
            let after = after.trim_start_matches(',').trim_start();
            if let Some(lit) = after.strip_prefix('"') {
                let code: String = lit.chars().take_while(|&c| c != '"').collect();
                if code.contains('_') && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    codes.insert(code);
                }
            }
        }
    }
    codes
}

#[test]
fn every_reason_code_has_a_troubleshooting_row() {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-guide.md"))
            .unwrap();
    let table = guide
        .split("| reason code | the user sees | likely cause | fix |")
        .nth(1)
        .unwrap();
    let rows: String = table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().to_string())
        .collect();
    let codes = reason_codes();
    assert!(codes.len() > 60, "found only {codes:?}");
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !rows.contains(&format!("`{c}`")))
        .collect();
    assert!(missing.is_empty(), "no troubleshooting row for {missing:?}");
}
