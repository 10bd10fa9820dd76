"""The idle scenario of bench/compare.py: memory per idle connection, and memory given back after
the connections close, for nginx, HAProxy and Sluicegate, each a fresh process measured alone.

Kinds (--idle-kinds, comma-separated; default all):
  http1  HTTP/1.1 keep-alive connections, one request each, then left idle
  tls    the same over TLS (ECDSA P-256 certificate, ALPN http/1.1)
  h2     HTTP/2 cleartext by prior knowledge, one request each, then left idle
  ws     WebSocket tunnels: an upgrade through the proxy to an asyncio endpoint
         (bench/ws_backend.py), then nothing in either direction

For each: RSS growth of the proxy (all its processes) divided by the connections, RSS 30 s after
they close next to the RSS before they opened, and how many connections the proxy closed while
they were measured (it must be none for the figure to mean anything: every proxy gets idle
timeouts longer than the run, nginx's 75 s keep-alive default for the others).

The connection count is capped by the file-descriptor limit: a proxy needs one descriptor per
client connection, two per tunnel, and HAProxy reserves two per client connection it may hold.
"""

import os
import resource
import socket
import ssl
import subprocess
import sys
import time

from compare import exe, free_port, nginx_conf, run_wrk, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("http1", "tls", "h2", "ws")
# An idle keep-alive connection's lifetime at every proxy: nginx's default keepalive_timeout.
KEEPALIVE = "75s"
TUNNEL = "300s"


def make_cert(work):
    cert, key = os.path.join(work, "idle-cert.pem"), os.path.join(work, "idle-key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=bench"], check=True, capture_output=True)
    combined = os.path.join(work, "idle-combined.pem")  # HAProxy wants both in one file
    with open(combined, "w") as f:
        f.write(open(cert).read() + open(key).read())
    os.chmod(key, 0o644)  # nginx reads it as root, but keep its workers' view simple
    return cert, key, combined


def start_ws_backend():
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "ws_backend.py"), str(port)])
    wait_port(port)
    return proc, port


def start_nginx(work, backend, ws, tls, count):
    port, tport, h2 = free_port(), free_port(), free_port()
    cert, key, _ = tls
    locations = f"""
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /ws {{
            proxy_pass http://127.0.0.1:{ws};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout {TUNNEL};
            proxy_send_timeout {TUNNEL};
        }}"""
    conf = os.path.join(work, "nginx-idle.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, port, f"""
    keepalive_timeout {KEEPALIVE};
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 256; }}
    server {{ listen 127.0.0.1:{port} reuseport; {locations} }}
    server {{ listen 127.0.0.1:{tport} ssl reuseport; ssl_certificate {cert};
             ssl_certificate_key {key}; {locations} }}
    server {{ listen 127.0.0.1:{h2} http2 reuseport; {locations} }}""", 2, 2 * count + 200))
    proc = subprocess.Popen([exe("nginx"), "-c", conf, "-g", "daemon off;"],
                            stderr=subprocess.DEVNULL)
    for p in (port, tport, h2):
        wait_port(p)
    return proc, {"http1": port, "tls": tport, "h2": h2, "ws": port}


def start_haproxy(work, backend, ws, tls, count):
    port, tport, h2 = free_port(), free_port(), free_port()
    conf = os.path.join(work, "haproxy-idle.cfg")
    routing = "\n    use_backend ws if { path_beg /ws }\n    default_backend be"
    with open(conf, "w") as f:
        f.write(f"""
global
    nbthread 2
    maxconn {count + 50}
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive {KEEPALIVE}
    timeout tunnel {TUNNEL}
    http-reuse always
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}{routing}
frontend fe_tls
    bind 127.0.0.1:{tport} ssl crt {tls[2]} alpn http/1.1{routing}
frontend fe_h2
    bind 127.0.0.1:{h2} proto h2{routing}
backend be
    server b1 127.0.0.1:{backend}
backend ws
    server w1 127.0.0.1:{ws}
""")
    proc = subprocess.Popen([exe("haproxy"), "-f", conf, "-db"], stderr=subprocess.DEVNULL)
    for p in (port, tport, h2):
        wait_port(p)
    return proc, {"http1": port, "tls": tport, "h2": h2, "ws": port}


def start_sluicegate(work, backend, ws, tls, binary):
    port, tport = free_port(), free_port()
    cert, key, _ = tls
    conf = os.path.join(work, "sluicegate-idle.toml")
    with open(conf, "w") as f:
        f.write(f"""
[runtime]
worker_threads = 2

[access_log]
path = "{work}/sluicegate-idle-access.log"

[[listeners]]
name = "plain"
bind = "127.0.0.1:{port}"
request_header_timeout = "{KEEPALIVE}"
idle_timeout = "{TUNNEL}"

[[listeners]]
name = "tls"
bind = "127.0.0.1:{tport}"
protocol = "https"
tls = {{ cert = "{cert}", key = "{key}" }}
request_header_timeout = "{KEEPALIVE}"

[[routes]]
name = "ws"
match = {{ path_prefix = "/ws" }}
service = "ws"

[[routes]]
name = "all"
service = "backend"

[[services]]
name = "backend"
endpoints = [{{ address = "127.0.0.1:{backend}" }}]

