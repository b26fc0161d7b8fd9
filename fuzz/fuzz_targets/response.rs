//! The gate's own HTTP/1.1 response reader (src/proxy/codec.rs) on any bytes an upstream
//! could send: never panics, and reads the same message (status, fields, framing, body,
//! what is left after it) whether the bytes arrive at once or split at any point, so a
//! response can never be read differently because of how TCP cut it.
#![no_main]
use bytes::BytesMut;
use http::Method;
use jwt_gate::proxy::codec::{parse_response, BadResponse, ChunkedDecoder, Decoded, Framing, NameCache};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Read {
    Message { status: u16, fields: Vec<(String, Vec<u8>)>, framing: Framing, body: Vec<u8>, ended: bool, rest: Vec<u8> },
    Incomplete,
    Bad(BadResponse),
}

fn read(pieces: &[&[u8]], method: &Method) -> Read {
    let mut buf = BytesMut::new();
    let mut names = NameCache::default();
    let mut pieces = pieces.iter();
    let head = loop {
        match parse_response(&mut buf, method, &mut names) {
            Err(e) => return Read::Bad(e),
            Ok(Some(h)) => break h,
            Ok(None) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Read::Incomplete,
            },
        }
    };
    let mut body = Vec::new();
    let mut ended = false;
    let mut chunked = ChunkedDecoder::default();
    let mut left = match head.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        match head.framing {
            Framing::Empty => ended = true,
            Framing::Length(_) => {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                body.extend_from_slice(&buf.split_to(n));
                left -= n as u64;
                ended = left == 0;
            }
            Framing::UntilClose => body.extend_from_slice(&buf.split()),
            Framing::Chunked => loop {
                match chunked.decode(&mut buf) {
                    Err(e) => return Read::Bad(e),
                    Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                    Ok(Decoded::End) => {
                        ended = true;
                        break;
                    }
                    Ok(Decoded::More) => break,
                }
            },
        }
        if ended {
            break;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => break,
        }
    }
    // what arrived after the message's end
    let mut rest = buf.to_vec();
    for p in pieces {
        rest.extend_from_slice(p);
    }
    let fields = head
        .response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    Read::Message { status: head.response.status().as_u16(), fields, framing: head.framing, body, ended, rest }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let method = if first & 0x80 != 0 { Method::HEAD } else { Method::GET };
    let whole = read(&[data], &method);
    let cut = usize::from(first & 0x7f) * data.len() / 128;
    let split = read(&[&data[..cut], &data[cut..]], &method);
    assert_eq!(whole, split, "cut at {cut}");
    if data.len() <= 512 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(whole, read(&bytes, &method), "byte by byte");
    }
});
