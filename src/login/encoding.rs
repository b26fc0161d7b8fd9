//! Byte encodings the gate reads: canonical base64url (JWS segments), standard base64 and
//! PEM (key files).
//!
//! ruby-jwt decodes base64 leniently (padding, `+`/`/`, junk characters, non-zero trailing
//! bits are tolerated), which gives one token many spellings. The gate accepts exactly one:
//! RFC 7515 §2 base64url without padding, whose unused trailing bits are zero.

/// Sextet value of each byte in the base64url alphabet, or 0xFF.
const fn table(url: bool) -> [u8; 256] {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 26 {
        t[b'A' as usize + i] = i as u8;
        t[b'a' as usize + i] = 26 + i as u8;
        i += 1;
    }
    let mut d = 0;
    while d < 10 {
        t[b'0' as usize + d] = 52 + d as u8;
        d += 1;
    }
    if url {
        t[b'-' as usize] = 62;
        t[b'_' as usize] = 63;
    } else {
        t[b'+' as usize] = 62;
        t[b'/' as usize] = 63;
    }
    t
}

static URL: [u8; 256] = table(true);
static STD: [u8; 256] = table(false);

/// Decode canonical, unpadded base64url. `None` for any other spelling.
pub fn b64url_decode_canonical(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4 + 1);
    decode_into(s, &URL, &mut out)?;
    Some(out)
}

/// Decode canonical base64url into `out` (appending), without allocating a new buffer.
pub fn b64url_decode_canonical_into(s: &[u8], out: &mut Vec<u8>) -> Option<()> {
    decode_into(s, &URL, out)
}

fn decode_into(s: &[u8], t: &[u8; 256], out: &mut Vec<u8>) -> Option<()> {
    if s.len() % 4 == 1 {
        return None;
    }
    out.reserve(s.len() * 3 / 4 + 1);
    let mut chunks = s.chunks_exact(4);
    for c in &mut chunks {
        let a = t[c[0] as usize];
        let b = t[c[1] as usize];
        let d = t[c[2] as usize];
        let e = t[c[3] as usize];
        if (a | b | d | e) & 0xC0 != 0 {
            return None;
        }
        let n = (u32::from(a) << 18) | (u32::from(b) << 12) | (u32::from(d) << 6) | u32::from(e);
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let rest = chunks.remainder();
    match rest.len() {
        0 => {}
        2 => {
            let a = t[rest[0] as usize];
            let b = t[rest[1] as usize];
            // the low 4 bits of the second sextet are unused and must be zero
            if (a | b) & 0xC0 != 0 || b & 0x0F != 0 {
                return None;
            }
            out.push((a << 2) | (b >> 4));
        }
        3 => {
            let a = t[rest[0] as usize];
            let b = t[rest[1] as usize];
            let d = t[rest[2] as usize];
            if (a | b | d) & 0xC0 != 0 || d & 0x03 != 0 {
                return None;
            }
            out.push((a << 2) | (b >> 4));
            out.push((b << 4) | (d >> 2));
        }
        _ => return None,
    }
    Some(())
}

/// Encode as unpadded base64url (used by `demo`'s identity provider and tests).
pub fn b64url_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Standard padded base64 as found in PEM bodies (whitespace already removed).
fn b64std_decode(s: &[u8]) -> Option<Vec<u8>> {
    let trimmed = match s {
        [rest @ .., b'=', b'='] => rest,
        [rest @ .., b'='] => rest,
        _ => s,
    };
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    decode_into(trimmed, &STD, &mut out)?;
    Some(out)
}

/// One PEM block: its label (`PUBLIC KEY`, `RSA PRIVATE KEY`, ...) and DER contents.
#[derive(Debug)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// The first PEM block of `text` (RFC 7468). Text before `-----BEGIN` is ignored; encrypted
/// keys (`Proc-Type` headers) are refused.
pub fn pem_first_block(text: &[u8]) -> Result<PemBlock, String> {
    let text = std::str::from_utf8(text).map_err(|_| "PEM is not valid UTF-8".to_string())?;
    let begin = text
        .find("-----BEGIN ")
        .ok_or_else(|| "no PEM block (-----BEGIN ...-----) found".to_string())?;
    let rest = &text[begin + 11..];
    let end_label = rest
        .find("-----")
        .ok_or_else(|| "malformed PEM BEGIN line".to_string())?;
    let label = rest[..end_label].to_string();
    let body_start = end_label + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest[body_start..]
        .find(&end_marker)
        .ok_or_else(|| format!("PEM block {label:?} has no matching END line"))?;
    let body = &rest[body_start..body_start + body_end];
    if body.contains("Proc-Type") || body.contains("ENCRYPTED") || label.contains("ENCRYPTED") {
        return Err("encrypted PEM keys are not supported; decrypt the key first".into());
    }
    let b64: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let der =
        b64std_decode(&b64).ok_or_else(|| format!("PEM block {label:?} is not valid base64"))?;
    Ok(PemBlock { label, der })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length() {
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(11))
                .collect();
            let enc = b64url_encode(&data);
            assert!(!enc.contains('='));
            assert_eq!(b64url_decode_canonical(enc.as_bytes()), Some(data));
        }
    }

    #[test]
    fn refuses_every_non_canonical_spelling() {
        // "eyJ" is canonical; these are spellings ruby-jwt would also accept
        assert!(b64url_decode_canonical(b"eyJh").is_some());
        for bad in [
            &b"eyJh="[..], // padding
            b"ey+h",       // standard alphabet
            b"ey/h",
            b"ey h",  // whitespace
            b"ey\nh", // newline
            b"e",     // impossible length
            b"QR",    // 'R' has non-zero unused bits (canonical is "QQ")
            b"QUF",   // 'F' has non-zero unused bits (canonical is "QUE")
            b"ey.h",
        ] {
            assert_eq!(
                b64url_decode_canonical(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(b64url_decode_canonical(b"QQ"), Some(vec![b'A']));
        assert_eq!(b64url_decode_canonical(b"QUE"), Some(vec![b'A', b'A']));
    }

    #[test]
    fn pem_block_is_found_and_decoded() {
        let pem = b"junk\n-----BEGIN TEST-----\nQUJD\nREVG\n-----END TEST-----\n";
        let b = pem_first_block(pem).unwrap();
        assert_eq!(b.label, "TEST");
        assert_eq!(b.der, b"ABCDEF");
        assert!(pem_first_block(b"-----BEGIN X-----\nQUJD\n").is_err());
        assert!(pem_first_block(b"no pem here").is_err());
    }
}
