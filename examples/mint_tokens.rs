//! Mint HS256 callback tokens for load tests: `cargo run --release --example mint_tokens -- SECRET N [VALID_SECONDS]`
//! prints N tokens, one per line, each with its own jti, issued now.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: mint_tokens SECRET N [VALID_SECONDS]");
        std::process::exit(2);
    }
    let secret = args[1].as_bytes();
    let n: u64 = args[2].parse().unwrap_or(1);
    let valid: i64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(600);
    let now = jwt_gate::unix_now();
    let mut out = String::new();
    for i in 0..n {
        let claims = serde_json::json!({
            "iss": "bench-idp", "name": "Bench User", "email": format!("user{i}@bench.example"),
            "iat": now, "exp": now + valid, "jti": format!("bench-{now}-{i}"),
        });
        out.push_str(&jwt_gate::demo::sign_hs256(secret, &claims));
        out.push('\n');
    }
    print!("{out}");
}
