//! The audit line of every login decision, formatted by hand into a reused buffer, as the
//! access line is (see `access`): through `tracing_subscriber`'s formatter it cost about
//! 20,000 instructions, 18 % of an HS256 callback under callgrind. Same fields, same shape
//! (text, or flattened JSON with `--log-format json`), same filter (`jwt_gate::audit` at
//! info); a unit test holds both shapes to what the formatter prints.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

use super::access::{json, push_json_str, push_timestamp, push_u64};
use super::logbuf;

/// One login decision. The strings may come from a token (`alg`, `kid`, `iss`): they are
/// escaped as the formatter escapes them.
pub struct AuditLine<'a> {
    pub outcome: &'a str,
    pub reason: &'a str,
    pub status: u16,
    pub alg: &'a str,
    pub kid: &'a str,
    pub iss: &'a str,
    pub uid_hash: &'a str,
    pub jti_hash: &'a str,
    pub client: IpAddr,
    /// When (unix ms) and from where the token was first used, for a replay.
    pub first_use: Option<(i64, IpAddr)>,
    pub latency_us: u64,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(384));
}

/// Log one decision, if the filter lets `jwt_gate::audit` info lines through.
pub fn log(l: &AuditLine<'_>) {
    if !tracing::enabled!(target: "jwt_gate::audit", tracing::Level::INFO) {
        return;
    }
    if !logbuf::is_on() {
        // in-process use without the binary's log setup: the subscriber, if any, formats it
        event(l);
        return;
    }
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        format_line(buf, l, SystemTime::now(), json());
        logbuf::append(buf.as_bytes(), false);
    });
}

/// The same decision as a `tracing` event (what the hand-made line reproduces).
fn event(l: &AuditLine<'_>) {
    tracing::info!(
        target: "jwt_gate::audit",
        outcome = l.outcome,
        reason = l.reason,
        status = l.status,
        alg = l.alg,
        kid = l.kid,
        iss = l.iss,
        uid_hash = l.uid_hash,
        jti_hash = l.jti_hash,
        client = %l.client,
        first_use_ms = l.first_use.map_or(-1, |f| f.0),
        first_use_client = %l.first_use.map_or_else(|| "-".to_string(), |f| f.1.to_string()),
        latency_us = l.latency_us,
        "login decision"
    );
}

/// One line, newline included.
pub fn format_line(buf: &mut String, l: &AuditLine<'_>, now: SystemTime, json: bool) {
    if json {
        buf.push_str("{\"timestamp\":\"");
        push_timestamp(buf, now);
        buf.push_str("\",\"level\":\"INFO\",\"message\":\"login decision\"");
        let json_str = |buf: &mut String, (name, value): (&str, &str)| {
            buf.push_str(",\"");
            buf.push_str(name);
            buf.push_str("\":");
            push_json_str(buf, value);
        };
        let (before, after) = l.strings();
        before.into_iter().for_each(|f| json_str(buf, f));
        buf.push_str(",\"status\":");
        push_u64(buf, u64::from(l.status));
        after.into_iter().for_each(|f| json_str(buf, f));
        buf.push_str(",\"client\":\"");
        push_ip(buf, l.client);
        buf.push_str("\",\"first_use_ms\":");
        push_i64(buf, l.first_use.map_or(-1, |f| f.0));
        buf.push_str(",\"first_use_client\":\"");
        push_first_client(buf, l);
        buf.push_str("\",\"latency_us\":");
        push_u64(buf, l.latency_us);
        buf.push_str(",\"target\":\"jwt_gate::audit\"}\n");
    } else {
        push_timestamp(buf, now);
        buf.push_str("  INFO jwt_gate::audit: login decision");
        let text_str = |buf: &mut String, (name, value): (&str, &str)| {
            buf.push(' ');
            buf.push_str(name);
            buf.push('=');
            push_debug_str(buf, value);
        };
        let (before, after) = l.strings();
        before.into_iter().for_each(|f| text_str(buf, f));
        buf.push_str(" status=");
        push_u64(buf, u64::from(l.status));
        after.into_iter().for_each(|f| text_str(buf, f));
        buf.push_str(" client=");
        push_ip(buf, l.client);
        buf.push_str(" first_use_ms=");
        push_i64(buf, l.first_use.map_or(-1, |f| f.0));
        buf.push_str(" first_use_client=");
        push_first_client(buf, l);
        buf.push_str(" latency_us=");
        push_u64(buf, l.latency_us);
        buf.push('\n');
    }
}

