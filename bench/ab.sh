#!/usr/bin/env bash
# A/B of two gate binaries on the same origin, alternated, at the gate's default log level
# (access log on): small GET and 1 MiB GET, gate CPU µs per request, req/s, p99, peak RSS,
# and the upstream connections the gate opened (nginx origin's $connection count).
#   bench/ab.sh OLD_BIN NEW_BIN [ROUNDS]      # DURATION=8 CONNS=64
# Origin and gate on CPU 0, wrk on CPU 1, loopback only; every run bounded by DURATION.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; ROUNDS=${3:-2}
DURATION=${DURATION:-8}; CONNS=${CONNS:-64}; LOG=${GATE_LOG:-info}
ORIGIN=127.0.0.1:18180; GATE=127.0.0.1:18443
ORIGIN_LOG=on PIN="taskset -c 0" . bench/origin.sh
hz=$(getconf CLK_TCK)
one() { # bin path
  JWT_GATE_LOG=$LOG taskset -c 0 "$1" run --config "$work/gate.toml" >"$work/gate.log" 2>&1 & local pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://$GATE/small" && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://$GATE$2" >/dev/null 2>&1 || true
  : > "$work/origin.log"
  local t0; t0=$(awk '{print $14 + $15}' /proc/$pid/stat)
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://$GATE$2")
  local t1; t1=$(awk '{print $14 + $15}' /proc/$pid/stat)
  local rss; rss=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local reqs rps p99 conns lines
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  conns=$(sort -u "$work/origin.log" | wc -l)
  lines=$(grep -c 'jwt_gate::access' "$work/gate.log" || true)
  printf "| %-6s | %-8s | %10s | %8s | %8s | %7s MiB | %9s | %10s |\n" "$3" "$2" "$rps" "$p99" \
    "$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$reqs" 'BEGIN { printf "%.1f", (b - a) * 1e6 / hz / n }')" \
    "$((rss / 1024))" "$conns" "$lines"
}
printf "| %-6s | %-8s | %10s | %8s | %8s | %11s | %9s | %10s |\n" build path "req/s" p99 "µs/req" "peak RSS" "upstream conns" "log lines"
for r in $(seq "$ROUNDS"); do
  for path in ${PATHS:-/small /1m.bin}; do one "$A" "$path" A; one "$B" "$path" B; done
done
