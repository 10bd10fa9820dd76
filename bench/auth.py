"""The auth scenario of bench/compare.py: what authentication costs per request in Sluicegate.

One Sluicegate process serves three routes to the same backend: `/` plain, `/jwt` behind a
`jwt` policy (RS256, a 2048-bit key from a key file) and `/key` behind an `api_key` policy.
wrk sends the same Authorization and x-api-key headers to all three (a Lua script cycling
through 300 distinct tokens and 64 keys), so the plain route's requests are the same size and
only the checking differs. The three paths are measured in interleaved rounds; the ratios are
each route's CPU per request over the plain route's.

Tokens are reused, as clients reuse theirs until they expire: after the first use of each, the
gateway answers from its verified-token cache. What a first use costs (an RS256 signature
check) is measured by `cargo bench --bench hot_paths -- jwt`.

Needs Python's `cryptography` package (Debian: python3-cryptography) to make the key and sign
the tokens.
"""

import base64
import hashlib
import json
import os
import time

from compare import measure, print_table, ratio_note, run_wrk, start_sluicegate, summarise

TOKENS = 300
KEYS = 64

ROUTES = """
[[routes]]
name = "jwt"
match = {{ path_prefix = "/jwt" }}
service = "backend"
auth = "users"

[[routes]]
name = "key"
match = {{ path_prefix = "/key" }}
service = "backend"
auth = "partners"

[auth.users]
type = "jwt"
algorithms = ["RS256"]
keys_file = "{jwks}"
issuer = "https://idp.bench/"
audience = "api"

[auth.partners]
type = "api_key"
keys_file = "{keys}"
"""

SCRIPT = """
local tokens = {{{tokens}}}
local keys = {{{keys}}}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {{
    ["authorization"] = "Bearer " .. tokens[(n % #tokens) + 1],
    ["x-api-key"] = keys[(n % #keys) + 1],
  }})
end
"""

COLUMNS = [("req/s", "{:>12.0f}"), ("p99 ms", "{:>12.2f}"), ("errors", "{:>12}"),
           ("CPU us/req", "{:>12.1f}")]


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_tokens(work, count, now):
    """A 2048-bit RSA key's JWK set in `work`, and `count` RS256 tokens signed with it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": "bench", "use": "sig",
           "n": b64(numbers.n.to_bytes(256, "big")), "e": b64(numbers.e.to_bytes(3, "big"))}
    jwks = os.path.join(work, "jwks.json")
    with open(jwks, "w") as f:
        json.dump({"keys": [jwk]}, f)
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    tokens = []
    for i in range(count):
        claims = {"iss": "https://idp.bench/", "aud": "api", "sub": f"user-{i}",
                  "exp": now + 3600, "iat": now, "scope": "read write"}
        payload = b64(json.dumps(claims).encode())
        signing_input = f"{header}.{payload}".encode()
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        tokens.append(f"{header}.{payload}.{b64(signature)}")
    return jwks, tokens


def make_keys(work, count):
    keys = [f"bench-key-{i:04d}-{os.urandom(8).hex()}" for i in range(count)]
    path = os.path.join(work, "keys.toml")
    with open(path, "w") as f:
        for i, k in enumerate(keys):
            f.write(f'[[keys]]\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n'
                    f'consumer = "partner-{i}"\n\n')
    return path, keys


def write_script(work, name, tokens, keys):
    path = os.path.join(work, name)
    quoted = lambda items: ", ".join(f'"{t}"' for t in items)
    with open(path, "w") as f:
        f.write(SCRIPT.format(tokens=quoted(tokens), keys=quoted(keys)))
    return path


def auth_scenario(args, work, backend, binary, conns=64):
    now = int(time.time())
    jwks, tokens = make_tokens(work, TOKENS, now)
    keys_file, keys = make_keys(work, KEYS)
    script = write_script(work, "auth.lua", tokens, keys)
    proc, ports = start_sluicegate(work, backend, backend, binary,
                                   rate_limit=ROUTES.format(jwks=jwks, keys=keys_file))
    try:
        # Connections made, every token seen once (and cached), the key file read.
        for path in ("/", "/jwt", "/key"):
            run_wrk(ports["http"], 16, 1, path, script=script)
        paths = {"plain": "/", "jwt": "/jwt", "api_key": "/key"}

        def run(name, ports):
            requests, rps, p50, p99, errors = run_wrk(ports["http"], conns, args.duration,
                                                      paths[name], script=script)
            return (rps, p50, p99, errors, requests)

        title = (f"Authentication, wrk -t1 -c{conns} -d{args.duration}s, {TOKENS} RS256 tokens "
                 f"and {KEYS} API keys in turn")
        results = measure({n: (proc, ports) for n in paths}, args.rounds, run,
                          ("req/s", "p50_ms", "p99_ms", "errors", "requests", "cpu_s"), title,
                          args.show_rounds)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    cpu, summary = summarise(results)
    notes = [ratio_note(cpu, name, "plain") for name in ("jwt", "api_key")]
    print_table(f"{title}, median of {args.rounds} interleaved rounds", COLUMNS, summary, notes)
