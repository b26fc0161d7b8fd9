#!/usr/bin/env python3
"""What each Redis store setting costs per login, on loopback: one Redis (with one replica),
and a Redis Cluster of three primaries (each with one replica), each with
redis_min_replicas 0 and 1. The gate sits in front of a tiny upstream; 500 sequential HS256
logins (after 100 to warm up) per setting; prints client-side p50/p99 in microseconds.
Bounded, loopback only.
    python3 bench/redis_wait.py target/release/jwt-gate
"""
import base64, hashlib, hmac, http.client, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = b"hostile-bench-secret-0123456789abcdef"
PREFIX = "jwt-gate:replay:"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def tok(i):
    h = b64(b'{"alg":"HS256"}')
    p = b64(json.dumps({"name": "N", "email": f"u{i}@x", "iat": int(time.time()),
                        "jti": f"w{i}-{os.getpid()}-{time.time()}"}).encode())
    s = hmac.new(SECRET, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(s)}"


procs = []
work = tempfile.mkdtemp(prefix="redis-wait-")


def redis(port, *extra):
    d = os.path.join(work, str(port))
    os.makedirs(d, exist_ok=True)
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--repl-diskless-sync-delay", "0", "--dir", d, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def cli(*a):
    return subprocess.run(["redis-cli", *a], capture_output=True, text=True, check=True).stdout


def wait_replicas(ports, want):
    for _ in range(200):
        if all(f"connected_slaves:{want}" in cli("-p", str(p), "info", "replication")
               and "state=online" in cli("-p", str(p), "info", "replication") for p in ports):
            return
        time.sleep(0.05)
    sys.exit("replicas did not attach")


# one Redis with a replica; a cluster of three primaries, each with a replica
redis(16501)
redis(16502, "--replicaof", "127.0.0.1", "16501")
cluster = [16511, 16512, 16513, 16514, 16515, 16516]
for p in cluster:
    redis(p, "--cluster-enabled", "yes", "--cluster-node-timeout", "2000")
time.sleep(0.5)
cli("--cluster", "create", *[f"127.0.0.1:{p}" for p in cluster], "--cluster-replicas", "1", "--cluster-yes")
for _ in range(200):
    if all("cluster_state:ok" in cli("-p", str(p), "cluster", "info") for p in cluster):
        break
    time.sleep(0.05)
primaries = [p for p in cluster if "role:master" in cli("-p", str(p), "info", "replication")]
wait_replicas([16501], 1)
wait_replicas(primaries, 1)
# stores in use before the gate came: epochs from the past (a fresh one refuses its first second)
old = f"{int(time.time()) - 60}-bench"
cli("-p", "16501", "set", f"{PREFIX}epoch", old)
for b in range(256):
    cli("-c", "-p", "16511", "set", f"{PREFIX}{{{b:02x}}}epoch", old)


class U(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


up = ThreadingHTTPServer(("127.0.0.1", 0), U)
threading.Thread(target=up.serve_forever, daemon=True).start()
single = '"redis://127.0.0.1:16501/0"'
seeds = "[" + ", ".join(f'"redis://127.0.0.1:{p}"' for p in cluster) + "]"
res = {}
for name, url, n in [("redis", single, 0), ("redis", single, 1), ("cluster", seeds, 0), ("cluster", seeds, 1)]:
    cfg = os.path.join(work, "g.toml")
    open(cfg, "w").write(
        f'[listen]\naddr = "127.0.0.1:0"\n[admin]\naddr = ""\n[upstream]\nurl = "http://127.0.0.1:{up.server_address[1]}"\n'
        f'[provider]\nsecret = "{SECRET.decode()}"\n[replay]\nstore = "redis"\nredis_url = {url}\nredis_min_replicas = {n}\n')
    g = subprocess.Popen([sys.argv[1], "run", "--config", cfg],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    addr = None
    while not addr:
        line = g.stdout.readline()
        if not line:
            sys.exit("the gate exited")
        m = re.search(r"jwt-gate listening addr=127.0.0.1:(\d+)", line)
        if m:
            addr = int(m.group(1))
    threading.Thread(target=lambda: [None for _ in g.stdout], daemon=True).start()
    c = http.client.HTTPConnection("127.0.0.1", addr)
    lat = []
    for i in range(600):
        t = tok(i)
        t0 = time.perf_counter()
        c.request("GET", f"/users/auth/jwt/callback?jwt={t}")
        r = c.getresponse()
        body = r.read()
        dt = time.perf_counter() - t0
        assert r.status == 200, (name, n, r.status, body[:200])
        if i >= 100:
            lat.append(dt)
    lat.sort()
    res[f"{name} min_replicas={n}"] = {"p50_us": round(lat[len(lat) // 2] * 1e6),
                                       "p99_us": round(lat[int(len(lat) * 0.99)] * 1e6)}
    g.kill()
    g.wait()
for p in procs:
    p.kill()
    p.wait()
shutil.rmtree(work, ignore_errors=True)
for k, v in res.items():
    print(f"{k:28} p50 {v['p50_us']:5} µs   p99 {v['p99_us']:5} µs")
