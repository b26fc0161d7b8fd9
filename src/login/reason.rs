//! One [`Reason`] for every way a callback can be refused: its stable code (logs, metrics
//! labels, the page, `explain`), its status, a sentence for people, and any extra header.

use http::StatusCode;

macro_rules! reasons {
    ($($variant:ident => $code:literal, $status:ident, $what:literal;)*) => {
        /// Why a callback was refused. The code is stable: dashboards and alerts key on it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Reason { $($variant),* }

        impl Reason {
            /// Every reason, in slot order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),*];
            /// Metric slot names: "ok" (forwarded) first, then every code in slot order.
            pub const LABELS: &'static [&'static str] = &["ok", $($code),*];

            /// Stable reason code.
            pub fn code(self) -> &'static str {
                match self { $(Reason::$variant => $code),* }
            }
            /// The status the client gets.
            pub fn status(self) -> StatusCode {
                match self { $(Reason::$variant => StatusCode::$status),* }
            }
            /// A sentence for people (no token or claim values in it).
            pub fn describe(self) -> &'static str {
                match self { $(Reason::$variant => $what),* }
            }
        }
    };
}

reasons! {
    // where the token comes from (Rack's parameter rules, made unambiguous)
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED, "The sign-in callback accepts GET, HEAD and POST only.";
    DuplicateContentType => "duplicate_content_type", BAD_REQUEST, "The request has more than one Content-Type.";
    BodyNotAllowed => "body_not_allowed", BAD_REQUEST, "A GET or HEAD callback must not carry a body.";
    MissingContentType => "missing_content_type", BAD_REQUEST, "A POST callback needs Content-Type: application/x-www-form-urlencoded.";
    MultipartNotAllowed => "multipart_not_allowed", BAD_REQUEST, "Multipart callbacks are not accepted.";
    UnsupportedContentType => "unsupported_content_type", BAD_REQUEST, "A POST callback must be application/x-www-form-urlencoded.";
    BadContentType => "bad_content_type", BAD_REQUEST, "The Content-Type header is not valid.";
    BodyTimeout => "body_timeout", REQUEST_TIMEOUT, "The request body did not arrive in time.";
    BodyTooLarge => "body_too_large", PAYLOAD_TOO_LARGE, "The callback body is too large.";
    BodyReadError => "body_read_error", BAD_REQUEST, "The request body could not be read.";
    DuplicateParam => "duplicate_jwt_param", BAD_REQUEST, "The jwt parameter appears more than once.";
    SemicolonInQuery => "semicolon_in_query", BAD_REQUEST, "The query string must not contain ';'.";
    AmbiguousParam => "ambiguous_jwt_param", BAD_REQUEST, "A parameter name could be read as jwt.";
    BadParamEncoding => "bad_param_encoding", BAD_REQUEST, "The parameters are not validly percent-encoded.";
    TokenMissing => "token_missing", BAD_REQUEST, "the callback carried no jwt parameter";
    // the token checks, in the order `verify` runs them
    TokenTooLarge => "token_too_large", UNAUTHORIZED, "the token is 10,000 bytes or more";
    JsonSerialization => "json_serialization", UNAUTHORIZED, "JWS JSON serialisation is not accepted";
    Jwe => "jwe_unsupported", UNAUTHORIZED, "encrypted tokens (JWE) are not accepted";
    Malformed => "malformed_token", UNAUTHORIZED, "the token is not three dot-separated segments";
    NonCanonical => "non_canonical_encoding", UNAUTHORIZED, "a segment is not canonical base64url";
    HeaderInvalid => "header_invalid", UNAUTHORIZED, "the header is not a JSON object";
    AlgMissing => "alg_missing", UNAUTHORIZED, "the header has no alg";
    AlgNone => "alg_none", UNAUTHORIZED, "unsigned tokens (alg none) are never accepted";
    AlgMismatch => "alg_mismatch", UNAUTHORIZED, "the token's alg is not the configured algorithm";
    IdpAlgNotAllowed => "idp_alg_not_allowed", UNAUTHORIZED, "the token's alg is not in idp.algorithms (never none, never an HMAC)";
    KeyInHeader => "key_in_header", UNAUTHORIZED, "the header names its own key (jku, jwk, x5u, x5c); keys come only from the configured key set";
    KidRequired => "kid_missing", UNAUTHORIZED, "the token has no kid and the key set has several keys for its alg";
    UnknownKid => "unknown_kid", UNAUTHORIZED, "no key in the IdP's key set has the token's kid";
    KidWrongKeyType => "kid_wrong_key_type", UNAUTHORIZED, "the token's kid names a key of another type or algorithm";
    IdpKeysUnavailable => "idp_keys_unavailable", SERVICE_UNAVAILABLE, "Sign-in is temporarily unavailable: the identity provider's keys could not be loaded. Try again in a moment.";
    CritUnsupported => "crit_unsupported", UNAUTHORIZED, "the header marks extensions critical (crit)";
    BadSignature => "bad_signature", UNAUTHORIZED, "the signature does not verify";
    DuplicateKey => "duplicate_key", UNAUTHORIZED, "the header or payload repeats a key";
    PayloadInvalid => "payload_invalid", UNAUTHORIZED, "the payload is not a JSON object";
    ExpMissing => "exp_missing", UNAUTHORIZED, "the IdP's token has no exp";
    ExpInvalid => "exp_invalid", UNAUTHORIZED, "exp is not a number";
    Expired => "token_expired", UNAUTHORIZED, "the token has expired (exp)";
    NbfInvalid => "nbf_invalid", UNAUTHORIZED, "nbf is not a number";
    NotYetValid => "token_not_yet_valid", UNAUTHORIZED, "the token is not valid yet (nbf)";
    IssuerMismatch => "issuer_mismatch", UNAUTHORIZED, "the token's iss is not the configured issuer";
    AudienceMismatch => "audience_mismatch", UNAUTHORIZED, "the token's aud names none of the configured audiences";
    MissingClaim => "missing_claim", UNAUTHORIZED, "a required claim is missing";
    IatMissing => "iat_missing", UNAUTHORIZED, "iat is required";
    IatInvalid => "iat_invalid", UNAUTHORIZED, "iat is not an integer";
    IatInFuture => "iat_in_future", UNAUTHORIZED, "iat lies too far in the future";
    IatTooOld => "iat_too_old", UNAUTHORIZED, "iat lies outside the valid_within window";
    IssuedBeforeStart => "issued_before_start", UNAUTHORIZED, "the token was issued before the gate started";
    IssuedBeforeStoreEpoch => "issued_before_store_epoch", UNAUTHORIZED, "the token was issued before the replay store lost its records";
    JtiMissing => "jti_missing", UNAUTHORIZED, "jti is required";
    JtiInvalid => "jti_invalid", UNAUTHORIZED, "jti is not a non-empty string";
    UidMissing => "uid_missing", UNAUTHORIZED, "the uid claim is missing";
    UidInvalid => "uid_invalid", UNAUTHORIZED, "the uid claim is not a non-empty string";
    ClaimInvalid => "claim_invalid", UNAUTHORIZED, "an identity claim is not a string, number or boolean";
    ControlCharacters => "claim_control_characters", UNAUTHORIZED, "an identity claim contains control characters";
    // header-assertion sign-in (an identity-aware proxy in front of the gate)
    AssertionMissing => "assertion_missing", UNAUTHORIZED, "No identity assertion arrived with this request (exactly one assertion header is required).";
    AssertionUntrustedPeer => "assertion_untrusted_peer", FORBIDDEN, "This address may not send identity assertions (idp.trusted_peers).";
    MintFailed => "mint_failed", SERVICE_UNAVAILABLE, "Sign-in is temporarily unavailable. Try again in a moment.";
    // the client's budget of refused callbacks is spent (decided before anything is read)
    Throttled => "too_many_refused_logins", TOO_MANY_REQUESTS, "Too many refused sign-in attempts from this address. Wait a moment and sign in again.";
    // single use
    Replayed => "replayed", UNAUTHORIZED, "This sign-in link has already been used. Sign in again.";
    StoreFull => "replay_store_full", SERVICE_UNAVAILABLE, "Sign-in is temporarily unavailable. Try again in a moment.";
    StoreUnavailable => "replay_store_unavailable", SERVICE_UNAVAILABLE, "Sign-in is temporarily unavailable. Try again in a moment.";
}

impl Reason {
    /// Whether this refusal is charged to the client's budget: everything the client sent
    /// wrong, not the gate's own trouble (the store) nor the throttle itself.
    pub fn charges_client(self) -> bool {
        !matches!(
            self,
            Reason::StoreFull
                | Reason::StoreUnavailable
                | Reason::Throttled
                | Reason::IdpKeysUnavailable
                | Reason::MintFailed
        )
    }

    /// The slot of this reason in [`Reason::LABELS`] (0 is "ok").
    pub fn slot(self) -> usize {
        self as usize + 1
    }

    /// A header the refusal carries beyond the page (RFC 9110 §15.5.6: a 405 lists what
    /// the resource allows).
    pub fn extra_header(self) -> Option<(http::HeaderName, &'static str)> {
        (self == Reason::MethodNotAllowed).then_some((http::header::ALLOW, "GET, HEAD, POST"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_code_and_slot() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "{} listed twice", r.code());
            assert_eq!(Reason::LABELS[r.slot()], r.code());
        }
        assert!(Reason::LABELS.len() <= 64, "more reasons than metric slots");
    }
}
