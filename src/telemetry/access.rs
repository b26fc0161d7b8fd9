//! The access log line, formatted by hand into a reused buffer and handed to the log buffer.
//!
//! Why not `tracing::info!`: through `tracing_subscriber`'s formatter one access line cost
//! about 16,000 instructions (a quarter of a proxied small GET under callgrind): `fmt::write`
//! per field, float formatting, the ANSI-aware writer, a `write(2)`. The line here has the
//! same fields and the same shape (text, or JSON with `--log-format json`), honours the same
//! filter (`jwt_gate::access` at info), and costs a few hundred.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::line::{field, push_addr, push_ms, push_u64, Line};
use super::logbuf;

static JSON: AtomicBool = AtomicBool::new(false);

/// Lines in JSON (`--log-format json`) instead of text.
pub fn use_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether lines are JSON.
pub(super) fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

pub struct AccessLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub client: SocketAddr,
    pub reason: Option<&'static str>,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// Log one request, if the filter lets `jwt_gate::access` info lines through.
pub fn log(l: &AccessLine<'_>) {
    if !tracing::enabled!(target: "jwt_gate::access", tracing::Level::INFO) {
        return;
    }
    if !logbuf::is_on() {
        // in-process use without the binary's log setup: the subscriber, if any, formats it
        tracing::info!(
            target: "jwt_gate::access",
            method = l.method,
            path = l.path,
            status = l.status,
            bytes_in = l.bytes_in,
            bytes_out = l.bytes_out,
            total_ms = l.total.as_secs_f64() * 1e3,
            upstream_ms = l.upstream.map_or(-1.0, |d| d.as_secs_f64() * 1e3),
            client = %l.client,
            reason = l.reason.unwrap_or("-"),
        );
        return;
    }
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        format_line(buf, l, SystemTime::now(), JSON.load(Ordering::Relaxed));
        logbuf::append(buf.as_bytes(), false);
    });
}

/// One line, newline included, as `tracing_subscriber`'s text or flattened-JSON formatter
/// would print the same event (times in milliseconds with microsecond precision).
pub fn format_line(buf: &mut String, l: &AccessLine<'_>, now: SystemTime, json: bool) {
    if json {
        write_fields(Line::<true>::start(buf, now, TARGET, None), l);
    } else {
        write_fields(Line::<false>::start(buf, now, TARGET, None), l);
    }
}

fn write_fields<const JSON: bool>(mut line: Line<'_, JSON>, l: &AccessLine<'_>) {
    line.plain(field!("method"), l.method);
    line.plain(field!("path"), l.path);
    line.number(field!("status"), |b| push_u64(b, u64::from(l.status)));
    line.number(field!("bytes_in"), |b| push_u64(b, l.bytes_in));
    line.number(field!("bytes_out"), |b| push_u64(b, l.bytes_out));
    line.number(field!("total_ms"), |b| push_ms(b, Some(l.total)));
    line.number(field!("upstream_ms"), |b| push_ms(b, l.upstream));
    line.shown(field!("client"), |b| push_addr(b, l.client));
    line.quoted(field!("reason"), l.reason.unwrap_or("-"));
    line.end(TARGET);
}

const TARGET: &str = "jwt_gate::access";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn line(json: bool, path: &str, upstream: Option<Duration>) -> String {
        let mut buf = String::new();
        let l = AccessLine {
            method: "GET",
            path,
            status: 502,
            bytes_in: 0,
            bytes_out: 614,
            total: Duration::from_micros(270_431),
            upstream,
            client: "127.0.0.1:40244".parse().unwrap(),
            reason: Some("upstream_unreachable"),
        };
        // 2026-11-30T23:22:14.650429Z
        let at = UNIX_EPOCH + Duration::from_micros(1_796_080_934_650_429);
        format_line(&mut buf, &l, at, json);
        buf
    }

    #[test]
    fn text_line_has_tracing_shape() {
        assert_eq!(
            line(false, "/a%22b", Some(Duration::from_micros(144))),
            "2026-11-30T23:22:14.650429Z  INFO jwt_gate::access: method=GET path=/a%22b status=502 bytes_in=0 bytes_out=614 total_ms=270.431 upstream_ms=0.144 client=127.0.0.1:40244 reason=\"upstream_unreachable\"\n"
        );
    }

    #[test]
    fn json_line_parses_and_escapes() {
        let text = line(true, "/a\"b\\c", None);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["path"], "/a\"b\\c");
        assert_eq!(v["upstream_ms"], -1);
        assert_eq!(v["total_ms"], 270.431);
        assert_eq!(v["timestamp"], "2026-11-30T23:22:14.650429Z");
        assert_eq!(v["target"], "jwt_gate::access");
        assert_eq!(v["reason"], "upstream_unreachable");
    }
}
