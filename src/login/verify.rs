//! The checks a callback token must pass, in order: each a small function returning a
//! [`Reason`] on failure, chained with `?`. Each passed check is reported to a [`Trace`] as
//! its [`Step`] (`explain` prints them). GitLab's behaviour that each check mirrors or
//! tightens is in shared/reference/gitlab-jwt-reference.md.

use super::encoding::b64url_decode_canonical_into;
use super::json::{parse_members, parse_members_lenient, Claim, JsonError, Members};
use super::keys::{Algorithm, VerifyKey};
use super::reason::Reason;
use crate::config::Config;
use aws_lc_rs::digest;
use http::header::HeaderName;
use http::HeaderValue;

/// GitLab: `token.bytesize >= 10_000` fails ("JWT must be less than 10KB").
pub const MAX_TOKEN_BYTES: usize = 10_000;

/// The checks in order, as `explain` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Size,
    Segments,
    Header,
    Signature,
    Payload,
    ExpNbf,
    IssuerAudience,
    RequiredClaims,
    IatWindow,
    Jti,
    Uid,
    IdentityValues,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::Size,
        Step::Segments,
        Step::Header,
        Step::Signature,
        Step::Payload,
        Step::ExpNbf,
        Step::IssuerAudience,
        Step::RequiredClaims,
        Step::IatWindow,
        Step::Jti,
        Step::Uid,
        Step::IdentityValues,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Size => "size",
            Step::Segments => "segments and encoding",
            Step::Header => "header and alg",
            Step::Signature => "signature",
            Step::Payload => "payload and duplicate keys",
            Step::ExpNbf => "exp / nbf",
            Step::IssuerAudience => "iss / aud",
            Step::RequiredClaims => "required claims",
            Step::IatWindow => "iat window",
            Step::Jti => "jti",
            Step::Uid => "uid claim",
            Step::IdentityValues => "identity values",
        }
    }
}

/// Receives each passed step; `()` ignores them (the request path), `explain` prints them.
pub trait Trace {
    fn pass(&mut self, step: Step);
}

impl Trace for () {
    #[inline(always)]
    fn pass(&mut self, _: Step) {}
}

/// What the audit line may say about a token: never the token, never raw claim values
/// beyond short, escaped `kid`/`iss`.
#[derive(Debug, Default, Clone)]
pub struct AuditInfo {
    pub alg: Option<String>,
    pub kid: Option<String>,
    pub iss: Option<String>,
    pub uid_hash: Option<String>,
    pub jti_hash: Option<String>,
    /// A refused replay's first use: when and from where.
    pub first_use: Option<crate::replay::FirstUse>,
}

/// A token that passed every check (the replay store has not been asked yet).
#[derive(Debug)]
pub struct Verified {
    pub uid: String,
    /// Identity headers to add, uid header first.
    pub identity: Vec<(HeaderName, HeaderValue)>,
    /// Replay key: SHA-256 of issuer + jti, else of the signing input. Never the token.
    pub replay_key: [u8; 32],
    /// Unix time until which the token could still pass the time checks.
    pub expires_at: i64,
    /// The token's iat: a token dated ahead of the clock is forwarded only once it is not.
    pub iat: i64,
}

/// Everything the checks need, built once from the config.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub alg: Algorithm,
    key: VerifyKey,
    uid_claim: String,
    required_claims: Vec<String>,
    user_header: HeaderName,
    info_headers: Vec<(HeaderName, String)>,
    valid_within: i64,
    max_future_skew: i64,
    require_jti: bool,
    issuer: Option<String>,
    audience: Vec<String>,
    /// `reject_issued_before_start`: tokens with an earlier iat are refused.
    pub not_issued_before: Option<i64>,
}

impl Verifier {
    /// The checks of `cfg` with `key`; tokens whose iat lies before `not_issued_before`
    /// (unix seconds) are refused when set (`reject_issued_before_start`).
    pub fn new(cfg: &Config, key: VerifyKey, not_issued_before: Option<i64>) -> Verifier {
        Verifier {
            alg: cfg.provider.algorithm,
            key,
            uid_claim: cfg.provider.uid_claim.clone(),
            required_claims: cfg.provider.required_claims.clone(),
            user_header: cfg.gate.user_header.clone(),
            info_headers: cfg.gate.info_headers.clone(),
            valid_within: cfg.provider.valid_within as i64,
            max_future_skew: cfg.future_skew() as i64,
            require_jti: cfg.gate.require_jti,
            issuer: cfg.provider.issuer.clone(),
            audience: cfg.provider.audience.clone(),
            not_issued_before,
        }
    }

