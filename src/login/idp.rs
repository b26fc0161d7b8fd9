//! An external identity provider's token: verified with a key from the IdP's key set
//! (chosen by `kid`, under an allow-list of algorithms), then read for the claims the
//! minted token will carry. The IdP's token never reaches GitLab.

use std::sync::Arc;

use serde_json::Value;

use super::json::{parse_members_lenient, Claim, Members};
use super::jwks::{ecdsa_sig_len, KeySet, Lookup};
use super::reason::Reason;
use super::verify::{
    aud_names_one_of, check_size, parse_claims, short_hash, short_text, use_digest, whole_seconds,
    AuditInfo, Segments,
};
use crate::config::{IdpAlg, IdpConfig};

/// Where the IdP's keys come from (implemented by `idp`, which fetches and caches them).
pub trait KeySource: Send + Sync {
    /// The key set in use, or why there is none to trust (never loaded, or older than
    /// `jwks_max_age` because the IdP could not be reached).
    fn current(&self) -> Result<Arc<KeySet>, String>;
    /// A token named a kid the set lacks: fetch the set again now, unless that was done
    /// within `unknown_kid_interval`. Returns whether a new set was loaded.
    fn refetch_for_unknown_kid(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// An IdP token that passed: what the minted token will say, and the IdP token's replay key.
#[derive(Debug)]
pub struct IdpVerified {
    pub uid: String,
    /// `(GitLab claim, value)` for the minted token, besides the uid.
    pub claims: Vec<(String, Value)>,
    pub replay_key: [u8; 32],
    /// First whole second at which the token can no longer pass (exp + leeway).
    pub expires_at: i64,
    pub iat: i64,
}

/// Header members that point at a key from outside the configured set (RFC 7515 §4.1).
const KEY_POINTERS: [&str; 4] = ["jku", "jwk", "x5u", "x5c"];

pub struct IdpVerifier {
    cfg: IdpConfig,
}

impl IdpVerifier {
    pub fn new(cfg: &IdpConfig) -> IdpVerifier {
        IdpVerifier { cfg: cfg.clone() }
    }

    /// Every check, with a refetch of the key set when the kid is unknown.
    pub async fn verify(
        &self,
        token: &str,
        keys: &dyn KeySource,
        now: i64,
        audit: &mut AuditInfo,
    ) -> Result<IdpVerified, Reason> {
        let set = keys.current().map_err(|_| Reason::IdpKeysUnavailable)?;
        match self.verify_with(token, &set, now, audit) {
            Err(Reason::UnknownKid) if keys.refetch_for_unknown_kid().await => {
                let set = keys.current().map_err(|_| Reason::IdpKeysUnavailable)?;
                self.verify_with(token, &set, now, audit)
            }
            other => other,
        }
    }

    /// Every check against one key set, in order: size, segments, header (alg, kid, no
    /// key pointers), signature, claims (no duplicates), exp/nbf/iat with leeway, iss, aud,
    /// uid and the mapped claims.
    pub fn verify_with(
        &self,
        token: &str,
        set: &KeySet,
        now: i64,
        audit: &mut AuditInfo,
    ) -> Result<IdpVerified, Reason> {
        let tok = token.as_bytes();
        check_size(tok)?;
        let seg = Segments::decode(tok)?;
        let (alg, kid, header_dup) = self.check_header(seg.header(), audit)?;
        let key = match set.lookup(kid.as_deref(), alg) {
            Lookup::Key(k) => k,
            Lookup::UnknownKid => return Err(Reason::UnknownKid),
            Lookup::WrongKeyType => return Err(Reason::KidWrongKeyType),
            Lookup::KidRequired => return Err(Reason::KidRequired),
        };
        let sig = seg.signature();
        if ecdsa_sig_len(alg).is_some_and(|n| n != sig.len())
            || key.verify_sig(seg.signing_input(tok), sig).is_err()
        {
            return Err(Reason::BadSignature);
        }
        let claims = parse_claims(seg.payload(), header_dup)?;
        audit.iss = claims.get("iss").map(short_text);
        let (exp, iat) = self.check_times(&claims, now)?;
        self.check_issuer_audience(&claims)?;
        let uid = match claims.get(&self.cfg.uid_claim) {
            None => return Err(Reason::UidMissing),
            Some(Claim::Str(s)) if !s.is_empty() => s.to_string(),
            Some(_) => return Err(Reason::UidInvalid),
        };
        audit.uid_hash = Some(short_hash(uid.as_bytes()));
        let mapped = self.mapped_claims(&claims)?;
        Ok(IdpVerified {
            uid,
            claims: mapped,
            replay_key: self.replay_key(&claims, seg.signing_input(tok), audit),
            expires_at: exp.saturating_add(self.cfg.leeway).saturating_add(1),
            iat: iat.unwrap_or(now),
        })
    }

    fn check_header(
        &self,
        header: &[u8],
        audit: &mut AuditInfo,
    ) -> Result<(IdpAlg, Option<String>, bool), Reason> {
        let (hdr, dup) = parse_members_lenient(header).map_err(|_| Reason::HeaderInvalid)?;
        audit.kid = hdr.get("kid").map(short_text);
        let name = match hdr.get("alg") {
            Some(Claim::Str(a)) => a.to_string(),
            _ => return Err(Reason::AlgMissing),
        };
        audit.alg = Some(super::verify::sanitize(&name, 16));
        if name.eq_ignore_ascii_case("none") {
            return Err(Reason::AlgNone);
        }
        let alg = IdpAlg::from_name(&name)
            .filter(|a| self.cfg.algorithms.contains(a))
            .ok_or(Reason::IdpAlgNotAllowed)?;
        if KEY_POINTERS.iter().any(|k| hdr.contains_key(k)) {
            return Err(Reason::KeyInHeader);
        }
        if hdr.contains_key("crit") {
            return Err(Reason::CritUnsupported);
        }
        let kid = match hdr.get("kid") {
            None => None,
            Some(Claim::Str(k)) => Some(k.to_string()),
            Some(_) => return Err(Reason::HeaderInvalid),
        };
        Ok((alg, kid, dup))
    }

    /// exp is required of an IdP's token; nbf and iat are checked when present; each with
    /// `leeway` for clocks that differ.
    fn check_times(&self, claims: &Members, now: i64) -> Result<(i64, Option<i64>), Reason> {
        let leeway = self.cfg.leeway;
        let exp = match claims.get("exp") {
            None => return Err(Reason::ExpMissing),
            Some(v) => whole_seconds(v).ok_or(Reason::ExpInvalid)?,
        };
        if exp.saturating_add(leeway) <= now {
            return Err(Reason::Expired);
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = whole_seconds(v).ok_or(Reason::NbfInvalid)?;
            if nbf > now.saturating_add(leeway) {
                return Err(Reason::NotYetValid);
            }
        }
        let iat = match claims.get("iat") {
            None => None,
            Some(v) => Some(whole_seconds(v).ok_or(Reason::IatInvalid)?),
        };
        if iat.is_some_and(|i| i > now.saturating_add(leeway)) {
            return Err(Reason::IatInFuture);
        }
        Ok((exp, iat))
    }

    fn check_issuer_audience(&self, claims: &Members) -> Result<(), Reason> {
        match claims.get("iss") {
            Some(Claim::Str(iss)) if iss.as_ref() == self.cfg.issuer => {}
            _ => return Err(Reason::IssuerMismatch),
        }
        if aud_names_one_of(claims, &self.cfg.audience) {
            Ok(())
        } else {
            Err(Reason::AudienceMismatch)
        }
    }

    /// `idp.claims`: each GitLab claim from its IdP claim. A missing one is left out (the
    /// minted token's own required-claims check then names it); a nested one is refused.
    fn mapped_claims(&self, claims: &Members) -> Result<Vec<(String, Value)>, Reason> {
        let mut out = Vec::with_capacity(self.cfg.claims.len());
        for (gitlab, idp) in &self.cfg.claims {
            let v = match claims.get(idp) {
                None | Some(Claim::Null) => continue,
                Some(Claim::Str(s)) => Value::String(s.to_string()),
                Some(Claim::Bool(b)) => Value::Bool(*b),
                Some(n @ Claim::Num(_)) => {
                    serde_json::from_str(&n.to_json()).map_err(|_| Reason::ClaimInvalid)?
                }
                Some(Claim::Nested(_)) => return Err(Reason::ClaimInvalid),
            };
            out.push((gitlab.clone(), v));
        }
        Ok(out)
    }

    /// The IdP token's own replay key: issuer + jti, else the signing input; tagged so it
    /// can never equal a minted token's key.
    fn replay_key(
        &self,
        claims: &Members,
        signing_input: &[u8],
        audit: &mut AuditInfo,
    ) -> [u8; 32] {
        match claims.get("jti") {
            Some(Claim::Str(jti)) if !jti.is_empty() => {
                audit.jti_hash = Some(short_hash(jti.as_bytes()));
                use_digest(b"idp-jti\0", &[self.cfg.issuer.as_bytes(), jti.as_bytes()])
            }
            _ => use_digest(b"idp-sig\0", &[signing_input]),
        }
    }
}
