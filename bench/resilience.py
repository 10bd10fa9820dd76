"""The resilience scenario of bench/compare.py: what an idle circuit breaker, a route bulkhead
and a retry policy cost per request in Sluicegate.

One Sluicegate process, two routes to the same backend: `/` plain, and `/guarded` whose service
has `[services.circuit_breaker]` (never tripping: the backend never fails) and whose route has
`max_in_flight` far above the load and a `retry` policy (never retrying). The two are measured in interleaved rounds; the ratio is the
guarded route's CPU per request over the plain route's.
"""

import statistics

from compare import measure, print_table, run_wrk, start_sluicegate

GUARDED = """
[[routes]]
name = "guarded"
match = {{ path_prefix = "/guarded" }}
service = "guarded"
max_in_flight = 10000
retry = {{ attempts = 2, on = ["connect_failure", "reset", "5xx"] }}

[[services]]
name = "guarded"
endpoints = [{{ address = "127.0.0.1:{backend}" }}]

[services.circuit_breaker]
failure_rate = 0.5
minimum_requests = 20
window = "10s"
open_for = "30s"
half_open_requests = 5
"""

COLUMNS = [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
           ("CPU us/req", "{:>12.1f}")]


def resilience_scenario(args, work, backend, binary, conns=64):
    proc, ports = start_sluicegate(work, backend, backend, binary,
                                   rate_limit=GUARDED.format(backend=backend))
    try:
        for path in ("/", "/guarded"):
            run_wrk(ports["http"], 16, 1, path)
        paths = {"plain": "/", "guarded": "/guarded"}

        def run(name, ports):
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                      paths[name])
            return (rps, p50, p99, errors, requests)

        title = (f"Idle circuit breaker, bulkhead and retry policy, wrk -t1 -c{conns} -d{args.duration}s")
        results = measure({n: (proc, ports) for n in paths}, args.rounds, run,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    cpu = {n: [r[5] * 1e6 / max(r[4], 1) for r in rows] for n, rows in results.items()}
    summary = {n: (statistics.median(r[0] for r in rows),
                   statistics.median(r[2] for r in rows),
                   sum(r[3] for r in rows),
                   statistics.median(cpu[n]))
               for n, rows in results.items()}
    per_round = [g / p for g, p in zip(cpu["guarded"], cpu["plain"])]
    print_table(f"{title}, median of {args.rounds} interleaved rounds", COLUMNS, summary,
                [f"guarded / plain: CPU per request {statistics.median(per_round):.3f}x "
                 f"(rounds {min(per_round):.2f}-{max(per_round):.2f}x)"])
