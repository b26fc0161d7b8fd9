#!/usr/bin/env python3
"""Turn bench/results/latest.json (bench/bench.py) into BENCHMARKS.md and
bench/results/chart.svg. Called by bench/run; rerun it alone to regenerate the page."""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RES = Path(os.environ.get("OUT", ROOT / "bench" / "results"))
data = json.loads((RES / "latest.json").read_text())
S = data["scenarios"]
PEERS = ["nginx", "haproxy", "haproxy-replay", "envoy"]
ORDER = ["direct", "nginx", "haproxy", "haproxy-replay", "envoy", "gate"]
TITLES = {
    "small": "small GET, keep-alive, 64 connections (100-byte body)",
    "1m": "1 MiB downloads, 64 connections",
    "tls-new": "new TLS connections per second (TLS 1.3, one request per connection, 64 clients)",
    "walk-hs256": "login callback, a fresh HS256 token per request",
    "walk-rs256": "login callback, a fresh RS256 token per request",
    "walk-es256": "login callback, a fresh ES256 token per request",
}
NAMES = {"direct": "direct", "nginx": "nginx", "haproxy": "HAProxy", "haproxy-replay": "HAProxy + replay",
         "envoy": "Envoy", "gate": "**jwt-gate**"}
VERIFY_ROLE = {"haproxy": "jwt_verify + exp", "haproxy-replay": "jwt_verify + exp + jti stick table", "envoy": "jwt_authn", "gate": "full checks + replay store", "direct": "no check"}


