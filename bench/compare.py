#!/usr/bin/env python3
"""Side-by-side proxy benchmark: nginx, HAProxy and Sluicegate in front of one nginx backend.

Everything runs on 127.0.0.1 of this machine, so the load generator, the backend and the proxy
share the CPUs: compare CPU time per request and latency measured in the same run, not absolute
req/s across runs. Proxies are measured in interleaved rounds and the median round is reported.

Scenarios: HTTP/1.1 keep-alive with wrk at each --connections count, and HTTP/2 with h2load
(cleartext, prior knowledge; -c64 -m10) against each proxy's HTTP/2 listener.

Usage: bench/compare.py [--duration 10] [--rounds 3] [--connections 64,256] [--scenarios http1,h2]
Installs nginx, haproxy, wrk and h2load with apt when missing; builds Sluicegate in release mode.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKS = os.sysconf("SC_CLK_TCK")


def ensure_tools():
    missing = [p for p, exe in [("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk"),
                                ("nghttp2-client", "h2load")]
               if shutil.which(exe) is None and not os.path.exists(f"/usr/sbin/{exe}")]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def exe(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def nginx_conf(work, listen, body, workers):
    return f"""
worker_processes {workers};
pid {work}/nginx-{listen}.pid;
error_log {work}/nginx-{listen}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {work}/nginx-{listen}-access.log;
    keepalive_requests 1000000;
    {body}
}}
"""


def start_backend(work):
    port = free_port()
    conf = os.path.join(work, "backend.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, port, f"""
    access_log off;
    server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 "ok"; }} }}""", 1))
    proc = subprocess.Popen([exe("nginx"), "-c", conf, "-g", "daemon off;"])
    wait_port(port)
    return proc, port


def start_nginx(work, backend):
    port, h2 = free_port(), free_port()
    conf = os.path.join(work, "nginx-proxy.conf")
    location = """
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
    with open(conf, "w") as f:
        f.write(nginx_conf(work, port, f"""
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
    server {{ listen 127.0.0.1:{port} reuseport; {location} }}
    server {{ listen 127.0.0.1:{h2} http2; {location} }}""", 2))
    proc = subprocess.Popen([exe("nginx"), "-c", conf, "-g", "daemon off;"])
    wait_port(port)
    wait_port(h2)
    return proc, port, h2


