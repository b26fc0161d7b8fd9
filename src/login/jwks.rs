//! An IdP's key set (RFC 7517 JWKS) as verification keys, and the lookup a token's `kid`
//! and `alg` make in it. Parsing only: fetching and caching live in `idp`.
//!
//! A key that cannot be used safely is skipped with a note, never half-used: a weak RSA
//! modulus, a private key published by mistake, an unknown curve, a key whose `use` is not
//! `sig`, an `alg` outside the allow-list.

use std::sync::Arc;

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters};
use serde_json::Value;

use super::encoding::b64url_decode_canonical;
use crate::config::IdpAlg;

/// The smallest RSA modulus accepted (RFC 7518 §3.3; NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;
/// More keys than any IdP publishes; a larger set is refused whole.
pub const MAX_KEYS: usize = 64;

/// One usable key: its `kid`, its type, and a ready verifier for each algorithm it serves.
pub struct Jwk {
    pub kid: Option<String>,
    pub kty: &'static str,
    by_alg: Vec<(IdpAlg, Arc<ParsedPublicKey>)>,
}

impl Jwk {
    /// The algorithms this key verifies.
    pub fn algorithms(&self) -> impl Iterator<Item = IdpAlg> + '_ {
        self.by_alg.iter().map(|(a, _)| *a)
    }
}

/// A parsed key set; `notes` say which keys were skipped and why (for the log).
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
}

/// What a lookup found.
pub enum Lookup<'k> {
    Key(&'k ParsedPublicKey),
    /// No key has this kid (a refetch may bring it).
    UnknownKid,
    /// The kid names a key of another type or algorithm.
    WrongKeyType,
    /// No kid, and more than one key could serve the algorithm.
    KidRequired,
}

impl KeySet {
    /// Parse a JWKS document. Errors refuse the whole document (not JSON, no `keys`, too
    /// many keys); a bad key is skipped and named in the returned notes.
    pub fn parse(doc: &[u8], allowed: &[IdpAlg]) -> Result<(KeySet, Vec<String>), String> {
        let v: Value =
            serde_json::from_slice(doc).map_err(|e| format!("not a JSON document: {e}"))?;
        let Some(keys) = v.get("keys").and_then(Value::as_array) else {
            return Err("no \"keys\" array".into());
        };
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys (at most {MAX_KEYS})", keys.len()));
        }
        let mut set = KeySet::default();
        let mut notes = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match parse_key(k, allowed) {
                Ok(jwk) => set.keys.push(jwk),
                Err(why) => {
                    let kid = k.get("kid").and_then(Value::as_str).unwrap_or("-");
                    notes.push(format!(
                        "key {i} (kid {}) skipped: {why}",
                        super::verify::sanitize(kid, 64)
                    ))
                }
            }
        }
        Ok((set, notes))
    }

    /// The key for a token's `kid` and `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: IdpAlg) -> Lookup<'_> {
        fn serves(k: &Jwk, alg: IdpAlg) -> Option<&ParsedPublicKey> {
            k.by_alg.iter().find(|(a, _)| *a == alg).map(|(_, p)| &**p)
        }
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                None => Lookup::UnknownKid,
                Some(k) => serves(k, alg).map_or(Lookup::WrongKeyType, Lookup::Key),
            },
            None => {
                let mut candidates = self.keys.iter().filter_map(|k| serves(k, alg));
                match (candidates.next(), candidates.next()) {
                    (Some(p), None) => Lookup::Key(p),
                    (None, _) => Lookup::UnknownKid,
                    (Some(_), Some(_)) => Lookup::KidRequired,
                }
            }
        }
    }
}

fn member<'v>(k: &'v Value, name: &str) -> Result<&'v str, String> {
    k.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {name}"))
}

fn b64(k: &Value, name: &str) -> Result<Vec<u8>, String> {
    b64url_decode_canonical(member(k, name)?.as_bytes())
        .ok_or_else(|| format!("{name} is not canonical base64url"))
}

fn parse_key(k: &Value, allowed: &[IdpAlg]) -> Result<Jwk, String> {
    if !k.is_object() {
        return Err("not an object".into());
    }
    if let Some(u) = k.get("use") {
        if u.as_str() != Some("sig") {
            return Err("use is not \"sig\"".into());
        }
    }
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|m| k.get(*m).is_some())
    {
        return Err(
            "it holds private or symmetric key material, which a JWKS must never publish".into(),
        );
    }
    let kid = match k.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    let kty = member(k, "kty")?;
    let declared = match k.get("alg") {
        None => None,
        Some(Value::String(a)) => {
            Some(IdpAlg::from_name(a).ok_or_else(|| format!("alg {a:?} is not accepted"))?)
        }
        Some(_) => return Err("alg is not a string".into()),
    };
    // the algorithms this key may verify: its declared one, or every one of its type
    let algs: Vec<IdpAlg> = allowed
        .iter()
        .copied()
        .filter(|a| a.kty() == kty && declared.is_none_or(|d| d == *a))
        .collect();
    if declared.is_some_and(|d| !allowed.contains(&d)) {
        return Err("its alg is not in idp.algorithms".into());
    }
    let (kty, by_alg) = match kty {
        "RSA" => ("RSA", rsa_keys(k, &algs)?),
        "EC" => ("EC", ec_keys(k, &algs)?),
        "OKP" => ("OKP", okp_keys(k, &algs)?),
        other => return Err(format!("kty {other:?} is not supported")),
    };
    if by_alg.is_empty() {
        return Err("no algorithm in idp.algorithms fits it".into());
    }
    Ok(Jwk { kid, kty, by_alg })
}

