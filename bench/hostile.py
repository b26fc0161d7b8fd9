#!/usr/bin/env python3
"""Hostile clients against the real binary, on loopback only, bounded in count and time.

    python3 bench/hostile.py idle   [--bin PATH] [--sockets N]   # an idle-socket flood
    python3 bench/hostile.py kinds  [--bin PATH]                 # how long each idle kind lives
    python3 bench/hostile.py forge  [--bin PATH] [--seconds S]   # ES512 forgery flood vs a real user
    python3 bench/hostile.py slow   [--bin PATH] [--sockets N]   # N slow 1 MiB downloads: RSS

Prints one JSON object per scenario. The gate under test is started here on port 0 with a
config of its own (bench/hostile.py writes it to a temporary directory); `--bin` may name an
older build to compare. Needs python3's `cryptography` (ES512 tokens) and nothing else.
"""

import argparse
import base64
import http.client
import json
import multiprocessing
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "hostile-bench-secret-0123456789abcdef"


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


MIB = b"x" * (1 << 20)


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = MIB if self.path == "/1m" else b"ok"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *a):
        pass


def start_upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class Gate:
    """The binary, started on port 0; its addresses read from its "listening" log lines."""

    def __init__(self, binary, config_text):
        self.dir = tempfile.mkdtemp(prefix="jwt-gate-hostile-")
        path = os.path.join(self.dir, "gate.toml")
        with open(path, "w") as f:
            f.write(config_text)
        self.proc = subprocess.Popen(
            [binary, "run", "--config", path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.addr = None
        self.lines = []
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"jwt-gate listening addr=(\S+)", line)
            if m:
                host, port = m.group(1).rsplit(":", 1)
                self.addr = (host, int(port))
                break
        if self.addr and self.addr[1] == 0:
            # builds before port-0 support log the configured address, not the bound one
            self.addr = (self.addr[0], FIXED_PORT)
        if not self.addr:
            self.stop()
            sys.exit("the gate did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for _ in self.proc.stdout:
            pass

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


FIXED_PORT = 0


def config(up, extra_listen="", provider=None, gate_extra=""):
    provider = provider or f'secret = "{SECRET}"\n'
    return (f'[listen]\naddr = "127.0.0.1:{FIXED_PORT}"\ntrusted_proxies = ["127.0.0.1/32"]\n{extra_listen}'
            f'[admin]\naddr = ""\n[upstream]\nurl = "http://127.0.0.1:{up.server_address[1]}"\n'
            f'[provider]\n{provider}valid_within = 300\n[gate]\n{gate_extra}')


def timed_get(addr, path="/", headers=None):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(*addr, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status, time.perf_counter() - t0
    except OSError as e:
        return f"error: {e}", time.perf_counter() - t0
    finally:
        c.close()


def closed(sock):
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def scenario_idle(args):
    """N silent sockets: descriptors and RSS of the gate, then a real client."""
    up = start_upstream()
    gate = Gate(args.bin, config(up))
    base = {"fds": gate.fds(), "rss_kib": gate.rss_kib()}
    socks = []
    for _ in range(args.sockets):
        try:
            socks.append(socket.create_connection(gate.addr, timeout=2))
        except OSError:
            break
    time.sleep(2)
    loaded = {"fds": gate.fds(), "rss_kib": gate.rss_kib()}
    status, latency = timed_get(gate.addr, "/real")
    open_now = sum(1 for s in socks if not closed(s))
    time.sleep(1)
    after_real = {"fds": gate.fds(), "rss_kib": gate.rss_kib()}
    out = {
        "scenario": "idle", "binary": args.bin, "sockets_opened": len(socks),
        "idle": base, "with_sockets": loaded, "sockets_still_open_after_2s": open_now,
        "after_real_client": after_real,
        "real_client": {"status": status, "ms": round(latency * 1000, 1)},
    }
    gate.stop()
    for s in socks:
        s.close()
    print(json.dumps(out))


def scenario_slow(args):
    """N clients each start a 1 MiB download and read it slowly: the gate's RSS with every
    one of them in flight (a streaming connection's buffers are what the cap is sized by)."""
    up = start_upstream()
    gate = Gate(args.bin, config(up))
    base = gate.rss_kib()
    socks = []
    for _ in range(args.sockets):
        s = socket.create_connection(gate.addr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /1m HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    peak = 0
    deadline = time.time() + args.seconds
    while time.time() < deadline:
        for s in socks:  # a trickle: 1 KiB per client per round
            s.setblocking(False)
            try:
                s.recv(1024)
            except OSError:
                pass
        peak = max(peak, gate.rss_kib())
        time.sleep(0.2)
    out = {"scenario": "slow", "binary": args.bin, "downloads": len(socks),
           "idle_rss_mib": round(base / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
           "fds": gate.fds()}
    gate.stop()
    for s in socks:
        s.close()
    print(json.dumps(out))


def h2_idle_client(addr, lived):
    """An HTTP/2 connection with no stream that answers PINGs, as a browser would."""
    s = socket.create_connection(addr)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    t0 = time.time()
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            kind, flags, payload = buf[3], buf[4], buf[9:9 + n]
            buf = buf[9 + n:]
            if kind == 4 and not flags & 1:  # SETTINGS: acknowledge
                s.sendall(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            if kind == 6 and not flags & 1:  # PING: answer
                s.sendall(len(payload).to_bytes(3, "big") + b"\x06\x01\x00\x00\x00\x00" + payload)
    lived["http/2 with no stream, answering PINGs"] = round(time.time() - t0, 1)


def scenario_kinds(args):
    """How long each kind of idle connection lives with the default timeouts."""
    up = start_upstream()
    gate = Gate(args.bin, config(up))
    lived = {}
    kinds = {}
    kinds["silent"] = socket.create_connection(gate.addr)
    kinds["partial HTTP/2 preface"] = socket.create_connection(gate.addr)
    kinds["partial HTTP/2 preface"].sendall(b"PRI * HTTP/2.0\r\n")
    kinds["HTTP/1.1 keep-alive after a request"] = socket.create_connection(gate.addr)
    kinds["HTTP/1.1 keep-alive after a request"].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    t0 = time.time()
    h2 = threading.Thread(target=h2_idle_client, args=(gate.addr, lived), daemon=True)
    h2.start()
    limit = args.limit
    pending = dict(kinds)
    while pending and time.time() - t0 < limit:
        readable, _, _ = select.select(list(pending.values()), [], [], 1)
        for name, s in list(pending.items()):
            if s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    lived[name] = round(time.time() - t0, 1)
                    del pending[name]
    for name in pending:
        lived[name] = f"still open after {limit} s"
    h2.join(timeout=max(0.0, limit - (time.time() - t0)))
    lived.setdefault("http/2 with no stream, answering PINGs", f"still open after {limit} s")
    gate.stop()
    print(json.dumps({"scenario": "kinds", "binary": args.bin, "seconds_alive": lived}))


def es512_keys(tmp):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP521R1())
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = os.path.join(tmp, "es512.pub")
    with open(path, "wb") as f:
        f.write(pub)
    return key, path


def es512_token(key, claims):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    head = b64(json.dumps({"alg": "ES512", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA512()))
    r, s = decode_dss_signature(der)
    return f"{head}.{body}.{b64(r.to_bytes(66, 'big') + s.to_bytes(66, 'big'))}"


def flooder(addr, forged, stop, out):
    """One process sending forged callbacks as one client, as fast as the gate answers."""
    counts = {}
    c = http.client.HTTPConnection(*addr, timeout=10)
    while time.time() < stop:
        try:
            c.request("GET", f"/users/auth/jwt/callback?jwt={forged}",
                      headers={"x-forwarded-for": "203.0.113.9"})
            r = c.getresponse()
            r.read()
            st = r.status
            if r.getheader("connection", "").lower() == "close":
                c.close()
                c = http.client.HTTPConnection(*addr, timeout=10)
        except OSError:
            st = "error"
            c.close()
            c = http.client.HTTPConnection(*addr, timeout=10)
        counts[st] = counts.get(st, 0) + 1
    out.put(counts)


def scenario_forge(args):
    """Forged ES512 callbacks from one client as fast as it can send them, while a real
    user signs in from another every 100 ms; with the throttle and without."""
    tmp = tempfile.mkdtemp(prefix="jwt-gate-forge-")
    key, pub = es512_keys(tmp)
    results = []
    for label, gate_extra in [("throttle on (defaults)", ""),
                              ("throttle off (refill 1e9/s)", "throttle_per_second = 1000000000\n")]:
        up = start_upstream()
        provider = f'algorithm = "ES512"\nsecret_file = "{pub}"\n'
        gate = Gate(args.bin, config(up, provider=provider, gate_extra=gate_extra))
        stop = time.time() + args.seconds
        flood = {}
        now = int(time.time())
        forged_body = b64(json.dumps({"name": "F", "email": "f@x", "iat": now}).encode())
        forged_head = b64(b'{"alg":"ES512"}')
        # r and s below the P-521 group order, so the signature is really verified (a
        # random 66-byte value is almost always out of range and refused for nothing)
        forged_sig = b"\x00" + os.urandom(65) + b"\x00" + os.urandom(65)
        forged = f"{forged_head}.{forged_body}.{b64(forged_sig)}"

        flood_q = multiprocessing.Queue()
        procs = [multiprocessing.Process(target=flooder, args=(gate.addr, forged, stop, flood_q))
                 for _ in range(args.flooders)]

        user = []

        def real_user():
            i = 0
            while time.time() < stop:
                tok = es512_token(key, {"name": "U", "email": f"u{i}@x", "iat": int(time.time()),
                                        "jti": f"real-{i}-{os.getpid()}"})
                st, lat = timed_get(gate.addr, f"/users/auth/jwt/callback?jwt={tok}",
                                    {"x-forwarded-for": "198.51.100.7"})
                user.append((st, lat))
                i += 1
                time.sleep(0.1)

        cpu0, t0 = gate.cpu_seconds(), time.time()
        user_thread = threading.Thread(target=real_user)
        for p in procs:
            p.start()
        user_thread.start()
        for _ in procs:
            for k, v in flood_q.get().items():
                flood[k] = flood.get(k, 0) + v
        for p in procs:
            p.join()
        user_thread.join()
        cpu = gate.cpu_seconds() - cpu0
        wall = time.time() - t0
        gate.stop()
        up.shutdown()
        lat = sorted(l for st, l in user if st == 200)
        pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None
        results.append({
            "run": label,
            "flood_requests": sum(flood.values()),
            "flood_by_status": {str(k): v for k, v in sorted(flood.items(), key=str)},
            "gate_cpu_percent_of_one_core": round(100 * cpu / wall, 1),
            "real_user_logins": len(user),
            "real_user_ok": sum(1 for st, _ in user if st == 200),
            "real_user_ms_p50": pct(0.5), "real_user_ms_p99": pct(0.99),
        })
    print(json.dumps({"scenario": "forge", "binary": args.bin, "seconds": args.seconds,
                      "flooders": args.flooders, "results": results}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["idle", "kinds", "forge", "slow"])
    p.add_argument("--bin", default="target/release/jwt-gate")
    p.add_argument("--sockets", type=int, default=3000)
    p.add_argument("--limit", type=float, default=75.0, help="kinds: give up after this long")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--flooders", type=int, default=3)
    p.add_argument("--port", type=int, default=0,
                   help="a fixed port, for builds that cannot report a bound port 0")
    args = p.parse_args()
    global FIXED_PORT
    FIXED_PORT = args.port
    {"idle": scenario_idle, "kinds": scenario_kinds, "forge": scenario_forge,
     "slow": scenario_slow}[args.scenario](args)


if __name__ == "__main__":
    main()
