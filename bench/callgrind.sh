#!/usr/bin/env bash
# Instructions per proxied request for one gate binary, the repeatable measure on this noisy
# VM: the gate under callgrind behind nothing, an nginx origin, a fixed number of small GETs
# (h2load --h1, 16 connections) at N1 and N2 requests; (I(N2) - I(N1)) / (N2 - N1) removes
# start-up and shutdown. Access log on (the default level) unless GATE_LOG says otherwise.
#   bench/callgrind.sh BIN [PATH]      # PATH=/small by default
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$1; PATH_=${2:-/small}; N1=${N1:-1000}; N2=${N2:-5000}; LOG=${GATE_LOG:-info}
for t in valgrind h2load nginx; do command -v $t >/dev/null || { echo "needs $t (apt-get install valgrind nghttp2-client nginx-light)" >&2; exit 2; }; done
ORIGIN=127.0.0.1:18181; GATE=127.0.0.1:18444
ORIGIN_LOG=off PIN="" . bench/origin.sh
count() { # requests -> instructions
  JWT_GATE_LOG=$LOG valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" "$BIN" run --config "$work/gate.toml" >"$work/gate.$1.log" 2>&1 & local pid=$!
  for _ in $(seq 300); do curl -s -o /dev/null "http://$GATE$PATH_" && break; sleep 0.1; done
  h2load --h1 -n "$1" -c 16 "http://$GATE$PATH_" >/dev/null
  kill -TERM $pid; wait $pid 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then cp "$work/cg.$1" "$KEEP.$1"; fi
  awk '/^summary:|^totals:/ {print $2; exit}' "$work/cg.$1"
}
i1=$(count "$N1"); i2=$(count "$N2")
echo "$BIN $PATH_: $(( (i2 - i1) / (N2 - N1) )) instructions per request ($i1 at $N1, $i2 at $N2)"