    /// Replace the key (hot reload keeps everything else).
    pub fn with_key(&self, key: VerifyKey) -> Verifier {
        Verifier {
            key,
            ..self.clone()
        }
    }

    /// Run every check in order at time `now` (unix seconds).
    pub fn verify<T: Trace>(
        &self,
        token: &str,
        now: i64,
        audit: &mut AuditInfo,
        trace: &mut T,
    ) -> Result<Verified, Reason> {
        let tok = token.as_bytes();
        check_size(tok)?;
        trace.pass(Step::Size);
        let seg = Segments::decode(tok)?;
        trace.pass(Step::Segments);
        let header_dup = self.check_header(seg.header(), audit)?;
        trace.pass(Step::Header);
        self.check_signature(seg.signing_input(tok), seg.signature())?;
        trace.pass(Step::Signature);
        let claims = parse_claims(seg.payload(), header_dup)?;
        audit.iss = claims.get("iss").map(short_text);
        trace.pass(Step::Payload);
        check_exp_nbf(&claims, now)?;
        trace.pass(Step::ExpNbf);
        self.check_issuer_audience(&claims)?;
        trace.pass(Step::IssuerAudience);
        self.check_required(&claims)?;
        trace.pass(Step::RequiredClaims);
        let iat = self.check_iat(&claims, now)?;
        trace.pass(Step::IatWindow);
        let jti = self.check_jti(&claims)?;
        trace.pass(Step::Jti);
        let uid = self.check_uid(&claims)?;
        audit.uid_hash = Some(short_hash(uid.as_bytes()));
        trace.pass(Step::Uid);
        let identity = self.identity_headers(&claims, &uid)?;
        trace.pass(Step::IdentityValues);

        let replay_key = replay_key(&claims, jti, seg.signing_input(tok), audit);
        Ok(Verified {
            uid,
            identity,
            replay_key,
            expires_at: self.first_second_refused(iat),
            iat,
        })
    }

    /// The first whole second at which this token can no longer pass: the store must hold
    /// its key until then. The iat check accepts up to and including `iat + valid_within`
    /// (a whole second that lasts until `iat + valid_within + 1` on the wall clock), and
    /// no exp can extend that; an earlier exp only shortens it.
    fn first_second_refused(&self, iat: i64) -> i64 {
        iat.saturating_add(self.valid_within).saturating_add(1)
    }

    /// The header: a JSON object whose alg is exactly the configured one. A repeated key
    /// is read the way Ruby reads it, the last one winning, and refused after the signature
    /// (so that a forgery learns nothing): the returned flag says whether one was seen.
    fn check_header(&self, header: &[u8], audit: &mut AuditInfo) -> Result<bool, Reason> {
        let (hdr, header_dup) = parse_members_lenient(header).map_err(|_| Reason::HeaderInvalid)?;
        audit.kid = hdr.get("kid").map(short_text);
        let alg = match hdr.get("alg") {
            Some(Claim::Str(a)) => a.as_ref(),
            _ => return Err(Reason::AlgMissing),
        };
        audit.alg = Some(sanitize(alg, 16));
        if alg.eq_ignore_ascii_case("none") {
            return Err(Reason::AlgNone);
        }
        if alg != self.alg.name() {
            return Err(Reason::AlgMismatch);
        }
        // RFC 7515 §4.1.11: the gate understands no extension, so any crit is refused.
        // jku/jwk/x5u/x5c are never acted on: the key is the configured one, nothing is fetched.
        if hdr.contains_key("crit") {
            return Err(Reason::CritUnsupported);
        }
        Ok(header_dup)
    }

    /// The signature over the exact signing input.
    fn check_signature(&self, signing_input: &[u8], sig: &[u8]) -> Result<(), Reason> {
        if self.alg.ecdsa_sig_len().is_some_and(|len| sig.len() != len) {
            return Err(Reason::BadSignature);
        }
        if !self.key.verify(signing_input, sig) {
            return Err(Reason::BadSignature);
        }
        Ok(())
    }

