//! The token the gate mints for GitLab once an IdP's token has passed: signed with the key
//! GitLab's JWT provider trusts (`[provider]`), `iat` now, a random `jti`, `exp` a few
//! seconds ahead, and the mapped claims. It then goes through the same checks and the same
//! single-use record as any callback token.

use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde_json::{Map, Value};

use super::encoding::{b64url_encode, pem_first_block};
use super::keys::{ecdsa_signing, hmac_alg, Algorithm, Family, VerifyKey};
use crate::config::Config;

enum SigningKey {
    Hmac(Box<hmac::Key>),
    Rsa(Arc<RsaKeyPair>),
    Ecdsa(Arc<EcdsaKeyPair>),
}

pub struct Minter {
    alg: Algorithm,
    key: SigningKey,
    uid_claim: String,
    ttl: i64,
    issuer: Option<String>,
    audience: Option<String>,
    rng: SystemRandom,
}

fn rsa_padding(alg: Algorithm) -> &'static dyn signature::RsaEncoding {
    match alg {
        Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

impl Minter {
    /// The signing key: the provider's secret (HS*), or `private_pem` (RS*/ES*), which must
    /// be the private half of the provider's public key (`check` proves it by signing and
    /// verifying a probe). Errors never include key material.
    pub fn new(
        cfg: &Config,
        private_pem: Option<&[u8]>,
        verify: &VerifyKey,
    ) -> Result<Minter, String> {
        let alg = cfg.provider.algorithm;
        let key = match (alg.family(), private_pem) {
            (Family::Hmac, _) => SigningKey::Hmac(Box::new(hmac::Key::new(
                hmac_alg(alg),
                &cfg.provider.secret.0,
            ))),
            (_, None) => return Err("no private key to sign with".into()),
            (Family::Rsa, Some(pem)) => {
                let b = pem_first_block(pem)?;
                let kp = match b.label.as_str() {
                    "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&b.der),
                    "RSA PRIVATE KEY" => RsaKeyPair::from_der(&b.der),
                    other => return Err(format!("{other} PEM is not an RSA private key")),
                }
                .map_err(|e| format!("not a usable RSA private key: {e}"))?;
                SigningKey::Rsa(Arc::new(kp))
            }
            (Family::Ecdsa, Some(pem)) => {
                let b = pem_first_block(pem)?;
                let kp = match b.label.as_str() {
                    "PRIVATE KEY" => EcdsaKeyPair::from_pkcs8(ecdsa_signing(alg), &b.der),
                    "EC PRIVATE KEY" => {
                        EcdsaKeyPair::from_private_key_der(ecdsa_signing(alg), &b.der)
                    }
                    other => return Err(format!("{other} PEM is not an EC private key")),
                }
                .map_err(|e| format!("not a {} private key: {e}", alg.name()))?;
                SigningKey::Ecdsa(Arc::new(kp))
            }
        };
        let idp = cfg.idp.as_ref().ok_or("no [idp] section")?;
        let minter = Minter {
            alg,
            key,
            uid_claim: cfg.provider.uid_claim.clone(),
            ttl: idp.mint_ttl,
            issuer: cfg.provider.issuer.clone(),
            audience: cfg.provider.audience.first().cloned(),
            rng: SystemRandom::new(),
        };
        let probe = b"jwt-gate: does the minting key match provider.secret?";
        let sig = minter.sign(probe)?;
        if !verify.verify(probe, &sig) {
            return Err(
                "the private key is not the one whose public key provider.secret holds: GitLab would refuse every minted token"
                    .into(),
            );
        }
        Ok(minter)
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        match &self.key {
            SigningKey::Hmac(k) => Ok(hmac::sign(k, input).as_ref().to_vec()),
            SigningKey::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(rsa_padding(self.alg), &self.rng, input, &mut sig)
                    .map_err(|e| format!("RSA signing failed: {e}"))?;
                Ok(sig)
            }
            SigningKey::Ecdsa(kp) => kp
                .sign(&self.rng, input)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| format!("ECDSA signing failed: {e}")),
        }
    }

    /// A fresh token for `uid` with `claims`, issued at `now`.
    pub fn mint(&self, uid: &str, claims: &[(String, Value)], now: i64) -> Result<String, String> {
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| "no randomness for a jti".to_string())?;
        let mut payload = Map::new();
        for (k, v) in claims {
            payload.insert(k.clone(), v.clone());
        }
        payload.insert(self.uid_claim.clone(), Value::String(uid.to_string()));
        payload.insert("iat".into(), now.into());
        payload.insert("exp".into(), now.saturating_add(self.ttl).into());
        payload.insert("jti".into(), b64url_encode(&jti).into());
        if let Some(iss) = &self.issuer {
            payload.insert("iss".into(), iss.clone().into());
        }
        if let Some(aud) = &self.audience {
            payload.insert("aud".into(), aud.clone().into());
        }
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.alg.name());
        let body = serde_json::to_vec(&Value::Object(payload)).map_err(|e| e.to_string())?;
        let input = format!(
            "{}.{}",
            b64url_encode(header.as_bytes()),
            b64url_encode(&body)
        );
        let sig = self.sign(input.as_bytes())?;
        Ok(format!("{input}.{}", b64url_encode(&sig)))
    }
}
