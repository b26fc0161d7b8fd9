//! All nine algorithms with keys in every PEM form GitLab accepts, and single use: tokens
//! are accepted once, whatever their spelling, and nothing is recorded before the
//! signature verified.

use crate::common::*;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P521_SHA512_FIXED_SIGNING};
use jwt_gate::login::encoding::{b64url_decode_canonical, b64url_encode, pem_first_block};
use serde_json::json;

/// A key pair for one algorithm: what the gate is configured with, and a signer.
struct Keys {
    alg: &'static str,
    gate_material: String,
    sign: Box<dyn Fn(&serde_json::Value) -> String + Send + Sync>,
}

fn jwt_encode(
    alg: jsonwebtoken::Algorithm,
    key: jsonwebtoken::EncodingKey,
) -> Box<dyn Fn(&serde_json::Value) -> String + Send + Sync> {
    Box::new(move |c| jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), c, &key).unwrap())
}

/// Keys made with openssl, each algorithm given to the gate in a different PEM form.
fn keys(alg: &'static str, dir: &TempDir) -> Keys {
    use jsonwebtoken::{Algorithm as A, EncodingKey as K};
    let d = dir.0.as_path();
    let rsa = |name: &str| rsa_key(d, name);
    let ec = |name: &str, curve: &str| {
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
                "-out",
                name,
            ],
            d,
        );
        std::fs::read_to_string(d.join(name)).unwrap()
    };
    match alg {
        "HS256" | "HS384" | "HS512" => {
            let secret = "s".repeat(64);
            let a = match alg {
                "HS256" => A::HS256,
                "HS384" => A::HS384,
                _ => A::HS512,
            };
            Keys {
                alg,
                gate_material: secret.clone(),
                sign: jwt_encode(a, K::from_secret(secret.as_bytes())),
            }
        }
        "RS256" => {
            // gate: SubjectPublicKeyInfo public key
            let pk = rsa("rs256.pem");
            let public = openssl(&["pkey", "-in", "rs256.pem", "-pubout"], d);
            assert!(public.contains("BEGIN PUBLIC KEY"));
            Keys {
                alg,
                gate_material: public,
                sign: jwt_encode(A::RS256, K::from_rsa_pem(pk.as_bytes()).unwrap()),
            }
        }
        "RS384" => {
            // gate: PKCS#1 private key, as GitLab's docs show
            let pk = rsa("rs384.pem");
            let pkcs1 = openssl(&["rsa", "-in", "rs384.pem", "-traditional"], d);
            assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
            Keys {
                alg,
                gate_material: pkcs1,
                sign: jwt_encode(A::RS384, K::from_rsa_pem(pk.as_bytes()).unwrap()),
            }
        }
        "RS512" => {
            // gate: PKCS#1 public key
            let pk = rsa("rs512.pem");
            let public = openssl(&["rsa", "-in", "rs512.pem", "-RSAPublicKey_out"], d);
            assert!(public.contains("BEGIN RSA PUBLIC KEY"));
            Keys {
                alg,
                gate_material: public,
                sign: jwt_encode(A::RS512, K::from_rsa_pem(pk.as_bytes()).unwrap()),
            }
        }
        "ES256" => {
            // gate: SEC1 private key
            let pk = ec("es256.pem", "P-256");
            let sec1 = openssl(&["ec", "-in", "es256.pem"], d);
            assert!(sec1.contains("BEGIN EC PRIVATE KEY"));
            Keys {
                alg,
                gate_material: sec1,
                sign: jwt_encode(A::ES256, K::from_ec_pem(pk.as_bytes()).unwrap()),
            }
        }
        "ES384" => {
            // gate: SubjectPublicKeyInfo public key
            let pk = ec("es384.pem", "P-384");
            let public = openssl(&["pkey", "-in", "es384.pem", "-pubout"], d);
            Keys {
                alg,
                gate_material: public,
                sign: jwt_encode(A::ES384, K::from_ec_pem(pk.as_bytes()).unwrap()),
            }
        }
        "ES512" => {
            // gate: PKCS#8 private key; no JWT crate signs ES512, so aws-lc-rs does
            let pk = ec("es512.pem", "P-521");
            let der = pem_first_block(pk.as_bytes()).unwrap().der;
            let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &der).unwrap();
            let sign = Box::new(move |c: &serde_json::Value| {
                let input = format!(
                    "{}.{}",
                    b64url_encode(br#"{"alg":"ES512","typ":"JWT"}"#),
                    b64url_encode(c.to_string().as_bytes())
                );
                let sig = kp
                    .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
                    .unwrap();
                format!("{input}.{}", b64url_encode(sig.as_ref()))
            });
            Keys {
                alg,
                gate_material: pk,
                sign,
            }
        }
        _ => unreachable!(),
    }
}

