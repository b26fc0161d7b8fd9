//! TLS termination through the real gate with a rustls client and a test CA: versions,
//! ALPN, HTTP/2 callbacks, websockets over TLS, certificate rotation, client certificates,
//! https upstreams, the redirect listener, HSTS, and JWT key reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A test CA that issues server and client certificates into a temp dir.
struct Pki {
    dir: TempDir,
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        jwt_gate::tls::install_default_provider();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let dir = TempDir::new("tls");
        dir.write("ca.crt", &ca_pem);
        Pki {
            dir,
            ca_key,
            ca_params,
            ca_pem,
        }
    }

    /// Issue a certificate; returns (cert PEM, key PEM).
    fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.extended_key_usages = vec![purpose];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// Write a fresh localhost server certificate to tls.crt/tls.key; returns its DER.
    fn server_cert(&self) -> Vec<u8> {
        let (c, k) = self.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        // key first, then certificate: a reload in between sees a mismatch and keeps the old
        self.dir.write("tls.key.tmp", &k);
        self.dir.write("tls.crt.tmp", &c);
        std::fs::rename(self.dir.0.join("tls.key.tmp"), self.dir.0.join("tls.key")).unwrap();
        std::fs::rename(self.dir.0.join("tls.crt.tmp"), self.dir.0.join("tls.crt")).unwrap();
        CertificateDer::from_pem_slice(c.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        r
    }

    fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
        client_cert: bool,
    ) -> tokio_rustls::TlsConnector {
        let b = rustls::ClientConfig::builder_with_provider(jwt_gate::tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(self.roots());
        let mut cfg = if client_cert {
            let (c, k) = self.issue(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
            b.with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
            )
            .unwrap()
        } else {
            b.with_no_client_auth()
        };
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

const ALL: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn connect(
    conn: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    conn.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

fn tls_section(pki: &Pki, extra: &str) -> String {
    format!(
        "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval = 0.2\n{extra}",
        pki.path("tls.crt").display(),
        pki.path("tls.key").display()
    )
}

async fn tls_gate(pki: &Pki, up: &Upstream, tls_extra: &str, more: &str) -> Gate {
    pki.server_cert();
    let cfg = config_text(
        up.addr,
        &format!("{}{}{more}", hs256_provider(), tls_section(pki, tls_extra)),
    );
    Gate::start(&cfg).await
}

/// One HTTP/1.1 request over an established TLS stream.
async fn h1_get(
    stream: TlsStream<TcpStream>,
    path: &str,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    u16,
    String,
) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (send, status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls12_and_tls13_handshakes_and_forwarded_proto_https() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gate = tls_gate(&pki, &up, "", "").await;
    for (v, want) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let s = connect(&pki.client(&[v], &[b"http/1.1"], false), gate.addr)
            .await
            .unwrap();
        assert_eq!(s.get_ref().1.protocol_version(), Some(want));
        let (_, status, body) = h1_get(s, "/over-tls").await;
        assert_eq!((status, body.as_str()), (200, "upstream saw GET /over-tls"));
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.headers["x-forwarded-proto"] == "https"));
}

#[tokio::test]
async fn alpn_picks_h2_or_http11() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gate = tls_gate(&pki, &up, "", "").await;
    let s = connect(&pki.client(ALL, &[b"h2", b"http/1.1"], false), gate.addr)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("https://localhost/h2-path?q=1")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let s = connect(&pki.client(ALL, &[b"http/1.1"], false), gate.addr)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (_, status, _) = h1_get(s, "/h1-path").await;
    assert_eq!(status, 200);
    let seen = up.seen();
    assert_eq!(seen[0].target, "/h2-path?q=1");
    // HTTP/2's :authority becomes the upstream's Host
    assert_eq!(seen[0].headers["host"], "localhost");
}

#[tokio::test]
async fn one_token_on_two_concurrent_h2_streams_is_forwarded_once() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gate = tls_gate(&pki, &up, "", "").await;
    let s = connect(&pki.client(ALL, &[b"h2"], false), gate.addr)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let token = hs256(&claims("h2@x"));
    let uri = format!("https://localhost/users/auth/jwt/callback?jwt={token}");
    let (mut a, mut b) = (send.clone(), send.clone());
    let (ra, rb) = tokio::join!(
        a.send_request(Request::get(&uri).body(Empty::<Bytes>::new()).unwrap()),
        b.send_request(Request::get(&uri).body(Empty::<Bytes>::new()).unwrap())
    );
    let mut statuses = vec![ra.unwrap().status().as_u16(), rb.unwrap().status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, vec![200, 401]);
    let cbs = up.callbacks();
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].headers["x-auth-request-user"], "h2@x");
}

