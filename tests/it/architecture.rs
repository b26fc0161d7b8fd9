//! The house rules, read from the source: every `crate::<module>` reference in `src/` is an
//! edge between top-level modules, and the edges must flow one way.
//!
//! - `config`, `telemetry`, `clock`, `reload` are leaves: they import nothing of the product.
//! - the proxy knows no JWT: no `login`, no gate or provider settings, no "jwt" in its code;
//! - the replay store keeps opaque keys: it imports no `login`;
//! - login decides and never forwards: no `proxy`, `server`, `app`;
//! - nothing in the product depends on the tools (`explain`, `check`, `import`, `demo`);
//! - the module graph has no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`src/login/verify.rs` -> `login`); `None` for
/// the crate roots.
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    match first.as_str() {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Code without comments (line comments and doc comments), so prose never counts as an edge.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // a `//` inside a string literal ("http://") is not a comment
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::<name>` in the code, including those inside grouped `use crate::{a, b}`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// module -> modules it refers to, and the code of each module.
fn graph() -> (Graph, BTreeMap<String, String>) {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut g = Graph::new();
    let mut code = BTreeMap::<String, String>::new();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let c = code_of(&std::fs::read_to_string(f).unwrap());
        let edges = g.entry(m.clone()).or_default();
        for r in crate_refs(&c) {
            // `crate::Config` re-exports config; anything else unknown is not a module
            let r = if r == "Config" {
                "config".to_string()
            } else {
                r
            };
            if r != m && modules.contains(&r) {
                edges.insert(r);
            }
        }
        code.entry(m).or_default().push_str(&c);
    }
    (g, code)
}

fn deps<'a>(g: &'a Graph, m: &str) -> &'a BTreeSet<String> {
    g.get(m)
        .unwrap_or_else(|| panic!("no module {m} in src/: the rules name a module that moved"))
}

#[test]
fn leaves_import_nothing_of_the_product() {
    let (g, _) = graph();
    for leaf in ["config", "telemetry", "clock", "reload"] {
        assert!(
            deps(&g, leaf).is_empty(),
            "{leaf} must be a leaf, but imports {:?}",
            deps(&g, leaf)
        );
    }
}

#[test]
fn the_proxy_knows_no_jwt() {
    let (g, code) = graph();
    let allowed: BTreeSet<&str> = ["config", "telemetry", "tls", "clock"].into();
    for d in deps(&g, "proxy") {
        assert!(allowed.contains(d.as_str()), "proxy imports {d}");
    }
    let proxy = &code["proxy"];
    for word in [
        "GateConfig",
        "ProviderConfig",
        "Reason::",
        "login::",
        "Verif",
    ] {
        assert!(!proxy.contains(word), "the proxy names {word}");
    }
    let lower = proxy.to_ascii_lowercase();
    let jwt_mentions = lower.matches("jwt").count()
        - lower.matches("jwt-gate").count()
        - lower.matches("jwt_gate").count();
    assert_eq!(jwt_mentions, 0, "the proxy's code says jwt");
}

#[test]
fn login_decides_and_never_forwards() {
    let (g, _) = graph();
    for forbidden in ["proxy", "server", "app", "admin", "tools"] {
        assert!(
            !deps(&g, "login").contains(forbidden),
            "login imports {forbidden}"
        );
    }
}

#[test]
fn the_replay_store_keeps_opaque_keys() {
    let (g, _) = graph();
    for forbidden in ["login", "proxy", "server", "app"] {
        assert!(
            !deps(&g, "replay").contains(forbidden),
            "replay imports {forbidden}"
        );
    }
}

#[test]
fn the_idp_key_set_is_kept_apart_from_requests() {
    // idp fetches and caches keys; login verifies with them through a trait it owns
    let (g, _) = graph();
    for forbidden in ["proxy", "server", "app", "admin"] {
        assert!(
            !deps(&g, "idp").contains(forbidden),
            "idp imports {forbidden}"
        );
    }
    assert!(!deps(&g, "login").contains("idp"), "login imports idp");
}

#[test]
fn nothing_in_the_product_depends_on_the_tools() {
    let (g, _) = graph();
    for (m, d) in &g {
        if m != "tools" {
            assert!(!d.contains("tools"), "{m} imports tools");
        }
    }
}

#[test]
fn the_module_graph_has_no_cycle() {
    let (g, _) = graph();
    // Kahn: repeatedly remove modules with no remaining dependencies
    let mut left = g.clone();
    while !left.is_empty() {
        let free: Vec<String> = left
            .iter()
            .filter(|(_, d)| d.iter().all(|x| !left.contains_key(x)))
            .map(|(m, _)| m.clone())
            .collect();
        assert!(!free.is_empty(), "import cycle among {:?}", left);
        for m in free {
            left.remove(&m);
        }
    }
}

#[test]
fn the_reader_sees_edges_it_must_see() {
    // the rules above are only as good as the edge reader: it must see grouped, nested and
    // inline references, and no prose
    let code = code_of(
        "use crate::{login::Reason, proxy};\nfn f() { crate::clock::unix_now(); }\n// crate::tools\n",
    );
    let refs = crate_refs(&code);
    assert_eq!(
        refs,
        ["clock", "login", "proxy"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let (g, _) = graph();
    assert!(deps(&g, "server").contains("login"), "{g:?}");
    assert!(deps(&g, "app").contains("proxy"), "{g:?}");
}
