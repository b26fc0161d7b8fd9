#!/usr/bin/env bash
# CPU per sign-in with [idp], same run: the gate's CPU µs per callback for a GitLab-shaped
# token (verify + record) and for an IdP token (verify with the JWKS key + record + mint +
# verify the minted token + record), ES256 and RS256. JWKS traffic does not grow with
# sign-ins: one fetch per refresh (the IdP's max-age, bounded), plus at most one per
# idp.unknown_kid_interval; this run reads the set from a file.
#   bench/idp_cost.sh            # DURATION=5 CONNS=8 TOKENS=60000
# Origin and gate on CPU 0, wrk on CPU 1, loopback only; every run bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}; CONNS=${CONNS:-8}; TOKENS=${TOKENS:-60000}
ORIGIN=127.0.0.1:18180; GATE=127.0.0.1:18443
PIN="taskset -c 0" . bench/origin.sh
cargo build --release --quiet --bin jwt-gate --example mint_tokens
mint=target/release/examples/mint_tokens
hz=$(getconf CLK_TCK)
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ec.pem" 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
secret=bench-secret-0123456789abcdefghijklmnop
one() { # label config tokens
  JWT_GATE_LOG=warn taskset -c 0 target/release/jwt-gate run --config "$2" >"$work/gate.log" 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://$GATE/small" && break; sleep 0.05; done
  local t0; t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
  local out; out=$(TOKENS="$3" taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s bench/walk.lua "http://$GATE")
  local t1; t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
  local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local n; n=$(wc -l < "$3")
  if [ "$reqs" -ge "$n" ]; then echo "warning: $1 used every token (replays are cheaper); raise TOKENS" >&2; fi
  printf "| %-30s | %8s | %7s |\n" "$1" "$reqs" \
    "$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')"
}
printf "| %-30s | %8s | %7s |\n" "callback" "sign-ins" "CPU µs each"
printf "|---|---:|---:|\n"
# the HS256 path is about five times faster: five times the tokens
$mint "$secret" "$((TOKENS * 5))" 600 > "$work/hs.txt"
one "GitLab token, HS256" "$work/gate.toml" "$work/hs.txt"
for alg in ES256 RS256; do
  key=$work/ec.pem; [ $alg = RS256 ] && key=$work/rsa.pem
  $mint --jwks "$key" $alg bench > "$work/jwks-$alg.json"
  IDP_KID=bench $mint "$key" "$TOKENS" 600 $alg > "$work/idp-$alg.txt"
  cp "$work/gate.toml" "$work/idp-$alg.toml"
  printf '[idp]\njwks_file = "%s"\nissuer = "bench-idp"\naudience = "gitlab"\n' "$work/jwks-$alg.json" >> "$work/idp-$alg.toml"
  one "IdP token, $alg, minted HS256" "$work/idp-$alg.toml" "$work/idp-$alg.txt"
done
