//! Key material for the nine algorithms GitLab's JWT provider accepts.
//!
//! Signatures are verified with aws-lc-rs directly (the library under both rustls and
//! jsonwebtoken's `aws_lc_rs` backend): the gate has already checked the encoding, the
//! header and the pinned algorithm itself, so a JWT crate would only add a second, more
//! lenient parser, and neither JWT crate verifies ES512.

use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, ParsedPublicKey, RsaKeyPair};
use aws_lc_rs::{hmac, rsa};

use super::encoding::pem_first_block;

pub use crate::config::{Algorithm, Family};

pub(super) fn hmac_alg(alg: Algorithm) -> hmac::Algorithm {
    match alg {
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    }
}

fn verification(alg: Algorithm) -> &'static dyn signature::VerificationAlgorithm {
    match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
        // HMAC never reaches here; P-521 is the remaining case
        _ => &signature::ECDSA_P521_SHA512_FIXED,
    }
}

pub(super) fn ecdsa_signing(alg: Algorithm) -> &'static signature::EcdsaSigningAlgorithm {
    match alg {
        Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        Algorithm::ES512 => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        _ => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    }
}

/// A key ready to verify signatures of one algorithm.
#[derive(Clone)]
pub enum VerifyKey {
    Hmac(std::sync::Arc<hmac::Key>),
    Public(std::sync::Arc<ParsedPublicKey>),
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print key material
        match self {
            VerifyKey::Hmac(_) => f.write_str("VerifyKey::Hmac(..)"),
            VerifyKey::Public(_) => f.write_str("VerifyKey::Public(..)"),
        }
    }
}

impl VerifyKey {
    /// Build a key from `secret` (HS*: the bytes; RS*/ES*: a PEM). Returns notes for
    /// `check` (e.g. "a private key is more than the gate needs").
    pub fn load(
        alg: Algorithm,
        material: &[u8],
        allow_weak_secret: bool,
    ) -> Result<(VerifyKey, Vec<String>), String> {
        let mut notes = Vec::new();
        match alg.family() {
            Family::Hmac => {
                let min = alg.min_hmac_secret_len();
                if material.len() < min && !allow_weak_secret {
                    return Err(format!(
                        "{} needs a secret of at least {min} bytes (this one has {}); \
                         set gate.allow_weak_secret = true to accept it anyway",
                        alg.name(),
                        material.len()
                    ));
                }
                if material.is_empty() {
                    return Err("the secret is empty".into());
                }
                Ok((
                    VerifyKey::Hmac(std::sync::Arc::new(hmac::Key::new(hmac_alg(alg), material))),
                    notes,
                ))
            }
            Family::Rsa => {
                let block = pem_first_block(material)?;
                let (public_der, bits, private) = match block.label.as_str() {
                    "PUBLIC KEY" => {
                        let k = rsa::PublicEncryptingKey::from_der(&block.der)
                            .map_err(|_| "PUBLIC KEY is not an RSA public key".to_string())?;
                        (block.der.clone(), k.key_size_bits(), false)
                    }
                    "RSA PUBLIC KEY" => {
                        let bits = signature::RsaParameters::public_modulus_len(&block.der)
                            .map_err(|_| "RSA PUBLIC KEY does not parse".to_string())?;
                        (block.der.clone(), bits as usize, false)
                    }
                    "RSA PRIVATE KEY" | "PRIVATE KEY" => {
                        let kp = if block.label == "PRIVATE KEY" {
                            RsaKeyPair::from_pkcs8(&block.der)
                        } else {
                            RsaKeyPair::from_der(&block.der)
                        }
                        .map_err(|e| format!("{} is not a usable RSA key: {e}", block.label))?;
                        (
                            kp.public_key().as_ref().to_vec(),
                            kp.public_modulus_len() * 8,
                            true,
                        )
                    }
                    other => return Err(format!("{other} PEM is not an RSA key")),
                };
                if bits < 2048 {
                    return Err(format!(
                        "RSA key has {bits} bits; the gate requires at least 2048"
                    ));
                }
                if private {
                    notes.push(private_note());
                }
                let k = ParsedPublicKey::new(verification(alg), &public_der)
                    .map_err(|e| format!("RSA public key rejected: {e}"))?;
                Ok((VerifyKey::Public(std::sync::Arc::new(k)), notes))
            }
            Family::Ecdsa => {
                let block = pem_first_block(material)?;
                let curve = match alg {
                    Algorithm::ES256 => "P-256",
                    Algorithm::ES384 => "P-384",
                    _ => "P-521",
                };
                let public = match block.label.as_str() {
                    "PUBLIC KEY" => block.der.clone(),
                    "EC PRIVATE KEY" | "PRIVATE KEY" => {
                        let kp = if block.label == "PRIVATE KEY" {
                            EcdsaKeyPair::from_pkcs8(ecdsa_signing(alg), &block.der)
                        } else {
                            EcdsaKeyPair::from_private_key_der(ecdsa_signing(alg), &block.der)
                        }
                        .map_err(|e| {
                            format!(
                                "{} is not a {curve} key ({} needs {curve}): {e}",
                                block.label,
                                alg.name()
                            )
                        })?;
                        notes.push(private_note());
                        kp.public_key().as_ref().to_vec()
                    }
                    other => return Err(format!("{other} PEM is not an EC key")),
                };
                let k = ParsedPublicKey::new(verification(alg), &public).map_err(|e| {
                    format!(
                        "not a {curve} public key ({} needs {curve}): {e}",
                        alg.name()
                    )
                })?;
                Ok((VerifyKey::Public(std::sync::Arc::new(k)), notes))
            }
        }
    }

    /// Verify `sig` over `signing_input`. HMAC tags are compared in constant time.
    pub fn verify(&self, signing_input: &[u8], sig: &[u8]) -> bool {
        match self {
            VerifyKey::Hmac(k) => hmac::verify(k, signing_input, sig).is_ok(),
            VerifyKey::Public(k) => k.verify_sig(signing_input, sig).is_ok(),
        }
    }
}

fn private_note() -> String {
    "provider.secret holds a private key; the gate derives and keeps only the public key — \
     give it the public key alone if you can"
        .to_string()
}
