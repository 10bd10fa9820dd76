#!/usr/bin/env python3
"""Runs the public HTTP caching test suite (http-tests/cache-tests, https://cache-tests.fyi)
against Sluicegate's response cache, nginx's proxy_cache and Varnish, side by side, and prints
each one's results in the suite's own categories.

The suite is not part of this repository: give its checkout (with `npm install` done) as
`--suite`:

    git clone https://github.com/http-tests/cache-tests /tmp/cache-tests
    (cd /tmp/cache-tests && npm install --omit=dev)
    cargo build --release
    python3 bench/cache_tests.py --suite /tmp/cache-tests [--list]

Needs Node.js (18 or later), and `nginx` and `varnish` (Debian packages) for the two
references; a reference that is not installed is skipped. Everything runs on loopback ports the
script picks. A run takes about 25 s per cache.

Each cache is set up as the suite's own Docker images set up theirs: nginx with `proxy_cache`
and `proxy_cache_revalidate on`, Varnish with its default VCL; Sluicegate with one route whose
`cache = { }` (no `ttl`: a response without freshness information is not stored).

Categories, as the suite's results page counts them: `pass`/`fail` for required behaviour,
`optional_fail` for behaviour an optimal cache would have, `yes`/`no` for informational checks,
`setup_fail` when a test's precondition did not hold (e.g. the cache did not store what the test
builds on), `untested` for browser-only tests. Dependencies between tests are not applied (a
test counts on its own).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SLUICEGATE = """
[[listeners]]
name = "public"
bind = "127.0.0.1:{port}"
protocol = "http"

[[routes]]
name = "all"
service = "suite"
cache = {{ }}

[[services]]
name = "suite"
endpoints = [{{ address = "127.0.0.1:{origin}" }}]
"""

NGINX = """
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/client;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=suite:8m max_size=1000m inactive=600m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin};
            proxy_cache suite;
            proxy_cache_revalidate on;
        }}
    }}
}}
"""

# Summarises a results file in the suite's categories, with the suite's own function.
SUMMARISE = """
import fs from 'fs'
const [suite, file] = process.argv.slice(2)
const tests = (await import(suite + '/tests/index.mjs')).default
const { determineTestResult, resultTypes } = await import(suite + '/test-engine/lib/results.mjs')
const results = JSON.parse(fs.readFileSync(file, 'utf8'))
const names = new Map(Object.entries(resultTypes).map(([k, v]) => [v, k]))
const out = {}
for (const group of tests) for (const t of group.tests) {
  const kind = names.get(determineTestResult(tests, t.id, results, false))
  ;(out[kind] ||= []).push(t.id)
}
console.log(JSON.stringify(out))
"""

CATEGORIES = ["pass", "fail", "optional_fail", "yes", "no", "setup_fail", "untested"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start(argv, **kw):
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass


def run_suite(suite, port, out):
    with open(out, "w") as f:
        # The suite's cli takes its settings as npm passes them, from the environment.
        env = {**os.environ, "npm_config_base": f"http://127.0.0.1:{port}", "npm_config_id": "",
               "npm_package_config_id": ""}
        subprocess.run(["node", "--no-warnings", "test-engine/cli.mjs"], cwd=suite, stdout=f,
                       stderr=subprocess.DEVNULL, env=env, check=True)


def summarise(suite, work, results):
    script = os.path.join(work, "summarise.mjs")
    with open(script, "w") as f:
        f.write(SUMMARISE)
    text = subprocess.run(["node", "--no-warnings", script, os.path.abspath(suite), results],
                          capture_output=True, text=True, check=True).stdout
    return json.loads(text)


def caches(binary, origin, work):
    """(name, start) for each cache: start() returns (process, port)."""
    def sluicegate():
        port = free_port()
        config = os.path.join(work, "sluicegate.toml")
        with open(config, "w") as f:
            f.write(SLUICEGATE.format(port=port, origin=origin))
        return start([binary, "run", "--config", config]), port

    def nginx():
        port = free_port()
        # nginx's workers run as an unprivileged user: they must reach their directories.
        os.chmod(work, 0o755)
        for d in ["nginx-cache", "proxy", "client"]:
            os.makedirs(os.path.join(work, d), exist_ok=True)
            os.chmod(os.path.join(work, d), 0o777)
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX.format(work=work, port=port, origin=origin))
        return start(["nginx", "-c", conf]), port

    def varnish():
        port = free_port()
        return start(["varnishd", "-F", "-n", os.path.join(work, "varnish"),
                      "-a", f"127.0.0.1:{port}", "-b", f"127.0.0.1:{origin}",
                      "-s", "malloc,64m"]), port

    found = [("sluicegate", sluicegate)]
    for name, program, begin in [("nginx", "nginx", nginx), ("varnish", "varnishd", varnish)]:
        if shutil.which(program) or os.path.exists(f"/usr/sbin/{program}"):
            found.append((name, begin))
        else:
            print(f"{name}: not installed (apt-get install {name.split()[0]}); skipped")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", required=True, help="a checkout of http-tests/cache-tests")
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/sluicegate"))
    parser.add_argument("--list", action="store_true",
                        help="list Sluicegate's failing and setup-failing test ids")
    args = parser.parse_args()
    if not os.path.exists(os.path.join(args.suite, "test-engine/cli.mjs")):
        sys.exit(f"{args.suite}: not a checkout of http-tests/cache-tests")
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary}: build it first (cargo build --release)")
    os.environ["PATH"] += os.pathsep + "/usr/sbin"
    work = tempfile.mkdtemp(prefix="cache-tests-")
    origin = free_port()
    server = start(["node", "--no-warnings", "test-engine/server/server.mjs"], cwd=args.suite,
                   env={**os.environ, "npm_config_port": str(origin), "npm_config_protocol": "http",
                        "npm_config_pidfile": os.path.join(work, "server.pid")})
    summaries = {}
    try:
        wait_port(origin)
        for name, begin in caches(args.binary, origin, work):
            proc, port = begin()
            try:
                wait_port(port)
                results = os.path.join(work, f"results-{name}.json")
                run_suite(args.suite, port, results)
                summaries[name] = summarise(args.suite, work, results)
            finally:
                stop(proc)
    finally:
        stop(server)
    print(f"\nhttp-tests/cache-tests, {sum(len(v) for v in summaries['sluicegate'].values())} "
          f"tests (results in {work})\n")
    print(f"{'':<14}" + "".join(f"{c:>14}" for c in CATEGORIES))
    for name, summary in summaries.items():
        print(f"{name:<14}" + "".join(f"{len(summary.get(c, [])):>14}" for c in CATEGORIES))
    if args.list:
        mine = summaries["sluicegate"]
        for category in ["fail", "setup_fail", "optional_fail"]:
            ids = mine.get(category, [])
            print(f"\nsluicegate {category} ({len(ids)}):")
            for test in ids:
                others = ", ".join(f"{n}: {next((c for c, v in s.items() if test in v), '?')}"
                                   for n, s in summaries.items() if n != "sluicegate")
                print(f"  {test}  ({others})")


if __name__ == "__main__":
    main()
