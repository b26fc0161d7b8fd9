#!/usr/bin/env bash
# Quick throughput check on loopback: nginx as a fast origin, the gate in front, wrk as the
# load generator (pinned as in shared/reference/peer-proxy-baseline.md: origin and gate on
# CPU 0, wrk on CPU 1). Every run is bounded (DURATION seconds). Prints a table with req/s,
# p50/p99 latency, the gate's CPU microseconds per request and its RSS.
#   bench/quick.sh            # DURATION=10 CONNS=64 by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
for tool in wrk nginx taskset redis-server; do
  command -v $tool >/dev/null 2>&1 || { echo "installing wrk nginx-light"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light util-linux redis-server >/dev/null; break; }
done
cargo build --release --quiet --bin jwt-gate --example mint_tokens
BIN=target/release/jwt-gate
work=$(mktemp -d)
chmod 755 "$work"   # nginx workers (www-data) must read the files
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
ORIGIN=127.0.0.1:18180; GATE=127.0.0.1:18443
SECRET=bench-secret-0123456789abcdefghijklmnop

# origin: nginx with a 100-byte response, a 1 MiB file, and a 200 for callbacks
mkdir -p "$work/www/users/auth/jwt"
head -c 100 /dev/zero | tr '\0' 'x' > "$work/www/small"
head -c 1048576 /dev/urandom > "$work/www/1m.bin"
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen $ORIGIN; root $work/www;
    location = /users/auth/jwt/callback { return 200 "signed in\n"; } } }
NGX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work"

cat > "$work/gate.toml" <<TOML
[listen]
addr = "$GATE"
[admin]
addr = ""
[upstream]
url = "http://$ORIGIN"
[provider]
secret = "$SECRET"
[replay]
reject_issued_before_start = false
TOML
JWT_GATE_LOG=warn taskset -c 0 "$BIN" run --config "$work/gate.toml" & gate_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://$GATE/small" && break; sleep 0.05; done
idle_rss=$(awk '/VmRSS/ {print $2}' /proc/$gate_pid/status)

cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
hz=$(getconf CLK_TCK)

run() { # name url [lua] [non-2xx expected: yes]
  local name=$1 url=$2 lua=${3:-} non2xx_ok=${4:-}
  local args=(-t1 -c"$CONNS" -d"${DURATION}s" --latency)
  [ -n "$lua" ] && args+=(-s "$lua")
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "${url}" >/dev/null 2>&1 || true   # warm-up
  local t0; t0=$(cpu_ticks $gate_pid)
  local out; out=$(taskset -c 1 wrk "${args[@]}" "$url")
  local t1; t1=$(cpu_ticks $gate_pid)
  if [ -z "$non2xx_ok" ] && echo "$out" | grep -q "Non-2xx"; then
    echo "$name: the target answered non-2xx responses; the numbers would be meaningless:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps p50 p99 reqs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local cpu_us="-"
  if [[ "$url" == *"$GATE"* ]]; then cpu_us=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }'); fi
  local rss; rss=$(awk '/VmHWM/ {print $2}' /proc/$gate_pid/status)
  printf "| %-28s | %10s | %8s | %8s | %12s | %9s |\n" "$name" "$rps" "$p50" "$p99" "$cpu_us" "$((rss / 1024)) MiB"
}

TOKENS="$work/tokens.txt"
target/release/examples/mint_tokens "$SECRET" 400000 3600 > "$TOKENS"
replayed=$(head -1 "$TOKENS")
curl -s -o /dev/null "http://$GATE/users/auth/jwt/callback?jwt=$replayed"   # first use; the load then replays it

echo "jwt-gate quick bench: wrk -t1 -c$CONNS -d${DURATION}s, origin nginx $(nginx -v 2>&1 | cut -d/ -f2), $(nproc) cores; gate idle RSS $((idle_rss / 1024)) MiB"
printf "| %-28s | %10s | %8s | %8s | %12s | %9s |\n" scenario "req/s" p50 p99 "gate µs/req" "gate peak RSS"
printf "|%s|%s|%s|%s|%s|%s|\n" ------------------------------ ------------ ---------- ---------- -------------- -----------
run "direct /small" "http://$ORIGIN/small"
run "gate /small" "http://$GATE/small"
run "direct /1m.bin" "http://$ORIGIN/1m.bin"
run "gate /1m.bin" "http://$GATE/1m.bin"
run "gate callback, replayed (401)" "http://$GATE/users/auth/jwt/callback?jwt=$replayed" "" yes
TOKENS=$TOKENS run "direct callback, fresh tokens" "http://$ORIGIN" bench/walk.lua
TOKENS=$TOKENS run "gate callback, fresh, memory" "http://$GATE" bench/walk.lua

# the same with the Redis store (one SET NX PX round trip per login), Redis on CPU 0 too
kill $gate_pid; wait $gate_pid 2>/dev/null || true
REDIS_PORT=18379
taskset -c 0 redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$work/redis.pid" --dir "$work" >/dev/null
sed -i 's/^reject_issued_before_start = false$/store = "redis"\nredis_url = "redis:\/\/127.0.0.1:'$REDIS_PORT'"\nreject_issued_before_start = false/' "$work/gate.toml"
JWT_GATE_LOG=warn taskset -c 0 "$BIN" run --config "$work/gate.toml" & gate_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://$GATE/small" && break; sleep 0.05; done
target/release/examples/mint_tokens "$SECRET" 400000 3600 > "$TOKENS"
TOKENS=$TOKENS run "gate callback, fresh, redis" "http://$GATE" bench/walk.lua
kill "$(cat "$work/redis.pid")" 2>/dev/null || true
