//! Token extraction that can never disagree with Rack 2.2.
//!
//! GitLab reads `request.params['jwt']`: query and form body merged (the body wins), the
//! query split on `&` and `;`, the last repeated key winning, key spellings normalised
//! (`[jwt]`, `jwt]`, `%6Awt` all mean `jwt`). A gate that verified token A while Rack hands
//! GitLab token B would have been bypassed, so every request in which the choice could be
//! ambiguous is refused instead of being resolved.

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

/// The `jwt` value of one part, percent-decoded the way Rack decodes it (`+` is a space),
/// or `None` when absent.
pub fn extract_token(input: &[u8], part: Part) -> Result<Option<String>, ParamError> {
    if part == Part::Query && input.contains(&b';') {
        return Err(ParamError::Semicolon);
    }
    // Some(None): `jwt` without `=` (Rack: nil, which GitLab refuses like a missing token)
    let mut found: Option<Option<&[u8]>> = None;
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
        if !decodes_to_utf8(key) || !value.is_none_or(decodes_to_utf8) {
            return Err(ParamError::BadEncoding);
        }
        if key == b"jwt" {
            if found.is_some() {
                return Err(ParamError::Duplicate);
            }
            found = Some(value);
            continue;
        }
        // Any other key that mentions jwt once decoded could be normalised onto it by Rack
        // (brackets, leading `]`/`[`, encoded letters, spaces skipped after a separator).
        if key_may_mean_jwt(key)? {
            return Err(ParamError::AmbiguousKey);
        }
    }
    match found {
        None | Some(None) => Ok(None),
        Some(Some(v)) => {
            let decoded = form_decode(v).ok_or(ParamError::BadEncoding)?;
            String::from_utf8(decoded)
                .map(Some)
                .map_err(|_| ParamError::BadEncoding)
        }
    }
}

fn key_may_mean_jwt(key: &[u8]) -> Result<bool, ParamError> {
    if !key.contains(&b'%') && !key.contains(&b'+') {
        return Ok(contains_jwt(key));
    }
    let decoded = form_decode(key).ok_or(ParamError::BadEncoding)?;
    Ok(contains_jwt(&decoded))
}

fn contains_jwt(key: &[u8]) -> bool {
    key.windows(3).any(|w| w.eq_ignore_ascii_case(b"jwt"))
}

/// Every `%` starts a two-hex-digit escape and the decoded bytes are UTF-8.
fn decodes_to_utf8(s: &[u8]) -> bool {
    if !escapes_valid(s) {
        return false;
    }
    if s.contains(&b'%') {
        // `+` only ever becomes a space, so only escapes can break UTF-8 after decoding
        form_decode(s).is_some_and(|d| std::str::from_utf8(&d).is_ok())
    } else {
        std::str::from_utf8(s).is_ok()
    }
}

/// Every `%` starts a two-hex-digit escape.
fn escapes_valid(s: &[u8]) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            match (
                s.get(i + 1).and_then(|&c| hex(c)),
                s.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(_), Some(_)) => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
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
