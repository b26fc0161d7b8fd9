//! The audit line of every login decision, formatted by hand into a reused buffer, as the
//! access line is (see `access`): through `tracing_subscriber`'s formatter it cost about
//! 20,000 instructions, 18 % of an HS256 callback under callgrind. Same fields, same shape
//! (text, or flattened JSON with `--log-format json`), same filter (`jwt_gate::audit` at
//! info); a unit test holds both shapes to what the formatter prints.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::SystemTime;

use super::access::json;
use super::line::{field, push_i64, push_ip, push_u64, Line};
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

/// One line, newline included, in the event's field order.
pub fn format_line(buf: &mut String, l: &AuditLine<'_>, now: SystemTime, json: bool) {
    let message = Some("login decision");
    if json {
        write_fields(Line::<true>::start(buf, now, TARGET, message), l);
    } else {
        write_fields(Line::<false>::start(buf, now, TARGET, message), l);
    }
}

fn write_fields<const JSON: bool>(mut line: Line<'_, JSON>, l: &AuditLine<'_>) {
    line.quoted(field!("outcome"), l.outcome);
    line.quoted(field!("reason"), l.reason);
    line.number(field!("status"), |b| push_u64(b, u64::from(l.status)));
    line.quoted(field!("alg"), l.alg);
    line.quoted(field!("kid"), l.kid);
    line.quoted(field!("iss"), l.iss);
    line.quoted(field!("uid_hash"), l.uid_hash);
    line.quoted(field!("jti_hash"), l.jti_hash);
    line.shown(field!("client"), |b| push_ip(b, l.client));
    line.number(field!("first_use_ms"), |b| {
        push_i64(b, l.first_use.map_or(-1, |f| f.0))
    });
    line.shown(field!("first_use_client"), |b| match l.first_use {
        Some((_, ip)) => push_ip(b, ip),
        None => b.push('-'),
    });
    line.number(field!("latency_us"), |b| push_u64(b, l.latency_us));
    line.end(TARGET);
}

const TARGET: &str = "jwt_gate::audit";

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
