//! The gate's own HTTP/1.1 client codec, for requests whose body the gate holds whole (none,
//! or the callback's small form): the request head written from the request as it stands,
//! the response head parsed into the `Response` the gate's server writes back, and the
//! response body's framing decoded. No I/O here: `wire.rs` moves the bytes.
//!
//! Why not hyper's client for these: per small GET, hyper's client side was ~16,000 of the
//! gate's ~44,000 instructions (callgrind): a request channel and a response oneshot inside
//! `client::conn`, dispatch loops, and the head parse. The codec does the same work with
//! neither hop (bench/NOTES.md has the before and after).
//!
//! It is stricter than hyper where a lax reading could let one response bleed into the
//! next request's on a reused connection: `Transfer-Encoding` beside `Content-Length`,
//! differing `Content-Length`s, chunk sizes that overflow, bare LF in chunk framing, and
//! any byte after the end of a message are refused or end the connection.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Response, StatusCode, Version};

/// hyper's limit, kept: more fields than this in a response head is a bad response.
const MAX_HEADERS: usize = 100;
/// A response head larger than this is a bad response (hyper's was the 16 KiB read buffer).
pub const MAX_HEAD: usize = 64 * 1024;
/// One chunk-size line, extensions included, and the whole trailer section.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a response cannot be read (the upstream's fault: 502 `upstream_bad_response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadResponse {}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body runs to the connection's close.
    UntilClose,
}

/// A parsed response head.
pub struct Head {
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection may carry another request after this message.
    pub keep_alive: bool,
}

