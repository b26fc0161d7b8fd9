//! `[admin]`: the listener for `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;

use toml::Table;

use super::reader::Section;

pub const DEFAULT_ADDR: &str = "127.0.0.1:9090";

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when `addr = ""`: no admin listener.
    pub addr: Option<SocketAddr>,
    pub ready_requires_upstream: bool,
}

pub(crate) fn read(t: &Table, errs: &mut Vec<String>) -> AdminConfig {
    let mut s = Section::new("admin", t, errs);
    let addr: String = s.get("addr", DEFAULT_ADDR.to_string());
    let ready_requires_upstream = s.get("ready_requires_upstream", true);
    let addr = if addr.is_empty() {
        None
    } else {
        match addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                s.err("addr", format!("not an ip:port address: {addr:?}"));
                None
            }
        }
    };
    s.finish();
    AdminConfig {
        addr,
        ready_requires_upstream,
    }
}