fn rsa_params(a: IdpAlg) -> &'static RsaParameters {
    match a {
        IdpAlg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        IdpAlg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        IdpAlg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        IdpAlg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        IdpAlg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

type ByAlg = Vec<(IdpAlg, Arc<ParsedPublicKey>)>;

fn rsa_keys(k: &Value, algs: &[IdpAlg]) -> Result<ByAlg, String> {
    let n = b64(k, "n")?;
    let e = b64(k, "e")?;
    let n_trimmed = n.iter().skip_while(|b| **b == 0).count();
    let bits = n_trimmed * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus of about {bits} bits (at least {MIN_RSA_BITS})"
        ));
    }
    let comps = PublicKeyComponents { n, e };
    algs.iter()
        .map(|a| {
            comps
                .to_parsed_public_key(rsa_params(*a))
                .map(|p| (*a, Arc::new(p)))
                .map_err(|e| format!("RSA key rejected: {e}"))
        })
        .collect()
}

fn ec_keys(k: &Value, algs: &[IdpAlg]) -> Result<ByAlg, String> {
    let crv = member(k, "crv")?;
    let (alg, verify, len): (IdpAlg, &'static dyn signature::VerificationAlgorithm, usize) =
        match crv {
            "P-256" => (IdpAlg::ES256, &signature::ECDSA_P256_SHA256_FIXED, 32),
            "P-384" => (IdpAlg::ES384, &signature::ECDSA_P384_SHA384_FIXED, 48),
            "P-521" => (IdpAlg::ES512, &signature::ECDSA_P521_SHA512_FIXED, 66),
            other => return Err(format!("curve {other:?} is not supported")),
        };
    if !algs.contains(&alg) {
        return Ok(Vec::new());
    }
    let (x, y) = (b64(k, "x")?, b64(k, "y")?);
    if x.len() != len || y.len() != len {
        return Err(format!("{crv} coordinates must be {len} bytes each"));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let p =
        ParsedPublicKey::new(verify, &point).map_err(|e| format!("not a point on {crv}: {e}"))?;
    Ok(vec![(alg, Arc::new(p))])
}

fn okp_keys(k: &Value, algs: &[IdpAlg]) -> Result<ByAlg, String> {
    let crv = member(k, "crv")?;
    if crv != "Ed25519" {
        return Err(format!("OKP curve {crv:?} is not supported (Ed25519 only)"));
    }
    if !algs.contains(&IdpAlg::EdDSA) {
        return Ok(Vec::new());
    }
    let x = b64(k, "x")?;
    if x.len() != 32 {
        return Err("an Ed25519 key is 32 bytes".into());
    }
    let p = ParsedPublicKey::new(&signature::ED25519, &x)
        .map_err(|e| format!("Ed25519 key rejected: {e}"))?;
    Ok(vec![(IdpAlg::EdDSA, Arc::new(p))])
}

/// The fixed length of an ECDSA signature (R‖S) for `alg`, if it is one.
pub fn ecdsa_sig_len(alg: IdpAlg) -> Option<usize> {
    match alg {
        IdpAlg::ES256 => Some(64),
        IdpAlg::ES384 => Some(96),
        IdpAlg::ES512 => Some(132),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::encoding::b64url_encode;

    fn rsa_jwk(bits_bytes: usize) -> String {
        let n = b64url_encode(&vec![0xC5; bits_bytes]);
        format!(r#"{{"kty":"RSA","kid":"r","n":"{n}","e":"AQAB"}}"#)
    }

    #[test]
    fn weak_private_and_foreign_keys_are_skipped_with_a_reason() {
        let doc = format!(
            r#"{{"keys":[{},{},{{"kty":"RSA","kid":"p","n":"AQAB","e":"AQAB","d":"AQAB"}},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}},{{"kty":"EC","kid":"c","crv":"secp256k1","x":"AA","y":"AA"}}]}}"#,
            rsa_jwk(128),
            rsa_jwk(256)
        );
        let (set, notes) = KeySet::parse(doc.as_bytes(), &IdpAlg::ALL).unwrap();
        assert_eq!(set.keys.len(), 1, "{notes:?}");
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes[0].contains("1024 bits"), "{notes:?}");
        assert!(notes[1].contains("private"), "{notes:?}");
        assert!(notes[2].contains("private or symmetric"), "{notes:?}");
        assert!(notes[3].contains("secp256k1"), "{notes:?}");
        // the RSA key serves every RSA algorithm, nothing else
        assert!(matches!(
            set.lookup(Some("r"), IdpAlg::PS256),
            Lookup::Key(_)
        ));
        assert!(matches!(
            set.lookup(Some("r"), IdpAlg::ES256),
            Lookup::WrongKeyType
        ));
        assert!(matches!(
            set.lookup(Some("x"), IdpAlg::RS256),
            Lookup::UnknownKid
        ));
        assert!(matches!(set.lookup(None, IdpAlg::RS256), Lookup::Key(_)));
    }

    #[test]
    fn whole_documents_that_are_not_key_sets_are_refused() {
        assert!(KeySet::parse(b"<html>", &IdpAlg::ALL).is_err());
        assert!(KeySet::parse(b"{\"keys\":{}}", &IdpAlg::ALL).is_err());
        let many = format!("{{\"keys\":[{}]}}", vec!["{}"; MAX_KEYS + 1].join(","));
        assert!(KeySet::parse(many.as_bytes(), &IdpAlg::ALL).is_err());
    }
}
