"""The cache scenario of bench/compare.py: what a response-cache hit costs in Sluicegate beside
nginx's proxy_cache and Varnish, and what a miss costs beside the plain route.

A backend of its own (nginx) answers `/c/...` with 1 KiB and `Cache-Control: max-age=3600`.
In front of it, side by side: Sluicegate with a caching route, nginx with `proxy_cache` (a
keys zone and a cache directory in the work directory), and Varnish (Debian's `varnish`, default
VCL, 64 MiB malloc storage). HIT: wrk asks the same URL over and over (after one warm-up
request), so every request after the first is a hit. MISS (Sluicegate alone): a Lua script
gives every request its own query string, so each one misses and is stored, against the same
requests on a route without a cache.

The shared tier (`store = "memory+redis"`, a redis-server on loopback; skipped without
`redis-server`): a MISS stored in memory and Redis against the memory-only MISS above, and a
hit from Redis — a second instance whose memory holds almost nothing (256 KiB) cycles through
10,000 URLs the first instance stored, so nearly every request is a memory miss found in Redis.
Redis's own CPU is not counted.
"""

import os
import shutil
import subprocess

from compare import (exe, free_port, measure, nginx_conf, print_table, ratio_note, run_wrk,
                     start_sluicegate, summarise, wait_port)

BODY = "x" * 1024

CACHE_ROUTES = """
[cache]
max_bytes = "256MiB"

[[routes]]
name = "cached"
match = {{ path_prefix = "/c/" }}
service = "cached-backend"
cache = {{ }}

[[routes]]
name = "uncached"
match = {{ path_prefix = "/u/" }}
service = "cached-backend"
strip_prefix = false

[[services]]
name = "cached-backend"
endpoints = [{{ address = "127.0.0.1:{backend}" }}]
"""

UNIQUE = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "{prefix}" .. counter .. "-" .. math.random(1, 1000000000))
end
"""

CYCLE = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/c/r-" .. (counter % {n}))
end
"""

SHARED = """
[redis]
url = "redis://127.0.0.1:{redis}"
timeout = "100ms"
"""

COLUMNS = [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
           ("CPU us/req", "{:>12.1f}")]


