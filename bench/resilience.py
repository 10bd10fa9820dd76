"""The resilience scenario of bench/compare.py: what an idle circuit breaker, a route bulkhead,
a retry policy and load shedding cost per request in Sluicegate.

Two Sluicegate processes in front of the same backend: one plain, the other with `/guarded`
whose service has `[services.circuit_breaker]` (never tripping: the backend never fails), whose
route has `max_in_flight` far above the load and a `retry` policy (never retrying), and a
`[load_shedding]` table (the adaptive limit, never reached). Load shedding covers every route of
a process, hence two processes. They are measured in interleaved rounds; the ratio is the guarded
route's CPU per request over the plain one's.
"""

import os

from compare import measure, print_table, ratio_note, run_wrk, start_sluicegate, summarise

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

[load_shedding]
max_in_flight = 0
"""

COLUMNS = [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
           ("CPU us/req", "{:>12.1f}")]


def resilience_scenario(args, work, backend, binary, conns=64):
    plain_work, guarded_work = os.path.join(work, "plain"), os.path.join(work, "guarded")
    os.makedirs(plain_work, exist_ok=True)
    os.makedirs(guarded_work, exist_ok=True)
    plain = start_sluicegate(plain_work, backend, backend, binary)
    guarded = start_sluicegate(guarded_work, backend, backend, binary,
                               rate_limit=GUARDED.format(backend=backend))
    try:
        paths = {"plain": "/", "guarded": "/guarded"}
        for name, (_, ports) in (("plain", plain), ("guarded", guarded)):
            run_wrk(ports["http"], 16, 1, paths[name])

        def run(name, ports):
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                      paths[name])
            return (rps, p50, p99, errors, requests)

        title = (f"Idle circuit breaker, bulkhead, retry policy and load shedding, "
                 f"wrk -t1 -c{conns} -d{args.duration}s")
        results = measure({"plain": plain, "guarded": guarded}, args.rounds, run,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
    finally:
        for proc, _ in (plain, guarded):
            proc.terminate()
            proc.wait(timeout=10)
    cpu, summary = summarise(results)
    print_table(f"{title}, median of {args.rounds} interleaved rounds", COLUMNS, summary,
                [ratio_note(cpu, "guarded", "plain")])