[[services]]
name = "ws"
endpoints = [{{ address = "127.0.0.1:{ws}" }}]
""")
    proc = subprocess.Popen([binary, "run", "-c", conf], stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    for p in (port, tport):
        wait_port(p)
    # The plain listener serves HTTP/2 to clients that open with the HTTP/2 preface.
    return proc, {"http1": port, "tls": tport, "h2": port, "ws": port}


def read_response(recv, done):
    data = b""
    while not done(data):
        chunk = recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed early: {data[:200]!r}")
        data += chunk
    return data


def http1_done(data):
    return b"\r\n\r\n" in data and data.endswith(b"ok")


def open_http1(port, _):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    read_response(s.recv, http1_done)
    return s


def open_tls(port, context):
    s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                            server_hostname="bench")
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    read_response(s.recv, http1_done)
    return s


# RFC 9113: the preface, an empty SETTINGS frame, and one HEADERS frame (stream 1, END_STREAM |
# END_HEADERS) holding GET http://bench/ in HPACK: indexed :method GET (2), :scheme http (6),
# :path / (4), and :authority (name 1) as a literal without indexing.
H2_HELLO = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            + b"\x00\x00\x0a\x01\x05\x00\x00\x00\x01" + b"\x82\x86\x84\x01\x05bench")
H2_SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def open_h2(port, _):
    """Sends one request and reads frames until stream 1 ends, acknowledging SETTINGS."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(H2_HELLO)
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("HTTP/2 connection closed early")
            buf += chunk
        length = int.from_bytes(buf[:3], "big")
        kind, flags, stream = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        buf = buf[9 + length:]
        if kind == 0x4 and not flags & 0x1:
            s.sendall(H2_SETTINGS_ACK)
        elif kind == 0x7:
            raise RuntimeError("HTTP/2 GOAWAY")
        elif kind in (0x0, 0x1) and stream == 1 and flags & 0x1:
            return s


def open_ws(port, _):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = read_response(s.recv, lambda d: b"\r\n\r\n" in d)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"no upgrade: {head[:200]!r}")
    return s


OPEN = {"http1": open_http1, "tls": open_tls, "h2": open_h2, "ws": open_ws}


def closed_by_peer(socks):
    """How many of `socks` the proxy has closed (their TCP state is CLOSE_WAIT)."""
    ports = {s.getsockname()[1] for s in socks}
    closed = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "08" and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                closed += 1
    return closed


def tree_rss_kib(pid):
    """Resident memory of a process and all its descendants (nginx's workers), in KiB."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def settle_rss(pid, seconds=2.0):
    """RSS once it stopped moving (two readings `seconds` apart within 1 %), at most 10 tries."""
    last = tree_rss_kib(pid)
    for _ in range(10):
        time.sleep(seconds)
        now = tree_rss_kib(pid)
        if abs(now - last) <= max(last // 100, 64):
            return now
        last = now
    return last


def idle_scenario(work, backend, binary, wanted, kinds, print_table):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tls = make_cert(work)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    ws, ws_port = start_ws_backend()
    try:
        for kind in kinds:
            # HAProxy reserves two descriptors per client connection it may hold (one for its
            # upstream side); a tunnel uses both.
            count = min(wanted, (hard - 400) // 2)
            starts = [
                ("nginx", lambda: start_nginx(work, backend, ws_port, tls, count)),
                ("haproxy", lambda: start_haproxy(work, backend, ws_port, tls, count)),
                ("sluicegate", lambda: start_sluicegate(work, backend, ws_port, tls, binary)),
            ]
            rows = {}
            for name, start in starts:
                proc, ports = start()
                try:
                    run_wrk(ports["http1"], 16, 1)  # the upstream pool and the allocator warm
                    base = settle_rss(proc.pid)
                    socks = [OPEN[kind](ports[kind], context) for _ in range(count)]
                    idle = settle_rss(proc.pid)
                    dropped = closed_by_peer(socks)
                    for s in socks:
                        s.close()
                    closed_at = time.monotonic()
                    after = base
                    while time.monotonic() - closed_at < 30:
                        time.sleep(1)
                        after = tree_rss_kib(proc.pid)
                    rows[name] = ((idle - base) / count, base / 1024, idle / 1024, after / 1024,
                                  after / base, dropped)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
            what = {"http1": "HTTP/1.1 keep-alive connections (one request each)",
                    "tls": "HTTP/1.1 keep-alive connections over TLS (one request each)",
                    "h2": "HTTP/2 cleartext connections (one request each)",
                    "ws": "WebSocket tunnels"}[kind]
            print_table(
                f"{count} idle {what}, fresh processes",
                [("KiB/conn", "{:>12.2f}"), ("base MiB", "{:>12.1f}"), ("idle MiB", "{:>12.1f}"),
                 ("+30s MiB", "{:>12.1f}"), ("+30s/base", "{:>12.2f}"), ("dropped", "{:>12}")],
                rows,
                [f"sluicegate / {o}: KiB per idle connection "
                 f"{rows['sluicegate'][0] / rows[o][0]:.2f}x" for o in ("nginx", "haproxy")])
    finally:
        ws.terminate()
        ws.wait(timeout=10)
