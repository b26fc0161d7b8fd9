//! The callback through the real gate: every algorithm, every reason code, interception,
//! parameter ambiguity, bodies, and identity headers. In every rejection the upstream
//! received nothing.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;

fn enc(s: &str) -> String {
    // percent-encode everything outside the unreserved set, for query values
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn hs_gate(extra: &str) -> (Upstream, Gate) {
    let up = Upstream::start().await;
    let cfg = config_text(up.addr, &format!("{}{extra}", hs256_provider()));
    let gate = Gate::start(&cfg).await;
    (up, gate)
}

async fn expect_reject(gate: &Gate, up: &Upstream, token: &str, status: u16, reason: &str) {
    let got = get(&callback(gate, &enc(token))).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (status, Some(reason)),
        "token {token:.60}: {}",
        got.text()
    );
    assert_eq!(
        up.callbacks().len(),
        0,
        "a rejected callback ({reason}) reached the upstream"
    );
}

#[tokio::test]
async fn valid_hs256_callback_is_forwarded_unchanged_with_identity_headers() {
    let (up, gate) = hs_gate("").await;
    let token = hs256(
        &json!({"name": "Zoë Example", "email": "zoe@example.com", "iat": now(), "exp": now() + 60}),
    );
    let req = Request::get(callback(&gate, &token))
        .header("x-auth-request-user", "root@example.com") // a spoof attempt
        .header("X_Auth_Request_Email", "root@example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client(), req).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let cbs = up.callbacks();
    assert_eq!(cbs.len(), 1);
    let h = &cbs[0].headers;
    assert_eq!(
        cbs[0].target,
        format!("/users/auth/jwt/callback?jwt={token}")
    );
    let users: Vec<_> = h.get_all("x-auth-request-user").iter().collect();
    assert_eq!(
        users,
        vec!["zoe@example.com"],
        "exactly one uid header, the token's"
    );
    assert_eq!(h.get_all("x-auth-request-email").iter().count(), 1);
    assert_eq!(h["x-auth-request-email"], "zoe@example.com");
    assert_eq!(
        h["x-auth-request-name"].as_bytes(),
        "Zoë Example".as_bytes()
    );
    assert!(h.get("x_auth_request_email").is_none());
}

#[tokio::test]
async fn every_reason_code_is_refused_before_gitlab() {
    // dozens of refusals from one client: more than the default throttle allows
    let (up, gate) = hs_gate("[gate]\nthrottle_burst = 100000\n").await;
    let n = now();
    let good_hdr = r#"{"alg":"HS256","typ":"JWT"}"#;
    let payload = |extra: &str| {
        format!(
            r#"{{"name":"N","email":"e@x","iat":{n},"exp":{}{extra}}}"#,
            n + 60
        )
    };
    let valid = hs256_raw(good_hdr, &payload(""));
    let other_secret = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        encode(
            &Header::default(),
            &claims("e@x"),
            &EncodingKey::from_secret(b"another-secret-another-secret-123"),
        )
        .unwrap()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("x".repeat(10_000), 401, "token_too_large"),
        (
            r#"{"payload":"x","signatures":[]}"#.to_string(),
            401,
            "json_serialization",
        ),
        ("a.b.c.d.e".into(), 401, "jwe_unsupported"),
        ("abc.def".into(), 401, "malformed_token"),
        (format!("{valid}="), 401, "non_canonical_encoding"),
        (valid.replacen('.', "=.", 1), 401, "non_canonical_encoding"),
        (hs256_raw("[1]", &payload("")), 401, "header_invalid"),
        (
            hs256_raw(r#"{"typ":"JWT"}"#, &payload("")),
            401,
            "alg_missing",
        ),
        (
            hs256_raw(r#"{"alg":"none"}"#, &payload("")),
            401,
            "alg_none",
        ),
        (
            hs256_raw(r#"{"alg":"hs256"}"#, &payload("")),
            401,
            "alg_mismatch",
        ),
        (
            hs256_raw(r#"{"alg":"HS512"}"#, &payload("")),
            401,
            "alg_mismatch",
        ),
        (
            hs256_raw(r#"{"alg":"HS256","crit":["exp"]}"#, &payload("")),
            401,
            "crit_unsupported",
        ),
        (other_secret, 401, "bad_signature"),
        (
            hs256_raw(r#"{"alg":"HS256","alg":"HS256"}"#, &payload("")),
            401,
            "duplicate_key",
        ),
        (
            hs256_raw(good_hdr, &payload(r#","email":"admin@x""#)),
            401,
            "duplicate_key",
        ),
        (hs256_raw(good_hdr, "[1,2]"), 401, "payload_invalid"),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x","iat":{n},"exp":"tomorrow"}}"#),
            ),
            401,
            "exp_invalid",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x","iat":{n},"exp":{n}}}"#),
            ),
            401,
            "token_expired",
        ),
        (
            hs256_raw(good_hdr, &payload(r#","nbf":"now""#)),
            401,
            "nbf_invalid",
        ),
        (
            hs256_raw(good_hdr, &payload(&format!(r#","nbf":{}"#, n + 30))),
            401,
            "token_not_yet_valid",
        ),
        (
            hs256_raw(good_hdr, &format!(r#"{{"email":"e@x","iat":{n}}}"#)),
            401,
            "missing_claim",
        ),
        (
            hs256_raw(good_hdr, r#"{"name":"N","email":"e@x"}"#),
            401,
            "iat_missing",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x","iat":{n}.5}}"#),
            ),
            401,
            "iat_invalid",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x","iat":"{n}"}}"#),
            ),
            401,
            "iat_invalid",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x","iat":{}}}"#, n + 120),
            ),
            401,
            "iat_in_future",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x","iat":{}}}"#, n - 301),
            ),
            401,
            "iat_too_old",
        ),
        (
            hs256_raw(good_hdr, &payload(r#","jti":5"#)),
            401,
            "jti_invalid",
        ),
        (
            hs256_raw(good_hdr, &payload(r#","jti":"""#)),
            401,
            "jti_invalid",
        ),
        (
            hs256_raw(good_hdr, &format!(r#"{{"name":"N","email":7,"iat":{n}}}"#)),
            401,
            "uid_invalid",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":["a"],"email":"e@x","iat":{n}}}"#),
            ),
            401,
            "claim_invalid",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"a\r\nX-Evil: 1","email":"e@x","iat":{n}}}"#),
            ),
            401,
            "claim_control_characters",
        ),
        (
            hs256_raw(
                good_hdr,
                &format!(r#"{{"name":"N","email":"e@x\u0000","iat":{n}}}"#),
            ),
            401,
            "claim_control_characters",
        ),
    ];
    for (token, status, reason) in &cases {
        expect_reject(&gate, &up, token, *status, reason).await;
    }
    // and a missing parameter is a malformed request
    let got = get(&gate.url("/users/auth/jwt/callback?state=1")).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (400, Some("token_missing"))
    );
    // the valid token, finally, passes: the matrix above was not refusing everything
    let got = get(&callback(&gate, &valid)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.callbacks().len(), 1);
}

#[tokio::test]
async fn uid_missing_jti_missing_and_issued_before_start() {
    let (up, gate) = hs_gate(
        "required_claims = [\"name\"]\n[gate]\nrequire_jti = true\n[replay]\nreject_issued_before_start = true\n",
    )
    .await;
    let n = now();
    expect_reject(
        &gate,
        &up,
        &hs256(&json!({"name": "N", "iat": n, "jti": "j1"})),
        401,
        "uid_missing",
    )
    .await;
    expect_reject(
        &gate,
        &up,
        &hs256(&json!({"name": "N", "email": "e@x", "iat": n})),
        401,
        "jti_missing",
    )
    .await;
    // a token issued before this gate started (inside the iat window) is refused...
    let start = gate.app.started_at;
    let old = hs256(&json!({"name": "N", "email": "e@x", "iat": start - 2, "jti": "j2"}));
    expect_reject(&gate, &up, &old, 401, "issued_before_start").await;
    // ...and so is one from the start's own second (it may have been used just before)
    assert_eq!(gate.app.not_issued_before, Some(start + 1));
    let same = hs256(&json!({"name": "N", "email": "e@x", "iat": start, "jti": "j3"}));
    expect_reject(&gate, &up, &same, 401, "issued_before_start").await;
    // ...unless the operator turned that off
    let (up2, gate2) = hs_gate("[replay]\nreject_issued_before_start = false\n").await;
    let got = get(&callback(&gate2, &old)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up2.callbacks().len(), 1);
}

#[tokio::test]
async fn interception_covers_omniauth_spellings_and_refuses_the_rest() {
    let (up, gate) = hs_gate("").await;
    // spellings OmniAuth intercepts: the gate verifies them (a bad token proves interception)
    for p in [
        "/users/auth/jwt/callback/",
        "/USERS/AUTH/JWT/CALLBACK",
        "/Users/Auth/Jwt/Callback/",
    ] {
        let got = get(&gate.url(&format!("{p}?jwt=bad"))).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (401, Some("malformed_token")),
            "{p}"
        );
    }
    // a valid token on the trailing-slash spelling is forwarded
    let t = hs256(&claims("slash@x"));
    assert_eq!(
        get(&gate.url(&format!("/users/auth/jwt/callback/?jwt={t}")))
            .await
            .status,
        200
    );
    assert_eq!(up.callbacks().len(), 1);
    // spellings that only normalise to the callback: 400, never forwarded, even with a valid token
    for p in [
        "/users/auth/jwt/%63allback",
        "//users/auth/jwt/callback",
        "/users/auth/jwt/./callback",
        "/users/auth/jwt/callback.json",
        "/users/auth/foo/../jwt/callback",
        "/users/auth/jwt/callback;a=b",
    ] {
        let t = hs256(&claims("amb@x"));
        let got = get(&gate.url(&format!("{p}?jwt={t}"))).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (400, Some("ambiguous_callback_path")),
            "{p}"
        );
    }
    // absolute-form targets are intercepted too
    let r = raw(gate.addr, b"GET http://gitlab.example/users/auth/jwt/callback?jwt=bad HTTP/1.1\r\nHost: gitlab.example\r\nConnection: close\r\n\r\n", Duration::from_secs(2)).await;
    assert!(
        r.starts_with("HTTP/1.1 401") && r.contains("malformed_token"),
        "{r}"
    );
    assert_eq!(up.callbacks().len(), 1);
}

#[tokio::test]
async fn methods_other_than_get_head_post_are_405_and_head_is_verified() {
    let (up, gate) = hs_gate("").await;
    let c = client();
    for m in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        let t = hs256(&claims("m@x"));
        let req = Request::builder()
            .method(m)
            .uri(callback(&gate, &t))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = send(&c, req).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (405, Some("method_not_allowed")),
            "{m}"
        );
        assert_eq!(got.headers["allow"], "GET, HEAD, POST");
    }
    assert_eq!(up.callbacks().len(), 0);
    let t = hs256(&claims("head@x"));
    let got = send(
        &c,
        Request::head(callback(&gate, &t))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    let cbs = up.callbacks();
    assert_eq!((cbs.len(), cbs[0].method.as_str()), (1, "HEAD"));
    assert_eq!(cbs[0].headers["x-auth-request-user"], "head@x");
}

#[tokio::test]
async fn every_ambiguous_parameter_spelling_is_400() {
    let (up, gate) = hs_gate("").await;
    let t = hs256(&claims("p@x"));
    let cases = [
        (format!("jwt={t}&jwt={t}"), "duplicate_jwt_param"),
        (format!("jwt={t};x=1"), "semicolon_in_query"),
        (format!("[jwt]={t}"), "ambiguous_jwt_param"),
        (format!("jwt]={t}"), "ambiguous_jwt_param"),
        (format!("]]jwt={t}"), "ambiguous_jwt_param"),
        (format!("jwt[]={t}"), "ambiguous_jwt_param"),
        (format!("jwt[x]={t}"), "ambiguous_jwt_param"),
        (format!("%6Awt={t}"), "ambiguous_jwt_param"),
        (format!("jwt={t}&%6Awt=other"), "ambiguous_jwt_param"),
        (format!("jwt={t}%zz"), "bad_param_encoding"),
        // a key that decodes to invalid UTF-8 makes Rack raise (found by the property test)
        (format!("jwt={t}&%aa"), "bad_param_encoding"),
        (format!("jwt={t}&x=%aa"), "bad_param_encoding"),
    ];
    for (q, reason) in &cases {
        let got = get(&gate.url(&format!("/users/auth/jwt/callback?{q}"))).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (400, Some(*reason)),
            "{q}"
        );
    }
    assert_eq!(up.callbacks().len(), 0);
}

fn post(url: &str, ct: Option<&str>, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url);
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    b.body(Full::new(body.into())).unwrap()
}

#[tokio::test]
async fn form_post_callbacks_and_body_rules() {
    let (up, gate) = hs_gate("[gate]\ncallback_body_timeout = 0.5\n").await;
    let c = client();
    let cb = gate.url("/users/auth/jwt/callback");
    let form = "application/x-www-form-urlencoded";

    let t = hs256(&claims("form@x"));
    let body = format!("state=abc&jwt={t}");
    let got = send(
        &c,
        post(&cb, Some(&format!("{form}; charset=UTF-8")), body.clone()),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let cbs = up.callbacks();
    assert_eq!(cbs.len(), 1);
    assert_eq!(
        cbs[0].body,
        body.as_bytes(),
        "the form body is forwarded unchanged"
    );
    assert_eq!(cbs[0].headers["x-auth-request-user"], "form@x");

    let t = hs256(&claims("x@x"));
    let refused = [
        (
            post(&format!("{cb}?jwt={t}"), Some(form), format!("jwt={t}")),
            400,
            "duplicate_jwt_param",
        ),
        (
            post(&cb, None, format!("jwt={t}")),
            400,
            "missing_content_type",
        ),
        (
            post(&cb, Some("multipart/form-data; boundary=x"), "--x\r\n"),
            400,
            "multipart_not_allowed",
        ),
        (
            post(
                &cb,
                Some("application/json"),
                format!("{{\"jwt\":\"{t}\"}}"),
            ),
            400,
            "unsupported_content_type",
        ),
        (
            post(
                &cb,
                Some(form),
                format!("jwt={t}&pad={}", "a".repeat(17_000)),
            ),
            413,
            "body_too_large",
        ),
        (
            post(&cb, Some(form), format!("jwt={t}&jwt={t}")),
            400,
            "duplicate_jwt_param",
        ),
        (
            post(&cb, Some(form), format!("[jwt]={t}")),
            400,
            "ambiguous_jwt_param",
        ),
        (post(&cb, Some(form), "state=1"), 400, "token_missing"),
    ];
    for (req, status, reason) in refused {
        let got = send(&c, req).await;
        assert_eq!((got.status.as_u16(), got.reason()), (status, Some(reason)));
    }
    // a body on GET is refused (Rack would parse a form body on any method)
    let r = raw(gate.addr, format!("GET /users/auth/jwt/callback?jwt={t} HTTP/1.1\r\nHost: x\r\nContent-Type: {form}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nx=abc").as_bytes(), Duration::from_secs(2)).await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("body_not_allowed"),
        "{r}"
    );
    // a body that never finishes arriving times out
    let r = raw(gate.addr, format!("POST /users/auth/jwt/callback HTTP/1.1\r\nHost: x\r\nContent-Type: {form}\r\nContent-Length: 500\r\n\r\njwt=").as_bytes(), Duration::from_secs(5)).await;
    assert!(
        r.starts_with("HTTP/1.1 408") && r.contains("body_timeout"),
        "{r}"
    );
    assert_eq!(
        up.callbacks().len(),
        1,
        "only the one valid form post reached the upstream"
    );
}

#[tokio::test]
async fn expect_100_continue_sends_nothing_upstream_before_verification() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gate) = hs_gate("").await;
    for (token, want) in [
        (hs256_raw(r#"{"alg":"HS256"}"#, "{}"), "401"),
        (hs256(&claims("expect@x")), "200"),
    ] {
        let body = format!("jwt={token}");
        let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        let head = format!("POST /users/auth/jwt/callback HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"));
        assert_eq!(
            up.callbacks().len(),
            0,
            "nothing may go upstream before the body is verified"
        );
        s.write_all(body.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with(&format!("HTTP/1.1 {want}")), "{rest}");
    }
    let cbs = up.callbacks();
    assert_eq!(cbs.len(), 1);
    assert!(cbs[0].headers.get("expect").is_none());
    assert_eq!(cbs[0].headers["x-auth-request-user"], "expect@x");
}

#[tokio::test]
async fn a_callback_under_a_prefix_the_gate_was_not_told_about_is_refused() {
    // GitLab under a relative URL root (or another callback_path) the gate does not know:
    // before, the real callback streamed through unchecked
    let (up, gate) = hs_gate("").await;
    for p in [
        "/gitlab/users/auth/jwt/callback",
        "/gitlab/users/auth/jwt/callback/",
        "/GitLab/Users/Auth/JWT/Callback",
        "/gitlab/users/auth/jwt/callback.json",
        "/x/y/../../gitlab/users/auth/jwt/callback",
    ] {
        let t = hs256(&claims("prefix@x"));
        let got = get(&gate.url(&format!("{p}?jwt={t}"))).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (400, Some("callback_path_mismatch")),
            "{p}"
        );
    }
    // with the root configured, the bare callback is the foreign one
    let (up2, gate2) =
        hs_gate("[gate]\ncallback_path = \"/gitlab/users/auth/jwt/callback\"\n").await;
    let t = hs256(&claims("root@x"));
    let got = get(&gate2.url(&format!("/users/auth/jwt/callback?jwt={t}"))).await;
    assert_eq!(got.reason(), Some("callback_path_mismatch"));
    let got = get(&gate2.url(&format!("/gitlab/users/auth/jwt/callback?jwt={t}"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    // nothing but the one verified callback reached either upstream
    assert_eq!(up.seen().len(), 0);
    let seen = up2.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0]
        .target
        .starts_with("/gitlab/users/auth/jwt/callback?jwt="));
}

#[tokio::test]
async fn rejection_pages_echo_nothing_and_are_not_cached() {
    let (up, gate) = hs_gate("").await;
    let token = hs256(&json!({"name": "Secret Name", "email": "secret@x", "iat": now() - 1000}));
    let got = get(&callback(&gate, &token)).await;
    assert_eq!(got.status, 401);
    assert_eq!(got.headers["cache-control"], "no-store");
    assert!(got.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = got.text();
    assert!(page.contains("iat_too_old"));
    assert!(page.contains("href=\"/users/sign_in\""));
    // the link back must not carry the refused callback's URL (and its token) in Referer
    assert_eq!(got.headers["referrer-policy"], "no-referrer");
    for secret in [
        token.as_str(),
        token.split('.').nth(2).unwrap(),
        "Secret Name",
        "secret@x",
    ] {
        assert!(!page.contains(secret), "the page echoes {secret:?}");
    }
    assert_eq!(up.callbacks().len(), 0);
}

#[tokio::test]
async fn a_refused_callback_without_a_body_keeps_the_connection_and_one_with_a_body_closes_it() {
    let (up, gate) = hs_gate("").await;
    // two requests on one connection: the refused bodiless callback, then a page
    let r = raw(
        gate.addr,
        b"GET /users/auth/jwt/callback?jwt=a&jwt=b HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(
        r.contains("upstream saw GET /after"),
        "the connection was closed: {r}"
    );
    // with an unread body, the bytes after it are never parsed as a request
    let r = raw(
        gate.addr,
        b"PUT /users/auth/jwt/callback HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
    assert!(up.seen().iter().all(|s| s.target != "/smuggled"));
    assert_eq!(up.callbacks().len(), 0);
}
