//! The error-collecting TOML reader: one [`Section`] per table, read key by key, so that
//! every problem (an unknown key, a wrong type, a value out of range) is reported at once,
//! each naming its key.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

/// Reads one TOML table key by key, remembering which keys it knew, so that `finish`
/// can report the unknown ones. Errors go to the shared list, prefixed with the key path.
pub(crate) struct Section<'a> {
    prefix: &'static str,
    table: &'a Table,
    known: BTreeSet<&'static str>,
    pub(crate) errs: &'a mut Vec<String>,
}

impl<'a> Section<'a> {
    pub(crate) fn new(prefix: &'static str, table: &'a Table, errs: &'a mut Vec<String>) -> Self {
        Section {
            prefix,
            table,
            known: BTreeSet::new(),
            errs,
        }
    }

    fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(crate) fn err(&mut self, key: &str, msg: impl std::fmt::Display) {
        let p = self.path(key);
        self.errs.push(format!("{p}: {msg}"));
    }

    pub(crate) fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.insert(key);
        self.table.get(key)
    }

    /// A sub-table (absent = empty).
    pub(crate) fn table(&mut self, key: &'static str) -> Table {
        match self.raw(key) {
            None => Table::new(),
            Some(Value::Table(t)) => t.clone(),
            Some(other) => {
                self.err(key, format!("expected a table, found {}", other.type_str()));
                Table::new()
            }
        }
    }

    pub(crate) fn opt<T: DeserializeOwned>(&mut self, key: &'static str) -> Option<T> {
        let v = self.raw(key)?.clone();
        match v.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let msg = e.to_string();
                self.err(key, msg.trim());
                None
            }
        }
    }

    pub(crate) fn get<T: DeserializeOwned>(&mut self, key: &'static str, default: T) -> T {
        self.opt(key).unwrap_or(default)
    }

    /// Seconds as an integer or a float, > 0.
    pub(crate) fn secs(&mut self, key: &'static str, default: Duration) -> Duration {
        let v: f64 = self.get(key, default.as_secs_f64());
        if !(v.is_finite() && v > 0.0 && v < 1e9) {
            self.err(key, "must be a positive number of seconds");
            return default;
        }
        Duration::from_secs_f64(v)
    }

    pub(crate) fn positive(&mut self, key: &'static str, default: u64, max: u64) -> u64 {
        let v: i64 = self.get(key, default as i64);
        if v < 1 || v as u64 > max {
            self.err(key, format!("must be between 1 and {max}"));
            return default;
        }
        v as u64
    }

    /// A table of names to claim names (`info_map`, `idp.claims`); absent: `default`.
    pub(crate) fn claim_map(
        &mut self,
        key: &'static str,
        default: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let t: Option<Table> = self.opt(key);
        let Some(t) = t else {
            return default
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        };
        let mut map = Vec::new();
        for (k, v) in t {
            match v {
                Value::String(claim) => map.push((k, claim)),
                other => self.err(
                    key,
                    format!(
                        "{k}: expected a claim name string, found {}",
                        other.type_str()
                    ),
                ),
            }
        }
        map
    }

    /// A list of CIDR ranges or single addresses (an address is its /32 or /128).
    pub(crate) fn cidrs(&mut self, key: &'static str) -> Vec<ipnet::IpNet> {
        let items: Vec<String> = self.get(key, Vec::new());
        let mut out = Vec::new();
        for p in items {
            match p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            {
                Ok(n) => out.push(n),
                Err(_) => self.err(key, format!("not a CIDR or IP address: {p:?}")),
            }
        }
        out
    }

    /// Report every key of the table that no read asked for.
    pub(crate) fn finish(self) {
        let unknown: Vec<String> = self
            .table
            .keys()
            .filter(|k| !self.known.contains(k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            let p = if self.prefix.is_empty() {
                format!("[{k}]")
            } else {
                format!("{}.{k}", self.prefix)
            };
            let expected: Vec<&str> = self.known.iter().copied().collect();
            self.errs.push(format!(
                "{p}: unknown key (expected one of: {})",
                expected.join(", ")
            ));
        }
    }
}
