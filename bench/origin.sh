# Sourced by bench/ab.sh and bench/callgrind.sh: a work directory removed on exit, an nginx
# origin (one worker) serving a 100-byte /small and a 1 MiB /1m.bin on $ORIGIN, and a gate
# config in $work/gate.toml forwarding $GATE to it. ORIGIN_LOG=on records the origin's
# connection number per request in $work/origin.log (upstream reuse); PIN wraps nginx
# (e.g. "taskset -c 0").
work=$(mktemp -d); chmod 755 "$work"   # nginx workers (www-data) must read the files
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/www"
head -c 100 /dev/zero | tr '\0' 'x' > "$work/www/small"
head -c 1048576 /dev/urandom > "$work/www/1m.bin"
if [ "${ORIGIN_LOG:-off}" = on ]; then
  origin_log="log_format c '\$connection'; access_log $work/origin.log c;"
else
  origin_log="access_log off;"
fi
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon on; pid $work/nginx.pid; error_log $work/nginx-error.log;
events { worker_connections 4096; }
http { $origin_log keepalive_requests 1000000; server { listen $ORIGIN; root $work/www; } }
NGX
${PIN:-} nginx -c "$work/nginx.conf" -p "$work"
cat > "$work/gate.toml" <<TOML
[listen]
addr = "$GATE"
[admin]
addr = ""
[upstream]
url = "http://$ORIGIN"
[provider]
secret = "bench-secret-0123456789abcdefghijklmnop"
[replay]
reject_issued_before_start = false
TOML
