//! The hand-made log line shared by the access and audit logs: the shape
//! `tracing_subscriber` prints (text: `<time>  INFO <target>: <message> name=value ...`;
//! flattened JSON: `{"timestamp":..,"level":"INFO",..,"target":..}`), one field after
//! another in a single order for both shapes, and the number, address and time writers
//! that keep `core::fmt` off the request path.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A field's name with its separators, both shapes made at compile time by [`field!`]: one
/// copy per field on the request path (writing the separators and the name one by one cost
/// ~60 instructions a field, +640 per access line under callgrind).
#[derive(Clone, Copy)]
pub(super) struct Field {
    /// ` name=`
    pub(super) text: &'static str,
    /// `,"name":`
    pub(super) json: &'static str,
}

/// The [`Field`] named `$name`.
macro_rules! field {
    ($name:literal) => {
        $crate::telemetry::line::Field {
            text: concat!(" ", $name, "="),
            json: concat!(",\"", $name, "\":"),
        }
    };
}
pub(super) use field;

/// One line being written: fields go in the order they are added.
/// `JSON` picks the shape at compile time: the caller dispatches once per line, and no field
/// asks again (a per-field branch measured +300 instructions per access line).
pub(super) struct Line<'b, const JSON: bool> {
    buf: &'b mut String,
}

impl<'b, const JSON: bool> Line<'b, JSON> {
    /// The time, the level and the target (text), or the JSON object's opening, then the
    /// event's message if it has one.
    pub(super) fn start(
        buf: &'b mut String,
        now: SystemTime,
        target: &str,
        message: Option<&str>,
    ) -> Line<'b, JSON> {
        if JSON {
            buf.push_str("{\"timestamp\":\"");
            push_timestamp(buf, now);
            buf.push_str("\",\"level\":\"INFO\"");
            if let Some(m) = message {
                buf.push_str(",\"message\":");
                push_json_str(buf, m);
            }
        } else {
            push_timestamp(buf, now);
            buf.push_str("  INFO ");
            buf.push_str(target);
            buf.push(':');
            if let Some(m) = message {
                buf.push(' ');
                buf.push_str(m);
            }
        }
        Line { buf }
    }

    #[inline]
    fn name(&mut self, name: Field) {
        self.buf.push_str(if JSON { name.json } else { name.text });
    }

    /// A string field recorded by `Display` (`%value`): bare in text.
    #[inline]
    pub(super) fn plain(&mut self, name: Field, value: &str) {
        self.name(name);
        if JSON {
            push_json_str(self.buf, value);
        } else {
            self.buf.push_str(value);
        }
    }

    /// A string field recorded as a `&str` (`Debug`): quoted and escaped in text.
    #[inline]
    pub(super) fn quoted(&mut self, name: Field, value: &str) {
        self.name(name);
        if JSON {
            push_json_str(self.buf, value);
        } else {
            push_debug_str(self.buf, value);
        }
    }

    /// A value written by `write`, shown by `Display`: bare in text, a JSON string. `write`
    /// must not produce characters JSON escapes (addresses, `-`).
    #[inline]
    pub(super) fn shown(&mut self, name: Field, write: impl FnOnce(&mut String)) {
        self.name(name);
        if JSON {
            self.buf.push('"');
            write(self.buf);
            self.buf.push('"');
        } else {
            write(self.buf);
        }
    }

    /// A number, written by `write` the same way in both shapes.
    #[inline]
    pub(super) fn number(&mut self, name: Field, write: impl FnOnce(&mut String)) {
        self.name(name);
        write(self.buf);
    }

    /// The JSON object's close (with the target, where JSON keeps it) and the newline.
    #[inline]
    pub(super) fn end(self, target: &str) {
        if JSON {
            self.buf.push_str(",\"target\":\"");
            self.buf.push_str(target);
            self.buf.push_str("\"}\n");
        } else {
            self.buf.push('\n');
        }
    }
}

/// A string as `{:?}` prints it: plain printable ASCII is quoted as it is (the usual case,
/// and the cheap one); anything else goes through `Debug`, escapes and all.
fn push_debug_str(buf: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push('"');
        buf.push_str(s);
        buf.push('"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

pub(super) fn push_i64(buf: &mut String, n: i64) {
    if n < 0 {
        buf.push('-');
    }
    push_u64(buf, n.unsigned_abs());
}

pub(super) fn push_ip(buf: &mut String, ip: IpAddr) {
    LAST_IP.with_borrow_mut(|(last, text)| {
        if *last != Some(ip) {
            text.clear();
            match ip {
                IpAddr::V4(v4) => {
                    for (i, o) in v4.octets().iter().enumerate() {
                        if i > 0 {
                            text.push('.');
                        }
                        push_u64(text, u64::from(*o));
                    }
                }
                IpAddr::V6(v6) => {
                    let _ = write!(text, "{v6}");
                }
            }
            *last = Some(ip);
        }
        buf.push_str(text);
    });
}

thread_local! {
    /// The last client address formatted on this thread, and its text: a gate's clients
    /// are few (an ingress controller's pods, a load balancer), and the four octets were a
    /// quarter of the access line's cost (callgrind).
    static LAST_IP: RefCell<(Option<IpAddr>, String)> = const { RefCell::new((None, String::new())) };
}

/// Milliseconds with three decimals; -1 for "none" (no upstream answer).
pub(super) fn push_ms(buf: &mut String, d: Option<Duration>) {
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

fn push_json_str(buf: &mut String, s: &str) {
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
    buf.push_str(itoa::Buffer::new().format(n));
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

pub(super) fn push_addr(buf: &mut String, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            push_ip(buf, IpAddr::V4(*v4.ip()));
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
fn push_timestamp(buf: &mut String, now: SystemTime) {
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
        // the last address is kept per thread: alternating ones must each print as itself
        for a in [
            "10.0.0.255:443",
            "10.0.0.255:444",
            "192.168.1.2:1",
            "10.0.0.255:443",
            "[2001:db8::1]:8080",
            "192.168.1.2:65535",
        ] {
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

    #[test]
    fn debug_strings_match_debug() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\n",
            "\u{1b}",
            "é",
            "a\u{301}",
        ] {
            let mut b = String::new();
            push_debug_str(&mut b, s);
            assert_eq!(b, format!("{s:?}"));
        }
        let mut b = String::new();
        push_i64(&mut b, -1);
        push_ip(&mut b, "2001:db8::1".parse().unwrap());
        assert_eq!(b, "-12001:db8::1");
    }
}