async fn gate_for(k: &Keys, dir: &TempDir) -> (Upstream, Gate) {
    let up = Upstream::start().await;
    let key_file = dir.write(&format!("{}-gate.key", k.alg), &k.gate_material);
    let provider = format!(
        "[provider]\nalgorithm = \"{}\"\nsecret_file = \"{}\"\n",
        k.alg,
        key_file.display()
    );
    let gate = Gate::start(&config_text(up.addr, &provider)).await;
    (up, gate)
}

#[tokio::test]
async fn all_nine_algorithms_verify_and_a_foreign_key_is_refused() {
    let dir = TempDir::new("algs");
    for alg in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512",
    ] {
        let k = keys(alg, &dir);
        let (up, gate) = gate_for(&k, &dir).await;
        let token = (k.sign)(&claims(&format!("{alg}@example.com")));
        let got = get(&callback(&gate, &token)).await;
        assert_eq!(got.status, 200, "{alg}: {}", got.text());
        let cbs = up.callbacks();
        assert_eq!(cbs.len(), 1, "{alg}");
        assert_eq!(
            cbs[0].headers["x-auth-request-user"],
            format!("{alg}@example.com").as_str()
        );

        // same algorithm, another key: bad signature, nothing forwarded
        let other_dir = TempDir::new("other");
        let other = keys(alg, &other_dir);
        let other_token = if alg.starts_with("HS") {
            use jsonwebtoken::{encode, EncodingKey, Header};
            let a: jsonwebtoken::Algorithm = alg.parse().unwrap();
            encode(
                &Header::new(a),
                &claims("x@x"),
                &EncodingKey::from_secret(&[b't'; 64]),
            )
            .unwrap()
        } else {
            (other.sign)(&claims("x@x"))
        };
        let got = get(&callback(&gate, &other_token)).await;
        assert_eq!(
            (got.status.as_u16(), got.reason()),
            (401, Some("bad_signature")),
            "{alg}"
        );
        assert_eq!(
            up.callbacks().len(),
            1,
            "{alg}: a forged token reached the upstream"
        );
    }
}

#[tokio::test]
async fn a_key_for_the_wrong_curve_or_type_fails_at_startup() {
    let dir = TempDir::new("wrong");
    let es256 = keys("ES256", &dir);
    for (alg, material) in [
        ("ES384", es256.gate_material.as_str()),
        ("RS256", es256.gate_material.as_str()),
    ] {
        let text = format!("[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nalgorithm = \"{alg}\"\nsecret = '''{material}'''\n");
        let cfg = jwt_gate::Config::from_toml_str(&text).unwrap();
        let err = jwt_gate::app::App::build(cfg).err().unwrap().to_string();
        assert!(err.contains("provider.secret"), "{alg}: {err}");
    }
}

#[tokio::test]
async fn a_second_use_is_refused() {
    let (up, gate) = {
        let up = Upstream::start().await;
        let g = Gate::start(&config_text(up.addr, &hs256_provider())).await;
        (up, g)
    };
    let token = hs256(&claims("once@x"));
    assert_eq!(get(&callback(&gate, &token)).await.status, 200);
    let again = get(&callback(&gate, &token)).await;
    assert_eq!(
        (again.status.as_u16(), again.reason()),
        (401, Some("replayed"))
    );
    // the same token in a form body is the same login
    let req = http::Request::post(gate.url("/users/auth/jwt/callback"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
            "jwt={token}"
        ))))
        .unwrap();
    assert_eq!(send(&client(), req).await.reason(), Some("replayed"));
    // a percent-encoded spelling of the same token is the same login
    let spelled: String = token.replace('.', "%2E");
    assert_eq!(
        get(&callback(&gate, &spelled)).await.reason(),
        Some("replayed")
    );
    assert_eq!(up.callbacks().len(), 1);
}

#[tokio::test]
async fn of_twenty_concurrent_uses_exactly_one_is_forwarded() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;
    let token = hs256(&claims("race@x"));
    let url = callback(&gate, &token);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(up.callbacks().len(), 1);
}

/// P-256 group order n.
const P256_N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// (r, s) -> (r, n - s): the other valid ECDSA signature of the same message.
fn malleate_es256(token: &str) -> String {
    let (input, sig64) = token.rsplit_once('.').unwrap();
    let sig = b64url_decode_canonical(sig64.as_bytes()).unwrap();
    let (r, s) = sig.split_at(32);
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = P256_N[i] as i16 - s[i] as i16 - borrow;
        borrow = if d < 0 {
            d += 256;
            1
        } else {
            0
        };
        out[i] = d as u8;
    }
    let mut new_sig = r.to_vec();
    new_sig.extend_from_slice(&out);
    format!("{input}.{}", b64url_encode(&new_sig))
}