def start_cached_backend(work):
    port = free_port()
    conf = os.path.join(work, "cached-backend.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, port, f"""
    access_log off;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            add_header Cache-Control "max-age=3600";
            return 200 "{BODY}";
        }}
    }}""", 1))
    proc = subprocess.Popen([exe("nginx"), "-c", conf, "-g", "daemon off;"])
    wait_port(port)
    return proc, port


def start_nginx_cache(work, backend):
    port = free_port()
    cache_dir = os.path.join(work, "nginx-cache")
    os.makedirs(cache_dir, exist_ok=True)
    os.chmod(cache_dir, 0o777)
    conf = os.path.join(work, "nginx-cache.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(work, port, f"""
    proxy_cache_path {cache_dir} levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h;
    upstream cached {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            proxy_pass http://cached;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            add_header X-Cache $upstream_cache_status;
        }}
    }}""", 2))
    proc = subprocess.Popen([exe("nginx"), "-c", conf, "-g", "daemon off;"])
    wait_port(port)
    return proc, {"http": port}


def start_varnish(work, backend):
    port = free_port()
    name = os.path.join(work, "varnish")
    proc = subprocess.Popen([exe("varnishd"), "-F", "-n", name, "-a", f"127.0.0.1:{port}",
                             "-b", f"127.0.0.1:{backend}", "-s", "malloc,64m"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, {"http": port}


def cache_scenario(args, work, backend, binary, conns=64):
    if not os.path.exists(exe("varnishd")):
        print("\ncache scenario: Varnish is not installed (apt-get install varnish); skipped")
        return
    cached, cached_port = start_cached_backend(work)
    procs = [cached]
    try:
        sg_work = os.path.join(work, "sg-cache")
        os.makedirs(sg_work, exist_ok=True)
        sg = start_sluicegate(sg_work, backend, backend, binary,
                              rate_limit=CACHE_ROUTES.format(backend=cached_port))
        procs.append(sg[0])
        ng = start_nginx_cache(work, cached_port)
        procs.append(ng[0])
        va = start_varnish(work, cached_port)
        procs.append(va[0])
        proxies = {"sluicegate": sg, "nginx": ng, "varnish": va}
        for _, ports in proxies.values():
            run_wrk(ports["http"], 4, 1, "/c/hit")

        def hit(name, ports):
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                      "/c/hit")
            return (rps, p50, p99, errors, requests)

        title = f"Cache HIT of a 1 KiB response, wrk -t1 -c{conns} -d{args.duration}s"
        results = measure(proxies, args.rounds, hit,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
        report(args, title, results, [("nginx", "sluicegate"), ("varnish", "sluicegate")])

        scripts = {}
        for prefix in ("/c/miss-", "/u/miss-"):
            path = os.path.join(work, f"unique{prefix.replace('/', '_')}.lua")
            with open(path, "w") as f:
                f.write(UNIQUE.format(prefix=prefix))
            scripts[prefix] = path
        paths = {"miss": "/c/miss-", "plain": "/u/miss-"}

        def miss(name, ports):
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                      "/", script=scripts[paths[name]])
            return (rps, p50, p99, errors, requests)

        title = f"Cache MISS (each request stored) against the plain route, wrk -c{conns}"
        results = measure({"miss": sg, "plain": sg}, args.rounds, miss,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
        report(args, title, results, [("plain", "miss")])
        if shutil.which("redis-server"):
            shared_tier(args, work, cached_port, binary, sg, scripts["/c/miss-"], conns)
        else:
            print("\nshared tier: redis-server is not installed; skipped")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


def shared_tier(args, work, cached_port, binary, memory_only, unique, conns):
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = []
    try:
        wait_port(redis_port)
        routes = CACHE_ROUTES.format(backend=cached_port) + SHARED.format(redis=redis_port)
        instances = {}
        for name, max_bytes in (("filled", "256MiB"), ("small", "256KiB")):
            sg_work = os.path.join(work, f"sg-shared-{name}")
            os.makedirs(sg_work, exist_ok=True)
            config = routes.replace('max_bytes = "256MiB"',
                                    f'max_bytes = "{max_bytes}"\nstore = "memory+redis"')
            instances[name] = start_sluicegate(sg_work, cached_port, cached_port, binary,
                                               rate_limit=config)
            procs.append(instances[name][0])
        cycle = os.path.join(work, "cycle.lua")
        with open(cycle, "w") as f:
            f.write(CYCLE.format(n=10000))
        # The first instance stores the 10,000 URLs (in memory and Redis).
        run_wrk(instances["filled"][1]["http"], conns, 3, "/", script=cycle)
        runs = {"redis-hit": (instances["small"], cycle), "miss": (memory_only, unique),
                "miss+redis": (instances["filled"], unique)}

        def run(name, ports):
            _, script = runs[name]
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration, "/",
                                                      script=script)
            return (rps, p50, p99, errors, requests)

        title = (f"Shared tier (memory+redis, one redis-server on loopback), wrk -t1 -c{conns}; "
                 "redis-hit: memory miss found in Redis")
        results = measure({n: instance for n, (instance, _) in runs.items()}, args.rounds, run,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
        report(args, title, results, [("miss", "miss+redis"), ("miss", "redis-hit")])
    finally:
        for p in procs + [redis]:
            p.terminate()
            p.wait(timeout=10)


def report(args, title, results, ratios):
    cpu, summary = summarise(results)
    notes = [ratio_note(cpu, other, base) for base, other in ratios]
    print_table(f"{title}, median of {args.rounds} interleaved rounds", COLUMNS, summary, notes)