def f(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def best_peer(rows, key="rps"):
    peers = [(rows[p][key], p) for p in PEERS if p in rows and rows[p].get(key)]
    return max(peers) if peers else (None, None)


def table(scenario):
    rows = S.get(scenario, {})
    if not rows:
        return ""
    d = rows.get("direct", {}).get("rps")
    bp, bp_name = best_peer(rows)
    at = data.get("measured_at", {}).get(scenario)
    out = [f"### {TITLES[scenario]}\n" + (f"\nmeasured {at}\n" if at else ""),
           "| target | req/s | runs min–max | ×direct | ×best peer | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for t in ORDER:
        r = rows.get(t)
        if not r:
            continue
        note = r.get("note", "")
        if scenario.startswith("walk-"):
            note = (VERIFY_ROLE.get(t, "") + ("; " + note if note else "")).strip("; ")
        out.append(
            f"| {NAMES[t]} | {f(r['rps'])} | {f(r['min'])}–{f(r['max'])} | {f(r['rps'] / d, 2) if d else '–'} | "
            f"{f(r['rps'] / bp, 2) if bp else '–'} | {f(r['p50'], 2)} | {f(r['p99'], 2)} | {f(r['cpu_us'], 1)} | "
            f"{f(r['rss_mib'], 1)} | {note} |")
    return "\n".join(out) + "\n"


def upload_table():
    rows = S.get("upload", {})
    if not rows:
        return ""
    d = rows.get("direct", {}).get("mibps")
    out = ["### 1 GiB upload, streamed (curl -T, one connection, to a byte-counting sink)\n",
           "| target | MiB/s | ×direct | CPU µs per MiB | peak RSS MiB | notes |", "|---|---:|---:|---:|---:|---|"]
    for t in ORDER:
        r = rows.get(t)
        if r:
            out.append(f"| {NAMES[t]} | {f(r['mibps'])} | {f(r['mibps'] / d, 2) if d else '–'} | {f(r['cpu_us_per_mib'])} | "
                       f"{f(r['rss_mib'], 1) if t != 'direct' else '–'} | {r.get('note', '')} |")
    return "\n".join(out) + "\n"


def idle_table():
    rows = S.get("idle", {})
    if not rows:
        return ""
    out = ["### memory: idle, and 1,000 concurrent connections downloading 1 MiB each\n",
           "| target | idle RSS MiB | RSS at 1,000 connections MiB |", "|---|---:|---:|"]
    for t in ORDER:
        r = rows.get(t)
        if r:
            out.append(f"| {NAMES[t]} | {f(r['idle_mib'], 1)} | {f(r['conns1000_mib'], 1)} |")
    return "\n".join(out) + "\n"


def criterion():
    """verification vs the raw signature check, from `cargo bench` (criterion), if run."""
    base = ROOT / "target" / "criterion"
    out = {}
    for alg in ("HS256", "RS256", "ES256", "ES512"):
        g = base / f"verify_{alg}"
        try:
            gate = json.loads((g / "gate (all checks)" / "new" / "estimates.json").read_text())["median"]["point_estimate"]
            raw = json.loads((g / "raw signature check" / "new" / "estimates.json").read_text())["median"]["point_estimate"]
            out[alg] = (gate / 1000, raw / 1000)
        except (OSError, KeyError, ValueError):
            pass
    return out


def issue15(row):
    """The proxying targets of issue 15, as same-run ratios (the gate at its default log
    level, access log on; nginx and HAProxy as configured here, access logs off)."""
    sm, m = S.get("small", {}), S.get("1m", {})
    if {"gate", "nginx"} <= sm.keys():
        g, n = sm["gate"], sm["nginx"]
        row("small GET CPU per request ≤ 0.95× nginx's", f"{g['cpu_us'] / n['cpu_us']:.2f}× ({g['cpu_us']:.1f} vs {n['cpu_us']:.1f} µs)",
            g["cpu_us"] <= 0.95 * n["cpu_us"])
        row("small GET req/s ≥ nginx's, p99 ≤ nginx's", f"{g['rps'] / n['rps']:.2f}×; p99 {g['p99']:.2f} vs {n['p99']:.2f} ms",
            g["rps"] >= n["rps"] and g["p99"] <= n["p99"])
    if {"gate", "nginx"} <= m.keys():
        g, n = m["gate"], m["nginx"]
        row("1 MiB GET CPU per request ≤ nginx's, req/s ≥ nginx's",
            f"CPU {g['cpu_us'] / n['cpu_us']:.2f}× ({g['cpu_us']:.0f} vs {n['cpu_us']:.0f} µs); req/s {g['rps'] / n['rps']:.2f}×",
            g["cpu_us"] <= n["cpu_us"] and g["rps"] >= n["rps"])
    for alg, limit in (("hs256", 0.8), ("es256", 0.9)):
        w = S.get(f"walk-{alg}", {})
        if {"gate", "haproxy-replay"} <= w.keys():
            g, h = w["gate"], w["haproxy-replay"]
            row(f"{alg.upper()} callback CPU ≤ {limit}× HAProxy-with-replay's",
                f"{g['cpu_us'] / h['cpu_us']:.2f}× ({g['cpu_us']:.1f} vs {h['cpu_us']:.1f} µs)", g["cpu_us"] <= limit * h["cpu_us"])


def verdicts():
    lines = ["| target | measured | met? |", "|---|---|---|"]

    def row(what, measured, ok):
        lines.append(f"| {what} | {measured} | {'yes' if ok else '**no**'} |")

    sm = S.get("small", {})
    if {"gate", "haproxy", "nginx"} <= sm.keys():
        g, h, n = sm["gate"], sm["haproxy"], sm["nginx"]
        row("small GET req/s ≥ 1.0× HAProxy and ≥ nginx",
            f"{g['rps'] / h['rps']:.2f}× HAProxy, {g['rps'] / n['rps']:.2f}× nginx "
            f"(CPU µs/req: gate {g['cpu_us']:.1f}, HAProxy {h['cpu_us']:.1f}, nginx {n['cpu_us']:.1f})",
            g["rps"] >= h["rps"] and g["rps"] >= n["rps"])
        row("small GET p99 ≤ theirs", f"{g['p99']:.2f} ms vs {h['p99']:.2f} (HAProxy), {n['p99']:.2f} (nginx)",
            g["p99"] <= min(h["p99"], n["p99"]))
    m = S.get("1m", {})
    if {"gate", "direct"} <= m.keys():
        row("1 MiB throughput ≥ 0.9× direct", f"{m['gate']['rps'] / m['direct']['rps']:.2f}× direct "
            f"(nginx {m['nginx']['rps'] / m['direct']['rps']:.2f}×)" if "nginx" in m else "", m["gate"]["rps"] >= 0.9 * m["direct"]["rps"])
    for alg in ("hs256", "rs256", "es256"):
        w = S.get(f"walk-{alg}", {})
        if {"gate", "haproxy"} <= w.keys():
            bad = "non-2xx" in w["gate"].get("note", "")
            row(f"{alg.upper()} callbacks/s with replay protection ≥ HAProxy jwt_verify without",
                f"{w['gate']['rps'] / w['haproxy']['rps']:.2f}× ({w['gate']['cpu_us']:.0f} vs {w['haproxy']['cpu_us']:.0f} µs CPU per callback)"
                + (" — INVALID: the gate answered non-2xx (tokens ran out)" if bad else ""),
                w["gate"]["rps"] >= w["haproxy"]["rps"] and not bad)
    issue15(row)
    for alg, (g, r) in criterion().items():
        row(f"{alg} verification ≤ 1.2× the raw signature check", f"{g:.1f} µs vs {r:.1f} µs = {g / r:.2f}×", g <= 1.2 * r)
    i = S.get("idle", {}).get("gate")
    if i:
        row("idle RSS ≤ 15 MiB", f"{i['idle_mib']:.1f} MiB", i["idle_mib"] <= 15)
        row("RSS ≤ 64 MiB at 1,000 concurrent connections", f"{i['conns1000_mib']:.1f} MiB", i["conns1000_mib"] <= 64)
    return "\n".join(lines) + "\n"


def svg():
    """Throughput (bars, relative to the best in each scenario) and p99 (text) per target."""
    scen = [s for s in ["small", "1m", "tls-new", "walk-hs256", "walk-rs256", "walk-es256", "upload"] if S.get(s)]
    colors = {"direct": "#9e9e9e", "nginx": "#2e7d32", "haproxy": "#1565c0", "haproxy-replay": "#42a5f5", "envoy": "#6a1b9a", "gate": "#e65100"}
    bar_h, gap, left, width = 14, 12, 150, 460
    y = 40
    parts = []
    for s in scen:
        rows = S[s]
        key = "mibps" if s == "upload" else "rps"
        top = max(r[key] for r in rows.values())
        parts.append(f'<text x="10" y="{y}" font-weight="bold">{s}</text>')
        y += 6
        for t in ORDER:
            r = rows.get(t)
            if not r:
                continue
            w = max(1, width * r[key] / top)
            unit = "MiB/s" if key == "mibps" else "req/s"
            p99 = f"  p99 {r['p99']:.1f} ms" if r.get("p99") is not None else ""
            parts.append(f'<text x="{left - 8}" y="{y + bar_h - 3}" text-anchor="end">{t}</text>'
                         f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colors[t]}"/>'
                         f'<text x="{left + w + 6:.1f}" y="{y + bar_h - 3}">{r[key]:,.0f} {unit}{p99}</text>')
            y += bar_h + 3
        y += gap + 10
    v = data["versions"]
    head = (f'<text x="10" y="20" font-weight="bold">jwt-gate vs direct, nginx, HAProxy, Envoy — throughput (bar) and p99 latency; '
            f'{v["cores"]} cores, {v["date"]}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{y}" font-family="sans-serif" font-size="12">'
            f'<rect width="100%" height="100%" fill="white"/>{head}{"".join(parts)}</svg>\n')


def main():
    (RES / "chart.svg").write_text(svg())
    v = data["versions"]
    notes = (ROOT / "bench" / "NOTES.md").read_text() if (ROOT / "bench" / "NOTES.md").exists() else ""
    page = f"""# Benchmarks

Generated by `bench/run` (this page and `bench/results/chart.svg`, from
`bench/results/latest.json`); `python3 bench/report.py` alone rebuilds the page from the JSON.

**Machine:** {v['cpu']}, {v['cores']} cores (KVM guest), Linux {v['kernel']}; {v['date']}.
**Versions:** {v['jwt-gate']}; {v['nginx']}; {v['haproxy']}; Envoy {v['envoy']}; {v['wrk']}.
**Method:** as `shared/reference/peer-proxy-baseline.md`: the origin (nginx, 1 worker) and the
target share CPU 0 (`taskset -c 0`), the load generator runs alone on CPU 1; one worker or
thread per target; `wrk -t1 -c{data['conns']} -d{data['duration']}s --latency` after a 2 s warm-up;
each figure the median of {data['runs']} runs (min–max shown); loopback only. **CPU µs/req** is
the target's own CPU time divided by the requests it served: it does not depend on the load
generator and is the steadier number on this noisy VM. Callback scenarios walk a file of
freshly minted tokens (one per request, each with its own `jti`); jwt-gate gets a new file for
every run, so every token it sees is fresh and passes its replay store; the peers have no
replay check. nginx (open source) has no JWT verification and sits those scenarios out.

![throughput and p99 per proxy](bench/results/chart.svg)

## Targets

{verdicts()}
## Results

{table('small')}
{table('1m')}
{upload_table()}
{table('tls-new')}
{table('walk-hs256')}
{table('walk-rs256')}
{table('walk-es256')}
{idle_table()}
{notes}"""
    (ROOT / "BENCHMARKS.md").write_text(page)
    print("wrote BENCHMARKS.md and", RES / "chart.svg")


if __name__ == "__main__":
    main()
