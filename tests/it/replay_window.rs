//! Property: for any token and clock, if the verifier accepts a token at a time after its
//! first use, the replay store still holds its key then — in whole seconds (the memory
//! store) and on the wall clock (Redis' `PX`, set at any instant of the first use's second).

use jwt_gate::login::verify::{AuditInfo, Verifier};
use jwt_gate::replay::memory::MemoryStore;
use jwt_gate::replay::redis::ttl_ms;
use jwt_gate::replay::{FirstUse, Recorded};
use proptest::prelude::*;
use serde_json::json;

use crate::common::*;

const T0: i64 = 1_800_000_000;

fn verifier(valid_within: u64, skew: u64) -> Verifier {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[provider]\nsecret = \"{SECRET}\"\nvalid_within = {valid_within}\n[gate]\nmax_future_skew = {skew}\n[replay]\nreject_issued_before_start = false\n"
    );
    let cfg = jwt_gate::Config::from_toml_str(&text).unwrap();
    let (key, _) = jwt_gate::app::verify_key(&cfg).unwrap();
    Verifier::new(&cfg, key, None)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_store_holds_a_key_whenever_the_verifier_would_accept_it(
        valid_within in 1u64..400,
        skew in 0u64..120,
        iat_offset in -450i64..150,
        exp_offset in proptest::option::of(-10i64..900),
        later in 0i64..1000,
        first_ms in 0i64..1000,
        later_ms in 0i64..1000,
    ) {
        let v = verifier(valid_within, skew);
        let iat = T0 + iat_offset;
        let mut claims = json!({"name": "N", "email": "p@x", "iat": iat, "jti": "j"});
        if let Some(e) = exp_offset {
            claims["exp"] = json!(iat + e);
        }
        let token = hs256(&claims);
        let Ok(first) = v.verify(&token, T0, &mut AuditInfo::default(), &mut ()) else {
            return Ok(()); // not accepted at its first use: nothing to hold
        };
        let t = T0 + later;
        if v.verify(&token, t, &mut AuditInfo::default(), &mut ()).is_err() {
            return Ok(()); // refused by the verifier anyway
        }
        // memory: recorded at T0, asked again at t
        let store = MemoryStore::new(10);
        let use_ = FirstUse { at_ms: T0 * 1000, client: "192.0.2.1".parse().unwrap() };
        prop_assert_eq!(store.record(&first.replay_key, first.expires_at, T0, use_), Ok(Recorded::Fresh));
        prop_assert_eq!(
            store.record(&first.replay_key, first.expires_at, t, use_),
            Ok(Recorded::Replayed(Some(use_))),
            "memory forgot the key at t = T0 + {}", later
        );
        // Redis: set at T0 + first_ms with PX, asked at t + later_ms (wall clock, ms)
        let set_at = T0 * 1000 + first_ms;
        let dies_at = set_at + ttl_ms(first.expires_at, T0);
        let asked_at = t * 1000 + later_ms;
        prop_assert!(
            asked_at < dies_at,
            "Redis let the key expire at {} ms, the replay came at {} ms", dies_at, asked_at
        );
    }
}
