//! Sign-in with an external identity provider's token, through the real binary: a stand-in
//! IdP serves its key set (JWKS) over HTTPS on loopback with its own CA; the gate verifies
//! the IdP's tokens with it and hands the recording upstream (GitLab) a token it minted,
//! which GitLab's own verifier (ruby-jwt, as GitLab's strategy calls it) accepts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jwt_gate::login::encoding::b64url_encode;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair as CertKey};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::*;

const ISS: &str = "https://idp.test";
const AUD: &str = "gitlab";

/// One signing key of the stand-in IdP.
enum Signer {
    Rsa(Arc<RsaKeyPair>),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct IdpKey {
    kid: String,
    alg: &'static str,
    signer: Signer,
}

fn shared_rsa() -> Arc<RsaKeyPair> {
    static KEY: std::sync::OnceLock<Arc<RsaKeyPair>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()))
        .clone()
}

impl IdpKey {
    fn new(kid: &str, alg: &'static str) -> IdpKey {
        let signer = match alg {
            "ES256" => Signer::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ),
            "ES384" => Signer::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
            ),
            "ES512" => Signer::Ec(
                EcdsaKeyPair::generate(&signature::ECDSA_P521_SHA512_FIXED_SIGNING).unwrap(),
            ),
            "EdDSA" => Signer::Ed(Ed25519KeyPair::generate().unwrap()),
            _ => Signer::Rsa(shared_rsa()),
        };
        IdpKey {
            kid: kid.into(),
            alg,
            signer,
        }
    }

    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": self.kid, "alg": self.alg, "use": "sig",
                       "n": b64url_encode(&c.n), "e": b64url_encode(&c.e)})
            }
            Signer::Ec(k) => {
                let p = k.public_key().as_ref();
                let n = (p.len() - 1) / 2;
                let crv = match n {
                    32 => "P-256",
                    48 => "P-384",
                    _ => "P-521",
                };
                json!({"kty": "EC", "kid": self.kid, "crv": crv,
                       "x": b64url_encode(&p[1..1 + n]), "y": b64url_encode(&p[1 + n..])})
            }
            Signer::Ed(k) => json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519",
                                   "x": b64url_encode(k.public_key().as_ref())}),
        }
    }

    fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url_encode(header.to_string().as_bytes()),
            b64url_encode(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(k) => {
                let pad: &'static dyn signature::RsaEncoding = match self.alg {
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(pad, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            Signer::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64url_encode(&sig))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

/// The IdP's claims for a user, valid for five minutes.
fn idp_claims(email: &str) -> Value {
    let now = now();
    json!({"iss": ISS, "aud": [AUD, "other-app"], "sub": "u-1", "email": email,
           "name": "Ada Lovelace", "iat": now, "exp": now + 300,
           "jti": format!("idp-{}", rand_hex())})
}

fn rand_hex() -> String {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What the stand-in IdP serves at /jwks.json.
struct Jwks {
    body: String,
    status: u16,
    delay: Duration,
}

/// A stand-in IdP: its key set over HTTPS, signed by its own CA (written to `ca.pem`).
struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<Jwks>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(dir: &TempDir, keys: &[&IdpKey]) -> Idp {
        jwt_gate::tls::install_default_provider();
        let ca_key = CertKey::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        dir.write("ca.pem", &ca.self_signed(&ca_key).unwrap().pem());
        let leaf_key = CertKey::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        let certs = vec![leaf.der().clone()];
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes())
                .unwrap();
        let cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Jwks {
            body: set_of(keys),
            status: 200,
            delay: Duration::ZERO,
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (st, f) = (state.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st, f) = (acceptor.clone(), st.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let (st, f) = (st.clone(), f.clone());
                        async move {
                            f.fetch_add(1, Ordering::SeqCst);
                            let (body, status, delay) = {
                                let s = st.lock().unwrap();
                                (s.body.clone(), s.status, s.delay)
                            };
                            tokio::time::sleep(delay).await;
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .header("cache-control", "max-age=3600")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Idp {
            addr,
            state,
            fetches,
        }
    }

    fn serve(&self, keys: &[&IdpKey]) {
        self.state.lock().unwrap().body = set_of(keys);
    }

    fn set(&self, status: u16, body: Option<String>, delay: Duration) {
        let mut s = self.state.lock().unwrap();
        s.status = status;
        s.delay = delay;
        if let Some(b) = body {
            s.body = b;
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("https://{}/jwks.json", self.addr)
    }
}

fn set_of(keys: &[&IdpKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// The gate with `[idp]` pointing at `idp` (GitLab's provider: HS256 with SECRET).
async fn gate_for(dir: &TempDir, up: SocketAddr, idp: &Idp, extra: &str) -> Served {
    gate_with(dir, up, idp, extra, true).await
}

/// `wait_for_keys`: return only once /readyz says the keys are in.
async fn gate_with(
    dir: &TempDir,
    up: SocketAddr,
    idp: &Idp,
    extra: &str,
    wait_for_keys: bool,
) -> Served {
    let cfg = dir.write(
        "gate.toml",
        &format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://{up}\"\n[provider]\nsecret = \"{SECRET}\"\nvalid_within = 60\n\
             [idp]\njwks_url = \"{}\"\njwks_ca_file = \"ca.pem\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\n{extra}",
            idp.url()
        ),
    );
    let served = run_bin(&cfg).await;
    // the first fetch runs beside the listener: wait until the keys are in
    let admin = served.admin.unwrap();
    for _ in 0..200 {
        let r = get(&format!("http://{admin}/readyz")).await;
        if r.text().contains("idp keys: ok") || !wait_for_keys {
            return served;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gate never loaded the IdP's keys:\n{}", served.output());
}

/// A stand-in IdP serving `keys`, a recording upstream, and the gate with `extra` in
/// `[idp]`, its keys loaded.
async fn world(tag: &str, keys: &[&IdpKey], extra: &str) -> (TempDir, Idp, Upstream, Served) {
    let dir = TempDir::new(tag);
    let idp = Idp::start(&dir, keys).await;
    let up = Upstream::start().await;
    let g = gate_for(&dir, up.addr, &idp, extra).await;
    (dir, idp, up, g)
}

fn callback_url(addr: SocketAddr, token: &str) -> String {
    format!("http://{addr}/users/auth/jwt/callback?state=s1&jwt={token}")
}

/// The token GitLab got in the callback the upstream recorded last.
fn minted_of(up: &Upstream) -> String {
    let cb = up.callbacks().pop().expect("a callback reached GitLab");
    let q = cb.target.split_once('?').unwrap().1;
    q.split('&')
        .find_map(|p| p.strip_prefix("jwt="))
        .unwrap()
        .to_string()
}

/// GitLab's own check of a token, in Ruby with ruby-jwt, as its JWT strategy does it:
/// decode with the provider's secret and algorithm, then valid_within on iat and the
/// required claims; prints the uid or the error.
fn gitlab_verdict(tokens: &[String]) -> Vec<String> {
    let script = format!(
        r#"require 'jwt'
STDIN.each_line do |t|
  begin
    decoded = JWT.decode(t.strip, '{SECRET}', true, {{ algorithm: 'HS256' }})[0]
    raise 'iat missing' unless decoded['iat']
    raise 'iat outside valid_within' if (Time.now.to_i - decoded['iat']).abs > 60
    %w[name email].each {{ |c| raise "Missing required '#{{c}}' claim" unless decoded.key?(c) }}
    puts "ok #{{decoded['email']}} #{{decoded['name']}}"
  rescue => e
    puts "refused #{{e.class}}: #{{e.message}}"
  end
end"#
    );
    let mut cmd = std::process::Command::new("ruby");
    cmd.args(["-e", &script]);
    let out = run_with_stdin(cmd, tokens.join("\n").as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn every_idp_algorithm_signs_in_and_gitlab_gets_a_fresh_token_its_verifier_accepts() {
    let algs = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    ];
    let keys: Vec<IdpKey> = algs
        .iter()
        .map(|a| IdpKey::new(&format!("k-{a}"), a))
        .collect();
    let dir = TempDir::new("idp-algs");
    let idp = Idp::start(&dir, &keys.iter().collect::<Vec<_>>()).await;
    let up = Upstream::start().await;
    let g = gate_for(&dir, up.addr, &idp, "").await;
    let mut minted = Vec::new();
    for k in &keys {
        let token = k.sign(&idp_claims(&format!("{}@example.com", k.alg)));
        let r = get(&callback_url(g.addr, &token)).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{}: {:?}\n{}",
            k.alg,
            r.reason(),
            g.output()
        );
        let cb = up.callbacks().pop().unwrap();
        // the IdP's token never reaches GitLab; the other parameters do, unchanged
        assert!(!cb.target.contains(&token), "{}", k.alg);
        assert!(cb
            .target
            .starts_with("/users/auth/jwt/callback?state=s1&jwt="));
        assert_eq!(
            cb.headers["x-auth-request-user"],
            format!("{}@example.com", k.alg).as_str()
        );
        minted.push(minted_of(&up));
        // the IdP's token is single-use in callback mode
        let again = get(&callback_url(g.addr, &token)).await;
        assert_eq!(again.reason(), Some("replayed"), "{}", k.alg);
    }
    assert_eq!(up.callbacks().len(), algs.len());
    let verdicts = gitlab_verdict(&minted);
    for (alg, v) in algs.iter().zip(&verdicts) {
        assert_eq!(v, &format!("ok {alg}@example.com Ada Lovelace"));
    }
    // GitLab's verifier refuses what the gate never minted: the IdP's own token
    let foreign = keys[0].sign(&idp_claims("x@example.com"));
    assert!(gitlab_verdict(&[foreign])[0].starts_with("refused"));
    // a minted token presented at the callback: in callback mode the callback takes the
    // IdP's tokens only (the store refuses it too: a_header_assertion_… shows "replayed")
    let replay = get(&callback_url(g.addr, &minted[0])).await;
    assert_eq!(replay.reason(), Some("idp_alg_not_allowed"));
    let admin = g.admin.unwrap();
    assert_eq!(metric(admin, "jwt_gate_tokens_minted_total").await, 10.0);
    assert_eq!(
        metric(
            admin,
            "jwt_gate_jwks_fetches_total{trigger=\"start\",result=\"ok\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(admin, "jwt_gate_jwks_keys").await, 10.0);
    let out = g.output();
    assert!(!out.contains(&minted[1]), "a minted token was logged");
}

#[tokio::test]
async fn tokens_the_idp_did_not_make_for_gitlab_are_refused_and_nothing_reaches_it() {
    let rsa = IdpKey::new("r1", "RS256");
    let ec = IdpKey::new("e1", "ES256");
    let (_dir, idp, up, g) = world("idp-bad", &[&rsa, &ec], "leeway = 5\n").await;
    let base = idp_claims("eve@example.com");
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let now = now();
    let hs_public = {
        // an HMAC token presented to a verifier of public keys (the classic confusion)
        let header = json!({"alg": "HS256", "kid": "r1"});
        hs256_raw(&header.to_string(), &base.to_string())
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "issuer_mismatch",
            rsa.sign(&with("iss", json!("https://evil.test"))),
        ),
        (
            "audience_mismatch",
            rsa.sign(&with("aud", json!("another-app"))),
        ),
        ("token_expired", rsa.sign(&with("exp", json!(now - 10)))),
        (
            "exp_missing",
            rsa.sign(&{
                let mut c = base.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
        ),
        (
            "token_not_yet_valid",
            rsa.sign(&with("nbf", json!(now + 60))),
        ),
        (
            "unknown_kid",
            rsa.sign_raw(&json!({"alg": "RS256", "kid": "nope"}), &base),
        ),
        (
            "kid_wrong_key_type",
            rsa.sign_raw(&json!({"alg": "RS256", "kid": "e1"}), &base),
        ),
        ("idp_alg_not_allowed", hs_public),
        (
            "alg_none",
            format!(
                "{}.{}.AAAA",
                b64url_encode(br#"{"alg":"none"}"#),
                b64url_encode(base.to_string().as_bytes())
            ),
        ),
        (
            "key_in_header",
            rsa.sign_raw(
                &json!({"alg": "RS256", "kid": "r1", "jku": "https://evil.test/jwks"}),
                &base,
            ),
        ),
        (
            "key_in_header",
            rsa.sign_raw(
                &json!({"alg": "RS256", "kid": "r1", "jwk": {"kty": "oct"}}),
                &base,
            ),
        ),
        (
            "key_in_header",
            rsa.sign_raw(
                &json!({"alg": "RS256", "kid": "r1", "x5u": "https://evil.test/cert.pem"}),
                &base,
            ),
        ),
        ("bad_signature", {
            let t = ec.sign(&base);
            let other = IdpKey::new("e1", "ES256");
            let forged = other.sign(&base);
            format!(
                "{}.{}",
                &t[..t.rfind('.').unwrap()],
                &forged[forged.rfind('.').unwrap() + 1..]
            )
        }),
    ];
    for (want, token) in &cases {
        let r = get(&callback_url(g.addr, token)).await;
        assert_eq!(r.reason(), Some(*want), "{want}: {}", r.text());
    }
    assert_eq!(
        up.callbacks().len(),
        0,
        "a refused IdP token reached GitLab"
    );
    // a leeway of 5 s: an exp 3 s ago still passes
    let ok = get(&callback_url(
        g.addr,
        &rsa.sign(&with("exp", json!(now - 3))),
    ))
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.reason());
    // a POST callback: the form body carries the minted token in the IdP token's place,
    // every other field unchanged, and the length GitLab reads is the new body's
    let idp_token = ec.sign(&idp_claims("post@example.com"));
    let form = format!("utf8=%E2%9C%93&jwt={idp_token}&remember_me=1");
    let req = Request::post(format!("http://{}/users/auth/jwt/callback", g.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.reason());
    let cb = up.callbacks().pop().unwrap();
    let body = String::from_utf8(cb.body.to_vec()).unwrap();
    let minted = body
        .strip_prefix("utf8=%E2%9C%93&jwt=")
        .and_then(|b| b.strip_suffix("&remember_me=1"))
        .unwrap_or_else(|| panic!("{body}"));
    assert_ne!(minted, idp_token);
    assert_eq!(
        gitlab_verdict(&[minted.to_string()])[0],
        "ok post@example.com Ada Lovelace"
    );
    assert_eq!(
        cb.headers["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(cb.target, "/users/auth/jwt/callback");
    // no URL from a token's header was ever fetched: the IdP saw the start fetch and the
    // one refetch the unknown kid caused
    assert_eq!(idp.fetches(), 2);
}

#[tokio::test]
async fn key_rotation_is_followed_and_an_unknown_kid_refetches_at_most_once_per_interval() {
    let old = IdpKey::new("2026-11", "ES256");
    let new = IdpKey::new("2026-12", "ES256");
    let (_dir, idp, up, g) = world("idp-rotate", &[&old], "").await;
    let ok = get(&callback_url(
        g.addr,
        &old.sign(&idp_claims("a@example.com")),
    ))
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(idp.fetches(), 1);
    // the IdP rotates: the new key appears, the old one is withdrawn
    idp.serve(&[&new]);
    let r = get(&callback_url(
        g.addr,
        &new.sign(&idp_claims("b@example.com")),
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.reason());
    assert_eq!(idp.fetches(), 2, "an unknown kid fetches the set once");
    // the withdrawn key no longer signs anyone in
    let r = get(&callback_url(
        g.addr,
        &old.sign(&idp_claims("c@example.com")),
    ))
    .await;
    assert_eq!(r.reason(), Some("unknown_kid"));
    // a flood of unknown kids makes no more fetches inside the interval
    for i in 0..20 {
        let t = new.sign_raw(
            &json!({"alg": "ES256", "kid": format!("junk-{i}")}),
            &idp_claims("d@example.com"),
        );
        assert_eq!(
            get(&callback_url(g.addr, &t)).await.reason(),
            Some("unknown_kid")
        );
    }
    assert_eq!(idp.fetches(), 2);
    assert_eq!(
        metric(
            g.admin.unwrap(),
            "jwt_gate_jwks_fetches_total{trigger=\"unknown_kid\",result=\"ok\"}"
        )
        .await,
        1.0
    );
    assert_eq!(up.callbacks().len(), 2);
}

#[tokio::test]
async fn with_the_jwks_endpoint_down_cached_keys_serve_until_max_age_then_logins_fail_closed() {
    let k = IdpKey::new("k", "EdDSA");
    let (_dir, idp, up, g) = world(
        "idp-down",
        &[&k],
        "jwks_refresh = 0.3\njwks_min_refresh = 0.3\njwks_max_age = 2\n",
    )
    .await;
    idp.set(500, None, Duration::ZERO);
    // inside max_age the cached key still serves
    let r = get(&callback_url(g.addr, &k.sign(&idp_claims("a@example.com")))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.reason());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = get(&callback_url(g.addr, &k.sign(&idp_claims("b@example.com")))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.reason(), Some("idp_keys_unavailable"));
    // everything else keeps flowing, and the pod stays ready
    assert_eq!(
        get(&format!("http://{}/api/v4/version", g.addr))
            .await
            .status,
        StatusCode::OK
    );
    let ready = get(&format!("http://{}/readyz", g.admin.unwrap())).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        ready.text().contains("idp keys warning"),
        "{}",
        ready.text()
    );
    assert!(
        metric(
            g.admin.unwrap(),
            "jwt_gate_jwks_fetches_total{trigger=\"refresh\",result=\"error\"}"
        )
        .await
            >= 1.0
    );
    // the IdP comes back: the next refresh brings the keys, and sign-in works again
    idp.set(200, None, Duration::ZERO);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        let r = get(&callback_url(g.addr, &k.sign(&idp_claims("c@example.com")))).await;
        status = r.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
    // one callback per accepted token; the refused one never reached GitLab
    assert_eq!(up.callbacks().len(), 2);
    assert!(g
        .output()
        .contains("IdP key set not loaded; keeping the previous one"));
}

#[tokio::test]
async fn bad_key_sets_are_logged_and_never_trusted() {
    let good = IdpKey::new("good", "ES256");
    let dir = TempDir::new("idp-badset");
    let idp = Idp::start(&dir, &[&good]).await;
    // a weak RSA key and a key with private material beside a good one: both skipped
    let weak = json!({"kty": "RSA", "kid": "weak", "n": b64url_encode(&[0xC5; 128]), "e": "AQAB"});
    let private =
        json!({"kty": "EC", "kid": "priv", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"});
    let mut set: Value = serde_json::from_str(&set_of(&[&good])).unwrap();
    set["keys"].as_array_mut().unwrap().extend([weak, private]);
    idp.set(200, Some(set.to_string()), Duration::ZERO);
    let up = Upstream::start().await;
    let g = gate_for(
        &dir,
        up.addr,
        &idp,
        "jwks_max_bytes = 4096\njwks_timeout = 0.5\n",
    )
    .await;
    let out = g.output();
    assert!(
        out.contains("kid weak) skipped: RSA modulus of about 1024 bits"),
        "{out}"
    );
    assert!(
        out.contains("kid priv) skipped: it holds private or symmetric key material"),
        "{out}"
    );
    assert_eq!(metric(g.admin.unwrap(), "jwt_gate_jwks_keys").await, 1.0);
    drop(g);

    // an oversized set, a slow endpoint, and a document that is no key set: no keys, so
    // every IdP sign-in is refused (never let through)
    for (body, delay, log) in [
        (
            format!("{{\"keys\":[],\"pad\":\"{}\"}}", "x".repeat(8000)),
            Duration::ZERO,
            "larger than idp.jwks_max_bytes",
        ),
        (set_of(&[&good]), Duration::from_secs(2), "no answer within"),
        (
            "<html>login</html>".to_string(),
            Duration::ZERO,
            "not a JSON document",
        ),
    ] {
        idp.set(200, Some(body), delay);
        let g = gate_with(
            &dir,
            up.addr,
            &idp,
            "jwks_max_bytes = 4096\njwks_timeout = 0.5\n",
            false,
        )
        .await;
        let mut out = String::new();
        for _ in 0..100 {
            out = g.output();
            if out.contains(log) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(out.contains(log), "{log}: {out}");
        let r = get(&callback_url(
            g.addr,
            &good.sign(&idp_claims("a@example.com")),
        ))
        .await;
        assert_eq!(r.reason(), Some("idp_keys_unavailable"), "{log}");
    }
    assert_eq!(up.callbacks().len(), 0);
}

#[tokio::test]
async fn a_header_assertion_signs_in_with_no_token_in_the_browser() {
    let k = IdpKey::new("cf", "RS256");
    let (_dir, _idp, up, g) = world("idp-sso", &[&k], "assertion_header = \"Cf-Access-Jwt-Assertion\"\ntrusted_peers = [\"127.0.0.1\"]\ncallback = false\n").await;
    let assertion = k.sign(&idp_claims("grace@example.com"));
    let sso = |assertion: Option<&str>| {
        let mut b = Request::get(format!("http://{}/-/jwt-gate/sso", g.addr))
            .header("cookie", "_gitlab_session=before");
        if let Some(a) = assertion {
            b = b.header("cf-access-jwt-assertion", a);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let c = client();
    let r = send(&c, sso(Some(&assertion))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}\n{}", r.reason(), g.output());
    // GitLab got the callback from the gate: a GET with a minted token, the browser's
    // cookie and the identity; the browser got GitLab's answer and never saw the token
    let cb = up.callbacks().pop().unwrap();
    assert_eq!(cb.method, "GET");
    assert!(cb.target.starts_with("/users/auth/jwt/callback?jwt="));
    assert_eq!(cb.headers["cookie"], "_gitlab_session=before");
    assert_eq!(cb.headers["x-auth-request-user"], "grace@example.com");
    let minted = minted_of(&up);
    // the browser got GitLab's own answer (this stand-in echoes what it was sent; a real
    // GitLab answers a redirect and its session cookie), and no header of the gate's
    // carries the token: no Location, no cookie
    assert!(r
        .text()
        .starts_with("upstream saw GET /users/auth/jwt/callback?jwt="));
    assert!(r.headers.values().all(|v| !v
        .as_bytes()
        .windows(minted.len())
        .any(|w| w == minted.as_bytes())));
    assert_eq!(
        gitlab_verdict(std::slice::from_ref(&minted))[0],
        "ok grace@example.com Ada Lovelace"
    );
    // the assertion lives as long as the proxy's session: a second sign-in works, with a
    // new minted token; the minted one is single-use (with callback = false the callback
    // verifies GitLab-shaped tokens, so a leaked minted token meets the replay store)
    let r2 = send(&c, sso(Some(&assertion))).await;
    assert_eq!(r2.status, StatusCode::OK);
    assert_ne!(minted_of(&up), minted);
    assert_eq!(
        get(&callback_url(g.addr, &minted)).await.reason(),
        Some("replayed")
    );
    // no assertion, or a bad one: refused, nothing reaches GitLab
    let before = up.callbacks().len();
    assert_eq!(
        send(&c, sso(None)).await.reason(),
        Some("assertion_missing")
    );
    let wrong_aud = k.sign(&{
        let mut c = idp_claims("grace@example.com");
        c["aud"] = json!("grafana");
        c
    });
    assert_eq!(
        send(&c, sso(Some(&wrong_aud))).await.reason(),
        Some("audience_mismatch")
    );
    assert_eq!(up.callbacks().len(), before);
}

#[tokio::test]
async fn an_assertion_from_a_peer_that_is_not_the_identity_proxy_is_refused() {
    let k = IdpKey::new("cf", "ES256");
    let (_dir, _idp, up, g) = world("idp-untrusted", &[&k], "assertion_header = \"X-Pomerium-Jwt-Assertion\"\ntrusted_peers = [\"10.20.30.40/32\"]\ncallback = false\n").await;
    let assertion = k.sign(&idp_claims("mallory@example.com"));
    // even with an X-Forwarded-For naming the proxy: the TCP peer is what counts
    let req = Request::get(format!("http://{}/-/jwt-gate/sso", g.addr))
        .header("x-pomerium-jwt-assertion", &assertion)
        .header("x-forwarded-for", "10.20.30.40")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.reason(), Some("assertion_untrusted_peer"));
    // with callback = false the IdP's token is no callback token either
    let r = get(&callback_url(g.addr, &assertion)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.callbacks().len(), 0);
}

#[tokio::test]
async fn an_rsa_provider_a_key_file_and_an_oauth2_proxy_bearer_sign_in_and_explain_says_why() {
    let dir = TempDir::new("idp-file");
    // GitLab's JWT provider holds the public key; the gate mints with the private one
    rsa_key(&dir.0, "gitlab.key");
    openssl(
        &["pkey", "-in", "gitlab.key", "-pubout", "-out", "gitlab.pub"],
        &dir.0,
    );
    let first = IdpKey::new("f1", "EdDSA");
    dir.write("jwks.json", &set_of(&[&first]));
    let up = Upstream::start().await;
    let cfg_text = |mint_key: &str| {
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://{}\"\n[provider]\nalgorithm = \"RS256\"\nsecret_file = \"gitlab.pub\"\nvalid_within = 60\n\
             [gate]\nkey_reload_interval = 0.2\n\
             [idp]\njwks_file = \"jwks.json\"\nissuer = \"{ISS}\"\naudience = \"{AUD}\"\nmint_key_file = \"{mint_key}\"\n\
             assertion_header = \"Authorization\"\ntrusted_peers = [\"127.0.0.1\"]\n",
            up.addr
        )
    };
    // a minting key that is not the provider's pair is refused at start, without key text
    rsa_key(&dir.0, "other.key");
    let (code, text) = run_check(&dir.write("bad.toml", &cfg_text("other.key")));
    assert_ne!(code, 0);
    assert!(text.contains("idp.mint_key_file: the private key is not the one whose public key provider.secret holds"), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let cfg = dir.write("gate.toml", &cfg_text("gitlab.key"));
    let (code, text) = run_check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("header-assertion sign-in at /-/jwt-gate/sso"),
        "{text}"
    );

    // explain names the key the token selects, and the check that fails
    let token = first.sign(&idp_claims("lin@example.com"));
    let explain = |t: &str| {
        let mut cmd = std::process::Command::new(gate_bin());
        cmd.args(["explain", "--config"]).arg(&cfg);
        String::from_utf8(run_with_stdin(cmd, t.as_bytes()).stdout).unwrap()
    };
    let report = explain(&token);
    assert!(report.contains("kid f1  OKP  [EdDSA]"), "{report}");
    assert!(
        report.contains("key for kid f1 and EdDSA: found"),
        "{report}"
    );
    assert!(
        report.contains("the gate would mint GitLab's token for uid lin@example.com"),
        "{report}"
    );
    let mut wrong = idp_claims("lin@example.com");
    wrong["aud"] = json!("jenkins");
    let report = explain(&first.sign(&wrong));
    assert!(
        report.contains("result: REJECTED (401 audience_mismatch)"),
        "{report}"
    );

    let g = run_bin(&cfg).await;
    // oauth2-proxy's way: the ID token as a bearer token
    let sso = |t: &str| {
        Request::get(format!("http://{}/-/jwt-gate/sso", g.addr))
            .header("authorization", format!("Bearer {t}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = send(&client(), sso(&token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}\n{}", r.reason(), g.output());
    let minted = minted_of(&up);
    // GitLab's check of an RS256 token: the public key from its provider settings
    let script = format!(
        r#"require 'jwt'; require 'openssl'
key = OpenSSL::PKey::RSA.new(File.read('{}'))
d = JWT.decode(STDIN.read.strip, key, true, {{ algorithm: 'RS256' }})[0]
raise 'iat' if (Time.now.to_i - d['iat']).abs > 60
%w[name email].each {{ |c| raise c unless d.key?(c) }}
puts "ok #{{d['email']}}""#,
        dir.0.join("gitlab.pub").display()
    );
    let mut ruby = std::process::Command::new("ruby");
    ruby.args(["-e", &script]);
    let out = run_with_stdin(ruby, minted.as_bytes());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok lin@example.com",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // the IdP rotates its file: the new key signs in, the withdrawn one does not
    let second = IdpKey::new("f2", "ES384");
    dir.write("jwks.json", &set_of(&[&second]));
    let next = second.sign(&idp_claims("lin@example.com"));
    let mut status = StatusCode::UNAUTHORIZED;
    for _ in 0..100 {
        status = send(&client(), sso(&next)).await.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK);
    let old = send(&client(), sso(&first.sign(&idp_claims("lin@example.com")))).await;
    assert_eq!(old.reason(), Some("unknown_kid"));
    assert_eq!(
        metric(
            g.admin.unwrap(),
            "jwt_gate_jwks_fetches_total{trigger=\"file_change\",result=\"ok\"}"
        )
        .await,
        1.0
    );
    assert_eq!(up.callbacks().len(), 2);
}