#[tokio::test]
async fn a_malleated_ecdsa_signature_is_the_same_login() {
    let dir = TempDir::new("mall");
    let k = keys("ES256", &dir);
    let (up, gate) = gate_for(&k, &dir).await;
    let token = (k.sign)(&claims("ecdsa@x"));
    let twin = malleate_es256(&token);
    assert_ne!(twin, token);
    assert_eq!(get(&callback(&gate, &token)).await.status, 200);
    let got = get(&callback(&gate, &twin)).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (401, Some("replayed")),
        "the malleated twin verified as a new login"
    );
    assert_eq!(up.callbacks().len(), 1);

    // and the twin alone does verify (so the refusal above is the replay check, not the signature)
    let fresh = (k.sign)(&claims("ecdsa2@x"));
    let got = get(&callback(&gate, &malleate_es256(&fresh))).await;
    assert_eq!(got.status, 200, "{}", got.text());
}

#[tokio::test]
async fn the_same_jti_re_signed_is_refused_and_forgeries_do_not_burn_a_jti() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(up.addr, &hs256_provider())).await;
    let n = now();
    // an attacker without the key presents a token carrying the victim's jti first
    let forged = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        encode(
            &Header::default(),
            &json!({"name": "N", "email": "victim@x", "iat": n, "jti": "victim-jti"}),
            &EncodingKey::from_secret(&[b'z'; 40]),
        )
        .unwrap()
    };
    assert_eq!(
        get(&callback(&gate, &forged)).await.reason(),
        Some("bad_signature")
    );
    // the victim's real token still works
    let real = hs256(&json!({"name": "N", "email": "victim@x", "iat": n, "jti": "victim-jti"}));
    assert_eq!(get(&callback(&gate, &real)).await.status, 200);
    // the same jti and issuer, signed again with another iat (a second later): the same login
    let resigned = hs256(
        &json!({"name": "N", "email": "victim@x", "iat": n + 1, "jti": "victim-jti", "exp": n + 100}),
    );
    assert_eq!(
        get(&callback(&gate, &resigned)).await.reason(),
        Some("replayed")
    );
    // another issuer's jti is another login
    let other_iss = hs256(
        &json!({"name": "N", "email": "victim@x", "iat": n, "jti": "victim-jti", "iss": "other-idp"}),
    );
    assert_eq!(get(&callback(&gate, &other_iss)).await.status, 200);
    assert_eq!(up.callbacks().len(), 2);
}

#[tokio::test]
async fn a_full_store_fails_closed_while_other_traffic_flows() {
    let up = Upstream::start().await;
    let gate = Gate::start(&config_text(
        up.addr,
        &format!("{}[replay]\nmax_entries = 2\n", hs256_provider()),
    ))
    .await;
    for i in 0..2 {
        assert_eq!(
            get(&callback(&gate, &hs256(&claims(&format!("u{i}@x")))))
                .await
                .status,
            200
        );
    }
    let got = get(&callback(&gate, &hs256(&claims("third@x")))).await;
    assert_eq!(
        (got.status.as_u16(), got.reason()),
        (503, Some("replay_store_full"))
    );
    assert_eq!(up.callbacks().len(), 2);
    assert_eq!(
        get(&gate.url("/explore")).await.status,
        200,
        "pass-through must keep flowing"
    );
}

#[tokio::test]
async fn expired_entries_are_swept_so_a_full_store_recovers() {
    let up = Upstream::start().await;
    // entries live through the last second the window accepts: until iat + valid_within + 1
    let extra = "valid_within = 1\n[gate]\nmax_future_skew = 0\n[replay]\nmax_entries = 1\nsweep_interval = 0.2\n";
    let gate = Gate::start(&config_text(
        up.addr,
        &format!("{}{extra}", hs256_provider()),
    ))
    .await;
    let first = hs256(&json!({"name": "N", "email": "a@x", "iat": now()}));
    assert_eq!(get(&callback(&gate, &first)).await.status, 200);
    let got = get(&callback(
        &gate,
        &hs256(&json!({"name": "N", "email": "b@x", "iat": now()})),
    ))
    .await;
    assert_eq!(got.reason(), Some("replay_store_full"));
    // after the entry expired and a sweep ran, there is room again
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let got = get(&callback(
        &gate,
        &hs256(&json!({"name": "N", "email": "c@x", "iat": now()})),
    ))
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.callbacks().len(), 2);
}
