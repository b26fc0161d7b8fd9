//! `jwt-gate demo`: the gate in front of an embedded stand-in GitLab, with an embedded
//! sample identity provider as `auth_url`, all on loopback and with nothing installed.
//!
//! Flow, as with a real GitLab: the stand-in's sign-in page posts to `/users/auth/jwt`,
//! which redirects to the identity provider; the IdP mints a short-lived HS256 token for the
//! name and email typed in and redirects the browser to the gate's callback; the gate
//! verifies it and forwards it with identity headers; the stand-in shows what it received.
//! Opening the same callback link again shows the gate's replay page.
//!
//! `demo --sso`: a stand-in identity-aware proxy (like Cloudflare Access) in front of the
//! gate adds a signed ES256 assertion to every request; the stand-in GitLab signs in
//! automatically (`omniauth_auto_sign_in_with_provider`) through the gate's
//! `/-/jwt-gate/sso`, and the user lands signed in without a click. The gate checks the
//! assertion against the proxy's key set (a JWKS file) and hands GitLab a token it minted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::login::encoding::b64url_encode;
use crate::login::params::form_decode;
use crate::proxy::pages::html_escape;

/// Sign `claims` as an HS256 JWS (compact serialisation).
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let header = b64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64url_encode(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let sig = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url_encode(sig.as_ref()))
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    // aws-lc's RNG does not fail in practice; a zero buffer would still be a valid demo
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Addresses of a running demo.
pub struct DemoAddrs {
    pub gate: SocketAddr,
    pub gitlab: SocketAddr,
    /// The sample IdP, or with `--sso` the identity-aware proxy (what the user opens).
    pub idp: SocketAddr,
}

/// Bind everything and return the config text the gate runs with.
pub async fn start(
    gate: SocketAddr,
) -> std::io::Result<(DemoAddrs, String, tokio::task::JoinSet<()>)> {
    let gitlab_l = TcpListener::bind("127.0.0.1:0").await?;
    let idp_l = TcpListener::bind("127.0.0.1:0").await?;
    let gitlab = gitlab_l.local_addr()?;
    let idp = idp_l.local_addr()?;
    let secret = random_hex(32);
    let config = format!(
        r#"[listen]
addr = "{gate}"
[admin]
addr = ""
[upstream]
url = "http://{gitlab}"
[provider]
secret = "{secret}"
algorithm = "HS256"
uid_claim = "email"
required_claims = ["name", "email"]
info_map = {{ name = "name", email = "email" }}
auth_url = "http://{idp}/login"
valid_within = 120
[replay]
store = "memory"
"#
    );
    let mut tasks = tokio::task::JoinSet::new();
    let idp_state = Arc::new(Idp {
        secret: secret.into_bytes(),
        callback: format!("http://{gate}/users/auth/jwt/callback"),
    });
    tasks.spawn(serve_simple(gitlab_l, move |req| gitlab_page(req, idp)));
    tasks.spawn(serve_simple(idp_l, move |req| {
        let st = idp_state.clone();
        async move { st.handle(req).await }
    }));
    Ok((DemoAddrs { gate, gitlab, idp }, config, tasks))
}

/// `demo --sso`: the gate behind a stand-in identity-aware proxy (listening where the user
/// goes), with `[idp]` trusting the proxy's assertion header; GitLab signs in automatically.
pub async fn start_sso(
    gate: SocketAddr,
) -> std::io::Result<(DemoAddrs, String, tokio::task::JoinSet<()>)> {
    let gitlab_l = TcpListener::bind("127.0.0.1:0").await?;
    let iap_l = TcpListener::bind("127.0.0.1:0").await?;
    let gitlab = gitlab_l.local_addr()?;
    let iap = iap_l.local_addr()?;
    let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .map_err(|_| std::io::Error::other("cannot make the proxy's signing key"))?;
    let dir = std::env::temp_dir().join(format!("jwt-gate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwks_of(&key).to_string())?;
    let secret = random_hex(32);
    let config = format!(
        r#"[listen]
addr = "{gate}"
[admin]
addr = ""
[upstream]
url = "http://{gitlab}"
[provider]
secret = "{secret}"
algorithm = "HS256"
auth_url = "http://{iap}/-/jwt-gate/sso"
valid_within = 60
[idp]
jwks_file = "{}"
issuer = "{IAP_ISSUER}"
audience = "{IAP_AUDIENCE}"
algorithms = ["ES256"]
callback = false
assertion_header = "Cf-Access-Jwt-Assertion"
trusted_peers = ["127.0.0.1", "::1"]
"#,
        jwks.display()
    );
    let mut tasks = tokio::task::JoinSet::new();
    let sessions: Sessions = Arc::default();
    tasks.spawn(serve_simple(gitlab_l, move |req| {
        auto_sign_in_gitlab(req, sessions.clone())
    }));
    let proxy = Arc::new(Iap {
        key,
        gate,
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    });
    tasks.spawn(serve_simple(iap_l, move |req| {
        let p = proxy.clone();
        async move { p.handle(req).await }
    }));
    Ok((
        DemoAddrs {
            gate,
            gitlab,
            idp: iap,
        },
        config,
        tasks,
    ))
}

const IAP_ISSUER: &str = "https://jwt-gate-demo.cloudflareaccess.example";
const IAP_AUDIENCE: &str = "demo-gitlab-aud";

/// The proxy's public key as a one-key JWKS.
fn jwks_of(key: &aws_lc_rs::signature::EcdsaKeyPair) -> serde_json::Value {
    use aws_lc_rs::signature::KeyPair;
    let p = key.public_key().as_ref();
    serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "demo-iap", "alg": "ES256", "use": "sig",
        "x": b64url_encode(&p[1..33]), "y": b64url_encode(&p[33..65])}]})
}