/// The request line and fields, as hyper's client wrote them: the target as it stands (the
/// proxy has made it origin form), `HTTP/1.1`, each field in the map's order with its
/// lower-case name. `Transfer-Encoding` is never sent: the body is whole, and its length is
/// in `Content-Length` (set by the proxy) or it is empty.
pub fn encode_request(parts: &request::Parts, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in parts.headers.iter() {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Header names as this connection's upstream spelled them last time, by position: an
/// upstream sends the same fields in the same order on every response, and a byte compare
/// is ~20 instructions where `HeaderName::from_bytes` is ~150 (callgrind, 8 fields).
#[derive(Default)]
pub struct NameCache(Vec<(Box<[u8]>, HeaderName)>);

/// The fields remembered, at most: a response's first ones (the ones that repeat).
const NAME_CACHE: usize = 32;

impl NameCache {
    fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, BadResponse> {
        if let Some((seen, name)) = self.0.get(i) {
            if **seen == *raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| BadResponse("bad field name"))?;
        if i < self.0.len() {
            self.0[i] = (raw.into(), name.clone());
        } else if i == self.0.len() && i < NAME_CACHE {
            self.0.push((raw.into(), name.clone()));
        }
        Ok(name)
    }
}

/// Parse one final response head from the front of `buf`, skipping informational (1xx but
/// 101) heads before it. `Ok(None)`: the head is not complete yet. On success the head's
/// bytes are gone from `buf`; what is left is body.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
    names: &mut NameCache,
) -> Result<Option<Head>, BadResponse> {
    loop {
        let Some(head) = parse_one(buf, names)? else {
            return Ok(None);
        };
        let status = head.response.status();
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let framing = framing(&head, method)?;
        let keep_alive = head.keep_alive && status != StatusCode::SWITCHING_PROTOCOLS;
        return Ok(Some(Head {
            keep_alive: keep_alive && framing != Framing::UntilClose,
            framing,
            response: head.response,
        }));
    }
}

/// One head, with what its framing fields said, gathered while the fields were read (no
/// lookups in the map afterwards).
struct Parsed {
    response: Response<()>,
    keep_alive: bool,
    /// `Content-Length`: every value the same number, or why not.
    length: Result<Option<u64>, BadResponse>,
    /// `Transfer-Encoding`: whether its last coding is `chunked`, if it was there at all.
    chunked: Option<bool>,
}

fn parse_one(buf: &mut BytesMut, names: &mut NameCache) -> Result<Option<Parsed>, BadResponse> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(BadResponse("response head too large")),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(BadResponse("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse("too many header fields")),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| BadResponse("bad status code"))?;
    let version = match res.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let reason = res.reason.unwrap_or("");
    // where each name and value lies in the head, so that the head can be frozen and the
    // values shared from it rather than copied
    let mut spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> =
        Vec::with_capacity(res.headers.len());
    let base = buf.as_ptr() as usize;
    for f in res.headers.iter() {
        let n = f.name.as_ptr() as usize - base;
        let v = f.value.as_ptr() as usize - base;
        spans.push((n..n + f.name.len(), v..v + f.value.len()));
    }
    let reason = (Some(reason) != status.canonical_reason() && !reason.is_empty())
        .then(|| Bytes::copy_from_slice(reason.as_bytes()));
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut keep_alive = version == Version::HTTP_11;
    let mut close = false;
    let mut length = Ok(None);
    let mut chunked = None;
    for (i, (n, v)) in spans.into_iter().enumerate() {
        let name = names.name(i, &head[n])?;
        let value = HeaderValue::from_maybe_shared(head.slice(v))
            .map_err(|_| BadResponse("bad field value"))?;
        if name == header::CONNECTION {
            if has_token(&value, b"close") {
                close = true;
            } else if has_token(&value, b"keep-alive") {
                keep_alive = true;
            }
        } else if name == header::CONTENT_LENGTH {
            length = length.and_then(|l| add_length(l, &value));
        } else if name == header::TRANSFER_ENCODING {
            chunked = Some(ends_in_chunked(&value));
        }
        headers.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(r) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
        response.extensions_mut().insert(r);
    }
    Ok(Some(Parsed {
        response,
        keep_alive: keep_alive && !close,
        length,
        chunked,
    }))
}

fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// One more `Content-Length` field (itself possibly a list): every number must be the same.
fn add_length(seen: Option<u64>, value: &HeaderValue) -> Result<Option<u64>, BadResponse> {
    let mut length = seen;
    for part in value.as_bytes().split(|&b| b == b',') {
        let n = parse_decimal(part.trim_ascii()).ok_or(BadResponse("bad Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(BadResponse("differing Content-Length values"));
        }
        length = Some(n);
    }
    Ok(length)
}

/// RFC 9112 §6.3, with hyper's choices where the RFC leaves one, and refusals where a
/// message could be read two ways.
fn framing(head: &Parsed, method: &Method) -> Result<Framing, BadResponse> {
    let status = head.response.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || method == Method::HEAD
    {
        return Ok(Framing::Empty);
    }
    if let Some(chunked) = head.chunked {
        if !matches!(head.length, Ok(None)) {
            return Err(BadResponse("both Transfer-Encoding and Content-Length"));
        }
        if head.response.version() == Version::HTTP_10 {
            return Err(BadResponse("Transfer-Encoding in an HTTP/1.0 response"));
        }
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    Ok(match head.length? {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Whether the last coding a `Transfer-Encoding` field lists is `chunked` (a later field
/// overrides an earlier one: its codings were applied after).
fn ends_in_chunked(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .next_back()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Digits only, at most 19 of them (so no overflow).
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The whole message has been read (last chunk and trailers).
    End,
    /// More bytes are needed.
    More,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// At the start of a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to the empty one.
    Trailers,
    Done,
}

/// Removes the chunked framing, handing out each chunk's data as it arrives without
/// copying it. Trailers are read and dropped, as the gate's server would not send them on
/// (the client's `TE` is stripped).
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            trailer_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BadResponse> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BadResponse("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let room = MAX_TRAILERS.saturating_sub(self.trailer_bytes);
                    let Some(line) = take_line(buf, room)? else {
                        return Ok(Decoded::More);
                    };
                    self.trailer_bytes += line.len() + 2;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// One CRLF-terminated line off the front of `buf` (without its CRLF); `None` until the
/// whole line is there. A bare LF, or a line longer than `max`, is refused.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, BadResponse> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > max {
            return Err(BadResponse("chunk line too long"));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(BadResponse("bare LF in chunked framing"));
    }
    if lf + 1 > max {
        return Err(BadResponse("chunk line too long"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// `1*HEXDIG [ BWS ";" extension ]`: the size, the extensions ignored.
fn chunk_size(line: &[u8]) -> Result<u64, BadResponse> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BadResponse("bad chunk size"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(BadResponse("bad chunk size"));
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = (d as char).to_digit(16).unwrap_or(0);
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<Option<(Head, BytesMut)>, BadResponse> {
        let mut buf = BytesMut::from(raw.as_bytes());
        Ok(parse_response(&mut buf, &method, &mut NameCache::default())?.map(|h| (h, buf)))
    }

    fn head(raw: &str) -> Head {
        parse(raw, Method::GET).unwrap().unwrap().0
    }

    #[test]
    fn the_request_head_is_written_as_hyper_wrote_it() {
        let (mut parts, ()) = http::Request::builder()
            .method("POST")
            .uri("/a/b?c=d%20e")
            .header("host", "gitlab")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .header("transfer-encoding", "chunked")
            .header("content-length", "3")
            .body(())
            .unwrap()
            .into_parts();
        parts.version = Version::HTTP_11;
        let mut out = Vec::new();
        encode_request(&parts, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d%20e HTTP/1.1\r\nhost: gitlab\r\nx-multi: 1\r\nx-multi: 2\r\n\
             content-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn a_head_in_pieces_waits_then_parses_with_the_body_left_over() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello";
        for cut in [0, 10, raw.len() - 6] {
            assert!(
                parse(&raw[..cut], Method::GET).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let (h, rest) = parse(raw, Method::GET).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"hello");
        let all: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert!(h
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .is_none());
    }

    #[test]
    fn informational_heads_are_skipped_and_an_odd_reason_is_kept() {
        let h = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
             HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(h.response.status(), 404);
        assert!(h.response.headers().get("link").is_none());
        assert_eq!(h.framing, Framing::Empty);
        let r = h.response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(r.map(|r| r.as_bytes()), Some(&b"Nope"[..]));
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_what_reads_two_ways() {
        let f =
            |raw: &str, m: Method| parse(raw, m).map(|o| o.map(|(h, _)| (h.framing, h.keep_alive)));
        let ok = |raw: &str| f(raw, Method::GET).unwrap().unwrap();
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            (Framing::UntilClose, false)
        );
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), (Framing::UntilClose, false));
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n"),
            (Framing::Length(7), true)
        );
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"),
            (Framing::Length(9), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n"),
            (Framing::Length(9), false)
        );
        assert_eq!(
            ok("HTTP/1.0 200 OK\r\nContent-Length: 9\r\nConnection: Keep-Alive\r\n\r\n"),
            (Framing::Length(9), true)
        );
        assert_eq!(
            ok("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
            (Framing::Empty, false)
        );
        let head_req = f("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD);
        assert_eq!(head_req.unwrap().unwrap(), (Framing::Empty, true));
        for bad in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(f(bad, Method::GET).is_err(), "{bad:?}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(f(&many, Method::GET).is_err());
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "y".repeat(MAX_HEAD));
        assert!(f(&big, Method::GET).is_err());
    }

    #[test]
    fn names_remembered_by_position_never_name_a_different_field() {
        let mut names = NameCache::default();
        let mut read = |raw: &str| {
            let mut buf = BytesMut::from(raw.as_bytes());
            let h = parse_response(&mut buf, &Method::GET, &mut names)
                .unwrap()
                .unwrap();
            let fields: Vec<(String, String)> = h
                .response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            (h.framing, fields)
        };
        let first = read("HTTP/1.1 200 OK\r\nX-Custom: a\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(first.0, Framing::Length(1));
        // the same positions, other fields: each is its own name, and framing follows it
        let second = read("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Custom: b\r\n\r\n");
        assert_eq!(second.0, Framing::Length(2));
        assert_eq!(
            second.1,
            [
                ("content-length".into(), "2".into()),
                ("x-custom".into(), "b".into())
            ]
        );
        let third = read("HTTP/1.1 200 OK\r\nX-CUSTOM: c\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(third.0, Framing::Chunked);
        assert_eq!(third.1[0], ("x-custom".into(), "c".into()));
    }

    fn dechunk(pieces: &[&str]) -> Result<(Vec<u8>, bool, BytesMut), BadResponse> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut end = false;
        for p in pieces {
            buf.extend_from_slice(p.as_bytes());
            while !end {
                match dec.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::More => break,
                    Decoded::End => end = true,
                }
            }
        }
        Ok((out, end, buf))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split_and_stop_at_the_message_end() {
        let raw = "5;ext=1\r\nhello\r\nA \r\n, chunked!\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for cut in 0..raw.len() {
            let (out, end, rest) = dechunk(&[&raw[..cut], &raw[cut..]]).unwrap();
            assert_eq!(out, b"hello, chunked!", "cut {cut}");
            assert!(end);
            assert_eq!(
                &rest[..],
                b"NEXT",
                "the next message's bytes are left alone"
            );
        }
    }

    #[test]
    fn malformed_chunking_is_refused() {
        for bad in [
            "5\nhello\r\n0\r\n\r\n",
            "5\r\nhelloXX0\r\n\r\n",
            "g\r\n",
            "-5\r\n",
            "1000000000000000\r\n",
            "5 x\r\n",
            "\r\n",
        ] {
            assert!(dechunk(&[bad]).is_err(), "{bad:?}");
        }
        let long = format!("5;{}", "e".repeat(MAX_CHUNK_LINE));
        assert!(dechunk(&[&long]).is_err());
        let trailers = format!("0\r\n{}", "X: y\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert!(dechunk(&[&trailers]).is_err());
    }
}