impl AuditLine<'_> {
    /// The string fields in the event's order: those before `status`, and those after it.
    #[allow(clippy::type_complexity)]
    fn strings(&self) -> ([(&'static str, &str); 2], [(&'static str, &str); 5]) {
        (
            [("outcome", self.outcome), ("reason", self.reason)],
            [
                ("alg", self.alg),
                ("kid", self.kid),
                ("iss", self.iss),
                ("uid_hash", self.uid_hash),
                ("jti_hash", self.jti_hash),
            ],
        )
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

fn push_i64(buf: &mut String, n: i64) {
    if n < 0 {
        buf.push('-');
    }
    push_u64(buf, n.unsigned_abs());
}

fn push_ip(buf: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                push_u64(buf, u64::from(*o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(buf, "{v6}");
        }
    }
}

fn push_first_client(buf: &mut String, l: &AuditLine<'_>) {
    match l.first_use {
        Some((_, ip)) => push_ip(buf, ip),
        None => buf.push('-'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sample<'a>(iss: &'a str, first_use: Option<(i64, IpAddr)>) -> AuditLine<'a> {
        AuditLine {
            outcome: "rejected",
            reason: "replayed",
            status: 401,
            alg: "HS256",
            kid: "-",
            iss,
            uid_hash: "f45b76f3ba72f3ae",
            jti_hash: "7af92a67ff4fab1b",
            client: "10.1.2.3".parse().unwrap(),
            first_use,
            latency_us: 38,
        }
    }

    /// What `tracing_subscriber`'s formatter prints for the same event (text or flattened
    /// JSON), without its timestamp.
    fn by_the_formatter(l: &AuditLine<'_>, json: bool) -> String {
        let out = Captured::default();
        let w = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || w.clone())
            .without_time();
        if json {
            let sub = builder.json().flatten_event(true).finish();
            tracing::subscriber::with_default(sub, || event(l));
        } else {
            tracing::subscriber::with_default(builder.finish(), || event(l));
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    fn by_hand(l: &AuditLine<'_>, json: bool) -> String {
        let mut buf = String::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_796_080_934_650_429);
        format_line(&mut buf, l, at, json);
        buf
    }

    #[test]
    fn the_text_line_is_the_formatters_to_the_byte() {
        let first = Some((1_796_097_772_293, "192.0.2.7".parse().unwrap()));
        for (iss, first_use) in [
            ("bench-idp", None),
            ("idp \"quoted\" \\ back", first),
            ("new\nline\ttab\u{1b}esc\u{301}accent é", first),
        ] {
            let l = sample(iss, first_use);
            let hand = by_hand(&l, false);
            let (stamp, rest) = hand.split_at("2026-11-30T23:22:14.650429Z".len());
            assert_eq!(stamp, "2026-11-30T23:22:14.650429Z");
            // the formatter without time starts at the level, padded the same way
            assert_eq!(
                rest.trim_start(),
                by_the_formatter(&l, false).trim_start(),
                "{iss:?}"
            );
        }
    }

    #[test]
    fn the_json_line_has_the_formatters_fields_and_values() {
        let first = Some((1_796_097_772_293, "2001:db8::1".parse().unwrap()));
        for (iss, first_use) in [("bench-idp", None), ("a\"b\\c\nd\u{1}é", first)] {
            let l = sample(iss, first_use);
            let hand: serde_json::Value = serde_json::from_str(&by_hand(&l, true)).unwrap();
            let theirs: serde_json::Value =
                serde_json::from_str(&by_the_formatter(&l, true)).unwrap();
            let mut hand = hand.as_object().unwrap().clone();
            assert_eq!(
                hand.remove("timestamp").unwrap(),
                "2026-11-30T23:22:14.650429Z"
            );
            assert_eq!(serde_json::Value::Object(hand), theirs, "{iss:?}");
        }
        // and the same key order, which people grep by
        let line = by_hand(&sample("x", None), true);
        let parts: Vec<&str> = line.split("\":").collect();
        let keys: Vec<&str> = parts[..parts.len() - 1]
            .iter()
            .filter_map(|p| p.rsplit('"').next())
            .collect();
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "outcome",
                "reason",
                "status",
                "alg",
                "kid",
                "iss",
                "uid_hash",
                "jti_hash",
                "client",
                "first_use_ms",
                "first_use_client",
                "latency_us",
                "target"
            ]
        );
    }
}
