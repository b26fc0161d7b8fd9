//! Token extraction that can never disagree with Rack 2.2.
//!
//! GitLab reads `request.params['jwt']`: query and form body merged (the body wins), the
//! query split on `&` and `;`, the last repeated key winning, key spellings normalised
//! (`[jwt]`, `jwt]`, `%6Awt` all mean `jwt`). A gate that verified token A while Rack hands
//! GitLab token B would have been bypassed, so every request in which the choice could be
//! ambiguous is refused instead of being resolved.

use std::borrow::Cow;

use super::route::hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError {
    /// `jwt` appears more than once (in one part, or in both query and body).
    Duplicate,
    /// A `;` in the query string (Rack splits on it too).
    Semicolon,
    /// A key other than exactly `jwt` that Rack may map onto `jwt` (brackets, percent-encoding,
    /// leading spaces, ...).
    AmbiguousKey,
    /// Invalid percent-encoding, or a key or value that decodes to invalid UTF-8 (Rack or
    /// GitLab's malformed-string check would refuse it).
    BadEncoding,
}

impl ParamError {
    pub fn code(self) -> &'static str {
        match self {
            ParamError::Duplicate => "duplicate_jwt_param",
            ParamError::Semicolon => "semicolon_in_query",
            ParamError::AmbiguousKey => "ambiguous_jwt_param",
            ParamError::BadEncoding => "bad_param_encoding",
        }
    }
}

/// Which part of the request is scanned: the query (split on `&` and `;` by Rack) or a
/// urlencoded form body (split on `&` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Query,
    Body,
}

/// The same part with the one `jwt` pair's value replaced by `token` (base64url and dots:
/// nothing to escape). Every other pair is kept byte for byte. Only called on a part
/// `extract_token` accepted, where the key is exactly `jwt` and appears once.
pub fn replace_token(input: &[u8], token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + token.len());
    for (i, pair) in input.split(|&b| b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        if pair == b"jwt" || pair.starts_with(b"jwt=") {
            out.extend_from_slice(b"jwt=");
            out.extend_from_slice(token.as_bytes());
        } else {
            out.extend_from_slice(pair);
        }
    }
    out
}

/// The `jwt` value of one part, percent-decoded the way Rack decodes it (`+` is a space),
/// or `None` when absent.
pub fn extract_token(input: &[u8], part: Part) -> Result<Option<String>, ParamError> {
    if part == Part::Query && input.contains(&b';') {
        return Err(ParamError::Semicolon);
    }
    // Some(None): `jwt` without `=` (Rack: nil, which GitLab refuses like a missing token)
    let mut found: Option<Option<Cow<str>>> = None;
    for pair in input.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], Some(&pair[i + 1..])),
            None => (pair, None),
        };
        // Rack decodes every key and value and raises on one bad escape, and on a key that
        // decodes to invalid UTF-8 (its key regex refuses a broken string); GitLab's
        // HandleMalformedStrings middleware answers 400 to a value that does. So does the gate.
        let decoded_key = decode_utf8(key)?;
        let decoded_value = value.map(decode_utf8).transpose()?;
        if key == b"jwt" {
            if found.is_some() {
                return Err(ParamError::Duplicate);
            }
            found = Some(decoded_value);
            continue;
        }
        // Any other key that mentions jwt once decoded could be normalised onto it by Rack
        // (brackets, leading `]`/`[`, encoded letters, spaces skipped after a separator).
        if contains_jwt(decoded_key.as_bytes()) {
            return Err(ParamError::AmbiguousKey);
        }
    }
    Ok(found.flatten().map(Cow::into_owned))
}

fn contains_jwt(key: &[u8]) -> bool {
    key.windows(3).any(|w| w.eq_ignore_ascii_case(b"jwt"))
}

/// A key or value decoded the way Rack decodes it, as UTF-8 text: borrowed when there is
/// nothing to decode; an invalid escape or invalid UTF-8 is [`ParamError::BadEncoding`].
fn decode_utf8(s: &[u8]) -> Result<Cow<'_, str>, ParamError> {
    if !s.contains(&b'%') && !s.contains(&b'+') {
        return std::str::from_utf8(s)
            .map(Cow::Borrowed)
            .map_err(|_| ParamError::BadEncoding);
    }
    let decoded = form_decode(s).ok_or(ParamError::BadEncoding)?;
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| ParamError::BadEncoding)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; an invalid
/// escape is an error (Rack raises on it).
pub fn form_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = hex(*s.get(i + 1)?)?;
                let l = hex(*s.get(i + 2)?)?;
                out.push(h << 4 | l);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Option<String>, ParamError> {
        extract_token(s.as_bytes(), Part::Query)
    }

    #[test]
    fn plain_token_is_found_and_decoded() {
        assert_eq!(q("jwt=a.b.c"), Ok(Some("a.b.c".into())));
        assert_eq!(q("x=1&jwt=a.b.c&y=2"), Ok(Some("a.b.c".into())));
        assert_eq!(q("jwt=%61.b+c"), Ok(Some("a.b c".into())));
        assert_eq!(q("x=1"), Ok(None));
        assert_eq!(q(""), Ok(None));
        assert_eq!(q("jwt"), Ok(None), "Rack: nil");
        assert_eq!(q("jwt="), Ok(Some(String::new())), "Rack: the empty string");
        assert_eq!(q("jwt&jwt=a"), Err(ParamError::Duplicate));
    }

    #[test]
    fn every_ambiguous_spelling_is_refused() {
        assert_eq!(q("jwt=a&jwt=b"), Err(ParamError::Duplicate));
        assert_eq!(q("jwt=a;x=1"), Err(ParamError::Semicolon));
        for k in [
            "[jwt]", "jwt]", "]]jwt", "jwt[]", "jwt[x]", "%6Awt", "%6awt", "+jwt", "%20jwt", "JWT",
            "jwt%00",
        ] {
            assert_eq!(q(&format!("{k}=a")), Err(ParamError::AmbiguousKey), "{k}");
            assert_eq!(
                q(&format!("jwt=b&{k}=a")),
                Err(ParamError::AmbiguousKey),
                "{k}"
            );
        }
        assert_eq!(q("jwt=%zz"), Err(ParamError::BadEncoding));
        assert_eq!(q("jwt=%F0%28"), Err(ParamError::BadEncoding));
        assert_eq!(q("%zz=1"), Err(ParamError::BadEncoding));
        assert_eq!(
            q("jwt=a&x=%zz"),
            Err(ParamError::BadEncoding),
            "Rack raises on any bad escape"
        );
        // found by the Rack-model property test: a key that decodes to invalid UTF-8 makes
        // Rack raise, so the gate must not pick the (empty) token beside it
        assert_eq!(q("jwt=&%aa"), Err(ParamError::BadEncoding));
        assert_eq!(q("jwt=a&%aa=1"), Err(ParamError::BadEncoding));
        // and GitLab answers 400 to a value that does
        assert_eq!(q("jwt=a&x=%aa"), Err(ParamError::BadEncoding));
        assert_eq!(
            q("jwt=a&x=%C3%A9"),
            Ok(Some("a".into())),
            "valid UTF-8 is fine"
        );
    }

    #[test]
    fn body_allows_semicolons_in_values_like_rack() {
        assert_eq!(
            extract_token(b"jwt=a.b.c;d", Part::Body),
            Ok(Some("a.b.c;d".into()))
        );
    }
}