    /// Gate-only checks (GitLab has neither): `iss` equal to the configured issuer, and
    /// `aud` (RFC 7519 §4.1.3: a string or an array of strings) naming a configured
    /// audience. Without them, a token the same IdP signed for another application would
    /// sign in to GitLab.
    fn check_issuer_audience(&self, claims: &Members) -> Result<(), Reason> {
        if let Some(want) = &self.issuer {
            match claims.get("iss") {
                Some(Claim::Str(iss)) if iss.as_ref() == want.as_str() => {}
                _ => return Err(Reason::IssuerMismatch),
            }
        }
        if !self.audience.is_empty() && !aud_names_one_of(claims, &self.audience) {
            return Err(Reason::AudienceMismatch);
        }
        Ok(())
    }

    /// Required claims: presence (GitLab: a null value passes).
    fn check_required(&self, claims: &Members) -> Result<(), Reason> {
        if self.required_claims.iter().any(|c| !claims.contains_key(c)) {
            return Err(Reason::MissingClaim);
        }
        Ok(())
    }

    /// iat: required, an integer, inside the window, not from the future, not from before
    /// this gate started (a restart must not reopen the replay window).
    fn check_iat(&self, claims: &Members, now: i64) -> Result<i64, Reason> {
        let iat = match claims.get("iat") {
            None => return Err(Reason::IatMissing),
            Some(Claim::Num(n)) => n.as_i64().ok_or(Reason::IatInvalid)?,
            Some(_) => return Err(Reason::IatInvalid),
        };
        if iat > now.saturating_add(self.max_future_skew) {
            return Err(Reason::IatInFuture);
        }
        if now.saturating_sub(iat) > self.valid_within {
            return Err(Reason::IatTooOld);
        }
        if self.not_issued_before.is_some_and(|start| iat < start) {
            return Err(Reason::IssuedBeforeStart);
        }
        Ok(iat)
    }

    fn check_jti<'c>(&self, claims: &'c Members) -> Result<Option<&'c str>, Reason> {
        match claims.get("jti") {
            None if self.require_jti => Err(Reason::JtiMissing),
            None => Ok(None),
            Some(Claim::Str(s)) if !s.is_empty() => Ok(Some(s.as_ref())),
            Some(_) => Err(Reason::JtiInvalid),
        }
    }

    fn check_uid(&self, claims: &Members) -> Result<String, Reason> {
        match claims.get(&self.uid_claim) {
            None => Err(Reason::UidMissing),
            Some(Claim::Str(s)) if !s.is_empty() => Ok(s.to_string()),
            Some(_) => Err(Reason::UidInvalid),
        }
    }

    /// Identity values become headers: no control characters (header injection).
    fn identity_headers(
        &self,
        claims: &Members,
        uid: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Reason> {
        let mut identity = Vec::with_capacity(1 + self.info_headers.len());
        identity.push((self.user_header.clone(), header_value(uid)?));
        for (name, claim) in &self.info_headers {
            let text = match claims.get(claim) {
                None | Some(Claim::Null) => continue,
                Some(Claim::Str(s)) => s.to_string(),
                Some(v @ (Claim::Num(_) | Claim::Bool(_))) => v.to_json(),
                Some(Claim::Nested(_)) => return Err(Reason::ClaimInvalid),
            };
            identity.push((name.clone(), header_value(&text)?));
        }
        Ok(identity)
    }
}

/// RFC 7519 §4.1.3: `aud` is a string or an array of strings; it must name one of `wanted`.
pub(super) fn aud_names_one_of(claims: &Members, wanted: &[String]) -> bool {
    let wanted = |a: &str| wanted.iter().any(|w| w == a);
    match claims.get("aud") {
        Some(Claim::Str(a)) => wanted(a),
        Some(Claim::Nested(serde_json::Value::Array(items))) => {
            items.iter().any(|a| a.as_str().is_some_and(wanted))
        }
        _ => false,
    }
}

pub(super) fn check_size(tok: &[u8]) -> Result<(), Reason> {
    if tok.is_empty() {
        return Err(Reason::TokenMissing);
    }
    if tok.len() >= MAX_TOKEN_BYTES {
        return Err(Reason::TokenTooLarge);
    }
    Ok(())
}

/// The three segments of a compact JWS, decoded from canonical base64url into one buffer.
pub(super) struct Segments {
    decoded: Vec<u8>,
    header_end: usize,
    payload_end: usize,
    /// Byte offset of the second dot in the token: the signing input ends there.
    second_dot: usize,
}