/// A stand-in identity-aware proxy: the user is already signed in at it (as Zoë); every
/// request it passes to the gate carries its signed assertion, as Cloudflare Access does.
struct Iap {
    key: aws_lc_rs::signature::EcdsaKeyPair,
    gate: SocketAddr,
    client: Client<HttpConnector, Incoming>,
}

impl Iap {
    fn assertion(&self) -> Option<String> {
        let now = crate::clock::unix_now();
        let claims = serde_json::json!({
            "iss": IAP_ISSUER, "aud": [IAP_AUDIENCE], "sub": "demo-user-1",
            "email": "zoe@example.com", "name": "Zoë Example",
            "iat": now, "exp": now + 300,
        });
        let input = format!(
            "{}.{}",
            b64url_encode(br#"{"alg":"ES256","kid":"demo-iap","typ":"JWT"}"#),
            b64url_encode(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .ok()?;
        Some(format!("{input}.{}", b64url_encode(sig.as_ref())))
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("http://{}{target}", self.gate).parse();
        let (Ok(uri), Some(a)) = (uri, self.assertion()) else {
            return html(
                StatusCode::BAD_GATEWAY,
                "Identity-aware proxy",
                "<p>Bad request.</p>",
            );
        };
        *req.uri_mut() = uri;
        if let Ok(v) = http::HeaderValue::from_str(&a) {
            req.headers_mut().insert("cf-access-jwt-assertion", v);
        }
        let Ok(resp) = self.client.request(req).await else {
            return html(
                StatusCode::BAD_GATEWAY,
                "Identity-aware proxy",
                "<p>The gate did not answer.</p>",
            );
        };
        let (parts, body) = resp.into_parts();
        match Limited::new(body, 1 << 20).collect().await {
            Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
            Err(_) => html(
                StatusCode::BAD_GATEWAY,
                "Identity-aware proxy",
                "<p>Bad answer.</p>",
            ),
        }
    }
}

/// Signed-in sessions of the stand-in GitLab: cookie value → (user, identity rows).
type Sessions = Arc<Mutex<HashMap<String, (String, String)>>>;

/// The stand-in GitLab with `omniauth_auto_sign_in_with_provider = 'jwt'`: a visitor
/// without a session goes straight to the JWT provider's auth_url (the gate's SSO path);
/// the callback opens a session (cookie) and redirects home, like GitLab.
async fn auto_sign_in_gitlab(req: Request<Incoming>, sessions: Sessions) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_ascii_lowercase();
    if path.trim_end_matches('/') == "/users/auth/jwt/callback" {
        let user = req
            .headers()
            .get("x-auth-request-user")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let Some(user) = user else {
            return html(
                StatusCode::UNAUTHORIZED,
                "GitLab (stand-in)",
                "<p>Could not authenticate you from Jwt.</p>",
            );
        };
        let rows = identity_rows(&req);
        let id = random_hex(16);
        if let Ok(mut s) = sessions.lock() {
            s.insert(id.clone(), (user, rows));
        }
        let mut r = redirect("/");
        if let Ok(v) = http::HeaderValue::from_str(&format!("demo_session={id}; Path=/; HttpOnly"))
        {
            r.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        return r;
    }
    let session = req
        .headers()
        .get(http::header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| {
            c.split(';')
                .find_map(|p| p.trim().strip_prefix("demo_session="))
        })
        .and_then(|id| sessions.lock().ok()?.get(id).cloned());
    match session {
        // auto sign-in: GitLab would POST /users/auth/jwt and redirect to auth_url
        None => redirect("/-/jwt-gate/sso"),
        Some((user, rows)) => html(
            StatusCode::OK,
            "GitLab (stand-in)",
            &format!(
                "<h1 id=\"signed-in\">Signed in as {}</h1>\
<p>You never clicked: the identity-aware proxy in front of jwt-gate vouched for you with a signed assertion; \
the gate verified it against the proxy's key set, minted a single-use token with GitLab's JWT key, and sent GitLab \
the callback itself, so no token ever appeared in the address bar. GitLab got these identity headers:</p>\
<table id=\"identity\">{rows}</table>",
                html_escape(&user)
            ),
        ),
    }
}

/// The identity headers a callback carried, as table rows.
fn identity_rows(req: &Request<Incoming>) -> String {
    let mut rows = String::new();
    for (k, v) in req.headers() {
        if k.as_str().starts_with("x-auth-request-") {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                html_escape(k.as_str()),
                html_escape(&String::from_utf8_lossy(v.as_bytes()))
            ));
        }
    }
    rows
}

async fn serve_simple<F, Fut>(listener: TcpListener, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let f = f.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, Infallible>(f(req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn html(status: StatusCode, title: &str, body: &str) -> Response<Full<Bytes>> {
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
<style>body{{font-family:system-ui,sans-serif;background:#fafafa;color:#333;margin:0}}\
header{{background:#292961;color:#fff;padding:.8rem 1.5rem;font-weight:600}}\
main{{max-width:36rem;margin:8vh auto;padding:2rem;background:#fff;border:1px solid #dbdbdb;border-radius:8px}}\
button{{background:#1f75cb;color:#fff;border:0;border-radius:4px;padding:.6rem 1.2rem;font-size:1rem;cursor:pointer}}\
input{{display:block;width:100%;padding:.5rem;margin:.3rem 0 1rem;box-sizing:border-box}}\
table{{border-collapse:collapse}}td{{border:1px solid #ddd;padding:.3rem .6rem;font-family:monospace}}</style></head>\n\
<body><header>{title}</header><main>{body}</main></body></html>\n"
    );
    let mut r = Response::new(Full::new(Bytes::from(page)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = http::HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// The stand-in GitLab.
async fn gitlab_page(req: Request<Incoming>, idp: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_ascii_lowercase();
    match (req.method(), path.trim_end_matches('/')) {
        (&Method::POST, "/users/auth/jwt") => redirect(&format!("http://{idp}/login")),
        (_, "/users/auth/jwt/callback") => {
            let rows = identity_rows(&req);
            let user = req
                .headers()
                .get("x-auth-request-user")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_else(|| "(nobody)".into());
            html(
                StatusCode::OK,
                "GitLab (stand-in)",
                &format!(
                    "<h1 id=\"signed-in\">Signed in as {}</h1>\
<p>jwt-gate verified the token, recorded it as used, and forwarded this callback with these identity headers:</p>\
<table id=\"identity\">{rows}</table>\
<p>Now open the same callback link again (copy it from the address bar): the gate refuses the replay.</p>\
<p><a href=\"/users/sign_in\">Sign-in page</a></p>",
                    html_escape(&user)
                ),
            )
        }
        (_, "" | "/users/sign_in") => html(
            StatusCode::OK,
            "GitLab (stand-in)",
            "<h1>Sign in</h1><p>This stand-in GitLab sits behind jwt-gate.</p>\
<form method=\"post\" action=\"/users/auth/jwt\"><button id=\"jwt-sign-in\" type=\"submit\">Sign in with JWT</button></form>",
        ),
        _ => html(StatusCode::NOT_FOUND, "GitLab (stand-in)", "<h1>404</h1><p>Not found.</p><p><a href=\"/\">Home</a></p>"),
    }
}

/// The sample identity provider.
struct Idp {
    secret: Vec<u8>,
    callback: String,
}

impl Idp {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return html(
                StatusCode::OK,
                "Sample identity provider",
                "<h1>Who are you?</h1><form method=\"post\" action=\"/login\">\
<label>Name<input id=\"name\" name=\"name\" value=\"Zoë Example\"></label>\
<label>Email<input id=\"email\" name=\"email\" value=\"zoe@example.com\"></label>\
<button id=\"idp-submit\" type=\"submit\">Sign in and return to GitLab</button></form>",
            );
        }
        let body = match Limited::new(req.into_body(), 8192).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return html(
                    StatusCode::BAD_REQUEST,
                    "Sample identity provider",
                    "<p>Bad form.</p>",
                )
            }
        };
        let field = |name: &str| -> String {
            body.split(|&b| b == b'&')
                .find_map(|pair| {
                    let (k, v) =
                        pair.split_at(pair.iter().position(|&b| b == b'=').unwrap_or(pair.len()));
                    (k == name.as_bytes()).then(|| {
                        form_decode(v.get(1..).unwrap_or_default())
                            .map(|d| String::from_utf8_lossy(&d).into_owned())
                            .unwrap_or_default()
                    })
                })
                .unwrap_or_default()
        };
        let now = crate::clock::unix_now();
        let claims = serde_json::json!({
            "iss": "jwt-gate-demo-idp",
            "name": field("name"),
            "email": field("email"),
            "iat": now,
            "exp": now + 120,
            "jti": random_hex(16),
        });
        let token = sign_hs256(&self.secret, &claims);
        redirect(&format!("{}?jwt={token}", self.callback))
    }
}
