"""The tracing scenario of bench/compare.py: what `[tracing]` costs per request in Sluicegate.

Three Sluicegate processes in front of the same backend, measured in interleaved rounds: one
without `[tracing]`, one with `sample_ratio = 0.01` and one with `sample_ratio = 1.0`. The
traced ones export over OTLP/HTTP to a small collector in this script (a thread that answers
every `POST /v1/traces` with an empty `ExportTraceServiceResponse`), so the export's work is
measured too; the collector's own CPU is not the gateway's and is not counted. wrk sends no
`traceparent`, so every request starts a trace and the ratio decides. The ratios are each
traced process's CPU per request over the untraced one's, round by round.
"""

import http.server
import os
import threading

from compare import measure, print_table, ratio_note, run_wrk, start_sluicegate, summarise

TRACING = """
[tracing]
endpoint = "http://127.0.0.1:{collector}"
protocol = "http/protobuf"
sample_ratio = {ratio}
queue_size = 65536
"""

COLUMNS = [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
           ("CPU us/req", "{:>12.1f}")]


class Collector(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and counts them."""
    exports = 0
    received_bytes = 0

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        Collector.exports += 1
        Collector.received_bytes += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def tracing_scenario(args, work, backend, binary, conns=64):
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    port = collector.server_address[1]
    procs = {}
    try:
        for name, ratio in (("off", None), ("ratio0.01", "0.01"), ("ratio1.0", "1.0")):
            dir_ = os.path.join(work, "tracing-" + name)
            os.makedirs(dir_, exist_ok=True)
            extra = TRACING.format(collector=port, ratio=ratio) if ratio else ""
            procs[name] = start_sluicegate(dir_, backend, backend, binary, rate_limit=extra)
        for _, ports in procs.values():
            run_wrk(ports["http"], 16, 1)

        def run(name, ports):
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration)
            return (rps, p50, p99, errors, requests)

        title = f"Tracing off, sample_ratio 0.01 and 1.0, wrk -t1 -c{conns} -d{args.duration}s"
        results = measure(procs, args.rounds, run,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(timeout=10)
        collector.shutdown()
    cpu, summary = summarise(results)
    print_table(f"{title}, median of {args.rounds} interleaved rounds", COLUMNS, summary,
                [ratio_note(cpu, "ratio0.01", "off"), ratio_note(cpu, "ratio1.0", "off"),
                 f"collector: {Collector.exports} exports, {Collector.received_bytes} bytes"])
