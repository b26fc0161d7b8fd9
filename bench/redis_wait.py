#!/usr/bin/env python3
"""What redis_min_replicas costs per login: a Redis master and one replica on loopback, the
gate in front of a tiny upstream, 500 sequential HS256 logins (after 100 to warm up) with
min_replicas 0 and 1; prints client-side p50/p99 in microseconds. Bounded, loopback only.
    python3 bench/redis_wait.py target/release/jwt-gate
"""
import base64, hashlib, hmac, http.client, json, os, re, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request
SECRET=b"hostile-bench-secret-0123456789abcdef"
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def tok(i):
    h=b64(b'{"alg":"HS256"}'); p=b64(json.dumps({"name":"N","email":f"u{i}@x","iat":int(time.time()),"jti":f"w{i}-{os.getpid()}-{time.time()}"}).encode())
    s=hmac.new(SECRET,f"{h}.{p}".encode(),hashlib.sha256).digest(); return f"{h}.{p}.{b64(s)}"
procs=[]
def sh(*a): p=subprocess.Popen(a,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL); procs.append(p); return p
sh("redis-server","--port","16501","--save","","--appendonly","no")
sh("redis-server","--port","16502","--save","","--appendonly","no","--replicaof","127.0.0.1","16501")
time.sleep(1.5)
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading
import socket
class U(BaseHTTPRequestHandler):
    protocol_version="HTTP/1.1"
    def setup(self):
        super().setup(); self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def do_GET(self):
        self.send_response(200); self.send_header("content-length","2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self,*a): pass
up=ThreadingHTTPServer(("127.0.0.1",0),U); threading.Thread(target=up.serve_forever,daemon=True).start()
res={}
for n in [0,1]:
    d=tempfile.mkdtemp(); cfg=os.path.join(d,"g.toml")
    open(cfg,"w").write(f'[listen]\naddr = "127.0.0.1:0"\n[admin]\naddr = ""\n[upstream]\nurl = "http://127.0.0.1:{up.server_address[1]}"\n[provider]\nsecret = "{SECRET.decode()}"\n[replay]\nstore = "redis"\nredis_url = "redis://127.0.0.1:16501/0"\nredis_min_replicas = {n}\n')
    g=subprocess.Popen([sys.argv[1],"run","--config",cfg],stdout=subprocess.PIPE,stderr=subprocess.STDOUT,text=True)
    addr=None
    while not addr:
        m=re.search(r"jwt-gate listening addr=127.0.0.1:(\d+)",g.stdout.readline())
        if m: addr=int(m.group(1))
    threading.Thread(target=lambda: [None for _ in g.stdout],daemon=True).start()
    c=http.client.HTTPConnection("127.0.0.1",addr)
    lat=[]
    for i in range(600):
        t=tok(i); t0=time.perf_counter(); c.request("GET",f"/users/auth/jwt/callback?jwt={t}"); r=c.getresponse(); r.read(); dt=time.perf_counter()-t0
        assert r.status==200,(n,r.status)
        if i>=100: lat.append(dt)
    lat.sort(); res[n]=(round(lat[len(lat)//2]*1e6), round(lat[int(len(lat)*0.99)]*1e6))
    g.kill(); g.wait()
for p in procs: p.kill()
print({f"min_replicas={k}": {"p50_us":v[0],"p99_us":v[1]} for k,v in res.items()})