impl Segments {
    pub(super) fn decode(tok: &[u8]) -> Result<Segments, Reason> {
        if tok[0] == b'{' {
            return Err(Reason::JsonSerialization);
        }
        let mut dots = [0usize; 5];
        let mut n_dots = 0;
        for (i, _) in tok.iter().enumerate().filter(|(_, &b)| b == b'.') {
            dots[n_dots] = i;
            n_dots += 1;
            if n_dots == dots.len() {
                break;
            }
        }
        match n_dots {
            2 => {}
            4 => return Err(Reason::Jwe),
            _ => return Err(Reason::Malformed),
        }
        let (h64, p64, s64) = (
            &tok[..dots[0]],
            &tok[dots[0] + 1..dots[1]],
            &tok[dots[1] + 1..],
        );
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(Reason::Malformed);
        }
        let mut decoded = Vec::with_capacity(tok.len());
        b64url_decode_canonical_into(h64, &mut decoded).ok_or(Reason::NonCanonical)?;
        let header_end = decoded.len();
        b64url_decode_canonical_into(p64, &mut decoded).ok_or(Reason::NonCanonical)?;
        let payload_end = decoded.len();
        b64url_decode_canonical_into(s64, &mut decoded).ok_or(Reason::NonCanonical)?;
        Ok(Segments {
            decoded,
            header_end,
            payload_end,
            second_dot: dots[1],
        })
    }

    pub(super) fn header(&self) -> &[u8] {
        &self.decoded[..self.header_end]
    }
    pub(super) fn payload(&self) -> &[u8] {
        &self.decoded[self.header_end..self.payload_end]
    }
    pub(super) fn signature(&self) -> &[u8] {
        &self.decoded[self.payload_end..]
    }
    pub(super) fn signing_input<'t>(&self, tok: &'t [u8]) -> &'t [u8] {
        &tok[..self.second_dot]
    }
}

/// The payload: a JSON object with no duplicate keys anywhere (nor in the header).
pub(super) fn parse_claims(payload: &[u8], header_dup: bool) -> Result<Members<'_>, Reason> {
    if header_dup {
        return Err(Reason::DuplicateKey);
    }
    match parse_members(payload) {
        Ok(m) if m.has_duplicates() => Err(Reason::DuplicateKey),
        Ok(m) => Ok(m),
        Err(JsonError::DuplicateKey) => Err(Reason::DuplicateKey),
        Err(_) => Err(Reason::PayloadInvalid),
    }
}

/// exp / nbf (ruby-jwt: `exp.to_i <= now` expires; `nbf.to_i > now` is not yet valid).
fn check_exp_nbf(claims: &Members, now: i64) -> Result<(), Reason> {
    let exp = match claims.get("exp") {
        None => None,
        Some(v) => Some(whole_seconds(v).ok_or(Reason::ExpInvalid)?),
    };
    if exp.is_some_and(|e| e <= now) {
        return Err(Reason::Expired);
    }
    if let Some(v) = claims.get("nbf") {
        let nbf = whole_seconds(v).ok_or(Reason::NbfInvalid)?;
        if nbf > now {
            return Err(Reason::NotYetValid);
        }
    }
    Ok(())
}

/// Issuer + jti when there is a jti (a re-signed token with the same jti is the same
/// login), else the signing input (ECDSA signatures are malleable, so never the signature).
fn replay_key(
    claims: &Members,
    jti: Option<&str>,
    signing_input: &[u8],
    audit: &mut AuditInfo,
) -> [u8; 32] {
    match jti {
        Some(jti) => {
            audit.jti_hash = Some(short_hash(jti.as_bytes()));
            let iss = match claims.get("iss") {
                Some(Claim::Str(s)) => s.clone(),
                Some(other) => other.to_json().into(),
                None => "".into(),
            };
            use_digest(b"jti\0", &[iss.as_bytes(), jti.as_bytes()])
        }
        None => use_digest(b"sig\0", &[signing_input]),
    }
}

