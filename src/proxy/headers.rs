//! Header rules applied to every forwarded request and response.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// RFC 9110 §7.6.1: hop-by-hop fields, plus the legacy ones proxies still see.
static UPGRADE: HeaderName = header::UPGRADE;
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Which of the fixed hop-by-hop fields `name` is (its index in [`HOP_BY_HOP`]; `Upgrade`
/// is the last), by one match on the lower-case name hyper keeps.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "proxy-authorization" => 6,
        "proxy-authenticate" => 7,
        "upgrade" => HOP_BY_HOP.len(),
        _ => return None,
    })
}

/// Whether a `Connection` value names only fields the fixed list removes anyway (or, for
/// `upgrade`, keeps on purpose): `keep-alive` and `upgrade`, the values nearly every
/// message carries. Anything else (`close` included: it names a field `close`) takes the
/// general path.
fn connection_names_only_fixed(value: &HeaderValue) -> bool {
    value.as_bytes().split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"upgrade")
    })
}

/// Remove hop-by-hop fields: `Connection` and every field it names, the fixed list above,
/// and `Upgrade` unless the message is an upgrade being tunnelled (then `Connection:
/// upgrade` and `Upgrade` are set again by the caller).
///
/// One scan over the fields present finds both the fixed ones (a bit each) and whether
/// `Connection` names any other; removals follow only for what was found. A message without
/// hop-by-hop fields costs no hash lookup, and `Connection: keep-alive` (every response of
/// a keep-alive origin) no parsing of the names it lists (callgrind: the general path was
/// ~1,500 instructions of a proxied request's 47,000).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut found = 0u16;
    let mut names_others = false;
    for (k, v) in headers.iter() {
        let Some(i) = hop_by_hop_index(k) else {
            continue;
        };
        found |= 1 << i;
        if i == 0 && !connection_names_only_fixed(v) {
            names_others = true;
        }
    }
    if names_others {
        remove_connection_named(headers, keep_upgrade);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if !keep_upgrade && found & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(&UPGRADE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Every field a `Connection` value names (RFC 9110 §7.6.1), `Upgrade` spared for a
/// tunnelled upgrade.
fn remove_connection_named(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            headers.remove(&n);
        }
    }
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`)?
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Matches identity header names the way Rack sees them: case-insensitive, `_` equal to `-`
/// (Rack maps `X_Auth_Request_User` and `X-Auth-Request-User` onto one variable).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Lower-cased prefixes with `_` folded to `-` (always includes `x-auth-request-`).
    prefixes: Vec<Vec<u8>>,
    /// Lower-cased exact names with `_` folded to `-`.
    names: Vec<Vec<u8>>,
}

fn fold(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

fn folded(s: &str) -> Vec<u8> {
    s.bytes().map(fold).collect()
}

/// Whether `s` starts with `pat` (already folded), comparing `s` folded.
fn starts_folded(s: &[u8], pat: &[u8]) -> bool {
    s.len() >= pat.len() && s.iter().zip(pat).all(|(&a, &b)| fold(a) == b)
}

/// Remove every header whose name `doomed` picks (the names are collected first: a map
/// cannot be changed while it is walked).
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|k| doomed(k)).cloned().collect();
    for k in names {
        headers.remove(k);
    }
}

impl IdentityHeaders {
    pub fn new(prefix: &str, names: &[&HeaderName]) -> IdentityHeaders {
        let mut prefixes = vec![b"x-auth-request-".to_vec()];
        let p = folded(prefix);
        if !prefixes.contains(&p) {
            prefixes.push(p);
        }
        IdentityHeaders {
            prefixes,
            names: names.iter().map(|n| folded(n.as_str())).collect(),
        }
    }

    pub fn matches(&self, name: &HeaderName) -> bool {
        let n = name.as_str().as_bytes();
        self.prefixes.iter().any(|p| starts_folded(n, p))
            || self
                .names
                .iter()
                .any(|p| n.len() == p.len() && starts_folded(n, p))
    }

    /// Remove every client-sent identity header.
    pub fn strip(&self, headers: &mut HeaderMap) {
        remove_where(headers, |k| self.matches(k));
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
static XRI: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether `name` (lower case, as hyper keeps it) claims the client's address, scheme, host
/// or port, in any spelling Rack, Puma or Rails may read: `_` for `-` (Puma before 6.4.3
/// and Rack's env mapping), `X-Forwarded-Scheme`/`-Ssl` (read by Rack 2.2 before
/// `-Proto`), `X-Original-*`, `Forwarded`, and the client-IP headers of CDNs.
fn claims_client_address(name: &str) -> bool {
    const EXACT: [&[u8]; 6] = [
        b"forwarded",
        b"x-real-ip",
        b"client-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
    ];
    const PREFIXES: [&[u8]; 2] = [b"x-forwarded-", b"x-original-"];
    let n = name.as_bytes();
    EXACT
        .iter()
        .any(|p| n.len() == p.len() && starts_folded(n, p))
        || PREFIXES
            .iter()
            .any(|p| n.len() > p.len() && starts_folded(n, p))
}

/// From an untrusted peer, every header that claims the client's address is removed before
/// the gate sets what it knows.
fn strip_client_address_claims(headers: &mut HeaderMap) {
    remove_where(headers, |k| claims_client_address(k.as_str()));
}

/// The client's address: the peer, or behind trusted proxies the right-most address of
/// X-Forwarded-For that is not one of them (RFC 7239 §7.4: only the trusted part of the
/// chain is believed).
pub fn real_client(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = headers
        .get_all(&XFF)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    let mut client = peer;
    for hop in hops.collect::<Vec<_>>().into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            // an unparseable hop ends what can be believed
            Err(_) => return client,
        }
    }
    client
}

thread_local! {
    /// The last peer address seen on this thread, as a header value.
    static PEER_VALUE: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `peer` as a header value. A gate's peers are few (an ingress controller's pods, a load
/// balancer, the node's nginx), and formatting an address was ~1,300 of a proxied request's
/// 47,000 instructions (callgrind), so the last one is kept per thread; a clone of it only
/// counts a reference. An IP address always makes a valid header value.
fn peer_value(peer: IpAddr) -> Option<HeaderValue> {
    PEER_VALUE.with_borrow_mut(|last| {
        if let Some((ip, v)) = last.as_ref() {
            if *ip == peer {
                return Some(v.clone());
            }
        }
        let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(peer.to_string())).ok()?;
        *last = Some((peer, v.clone()));
        Some(v)
    })
}

/// Set X-Forwarded-For/-Proto/-Host and X-Real-IP from the accepted connection. From an
/// untrusted peer, what the client sent is replaced (and `Forwarded` dropped); from a
/// trusted proxy, the peer is appended to X-Forwarded-For and the client's -Proto/-Host kept.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &'static str,
    host: Option<HeaderValue>,
    trusted: &[IpNet],
) {
    let peer_trusted = trusted.iter().any(|n| n.contains(&peer));
    if peer_trusted {
        let peer_text = peer.to_string();
        let real = real_client(headers, peer, trusted).to_string();
        let mut chain: Vec<String> = headers
            .get_all(&XFF)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        chain.push(peer_text);
        if let Ok(v) = HeaderValue::from_str(&chain.join(", ")) {
            headers.insert(&XFF, v);
        }
        if let Ok(v) = HeaderValue::from_str(&real) {
            headers.insert(&XRI, v);
        }
        if !headers.contains_key(&XFP) {
            headers.insert(&XFP, HeaderValue::from_static(proto));
        }
        if !headers.contains_key(&XFH) {
            if let Some(h) = host {
                headers.insert(&XFH, h);
            }
        }
    } else {
        strip_client_address_claims(headers);
        if let Some(v) = peer_value(peer) {
            headers.insert(&XFF, v.clone());
            headers.insert(&XRI, v);
        }
        headers.insert(&XFP, HeaderValue::from_static(proto));
        match host {
            Some(h) => {
                headers.insert(&XFH, h);
            }
            None => {
                headers.remove(&XFH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_fixed_list_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep"]);
    }

    #[test]
    fn the_keep_alive_fast_path_removes_what_the_general_one_does() {
        let build = |connection: &'static str| {
            let mut h = HeaderMap::new();
            h.append(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            h.insert("close", HeaderValue::from_static("named"));
            h.insert("x-foo", HeaderValue::from_static("named"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            h.insert("x-keep", HeaderValue::from_static("1"));
            h
        };
        let left = |h: &HeaderMap| {
            let mut k: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            k.sort();
            k
        };
        for (connection, keep_upgrade, want) in [
            ("keep-alive", false, vec!["close", "x-foo", "x-keep"]),
            (
                "Keep-Alive , upgrade",
                false,
                vec!["close", "x-foo", "x-keep"],
            ),
            (
                "upgrade",
                true,
                vec!["close", "connection", "upgrade", "x-foo", "x-keep"],
            ),
            ("close", false, vec!["x-foo", "x-keep"]),
            ("keep-alive, X-Foo", false, vec!["close", "x-keep"]),
            (
                "x-foo, upgrade",
                true,
                vec!["close", "connection", "upgrade", "x-keep"],
            ),
        ] {
            let mut h = build(connection);
            strip_hop_by_hop(&mut h, keep_upgrade);
            assert_eq!(left(&h), want, "{connection:?} keep_upgrade={keep_upgrade}");
        }
        // Connection repeated: the second value's names count too
        let mut h = build("keep-alive");
        h.append(header::CONNECTION, HeaderValue::from_static("x-foo"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(left(&h), vec!["close", "x-keep"]);
    }

    #[test]
    fn identity_names_match_with_underscores_and_any_case() {
        let user = HeaderName::from_static("x-remote-user");
        let id = IdentityHeaders::new("X-Auth-Request-", &[&user]);
        for n in [
            "x-auth-request-user",
            "x_auth_request_email",
            "x-auth_request-anything",
            "x_remote_user",
            "x-remote-user",
        ] {
            assert!(
                id.matches(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
        for n in ["x-auth-requestuser", "x-remote-username", "authorization"] {
            assert!(
                !id.matches(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_client_address_claim_is_recognised() {
        for n in [
            "x-forwarded-for",
            "x-forwarded_for",
            "x_forwarded_scheme",
            "x-forwarded-ssl",
            "x-forwarded-port",
            "x_real_ip",
            "client-ip",
            "true-client-ip",
            "x-original-url",
            "forwarded",
        ] {
            assert!(claims_client_address(n), "{n}");
        }
        for n in [
            "x-forwarded",
            "forwarded-by-me",
            "x-request-id",
            "authorization",
        ] {
            assert!(!claims_client_address(n), "{n}");
        }
    }

    #[test]
    fn forwarded_headers_are_replaced_for_untrusted_and_appended_for_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "10.0.0.9".parse().unwrap(),
            "http",
            Some(HeaderValue::from_static("gl.example")),
            &[],
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-real-ip"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gl.example");

        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7, 10.1.1.1"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), "http", None, &trusted);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.1.1.1, 10.0.0.9");
        assert_eq!(h["x-real-ip"], "203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
