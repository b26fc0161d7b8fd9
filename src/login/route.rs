//! Is this request the JWT callback?
//!
//! OmniAuth compares the path case-insensitively, after removing one trailing `/`, for every
//! method: those requests are the gate's. Spellings that OmniAuth does not intercept but
//! Rails may still route to the callback controller (percent-encoded, dot segments, `//`,
//! a `.json` format suffix, `;` parameters) are answered 400 and never reach GitLab.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The callback as OmniAuth sees it: the gate verifies it.
    Callback,
    /// Only becomes the callback after some normalisation: refused with 400.
    AmbiguousCallback,
    /// A JWT callback under another prefix than the configured one (a relative URL root
    /// or a `callback_path` the gate was not told about): refused with 400, because a
    /// callback the gate does not check must never stream through to GitLab.
    ForeignCallback,
    /// Anything else: passed through.
    Other,
}

/// OmniAuth's callback for a provider named `jwt`, under any relative URL root.
const JWT_CALLBACK_SUFFIX: &str = "/users/auth/jwt/callback";

/// Classify `path` against `callback` (lower-cased, without a trailing `/`).
pub fn classify(path: &str, callback: &str) -> Route {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.eq_ignore_ascii_case(callback) {
        return Route::Callback;
    }
    // Cheap pre-filter: without any of these bytes, no normalisation can change the path
    // beyond what the exact comparison above already allowed for.
    let b = path.as_bytes();
    let suspicious =
        b.iter().any(|&c| matches!(c, b'%' | b'.' | b';' | b'\\')) || path.contains("//");
    if !suspicious {
        return if ends_with_ignore_case(trimmed, JWT_CALLBACK_SUFFIX) {
            Route::ForeignCallback
        } else {
            Route::Other
        };
    }
    match loose_normalize(path) {
        Some(p) if p == callback => Route::AmbiguousCallback,
        Some(p) if p.ends_with(JWT_CALLBACK_SUFFIX) => Route::ForeignCallback,
        _ => Route::Other,
    }
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// Percent-decode (up to three rounds, for double encoding), lower-case, treat `\` as `/`,
/// drop empty and `.` segments, resolve `..`, strip `;params` from every segment and a
/// `.format` suffix from the last one.
fn loose_normalize(path: &str) -> Option<String> {
    let mut cur = path.as_bytes().to_vec();
    for _ in 0..3 {
        if !cur.contains(&b'%') {
            break;
        }
        cur = percent_decode_lossy(&cur);
    }
    let text = String::from_utf8_lossy(&cur)
        .to_ascii_lowercase()
        .replace('\\', "/");
    let mut segs: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    if let Some(last) = segs.last_mut() {
        if let Some((stem, _format)) = last.split_once('.') {
            *last = stem;
        }
    }
    let mut out = String::with_capacity(text.len());
    for s in segs {
        out.push('/');
        out.push_str(s);
    }
    Some(out)
}

/// Decode `%XX` sequences; invalid ones are kept as they are.
fn percent_decode_lossy(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

pub(crate) fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const CB: &str = "/users/auth/jwt/callback";

    #[test]
    fn omniauth_spellings_are_the_callback() {
        for p in [CB, "/users/auth/jwt/callback/", "/USERS/Auth/JWT/Callback"] {
            assert_eq!(classify(p, CB), Route::Callback, "{p}");
        }
    }

    #[test]
    fn normalised_spellings_are_ambiguous() {
        for p in [
            "/users/auth/jwt/%63allback",
            "/users/auth/jwt/%2563allback",
            "//users/auth/jwt/callback",
            "/users/auth/jwt/./callback",
            "/users/auth/x/../jwt/callback",
            "/users/auth/jwt/callback.json",
            "/users/auth/jwt/callback;x=1",
            "/users/auth/jwt/callback//",
            "/users\\auth/jwt/callback",
            "/users/auth/jwt%2Fcallback",
        ] {
            assert_eq!(classify(p, CB), Route::AmbiguousCallback, "{p}");
        }
    }

    #[test]
    fn other_paths_pass() {
        for p in [
            "/",
            "/users/sign_in",
            "/users/auth/jwt",
            "/users/auth/jwt/callbackx",
            "/group/project.git/info/refs",
            "/api/v4/projects/1%2F2",
            "/users/auth/jwt/callback/more",
        ] {
            assert_eq!(classify(p, CB), Route::Other, "{p}");
        }
    }

    #[test]
    fn a_callback_under_another_prefix_is_foreign() {
        for p in [
            "/gitlab/users/auth/jwt/callback",
            "/x/USERS/auth/jwt/callback/",
            "/gitlab/users/auth/jwt/callback.json",
            "/gitlab/users/auth/jwt/%63allback",
            "/a/b/../users/auth/jwt/callback",
        ] {
            assert_eq!(classify(p, CB), Route::ForeignCallback, "{p}");
        }
    }

    #[test]
    fn relative_url_root_is_part_of_the_callback() {
        let cb = "/gitlab/users/auth/jwt/callback";
        assert_eq!(
            classify("/gitlab/users/auth/jwt/callback", cb),
            Route::Callback
        );
        // the bare callback, or another root, is a callback the gate was not told about
        assert_eq!(
            classify("/users/auth/jwt/callback", cb),
            Route::ForeignCallback
        );
        assert_eq!(
            classify("/gitlab//users/auth/jwt/callback", cb),
            Route::AmbiguousCallback
        );
    }
}
