"""The ratelimit scenario of bench/compare.py: what a local rate limit costs per request.

Each proxy serves two routes to the same backend: `/` plain, and `/rl` counted per `x-key`
header against a limit far above the load, so nothing is refused and only the counting costs:
Sluicegate's `[rate_limits]` policy (local store), HAProxy's stick table
(`http-request track-sc0 req.hdr(x-key)` + `sc_http_req_rate`), nginx's `limit_req`. wrk sends
64 keys in turn (a Lua script), one key per connection's worth. Both paths of every proxy are
measured in the same interleaved rounds, so each proxy's limited/plain ratio is its own price of
rate limiting, and the limited rows compare the proxies doing the same work.
"""

import os
import statistics
import subprocess

from compare import free_port, measure, print_table, run_wrk, start_sluicegate, summarise, wait_port

SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["x-key"] = "client-" .. (n % 64)})
end
"""


COLUMNS = [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
           ("CPU us/req", "{:>12.1f}")]


def ratelimit_scenario(proxies, args, work, backend, binary):
    script = os.path.join(work, "keys.lua")
    with open(script, "w") as f:
        f.write(SCRIPT)
    conns = 64
    paths = {}
    runs = {}
    for name, entry in proxies.items():
        for path, suffix in (("/", ""), ("/rl", "+rl")):
            paths[name + suffix] = path
            runs[name + suffix] = entry

    def run(name, ports):
        requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                  paths[name], script=script)
        return (rps, p50, p99, errors, requests)

    title = f"Local rate limit, wrk -t1 -c{conns} -d{args.duration}s, 64 keys"
    results = measure(runs, args.rounds, run,
                      ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                      args.show_rounds)
    cpu, summary = summarise(results)
    ratios = []
    for name in proxies:
        plain, limited = cpu[name], cpu[name + "+rl"]
        per_round = [lim / p for lim, p in zip(limited, plain)]
        ratios.append(f"{name}: rate-limited / plain CPU per request "
                      f"{statistics.median(per_round):.2f}x "
                      f"(rounds {min(per_round):.2f}-{max(per_round):.2f}x)")
    for other in ("haproxy", "nginx"):
        per_round = [s / o for s, o in zip(cpu["sluicegate+rl"], cpu[other + "+rl"])]
        ratios.append(f"sluicegate+rl / {other}+rl: CPU per request "
                      f"{statistics.median(per_round):.2f}x "
                      f"(rounds {min(per_round):.2f}-{max(per_round):.2f}x)")
    print_table(f"{title}, median of {args.rounds} interleaved rounds",
                COLUMNS, summary, ratios)
    redis_store(args, work, backend, binary, script)


REDIS_ROUTE = """
[[routes]]
name = "shared"
match = {{ path_prefix = "/rr" }}
service = "backend"
rate_limit = "shared"

[redis]
url = "redis://127.0.0.1:{port}"

[rate_limits.shared]
key = "header:x-key"
capacity = 1000000000
refill_per_second = 1000000
store = "redis"
"""


def redis_store(args, work, backend, binary, script, conns=64):
    """Sluicegate's Redis store against its plain route, in one process, interleaved; with
    Redis's own count of script calls per limited request."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        proc, ports = start_sluicegate(work, backend, backend, binary,
                                       rate_limit=REDIS_ROUTE.format(port=port))
        try:
            run_wrk(ports["http"], 16, 1, "/rr", script=script)  # connections made, script loaded
            before = script_calls(port)
            paths = {"sluicegate": "/", "sluicegate+redis": "/rr"}
            limited_requests = 0

            def run(name, ports):
                nonlocal limited_requests
                requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                          paths[name], script=script)
                if name == "sluicegate+redis":
                    limited_requests += requests
                return (rps, p50, p99, errors, requests)

            title = f"Redis rate limit (one redis-server on loopback), wrk -t1 -c{conns}"
            results = measure({n: (proc, ports) for n in paths}, args.rounds, run,
                              ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"),
                              title, args.show_rounds)
            calls = script_calls(port) - before
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        redis.terminate()
        redis.wait(timeout=10)
    cpu, summary = summarise(results)
    per_round = [r / p for r, p in zip(cpu["sluicegate+redis"], cpu["sluicegate"])]
    print_table(f"{title}, median of {args.rounds} interleaved rounds",
                COLUMNS, summary,
                [f"Redis round trips per limited request: {calls / max(limited_requests, 1):.3f} "
                 f"({calls} script calls for {limited_requests} requests)",
                 f"sluicegate+redis / plain: CPU per request {statistics.median(per_round):.2f}x "
                 f"(rounds {min(per_round):.2f}-{max(per_round):.2f}x; the gateway's CPU only, "
                 "not Redis's)"])


def script_calls(port):
    """EVALSHA and EVAL calls Redis has served (INFO commandstats)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                         capture_output=True, text=True).stdout
    total = 0
    for line in out.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
            total += int(fields["calls"])
    return total