/// SHA-256 over a tag, then the parts that identify one use, each but the last prefixed
/// by its length (an issuer ending where a jti begins cannot collide with another split).
/// Provider and IdP tokens use different tags, so their keys never meet.
pub(super) fn use_digest(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(tag);
    if let Some((last, first)) = parts.split_last() {
        for p in first {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        ctx.update(last);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// A JSON number as whole seconds, the way Ruby's `to_i` truncates (floor for positives).
pub(super) fn whole_seconds(v: &Claim) -> Option<i64> {
    match v {
        Claim::Num(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .map(|f| f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
        }),
        _ => None,
    }
}

pub(super) fn header_value(text: &str) -> Result<HeaderValue, Reason> {
    // C0 controls (CR, LF, NUL, TAB, ...) and DEL; non-ASCII text ("Zoë") is fine.
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Reason::ControlCharacters);
    }
    HeaderValue::from_bytes(text.as_bytes()).map_err(|_| Reason::ControlCharacters)
}

/// First 8 bytes of SHA-256, hex: enough to correlate audit lines, not to recover a value.
pub fn short_hash(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest::digest(&digest::SHA256, data);
    let mut out = String::with_capacity(16);
    for b in &d.as_ref()[..8] {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

pub(super) fn short_text(v: &Claim) -> String {
    match v {
        Claim::Str(s) => sanitize(s, 64),
        other => sanitize(&other.to_json(), 64),
    }
}

/// Escape control characters and truncate: header fields are attacker-controlled.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_is_the_first_8_bytes_of_sha256_in_hex() {
        // SHA-256("abc") = ba7816bf8f01cfea 414140de5dae2223 ...
        assert_eq!(short_hash(b"abc"), "ba7816bf8f01cfea");
    }
    use crate::login::encoding::b64url_encode;

    const SECRET: &str = "unit-secret-0123456789abcdefghijklmn";
    const NOW: i64 = 1_800_000_000;

    fn verifier(extra: &str) -> Verifier {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nsecret = \"{SECRET}\"\n{extra}"
        );
        let cfg = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let (key, _) = VerifyKey::load(cfg.provider.algorithm, &cfg.provider.secret.0, false)
            .unwrap_or_else(|e| panic!("{e}"));
        let start = cfg.replay.reject_issued_before_start.then_some(NOW - 1000);
        Verifier::new(&cfg, key, start)
    }

    fn sign(header: &str, payload: &str) -> String {
        let input = format!(
            "{}.{}",
            b64url_encode(header.as_bytes()),
            b64url_encode(payload.as_bytes())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64url_encode(tag.as_ref()))
    }

    fn check(v: &Verifier, token: &str) -> Result<Verified, Reason> {
        v.verify(token, NOW, &mut AuditInfo::default(), &mut ())
    }

    const H: &str = r#"{"alg":"HS256"}"#;

    #[test]
    fn a_good_token_yields_identity_and_a_ttl_covering_the_window() {
        let v = verifier("");
        let t = sign(H, &format!(r#"{{"name":"N","email":"e@x","iat":{NOW}}}"#));
        let ok = check(&v, &t).unwrap();
        assert_eq!(ok.uid, "e@x");
        let names: Vec<&str> = ok.identity.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "x-auth-request-user",
                "x-auth-request-name",
                "x-auth-request-email"
            ]
        );
        // the key is held through the last second the iat window accepts
        assert_eq!(ok.expires_at, NOW + 300 + 1);
        // exp cannot extend acceptance past the iat window, and the key is kept whole
        let t = sign(
            H,
            &format!(
                r#"{{"name":"N","email":"e@x","iat":{NOW},"exp":{}}}"#,
                NOW + 5000
            ),
        );
        assert_eq!(check(&v, &t).unwrap().expires_at, NOW + 301);
        let t = sign(
            H,
            &format!(
                r#"{{"name":"N","email":"e@x","iat":{NOW},"exp":{}}}"#,
                NOW + 10
            ),
        );
        assert_eq!(check(&v, &t).unwrap().expires_at, NOW + 301);
    }

    #[test]
    fn the_signature_is_checked_before_any_claim() {
        let v = verifier("");
        // expired, missing claims, and a bad signature: the signature is what is reported
        let t = sign(H, &format!(r#"{{"exp":{}}}"#, NOW - 10));
        // change the last character of the 32-byte tag to another canonical one ('A' or 'E':
        // its low two bits are unused and must stay zero)
        let last = if t.ends_with('A') { 'E' } else { 'A' };
        let forged = format!("{}{last}", &t[..t.len() - 1]);
        assert_eq!(check(&v, &forged).unwrap_err(), Reason::BadSignature);
        assert_eq!(check(&v, &t).unwrap_err(), Reason::Expired);
    }

    #[test]
    fn time_boundaries_match_ruby_jwt_and_the_window() {
        let v = verifier("");
        let tok = |extra: &str| {
            sign(
                H,
                &format!(r#"{{"name":"N","email":"e@x","iat":{NOW}{extra}}}"#),
            )
        };
        assert_eq!(
            check(&v, &tok(&format!(r#","exp":{NOW}"#))).unwrap_err(),
            Reason::Expired
        );
        assert!(check(&v, &tok(&format!(r#","exp":{}"#, NOW + 1))).is_ok());
        // ruby's to_i truncates: 1.9 seconds past now is still "now + 1"
        assert!(check(&v, &tok(&format!(r#","exp":{}.9"#, NOW))).is_err());
        assert!(check(&v, &tok(&format!(r#","nbf":{NOW}"#))).is_ok());
        assert_eq!(
            check(&v, &tok(&format!(r#","nbf":{}"#, NOW + 1))).unwrap_err(),
            Reason::NotYetValid
        );
        let at = |iat: i64| sign(H, &format!(r#"{{"name":"N","email":"e@x","iat":{iat}}}"#));
        assert!(check(&v, &at(NOW - 300)).is_ok());
        assert_eq!(check(&v, &at(NOW - 301)).unwrap_err(), Reason::IatTooOld);
        assert!(check(&v, &at(NOW + 60)).is_ok());
        assert_eq!(check(&v, &at(NOW + 61)).unwrap_err(), Reason::IatInFuture);
        // a window narrower than the skew bounds the future too (GitLab's check is symmetric)
        let narrow = verifier("valid_within = 30\n");
        assert!(check(&narrow, &at(NOW + 30)).is_ok());
        assert_eq!(
            check(&narrow, &at(NOW + 31)).unwrap_err(),
            Reason::IatInFuture
        );
        assert_eq!(check(&v, &at(NOW - 1001)).unwrap_err(), Reason::IatTooOld);
        let v = verifier("valid_within = 5000\n");
        assert_eq!(
            check(&v, &at(NOW - 1001)).unwrap_err(),
            Reason::IssuedBeforeStart
        );
        assert!(check(&v, &at(NOW - 1000)).is_ok());
    }

    #[test]
    fn null_required_claims_pass_like_gitlab_but_a_null_uid_does_not() {
        let v = verifier("");
        let t = sign(H, &format!(r#"{{"name":null,"email":"e@x","iat":{NOW}}}"#));
        let ok = check(&v, &t).unwrap();
        assert_eq!(ok.identity.len(), 2, "a null info claim adds no header");
        let t = sign(H, &format!(r#"{{"name":"N","email":null,"iat":{NOW}}}"#));
        assert_eq!(check(&v, &t).unwrap_err(), Reason::UidInvalid);
    }

    #[test]
    fn replay_digests_keep_the_bytes_records_already_in_redis_were_made_with() {
        // tag, length of the issuer (8 bytes, big-endian), issuer, jti: the layout before
        // use_digest; a change would turn every live record into a miss after an upgrade
        let mut ctx = digest::Context::new(&digest::SHA256);
        for part in [&b"jti\0"[..], &3u64.to_be_bytes(), b"iss", b"the-jti"] {
            ctx.update(part);
        }
        let want = ctx.finish();
        assert_eq!(
            use_digest(b"jti\0", &[b"iss", b"the-jti"]).as_slice(),
            want.as_ref()
        );
        let sig = digest::digest(&digest::SHA256, b"sig\0header.payload");
        assert_eq!(
            use_digest(b"sig\0", &[b"header.payload"]).as_slice(),
            sig.as_ref()
        );
    }

    #[test]
    fn replay_keys_follow_jti_and_issuer_not_the_token_text() {
        let v = verifier("");
        let key = |p: &str| check(&v, &sign(H, p)).unwrap().replay_key;
        let a = key(&format!(
            r#"{{"name":"N","email":"e@x","iat":{NOW},"jti":"j"}}"#
        ));
        let b = key(&format!(
            r#"{{"name":"M","email":"e@x","iat":{},"jti":"j"}}"#,
            NOW - 5
        ));
        let c = key(&format!(
            r#"{{"name":"N","email":"e@x","iat":{NOW},"jti":"j","iss":"other"}}"#
        ));
        let d = key(&format!(r#"{{"name":"N","email":"e@x","iat":{NOW}}}"#));
        let e = key(&format!(
            r#"{{"name":"N","email":"e@x","iat":{}}}"#,
            NOW - 1
        ));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(d, e);
        assert_ne!(a, d);
    }
}
