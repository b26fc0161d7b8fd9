//! Micro-benchmarks of the hot path: `cargo bench`.
//!
//! Token verification per algorithm is measured next to the raw signature check of the
//! crypto library underneath (the physical floor), so the overhead of the gate's own checks
//! (encoding, JSON, claims, identity headers, replay key) is visible as the difference.

use std::hint::black_box;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, ParsedPublicKey};
use aws_lc_rs::{hmac, rsa};
use criterion::{criterion_group, criterion_main, Criterion};
use jwt_gate::login::encoding::b64url_encode;
use jwt_gate::login::params::{extract_token, Part};
use jwt_gate::login::route::classify;
use jwt_gate::login::verify::{AuditInfo, Verifier};
use jwt_gate::replay::memory::MemoryStore;
use jwt_gate::Config;

// the allocator the binary ships with (src/main.rs), so allocation costs are the real ones
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret-0123456789abcdefghijklmnop";

fn pem(label: &str, der: &[u8]) -> String {
    let b64: String = b64url_encode(der).replace('-', "+").replace('_', "/");
    let padded = format!("{b64}{}", "=".repeat((4 - b64.len() % 4) % 4));
    let body: Vec<String> = padded
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

fn config(alg: &str, secret: &str) -> Config {
    let text = format!("[upstream]\nurl = \"http://127.0.0.1:8181\"\n[provider]\nalgorithm = \"{alg}\"\nsecret = '''{secret}'''\n[replay]\nreject_issued_before_start = false\n");
    Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn signing_input(alg: &str, now: i64) -> String {
    let header = b64url_encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
    let claims = format!(
        r#"{{"iss":"https://idp.example.com","name":"Zoë Example","email":"zoe@example.com","iat":{now},"exp":{},"jti":"0123456789abcdef"}}"#,
        now + 120
    );
    format!("{header}.{}", b64url_encode(claims.as_bytes()))
}

/// The raw signature check underneath: (signing input, signature) -> valid.
type RawCheck = Box<dyn Fn(&[u8], &[u8]) -> bool>;

struct Case {
    alg: &'static str,
    cfg: Config,
    token: String,
    raw: RawCheck,
}

fn cases(now: i64) -> Vec<Case> {
    let rng = SystemRandom::new();
    let mut out = Vec::new();

    // HS256
    let input = signing_input("HS256", now);
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = hmac::sign(&key, input.as_bytes());
    out.push(Case {
        alg: "HS256",
        cfg: config("HS256", SECRET),
        token: format!("{input}.{}", b64url_encode(tag.as_ref())),
        raw: Box::new(move |m, s| hmac::verify(&key, m, s).is_ok()),
    });

    // RS256 (2048-bit)
    let kp = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = kp.as_der().unwrap();
    let input = signing_input("RS256", now);
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &signature::RSA_PKCS1_SHA256,
        &rng,
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    let public = ParsedPublicKey::new(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        kp.public_key().as_ref(),
    )
    .unwrap();
    out.push(Case {
        alg: "RS256",
        cfg: config("RS256", &pem("PRIVATE KEY", pkcs8.as_ref())),
        token: format!("{input}.{}", b64url_encode(&sig)),
        raw: Box::new(move |m, s| public.verify_sig(m, s).is_ok()),
    });

    // ES256 and ES512
    for (alg, signing, verifying) in [
        (
            "ES256",
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED,
        ),
        (
            "ES512",
            &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            &signature::ECDSA_P521_SHA512_FIXED,
        ),
    ] {
        let doc = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(signing, doc.as_ref()).unwrap();
        let input = signing_input(alg, now);
        let sig = kp.sign(&rng, input.as_bytes()).unwrap();
        let public = ParsedPublicKey::new(verifying, kp.public_key().as_ref()).unwrap();
        out.push(Case {
            alg,
            cfg: config(alg, &pem("PRIVATE KEY", doc.as_ref())),
            token: format!("{input}.{}", b64url_encode(sig.as_ref())),
            raw: Box::new(move |m, s| public.verify_sig(m, s).is_ok()),
        });
    }
    out
}

fn verification(c: &mut Criterion) {
    let now = jwt_gate::clock::unix_now();
    for case in cases(now) {
        let key = jwt_gate::app::verify_key(&case.cfg).unwrap().0;
        let verifier = Verifier::new(&case.cfg, key, None);
        let mut g = c.benchmark_group(format!("verify/{}", case.alg));
        g.bench_function("gate (all checks)", |b| {
            b.iter(|| {
                let mut audit = AuditInfo::default();
                let v = verifier.verify(black_box(&case.token), now, &mut audit, &mut ());
                assert!(v.is_ok());
                v
            })
        });
        let (input, sig64) = case.token.rsplit_once('.').unwrap();
        let sig = jwt_gate::login::encoding::b64url_decode_canonical(sig64.as_bytes()).unwrap();
        g.bench_function("raw signature check", |b| {
            b.iter(|| assert!((case.raw)(black_box(input.as_bytes()), black_box(&sig))))
        });
        g.finish();
    }
}

fn request_path(c: &mut Criterion) {
    let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJuYW1lIjoiWm_DqyIsImVtYWlsIjoiem9lQGV4YW1wbGUuY29tIiwiaWF0IjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmUtc2ln";
    let query = format!("state=abc123&jwt={token}");
    c.bench_function("params/extract_token", |b| {
        b.iter(|| extract_token(black_box(query.as_bytes()), Part::Query))
    });
    let cb = "/users/auth/jwt/callback";
    c.bench_function("route/classify callback", |b| {
        b.iter(|| classify(black_box("/users/auth/jwt/callback"), cb))
    });
    c.bench_function("route/classify git path", |b| {
        b.iter(|| classify(black_box("/group/project/info/refs"), cb))
    });
    c.bench_function("route/classify dotted path", |b| {
        b.iter(|| classify(black_box("/group/project.git/info/refs"), cb))
    });

    let store = MemoryStore::new(usize::MAX);
    let first = jwt_gate::replay::FirstUse {
        at_ms: 0,
        client: std::net::IpAddr::from([192, 0, 2, 1]),
    };
    let mut i: u64 = 0;
    c.bench_function("replay/memory check-and-record (fresh)", |b| {
        b.iter(|| {
            i += 1;
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_le_bytes());
            store.record(&k, i64::MAX, 0, first)
        })
    });

    let cfg = config("HS256", SECRET);
    let app = jwt_gate::app::App::build(cfg).unwrap();
    let proxy = &app.proxy;
    let peer: std::net::SocketAddr = "192.0.2.7:51234".parse().unwrap();
    let build = || {
        http::Request::get("/api/v4/projects?per_page=100")
            .header("host", "gitlab.example.com")
            .header("user-agent", "git/2.47.0")
            .header("accept", "*/*")
            .header("authorization", "Bearer glpat-xxxxxxxxxxxxxxxx")
            .header("x-forwarded-for", "6.6.6.6")
            .header("connection", "keep-alive")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    c.bench_function("headers/prepare (strip, forward, rewrite)", |b| {
        b.iter_batched(
            build,
            |mut p| {
                proxy.strip(&mut p, false);
                proxy.rewrite(&mut p, peer, false);
                p
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, verification, request_path);
criterion_main!(benches);
