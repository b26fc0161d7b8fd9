#!/usr/bin/env bash
# Soak: DURATION seconds (default 600) of mixed traffic through the gate on loopback —
# pass-through GETs and POSTs, fresh logins, replays and garbage tokens — in 60-second
# slices, each with freshly minted tokens. Samples the gate's RSS and open file descriptors
# every 5 s and fails when they grow beyond what the replay store's bounded size explains.
#   bench/soak.sh                 # 10 minutes
#   DURATION=180 bench/soak.sh    # 3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
SLICE=${SLICE:-60}
for tool in wrk nginx; do command -v $tool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null; break; }; done
cargo build --release --quiet --bin jwt-gate --example mint_tokens
BIN=target/release/jwt-gate
work=$(mktemp -d); chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
ORIGIN=127.0.0.1:18181; GATE=127.0.0.1:18444; ADMIN=127.0.0.1:19091
SECRET=soak-secret-0123456789abcdefghijklmnopq
mkdir -p "$work/www/users/auth/jwt" "$work/www/api/v4"
head -c 100 /dev/zero | tr '\0' x > "$work/www/small"
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen $ORIGIN; root $work/www;
    location = /users/auth/jwt/callback { return 200 "signed in\n"; }
    location = /api/v4/echo { return 200 "ok\n"; } } }
NGX
nginx -c "$work/nginx.conf" -p "$work"
cat > "$work/gate.toml" <<TOML
[listen]
addr = "$GATE"
[admin]
addr = "$ADMIN"
[upstream]
url = "http://$ORIGIN"
[provider]
secret = "$SECRET"
valid_within = 90
[gate]
max_future_skew = 5
[replay]
max_entries = 2000000
sweep_interval = 5
reject_issued_before_start = false
TOML
JWT_GATE_LOG=warn "$BIN" run --config "$work/gate.toml" & gate_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://$GATE/small" && break; sleep 0.05; done

sample() { # rss_kib fds entries
  local rss fds entries
  rss=$(awk '/VmRSS/ {print $2}' /proc/$gate_pid/status)
  fds=$(ls /proc/$gate_pid/fd | wc -l)
  entries=$(curl -s "http://$ADMIN/readyz" | sed -nE 's/.*\(([0-9]+) entries\).*/\1/p')
  echo "$rss ${fds} ${entries:-0}"
}
( while kill -0 $gate_pid 2>/dev/null; do echo "$(date +%s) $(sample)"; sleep 5; done ) > "$work/samples" &

slices=$(( (DURATION + SLICE - 1) / SLICE ))
total=0
quiet_fds=()
for i in $(seq "$slices"); do
  target/release/examples/mint_tokens "$SECRET" 200000 120 > "$work/tokens"
  out=$(TOKENS="$work/tokens" wrk -t2 -c64 -d"${SLICE}s" -s bench/mixed.lua "http://$GATE")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  total=$((total + reqs))
  sleep 2   # let the slice's connections close: descriptors are compared at quiet points
  quiet_fds+=("$(sample | awk '{print $2}')")
  echo "slice $i/$slices: $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s, $(echo "$out" | grep -c 'Socket errors' || true) socket-error lines; gate $(sample | awk '{printf "RSS %d MiB, %d fds, %d store entries", $1/1024, $2, $3}')"
  [ "$i" -eq 1 ] && warm=$(sample)
done
sleep 6
read -r warm_rss warm_fds _ <<< "$warm"
max_rss=$(awk '{print $2}' "$work/samples" | sort -n | tail -1)
max_fds=$(printf '%s\n' "${quiet_fds[@]}" | sort -n | tail -1)
max_entries=$(awk '{print $4}' "$work/samples" | sort -n | tail -1)
# what the bounded store may legitimately add: ~200 bytes an entry, plus 16 MiB of slack
allow_kib=$(( max_entries * 200 / 1024 + 16 * 1024 ))
echo "soak: ${DURATION}s, $total requests; RSS after slice 1 $((warm_rss / 1024)) MiB, max $((max_rss / 1024)) MiB (allowed growth $((allow_kib / 1024)) MiB for up to $max_entries store entries); open fds at quiet points after slice 1 $warm_fds, max $max_fds"
status=0
if [ $((max_rss - warm_rss)) -gt "$allow_kib" ]; then echo "FAIL: RSS grew beyond the replay store's bound"; status=1; fi
if [ $((max_fds - warm_fds)) -gt 8 ]; then echo "FAIL: open file descriptors grew between quiet points"; status=1; fi
kill -0 $gate_pid || { echo "FAIL: the gate died"; status=1; }
[ $status -eq 0 ] && echo "soak: passed"
exit $status
