#!/usr/bin/env python3
"""Redis failover under login load, on hosts of this machine's own making (issue 17).

Each party is a network-namespace host on a bridge this script creates and removes:
a Redis master and two replicas, three Sentinels, three gates; the load generator and a
recording upstream (stand-in GitLab) sit in the root namespace on the bridge. Traffic goes
only to those addresses. Needs root (ip netns), redis-server and a built gate.

    python3 bench/failover.py                      # every scenario, safe and unsafe settings
    SCENARIOS="partition" SETTINGS="unsafe" python3 bench/failover.py

Load: fresh HS256 tokens at RATE logins/s, each sent to one gate, then replayed 150 ms
later at another gate. The upstream counts callbacks per jti: a jti seen twice is an
accepted replay. Per scenario: logins refused (503) and for how long, time to recover,
and replays accepted.

Scenarios (each starts from a fresh topology):
- kill:      SIGKILL the master; Sentinel promotes a replica.
- partition: the master loses its replicas and Sentinels (its replies to them are
             blackholed) while gate 1 still reaches it; Sentinel promotes a replica, and
             gate 1 keeps writing to the old master until it notices.
- empty:     the master restarts at once, empty (no persistence): its replicas resync
             from it and every record is gone.
Settings: safe = redis_min_replicas 1 (and the store epoch, always on); unsafe = 0.
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATE = Path(os.environ.get("GATE_BIN", ROOT / "target/release/jwt-gate"))
RATE = float(os.environ.get("RATE", "40"))
BEFORE = float(os.environ.get("BEFORE", "4"))      # seconds of load before the fault
AFTER = float(os.environ.get("AFTER", "16"))       # seconds of load after it
SCENARIOS = os.environ.get("SCENARIOS", "kill partition empty").split()
SETTINGS = os.environ.get("SETTINGS", "unsafe safe").split()
SECRET = b"failover-secret-0123456789abcdefghijkl"
BR = "jgfo0"
NET = "10.77.0"
HOST_IP = f"{NET}.1"
UPSTREAM_PORT = 18080
REDIS = {"r1": 11, "r2": 12, "r3": 13}
SENTINELS = {"s1": 21, "s2": 22, "s3": 23}
GATES = {"g1": 31, "g2": 32, "g3": 33}
ALL = {**REDIS, **SENTINELS, **GATES}


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def ip_of(host):
    return f"{NET}.{ALL[host]}"


def in_ns(host, *args, **kw):
    return subprocess.Popen(["ip", "netns", "exec", f"jgfo-{host}", *args], **kw)


# ---------------------------------------------------------------- the network


def net_up():
    net_down()
    sh("ip", "link", "add", BR, "type", "bridge")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BR)
    sh("ip", "link", "set", BR, "up")
    for host, n in ALL.items():
        ns = f"jgfo-{host}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"jgfo{n}a", "type", "veth", "peer", "name", f"jgfo{n}b")
        sh("ip", "link", "set", f"jgfo{n}a", "master", BR)
        sh("ip", "link", "set", f"jgfo{n}a", "up")
        sh("ip", "link", "set", f"jgfo{n}b", "netns", ns)
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{NET}.{n}/24", "dev", f"jgfo{n}b")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"jgfo{n}b", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")


def net_down():
    for host, n in ALL.items():
        sh("ip", "netns", "del", f"jgfo-{host}", check=False)
        sh("ip", "link", "del", f"jgfo{n}a", check=False)
    sh("ip", "link", "del", BR, check=False)


# ---------------------------------------------------------------- the parties


class Topology:
    def __init__(self, work, min_replicas):
        self.work = work
        self.procs = {}
        for host in REDIS:
            self.start_redis(host)
        self.wait_replicas_online()
        for host, n in SENTINELS.items():
            conf = work / f"{host}.conf"
            conf.write_text(
                f"port 26379\nbind {ip_of(host)}\nprotected-mode no\ndaemonize no\n"
                f"sentinel monitor jg {ip_of('r1')} 6379 2\n"
                "sentinel down-after-milliseconds jg 1000\n"
                "sentinel failover-timeout jg 4000\nsentinel parallel-syncs jg 2\n")
            self.procs[host] = in_ns(host, "redis-server", str(conf), "--sentinel",
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for host in GATES:
            cfg = work / f"{host}.toml"
            sentinels = ", ".join(f'"{ip_of(s)}:26379"' for s in SENTINELS)
            cfg.write_text(
                f'[listen]\naddr = "{ip_of(host)}:8443"\n[admin]\naddr = "{ip_of(host)}:9090"\n'
                f'[upstream]\nurl = "http://{HOST_IP}:{UPSTREAM_PORT}"\n'
                f'[provider]\nsecret = "{SECRET.decode()}"\nvalid_within = 300\n'
                f'[gate]\nthrottle_burst = 100000\n'
                f'[replay]\nstore = "redis"\nsentinels = [{sentinels}]\nmaster_name = "jg"\n'
                f'redis_connect_timeout = 0.25\nredis_timeout = 0.25\n'
                f'redis_min_replicas = {min_replicas}\nredis_replica_timeout = 0.1\n')
            log = open(work / f"{host}.log", "w")
            self.procs[host] = in_ns(host, str(GATE), "run", "--config", str(cfg),
                                     stdout=log, stderr=subprocess.STDOUT)
        for host in GATES:
            wait_http(f"http://{ip_of(host)}:9090/readyz")

    def start_redis(self, host, replica_of="r1"):
        args = ["redis-server", "--port", "6379", "--bind", ip_of(host), "--protected-mode", "no",
                "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
                "--repl-timeout", "5", "--repl-diskless-sync-delay", "0", "--dir", str(self.work)]
        if host != replica_of:
            args += ["--replicaof", ip_of(replica_of), "6379"]
        self.procs[host] = in_ns(host, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_replicas_online(self):
        """Both replicas in sync with r1 before any load (no fault before replication)."""
        for _ in range(200):
            info = subprocess.run(["ip", "netns", "exec", "jgfo-r1", "redis-cli", "-h", ip_of("r1"),
                                   "info", "replication"], capture_output=True, text=True).stdout
            if info.count("state=online") == 2:
                return
            time.sleep(0.05)
        raise SystemExit("the replicas never came in sync")

    def kill(self, host):
        p = self.procs.pop(host)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_http(url, tries=200):
    for _ in range(tries):
        try:
            urllib.request.urlopen(url, timeout=0.5)
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} never answered")


class Recorder(BaseHTTPRequestHandler):
    """The stand-in GitLab: counts callbacks per jti."""
    seen = {}
    lock = threading.Lock()

    def do_GET(self):
        if "jwt=" in self.path:
            token = self.path.split("jwt=", 1)[1].split("&")[0]
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            with Recorder.lock:
                Recorder.seen[claims["jti"]] = Recorder.seen.get(claims["jti"], 0) + 1
        body = b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(i):
    now = int(time.time())
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64(json.dumps({"name": "Load", "email": f"u{i}@example.com", "iat": now,
                             "jti": f"fo-{now}-{i}-{os.getpid()}"}).encode())
    sig = hmac.new(SECRET, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(sig)}"


def login(gate, tok):
    url = f"http://{ip_of(gate)}:8443/users/auth/jwt/callback?jwt={tok}"
    try:
        return urllib.request.urlopen(url, timeout=3).status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0


# ---------------------------------------------------------------- one scenario


def inject(topo, scenario):
    if scenario == "kill":
        topo.kill("r1")
    elif scenario == "partition":
        # r1 answers no replica and no Sentinel; gate 1 still reaches it
        for peer in [*[h for h in REDIS if h != "r1"], *SENTINELS, "g2", "g3"]:
            sh("ip", "netns", "exec", "jgfo-r1", "ip", "route", "add", "blackhole", f"{ip_of(peer)}/32")
    elif scenario == "empty":
        topo.kill("r1")
        topo.start_redis("r1")


def run(scenario, setting):
    Recorder.seen = {}
    work = Path(tempfile.mkdtemp(prefix=f"jgfo-{scenario}-"))
    topo = Topology(work, 1 if setting == "safe" else 0)
    results = []   # (t, kind, status)
    lock = threading.Lock()
    stop_at = time.time() + BEFORE + AFTER
    fault_at = time.time() + BEFORE
    gates = list(GATES)

    def one(i):
        tok = token(i)
        g = gates[i % 3]
        s = login(g, tok)
        with lock:
            results.append((time.time(), "first", s))
        time.sleep(0.15)
        s2 = login(gates[(i + 1) % 3], tok)
        with lock:
            results.append((time.time(), "replay", s2))

    threads = []
    i = 0
    injected = False
    while time.time() < stop_at:
        if not injected and time.time() >= fault_at:
            inject(topo, scenario)
            fault_at = time.time()
            injected = True
        t = threading.Thread(target=one, args=(i,))
        t.start()
        threads.append(t)
        i += 1
        time.sleep(1 / RATE)
    for t in threads:
        t.join()
    topo.stop()
    sh("ip", "netns", "exec", "jgfo-r1", "ip", "route", "flush", "type", "blackhole", check=False)
    accepted_twice = sum(1 for n in Recorder.seen.values() if n > 1)
    firsts = [(t - fault_at, s) for t, k, s in results if k == "first"]
    # refusals before the fault: the store's first second (a fresh Redis has no epoch yet)
    before = [t for t, s in firsts if s != 200 and t < 0]
    refused = [t for t, s in firsts if s != 200 and t >= 0]
    after_ok = [t for t, s in firsts if s == 200 and t > (max(refused) if refused else 0)]
    return {
        "scenario": scenario, "settings": setting, "logins": len(firsts),
        "refused_before_fault": len(before), "refused": len(refused),
        "refused_window_s": round(max(refused) - min(refused), 2) if refused else 0.0,
        "recovered_after_s": round(min(after_ok), 2) if refused and after_ok else 0.0,
        "replays_accepted": accepted_twice,
        "statuses": sorted({s for _, s in firsts}),
    }


def install_missing():
    """A fresh Debian machine: Redis (server and Sentinel) and iproute2 from its packages."""
    import shutil
    need = [pkg for tool, pkg in (("redis-server", "redis-server"), ("ip", "iproute2")) if not shutil.which(tool)]
    if need:
        print(f"installing {' '.join(need)}", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *need], check=True, env=env)


def main():
    if os.geteuid() != 0:
        raise SystemExit("needs root (ip netns)")
    install_missing()
    if not GATE.exists():
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "jwt-gate"], cwd=ROOT, check=True)
    rows = []
    try:
        net_up()
        server = ThreadingHTTPServer((HOST_IP, UPSTREAM_PORT), Recorder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        for scenario in SCENARIOS:
            for setting in SETTINGS:
                r = run(scenario, setting)
                print(json.dumps(r), flush=True)
                rows.append(r)
    finally:
        net_down()
    print("\n| scenario | settings | logins | refused after the fault | refused for (s) | recovered after fault (s) | replays accepted |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scenario']} | {r['settings']} | {r['logins']} | {r['refused']} | {r['refused_window_s']} | "
              f"{r['recovered_after_s']} | {r['replays_accepted']} |")


if __name__ == "__main__":
    sys.exit(main())
