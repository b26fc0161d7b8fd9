//! The access log line, formatted by hand into a reused buffer and handed to the log buffer.
//!
//! Why not `tracing::info!`: through `tracing_subscriber`'s formatter one access line cost
//! about 16,000 instructions (a quarter of a proxied small GET under callgrind): `fmt::write`
//! per field, float formatting, the ANSI-aware writer, a `write(2)`. The line here has the
//! same fields and the same shape (text, or JSON with `--log-format json`), honours the same
//! filter (`jwt_gate::access` at info), and costs a few hundred.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let reason = l.reason.unwrap_or("-");
    if json {
        buf.push_str("{\"timestamp\":\"");
        push_timestamp(buf, now);
        buf.push_str("\",\"level\":\"INFO\",\"method\":");
        push_json_str(buf, l.method);
        buf.push_str(",\"path\":");
        push_json_str(buf, l.path);
        buf.push_str(",\"status\":");
        push_u64(buf, u64::from(l.status));
        buf.push_str(",\"bytes_in\":");
        push_u64(buf, l.bytes_in);
        buf.push_str(",\"bytes_out\":");
        push_u64(buf, l.bytes_out);
        buf.push_str(",\"total_ms\":");
        push_ms(buf, Some(l.total));
        buf.push_str(",\"upstream_ms\":");
        push_ms(buf, l.upstream);
        buf.push_str(",\"client\":\"");
        push_addr(buf, l.client);
        buf.push_str("\",\"reason\":");
        push_json_str(buf, reason);
        buf.push_str(",\"target\":\"jwt_gate::access\"}\n");
    } else {
        push_timestamp(buf, now);
        buf.push_str("  INFO jwt_gate::access: method=");
        buf.push_str(l.method);
        buf.push_str(" path=");
        buf.push_str(l.path);
        buf.push_str(" status=");
        push_u64(buf, u64::from(l.status));
        buf.push_str(" bytes_in=");
        push_u64(buf, l.bytes_in);
        buf.push_str(" bytes_out=");
        push_u64(buf, l.bytes_out);
        buf.push_str(" total_ms=");
        push_ms(buf, Some(l.total));
        buf.push_str(" upstream_ms=");
        push_ms(buf, l.upstream);
        buf.push_str(" client=");
        push_addr(buf, l.client);
        buf.push_str(" reason=\"");
        buf.push_str(reason);
        buf.push_str("\"\n");
    }
}

/// Milliseconds with three decimals; -1 for "none" (no upstream answer).
fn push_ms(buf: &mut String, d: Option<Duration>) {
    match d {
        None => buf.push_str("-1"),
        Some(d) => {
            let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            push_u64(buf, micros / 1000);
            buf.push('.');
            push_padded(buf, micros % 1000, 3);
        }
    }
}

pub(super) fn push_json_str(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

/// Decimal digits without `core::fmt` (its machinery was most of the line's cost).
pub(super) fn push_u64(buf: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        buf.push(char::from(d));
    }
}

/// `n` in exactly `width` digits, zero-padded (`width` at most 6; larger `n` keeps its low
/// digits).
fn push_padded(buf: &mut String, n: u64, width: u32) {
    let mut div = 10u64.pow(width.saturating_sub(1));
    while div > 0 {
        buf.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

fn push_addr(buf: &mut String, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                push_u64(buf, u64::from(*o));
            }
            buf.push(':');
            push_u64(buf, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(buf, "{a}");
        }
    }
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the last second seen, and that second.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// RFC 3339 in UTC with microseconds, as `tracing_subscriber` prints it:
/// `2026-11-30T23:22:14.650429Z`. The date and time of day are formatted once a second.
pub(super) fn push_timestamp(buf: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            text.clear();
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let day = secs % 86_400;
            let _ = write!(
                text,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                day / 3600,
                day / 60 % 60,
                day % 60
            );
        }
        buf.push_str(text);
    });
    buf.push('.');
    push_padded(buf, u64::from(since.subsec_micros()), 6);
    buf.push('Z');
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn numbers_and_addresses_without_fmt() {
        let mut b = String::new();
        for n in [0, 7, 10, 65_535, u64::MAX] {
            b.clear();
            push_u64(&mut b, n);
            assert_eq!(b, n.to_string());
        }
        b.clear();
        push_padded(&mut b, 42, 6);
        assert_eq!(b, "000042");
        for a in ["10.0.0.255:443", "[2001:db8::1]:8080"] {
            b.clear();
            push_addr(&mut b, a.parse().unwrap());
            assert_eq!(b, a);
        }
    }

    #[test]
    fn calendar_matches_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
    }
}
