//! `jwt-gate import-gitlab` through the real binary: GitLab's own provider settings (an
//! Omnibus gitlab.rb and a source install's gitlab.yml) become a `[provider]` that `check`
//! accepts and that a running gate verifies tokens with.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn import(path: &Path) -> (i32, String, String) {
    let out = Command::new(gate_bin())
        .arg("import-gitlab")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Import, run `check` on the result, then run the gate with it and sign in with a token
/// made with `secret`; returns (check output, what the upstream saw of the login).
async fn import_and_sign_in(file: &str, secret: &str, callback: &str) -> (String, Seen) {
    let (code, toml, err) = import(&fixture(file));
    assert_eq!(code, 0, "{err}");
    let up = Upstream::start().await;
    let dir = TempDir::new("import");
    let cfg = dir.write(
        "gate.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n{toml}",
            up.addr
        ),
    );
    let (code, check_text) = run_check(&cfg);
    assert_eq!(code, 0, "{check_text}");

    let served = run_bin(&cfg).await;
    let addr = served.addr;
    let token = hs256_with(secret.as_bytes(), &claims("imported@example.com"));
    let got = get(&format!("http://{addr}{callback}?jwt={token}")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // a token signed with anything else is refused: the secret really came from the file
    let other = hs256_with(&[b'x'; 40], &claims("other@example.com"));
    let bad = get(&format!("http://{addr}{callback}?jwt={other}")).await;
    assert_eq!(bad.reason(), Some("bad_signature"));
    let seen = up.callbacks();
    assert_eq!(seen.len(), 1);
    (check_text, seen[0].clone())
}

#[tokio::test]
async fn omnibus_gitlab_rb_imports_into_a_working_gate() {
    let (_, toml, _) = import(&fixture("gitlab.rb"));
    assert!(toml.contains("[provider]\n"), "{toml}");
    assert!(toml.contains("algorithm = \"HS256\""), "{toml}");
    assert!(
        toml.contains("required_claims = [\"name\", \"email\"]"),
        "{toml}"
    );
    assert!(
        toml.contains("auth_url = \"https://idp.example.com/login\""),
        "{toml}"
    );
    // external_url 'https://gitlab.example.com/gitlab' moves the callback
    assert!(
        toml.contains("callback_path = \"/gitlab/users/auth/jwt/callback\""),
        "{toml}"
    );
    assert!(!toml.contains("valid_within ="), "{toml}");
    assert!(toml.contains("valid_within is unset in GitLab"), "{toml}");
    let (check, seen) = import_and_sign_in(
        "gitlab.rb",
        "rb-secret-0123456789abcdefghijklmnopqrstu",
        "/gitlab/users/auth/jwt/callback",
    )
    .await;
    assert!(
        check.contains("valid_within is unset in GitLab (no iat check); the gate enforces 300 s"),
        "{check}"
    );
    assert!(seen
        .target
        .starts_with("/gitlab/users/auth/jwt/callback?jwt="));
    assert_eq!(
        seen.headers
            .get("x-auth-request-user")
            .and_then(|v| v.to_str().ok()),
        Some("imported@example.com")
    );
}

#[tokio::test]
async fn source_gitlab_yml_imports_into_a_working_gate() {
    let (_, toml, _) = import(&fixture("gitlab.yml"));
    assert!(toml.contains("valid_within = 3600\n"), "{toml}");
    assert!(!toml.contains("[gate]"), "no relative root: {toml}");
    let (check, seen) = import_and_sign_in(
        "gitlab.yml",
        "yml-secret-0123456789abcdefghijklmnopqrst",
        "/users/auth/jwt/callback",
    )
    .await;
    assert!(!check.contains("valid_within is unset"), "{check}");
    assert_eq!(
        seen.headers
            .get("x-auth-request-name")
            .and_then(|v| v.to_str().ok()),
        Some("Test User")
    );
}

#[test]
fn ruby_it_cannot_read_is_an_error_naming_the_line_and_weak_secrets_are_reported() {
    let dir = TempDir::new("import-bad");
    let env = dir.write(
        "gitlab.rb",
        "external_url 'https://gitlab.example.com'\n\ngitlab_rails['omniauth_providers'] = [\n  { name: 'jwt',\n    args: { secret: ENV['JWT_SECRET'], algorithm: 'HS256' } }\n]\n",
    );
    let (code, out, err) = import(&env);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("line 5:"), "{err}");
    assert!(err.contains("Ruby code"), "{err}");

    // GitLab takes a 15-byte HS256 secret; the gate prints the import but says it will refuse it
    let weak = dir.write(
        "weak.rb",
        "gitlab_rails['omniauth_providers'] = [{ name: 'jwt', args: { secret: 'YOUR_APP_SECRET', algorithm: 'HS256' } }]\n",
    );
    let (code, out, err) = import(&weak);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("secret = \"YOUR_APP_SECRET\""), "{out}");
    assert!(err.contains("provider.secret"), "{err}");
    assert!(err.contains("at least 32 bytes"), "{err}");

    // File.read('...') becomes secret_file
    let file = dir.write(
        "file.rb",
        "gitlab_rails['omniauth_providers'] = [{ name: 'jwt', args: { secret: File.read('/etc/gitlab/jwt.pub'), algorithm: 'RS256', valid_within: 60 } }]\n",
    );
    let (code, out, err) = import(&file);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("secret_file = \"/etc/gitlab/jwt.pub\""),
        "{out}"
    );
}

#[tokio::test]
async fn an_omniauth_callback_path_is_carried_through_and_guarded() {
    let dir = TempDir::new("import-cb");
    let rb = dir.write(
        "gitlab.rb",
        "external_url 'https://gitlab.example.com'\ngitlab_rails['omniauth_providers'] = [{ name: 'jwt', args: { secret: 'cb-secret-0123456789abcdefghijklmnopq', algorithm: 'HS256', valid_within: 60, callback_path: '/sso/jwt/callback' } }]\n",
    );
    let (code, toml, err) = import(&rb);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("callback_path = \"/sso/jwt/callback\""),
        "{toml}"
    );
    assert!(!toml.contains("is not a setting"), "{toml}");
    // check says the path is custom, and a gate with it verifies that path
    let up = Upstream::start().await;
    let cfg = dir.write(
        "gate.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n{toml}",
            up.addr
        ),
    );
    let (code, check) = run_check(&cfg);
    assert_eq!(code, 0, "{check}");
    assert!(check.contains("not OmniAuth's default shape"), "{check}");
    let gate = Gate::start(&std::fs::read_to_string(&cfg).unwrap()).await;
    let got = get(&gate.url("/sso/jwt/callback?jwt=forged")).await;
    assert_eq!(got.reason(), Some("malformed_token"));
    let token = hs256_with(
        b"cb-secret-0123456789abcdefghijklmnopq",
        &claims("cb@example.com"),
    );
    let got = get(&gate.url(&format!("/sso/jwt/callback?jwt={token}"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "only the verified callback went upstream");
    assert!(seen[0].target.starts_with("/sso/jwt/callback?jwt="));
}
