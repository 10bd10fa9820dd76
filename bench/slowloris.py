#!/usr/bin/env python3
"""Slow-header clients against Sluicegate: are normal clients still served, and are the slow
ones closed at the listener's request_header_timeout?

Starts an nginx backend and a release Sluicegate (compare.py's config: 2 workers, access log to
a file; request_header_timeout as given), then measures, with wrk -c64, the normal clients'
latency without attackers, and again while --slow slowloris connections are held open: each
sends a request head that never ends, one more header line every --interval seconds (which
keeps a server that times out per line waiting forever), and is replaced by a new one as soon as
the gateway closes it, so --slow of them are open throughout. For each slow connection the
script records how long after connecting the gateway closed it. (slowhttptest -H does the same
but stops at its first round of closes; this keeps the pressure up for the whole measurement.)

Usage: bench/slowloris.py [--slow 1000] [--timeout 10s] [--interval 5] [--rounds 3]
                          [--duration 10]
Installs nginx and wrk with apt when missing; builds Sluicegate in release mode.
"""

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (same folder: backend, wrk and port helpers)


def p99s(port, rounds, duration):
    out = []
    for _ in range(rounds):
        _, rps, _, p99, errors = compare.run_wrk(port, 64, duration)
        out.append((p99, rps, errors))
    return out


async def slow_client(port, interval, closes, stop):
    """One slowloris connection after another until `stop` is set; appends, per connection,
    the seconds from connecting until the gateway closed it."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        start = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\n")
        n = 0
        while not stop.is_set():
            try:
                if await asyncio.wait_for(reader.read(1024), interval) == b"":
                    closes.append(time.monotonic() - start)
                    break
            except asyncio.TimeoutError:
                writer.write(f"X-Drip-{n}: {n}\r\n".encode())
                n += 1
            except OSError:
                closes.append(time.monotonic() - start)
                break
        writer.close()


def attack(port, count, interval, closes, stop, ready):
    async def run():
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(slow_client(port, interval, closes, stop)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await asyncio.gather(*tasks, return_exceptions=True)
    asyncio.run(run())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--timeout", default="10s")
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    args = ap.parse_args()
    compare.ensure_tools()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=compare.ROOT, check=True)
    binary = os.path.join(compare.ROOT, "target", "release", "sluicegate")
    work = tempfile.mkdtemp(prefix="sluicegate-slowloris-")
    backend, backend_port = compare.start_backend(work)
    # The layer-4 listener the benchmark config also has stays idle here.
    gateway, ports = compare.start_sluicegate(
        work, backend_port, compare.free_port(), binary,
        listener_extra=f'request_header_timeout = "{args.timeout}"')
    port = ports["http"]
    closes, stop, ready = [], threading.Event(), threading.Event()
    try:
        base = p99s(port, args.rounds, args.duration)
        attacker = threading.Thread(
            target=attack, args=(port, args.slow, args.interval, closes, stop, ready))
        attacker.start()
        ready.wait()
        under = p99s(port, args.rounds, args.duration)
        stop.set()
        attacker.join()
    finally:
        gateway.terminate()
        backend.terminate()
    med = lambda xs: statistics.median(xs)
    b, u = [r[0] for r in base], [r[0] for r in under]
    print(f"normal clients (wrk -c64, {args.rounds} x {args.duration} s), p99 ms:")
    print(f"  without slow clients: median {med(b):.2f} (rounds {', '.join(f'{x:.2f}' for x in b)})"
          f", req/s {med([r[1] for r in base]):,.0f}, errors {sum(r[2] for r in base)}")
    print(f"  with {args.slow} slow clients: median {med(u):.2f} (rounds {', '.join(f'{x:.2f}' for x in u)})"
          f", req/s {med([r[1] for r in under]):,.0f}, errors {sum(r[2] for r in under)}")
    print(f"  ratio: {med(u) / med(b):.2f}x")
    closes.sort()
    print(f"slow clients ({args.slow} held open, a header line every {args.interval} s): "
          f"{len(closes)} closed by the gateway after min {closes[0]:.2f} s, "
          f"median {med(closes):.2f} s, max {closes[-1]:.2f} s "
          f"(request_header_timeout {args.timeout})")


if __name__ == "__main__":
    main()
