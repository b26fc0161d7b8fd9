//! Mint callback tokens for load tests, one per line, each with its own jti, issued now:
//!   cargo run --release --example mint_tokens -- SECRET N [VALID_SECONDS]              # HS256
//!   cargo run --release --example mint_tokens -- KEY.pem N VALID_SECONDS RS256|ES256   # PKCS#8 private key
//! A sixth argument numbers the tokens from there (several minting processes, distinct jtis).
//! With IDP_KID set, tokens are shaped as an external IdP's for `[idp]` (a `kid` in the
//! header, `aud` "gitlab"), and
//!   cargo run --release --example mint_tokens -- --jwks KEY.pem RS256|ES256 KID
//! prints the key's public half as a one-key JWKS.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use jwt_gate::login::encoding::{b64url_encode, pem_first_block};

/// Signs a JWT signing input.
type Signer = Box<dyn Fn(&[u8]) -> Vec<u8>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--jwks") && args.len() == 5 {
        print_jwks(&args[2], &args[3], &args[4]);
        return;
    }
    if args.len() < 3 {
        eprintln!("usage: mint_tokens SECRET|KEY.pem N [VALID_SECONDS] [HS256|RS256|ES256]");
        std::process::exit(2);
    }
    let n: u64 = args[2].parse().unwrap_or(1);
    let valid: i64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(600);
    let alg = args.get(4).map_or("HS256", String::as_str);
    let first: u64 = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(0);
    let rng = SystemRandom::new();
    let der = || {
        let pem = std::fs::read(&args[1]).unwrap_or_else(|e| panic!("{}: {e}", args[1]));
        pem_first_block(&pem).unwrap_or_else(|e| panic!("{e}")).der
    };
    let sign: Signer = match alg {
        "HS256" => {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, args[1].as_bytes());
            Box::new(move |m| aws_lc_rs::hmac::sign(&key, m).as_ref().to_vec())
        }
        "RS256" => {
            let kp = RsaKeyPair::from_pkcs8(&der()).expect("an RSA PKCS#8 key");
            Box::new(move |m| {
                let mut sig = vec![0; kp.public_modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, m, &mut sig)
                    .expect("RSA signing");
                sig
            })
        }
        "ES256" => {
            let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der())
                .expect("a P-256 PKCS#8 key");
            Box::new(move |m| kp.sign(&rng, m).expect("ECDSA signing").as_ref().to_vec())
        }
        other => panic!("unsupported algorithm {other}"),
    };
    let kid = std::env::var("IDP_KID").ok();
    let header = match &kid {
        Some(k) => format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{k}"}}"#),
        None => format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#),
    };
    let header = b64url_encode(header.as_bytes());
    let now = jwt_gate::clock::unix_now();
    let mut out = String::new();
    for i in first..first + n {
        let mut claims = serde_json::json!({
            "iss": "bench-idp", "name": "Bench User", "email": format!("user{i}@bench.example"),
            "iat": now, "exp": now + valid, "jti": format!("bench-{now}-{i}"),
        });
        if kid.is_some() {
            claims["aud"] = "gitlab".into();
        }
        let input = format!("{header}.{}", b64url_encode(claims.to_string().as_bytes()));
        let sig = sign(input.as_bytes());
        out.push_str(&input);
        out.push('.');
        out.push_str(&b64url_encode(&sig));
        out.push('\n');
    }
    print!("{out}");
}

/// The public half of a PKCS#8 key as a one-key JWKS.
fn print_jwks(path: &str, alg: &str, kid: &str) {
    use aws_lc_rs::signature::KeyPair;
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let der = pem_first_block(&pem).unwrap_or_else(|e| panic!("{e}")).der;
    let jwk = match alg {
        "RS256" => {
            let kp = RsaKeyPair::from_pkcs8(&der).expect("an RSA PKCS#8 key");
            let c = aws_lc_rs::rsa::PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
            serde_json::json!({"kty": "RSA", "kid": kid, "alg": alg, "n": b64url_encode(&c.n), "e": b64url_encode(&c.e)})
        }
        _ => {
            let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .expect("a P-256 PKCS#8 key");
            let p = kp.public_key().as_ref();
            serde_json::json!({"kty": "EC", "kid": kid, "crv": "P-256", "alg": alg,
                               "x": b64url_encode(&p[1..33]), "y": b64url_encode(&p[33..65])})
        }
    };
    println!("{}", serde_json::json!({ "keys": [jwk] }));
}