#[tokio::test]
async fn websocket_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gate = tls_gate(&pki, &up, "", "").await;
    let s = connect(&pki.client(ALL, &[b"http/1.1"], false), gate.addr)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://localhost/ws", s)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("over tls"))
        .await
        .unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "over tls"
    );
}

fn peer_cert(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_carry_on() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let gate = tls_gate(&pki, &up, "", "").await;
    let client = pki.client(ALL, &[b"http/1.1"], false);
    let first = connect(&client, gate.addr).await.unwrap();
    let old_der = peer_cert(&first);
    let (mut open, status, _) = h1_get(first, "/before").await;
    assert_eq!(status, 200);

    let new_der = pki.server_cert();
    assert_ne!(new_der, old_der);
    let mut seen_new = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if peer_cert(&connect(&client, gate.addr).await.unwrap()) == new_der {
            seen_new = true;
            break;
        }
    }
    assert!(seen_new, "new handshakes never saw the rotated certificate");
    // the connection opened before the rotation still works
    let resp = open
        .send_request(
            Request::get("/after")
                .header("host", "localhost")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // a broken new certificate keeps the last good one
    std::fs::write(
        pki.path("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let s = connect(&client, gate.addr)
        .await
        .expect("the gate kept serving after a broken certificate");
    assert_eq!(peer_cert(&s), new_der);
}

#[tokio::test]
async fn a_client_certificate_is_required_when_client_ca_is_set() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    let extra = format!("client_ca = \"{}\"\n", pki.path("ca.crt").display());
    let gate = tls_gate(&pki, &up, &extra, "").await;
    // without a client certificate: refused during the handshake (or right after, in TLS 1.3)
    let refused = async {
        let s = connect(&pki.client(ALL, &[b"http/1.1"], false), gate.addr).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        send.send_request(
            Request::get("/x")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .map_err(std::io::Error::other)
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got an answer"
    );
    assert_eq!(up.count(), 0);
    let s = connect(&pki.client(ALL, &[b"http/1.1"], true), gate.addr)
        .await
        .unwrap();
    let (_, status, _) = h1_get(s, "/with-cert").await;
    assert_eq!(status, 200);
    assert_eq!(up.count(), 1);
}

fn upstream_tls(pki: &Pki, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
    let (c, k) = pki.issue(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let b = rustls::ServerConfig::builder_with_provider(jwt_gate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if require_client_cert {
        b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(pki.roots()),
                jwt_gate::tls::provider(),
            )
            .build()
            .unwrap(),
        )
    } else {
        b.with_no_client_auth()
    };
    let mut cfg = b
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(c.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_configured_ca_with_optional_mtls() {
    let pki = Pki::new();
    let up = Upstream::start_tls(upstream_tls(&pki, false)).await;
    let port = up.addr.port();
    let with_ca = format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"https://localhost:{port}\"\nca = \"{}\"\n{}", pki.path("ca.crt").display(), hs256_provider());
    let gate = Gate::start(&with_ca).await;
    let got = get(&gate.url("/secure")).await;
    assert_eq!(
        (got.status.as_u16(), got.text()),
        (200, "upstream saw GET /secure".to_string())
    );

    // system roots do not know the test CA: the upstream is refused, the gate answers 502
    let no_ca = format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"https://localhost:{port}\"\n{}", hs256_provider());
    if let Ok(g) = Gate::try_start(&no_ca).await {
        let got = get(&g.url("/secure")).await;
        assert_eq!(got.status, 502);
    }
    assert_eq!(up.count(), 1);

    // mTLS to the upstream
    let mtls_up = Upstream::start_tls(upstream_tls(&pki, true)).await;
    let (c, k) = pki.issue(&["jwt-gate"], ExtendedKeyUsagePurpose::ClientAuth);
    pki.dir.write("up-client.crt", &c);
    pki.dir.write("up-client.key", &k);
    let base = format!("[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"https://localhost:{}\"\nca = \"{}\"\n", mtls_up.addr.port(), pki.path("ca.crt").display());
    let without = Gate::start(&format!("{base}{}", hs256_provider())).await;
    assert_eq!(get(&without.url("/m")).await.status, 502);
    let with = Gate::start(&format!(
        "{base}client_cert = \"{}\"\nclient_key = \"{}\"\n{}",
        pki.path("up-client.crt").display(),
        pki.path("up-client.key").display(),
        hs256_provider()
    ))
    .await;
    assert_eq!(get(&with.url("/m")).await.status, 200);
    assert_eq!(mtls_up.count(), 1);
}

#[tokio::test]
async fn plain_http_redirects_to_https_burns_a_callback_and_hsts_is_sent() {
    let pki = Pki::new();
    let up = Upstream::start().await;
    pki.server_cert();
    let cfg = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\nhttp_redirect_addr = \"127.0.0.1:0\"\n[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n{}{}",
        up.addr,
        hs256_provider(),
        tls_section(&pki, "hsts_max_age = 31536000\n")
    );
    let gate = Gate::start(&cfg).await;
    let tls_port = gate.addr.port();
    let plain = gate.redirect.expect("the redirect listener is on").port();

    let c = client();
    let r = send(
        &c,
        Request::get(format!(
            "http://127.0.0.1:{plain}/explore/projects?sort=new"
        ))
        .header("host", "gitlab.example:80")
        .body(Full::new(Bytes::new()))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://gitlab.example:{tls_port}/explore/projects?sort=new").as_str()
    );
    let token = hs256(&claims("plain@x"));
    let r = get(&format!(
        "http://127.0.0.1:{plain}/users/auth/jwt/callback?jwt={token}"
    ))
    .await;
    assert_eq!(
        (r.status.as_u16(), r.reason()),
        (400, Some("callback_over_plain_http"))
    );
    assert!(r.headers.get("location").is_none());
    assert_eq!(up.count(), 0);

    // HSTS on the TLS listener, on proxied responses and on the gate's own pages
    let s = connect(
        &pki.client(ALL, &[b"http/1.1"], false),
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
    )
    .await
    .unwrap();
    let (mut send_req, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/proxied", "/users/auth/jwt/callback?jwt=bad"] {
        let resp = send_req
            .send_request(
                Request::get(path)
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000",
            "{path}"
        );
        let _ = resp.into_body().collect().await;
    }

    // the token that crossed in clear was burned: it cannot be used over https either
    let mut over_tls = |path: String| {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let fut = send_req.send_request(req);
        async move {
            let resp = fut.await.unwrap();
            let (parts, body) = resp.into_parts();
            let _ = body.collect().await;
            (
                parts.status.as_u16(),
                parts.headers.get("x-jwt-gate-reason").cloned(),
            )
        }
    };
    let (status, reason) = over_tls(format!("/users/auth/jwt/callback?jwt={token}")).await;
    assert_eq!(
        (status, reason.as_ref().map(|r| r.to_str().unwrap())),
        (401, Some("replayed"))
    );
    // a forgery over plain HTTP burns nothing: the real token with the same jti still works
    let mut c = claims("jti@x");
    c["jti"] = serde_json::json!("shared-jti");
    let forged = hs256_with(&[b'x'; 40], &c);
    let r = get(&format!(
        "http://127.0.0.1:{plain}/users/auth/jwt/callback?jwt={forged}"
    ))
    .await;
    assert_eq!(r.reason(), Some("callback_over_plain_http"));
    let real = hs256(&c);
    let (status, _) = over_tls(format!("/users/auth/jwt/callback?jwt={real}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.callbacks().len(),
        1,
        "only the real token over https reached GitLab"
    );
}

#[tokio::test]
async fn the_jwt_key_file_reloads_when_it_changes() {
    let up = Upstream::start().await;
    let dir = TempDir::new("keyreload");
    let old_secret = "o".repeat(40);
    let new_secret = "n".repeat(40);
    let key = dir.write("jwt.secret", &format!("{old_secret}\n"));
    let cfg = config_text(
        up.addr,
        &format!(
            "[provider]\nsecret_file = \"{}\"\n[gate]\nkey_reload_interval = 0.2\n",
            key.display()
        ),
    );
    let gate = Gate::start(&cfg).await;
    let sign = |secret: &str, email: &str| hs256_with(secret.as_bytes(), &claims(email));
    assert_eq!(
        get(&callback(&gate, &sign(&old_secret, "a@x")))
            .await
            .status,
        200
    );
    dir.write("jwt.secret", &format!("{new_secret}\n"));
    let mut reloaded = false;
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if get(&callback(&gate, &sign(&new_secret, &format!("n{i}@x"))))
            .await
            .status
            == 200
        {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new key was never picked up");
    assert_eq!(
        get(&callback(&gate, &sign(&old_secret, "late@x")))
            .await
            .reason(),
        Some("bad_signature")
    );
    // a broken key file keeps the current key
    dir.write("jwt.secret", "short\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(&callback(&gate, &sign(&new_secret, "still@x")))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn http2_to_the_upstream_when_asked() {
    let up = Upstream::start().await;
    let cfg = config_text(up.addr, &hs256_provider())
        .replace("[upstream]\n", "[upstream]\nhttp2 = true\n");
    let gate = Gate::start(&cfg).await;
    let token = hs256(&claims("h2c@x"));
    assert_eq!(get(&gate.url("/over-h2c")).await.status, 200);
    assert_eq!(get(&callback(&gate, &token)).await.status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "{:?}",
        seen.iter().map(|s| s.version).collect::<Vec<_>>()
    );
    assert_eq!(seen[1].headers["x-auth-request-user"], "h2c@x");
}

#[tokio::test]
async fn one_listener_serves_gitlab_registry_and_pages_each_with_its_certificate() {
    // Omnibus with its co-hosted services: the gate takes 443 for every hostname and hands
    // each request to Omnibus' nginx on loopback, which routes by Host
    let pki = Pki::new();
    let up = Upstream::start().await;
    let mut files = Vec::new();
    for (name, names) in [
        ("gitlab", vec!["gitlab.example.com"]),
        ("registry", vec!["registry.example.com"]),
        ("pages", vec!["*.pages.example.com", "pages.example.com"]),
        ("kas", vec!["kas.example.com"]),
    ] {
        let (c, k) = pki.issue(&names, ExtendedKeyUsagePurpose::ServerAuth);
        files.push((
            pki.dir.write(&format!("{name}.crt"), &c),
            pki.dir.write(&format!("{name}.key"), &k),
        ));
    }
    let more: String = files[1..]
        .iter()
        .map(|(c, k)| {
            format!(
                "[[listen.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
                c.display(),
                k.display()
            )
        })
        .collect();
    let cfg = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n{more}[admin]\naddr = \"\"\n[upstream]\nurl = \"http://{}\"\n{}",
        files[0].0.display(),
        files[0].1.display(),
        up.addr,
        hs256_provider()
    );
    let gate = Gate::start(&cfg).await;
    let connector = pki.client(ALL, &[b"http/1.1"], false);
    let fetch = |host: &'static str| {
        let connector = connector.clone();
        let addr = gate.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            // the client checks the served certificate against the name it asked for
            let tls = connector
                .connect(ServerName::try_from(host).unwrap(), tcp)
                .await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let resp = send
                .send_request(
                    Request::get("/v2/")
                        .header("host", host)
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            Ok::<_, std::io::Error>(resp.status().as_u16())
        }
    };
    for host in [
        "gitlab.example.com",
        "registry.example.com",
        "group.pages.example.com",
        "pages.example.com",
        "kas.example.com",
    ] {
        assert_eq!(
            fetch(host).await.unwrap_or_else(|e| panic!("{host}: {e}")),
            200
        );
    }
    // a name no certificate has gets the default one, which the client rightly refuses
    assert!(fetch("other.example.com").await.is_err());
    // and without SNI, the default certificate
    let mut no_sni = rustls::ClientConfig::builder_with_provider(jwt_gate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    no_sni.enable_sni = false;
    let tcp = TcpStream::connect(gate.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(no_sni))
        .connect(ServerName::try_from("gitlab.example.com").unwrap(), tcp)
        .await
        .expect("the default certificate without SNI");
    // every hostname reached the one upstream with its Host intact
    let hosts: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.headers["host"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        hosts,
        [
            "gitlab.example.com",
            "registry.example.com",
            "group.pages.example.com",
            "pages.example.com",
            "kas.example.com"
        ]
    );
}
