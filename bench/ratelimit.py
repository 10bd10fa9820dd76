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

from compare import measure, print_table, run_wrk

SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["x-key"] = "client-" .. (n % 64)})
end
"""


def ratelimit_scenario(proxies, args, work):
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
    cpu = {n: [r[5] * 1e6 / max(r[4], 1) for r in rows] for n, rows in results.items()}
    summary = {n: (statistics.median(r[0] for r in rows),
                   statistics.median(r[2] for r in rows),
                   sum(r[3] for r in rows),
                   statistics.median(cpu[n]))
               for n, rows in results.items()}
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
                [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
                 ("CPU us/req", "{:>12.1f}")], summary, ratios)