def start_haproxy(work, backend):
    port, h2 = free_port(), free_port()
    conf = os.path.join(work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
    nbthread 2
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
frontend fe2
    bind 127.0.0.1:{h2} proto h2
    default_backend be
backend be
    server b1 127.0.0.1:{backend}
""")
    proc = subprocess.Popen([exe("haproxy"), "-f", conf, "-db"])
    wait_port(port)
    wait_port(h2)
    return proc, port, h2


def start_sluicegate(work, backend, binary):
    port = free_port()
    conf = os.path.join(work, "sluicegate.toml")
    with open(conf, "w") as f:
        f.write(f"""
[runtime]
worker_threads = 2

[access_log]
path = "{work}/sluicegate-access.log"

[[listeners]]
name = "bench"
bind = "127.0.0.1:{port}"

[[routes]]
name = "all"
service = "backend"

[[services]]
name = "backend"
endpoints = [{{ address = "127.0.0.1:{backend}" }}]
""")
    proc = subprocess.Popen([binary, "run", "-c", conf], stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port)
    # The same listener serves HTTP/2 to clients that open with the HTTP/2 preface.
    return proc, port, port


def cpu_seconds(pid):
    """utime + stime of a process and all its children processes (nginx workers)."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def parse_latency(text, label):
    m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(port, connections, duration):
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return requests, rps, parse_latency(out, "50%"), parse_latency(out, "99%"), errors


def run_h2load(port, duration):
    out = subprocess.run(
        ["h2load", "-c64", "-m10", "-t1", f"-D{duration}", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not m:
        raise RuntimeError(f"cannot read h2load output:\n{out}")
    done, succeeded = int(m.group(3)), int(m.group(4))
    failed = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    status = re.search(r"status codes: (\d+) 2xx", out)
    non_2xx = max(0, succeeded - int(status.group(1))) if status else 0
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    mean_ms = parse_unit(mean.group(1)) if mean else float("nan")
    return done, rps, mean_ms, failed + non_2xx


def parse_unit(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def print_table(title, columns, summary, ratios):
    print(f"\n{title}")
    print(f"{'proxy':<12}" + "".join(f"{c:>12}" for c, _ in columns))
    for name, row in summary.items():
        print(f"{name:<12}" + "".join(fmt.format(v) for (_, fmt), v in zip(columns, row)))
    for line in ratios:
        print(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="64,256")
    ap.add_argument("--scenarios", default="http1,h2")
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "sluicegate")

    work = tempfile.mkdtemp(prefix="sluicegate-bench-")
    procs = []
    try:
        backend, bport = start_backend(work)
        procs.append(backend)
        proxies = {}
        for name, start in [("nginx", lambda: start_nginx(work, bport)),
                            ("haproxy", lambda: start_haproxy(work, bport)),
                            ("sluicegate", lambda: start_sluicegate(work, bport, binary))]:
            proc, port, h2 = start()
            procs.append(proc)
            proxies[name] = (proc, port, h2)
        for name, (_, port, _) in proxies.items():  # warm up pools
            run_wrk(port, 16, 1)
        scenarios = args.scenarios.split(",")

        for conns in [int(c) for c in args.connections.split(",")] if "http1" in scenarios else []:
            results = {name: [] for name in proxies}
            for _ in range(args.rounds):
                for name, (proc, port, _) in proxies.items():
                    before = cpu_seconds(proc.pid)
                    requests, rps, p50, p99, errors = run_wrk(port, conns, args.duration)
                    cpu = cpu_seconds(proc.pid) - before
                    results[name].append((rps, p50, p99, errors, cpu * 1e6 / max(requests, 1)))
            print(f"\nHTTP/1.1 keep-alive, wrk -t1 -c{conns} -d{args.duration}s, "
                  f"median of {args.rounds} interleaved rounds")
            print(f"{'proxy':<12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU us/req':>12}")
            summary = {}
            for name, rows in results.items():
                med = lambda i: statistics.median(r[i] for r in rows)
                summary[name] = (med(0), med(1), med(2), sum(r[3] for r in rows), med(4))
                rps, p50, p99, errs, cpu = summary[name]
                print(f"{name:<12}{rps:>10.0f}{p50:>9.2f}{p99:>9.2f}{errs:>8}{cpu:>12.1f}")
            sg = summary["sluicegate"]
            for other in ("nginx", "haproxy"):
                o = summary[other]
                print(f"sluicegate / {other}: CPU per request {sg[4] / o[4]:.2f}x, "
                      f"p99 {sg[2] / o[2]:.2f}x, req/s {sg[0] / o[0]:.2f}x")

        if "h2" in scenarios:
            results = {name: [] for name in proxies}
            for _ in range(args.rounds):
                for name, (proc, _, h2) in proxies.items():
                    before = cpu_seconds(proc.pid)
                    done, rps, mean_ms, errors = run_h2load(h2, args.duration)
                    cpu = cpu_seconds(proc.pid) - before
                    results[name].append((rps, mean_ms, errors, cpu * 1e6 / max(done, 1)))
            summary = {}
            for name, rows in results.items():
                med = lambda i: statistics.median(r[i] for r in rows)
                summary[name] = (med(0), med(1), sum(r[2] for r in rows), med(3))
            sg = summary["sluicegate"]
            print_table(
                f"HTTP/2 cleartext, h2load -c64 -m10 -D{args.duration}, median of {args.rounds} rounds",
                [("req/s", "{:>12.0f}"), ("mean ms", "{:>12.2f}"), ("errors", "{:>12}"),
                 ("CPU us/req", "{:>12.1f}")],
                summary,
                [f"sluicegate / {o}: req/s {sg[0] / summary[o][0]:.2f}x, "
                 f"CPU per request {sg[3] / summary[o][3]:.2f}x" for o in ("nginx", "haproxy")])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
