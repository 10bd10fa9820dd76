#!/usr/bin/env python3
"""Writes small seed corpora for the fuzz targets into fuzz/corpus/<target>/ (not committed).

A handful of handwritten messages, valid and not: the fuzzer finds the rest. Existing files
are left alone, so a corpus grown by earlier runs is kept.
"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nUser-Agent: curl/8\r\n\r\nGET",
    b"\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
    b"PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n",
    b"PATCH /up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET http://example.com/p?q HTTP/1.1\r\nHost: other\r\n\r\n",
    b"DELETE /x HTTP/1.1\nHost: x\nCookie: a=b; c=d\n\n",
    b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Tab:\tv\t\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n"
    b"x-private: 1\r\nUpgrade: h2c\r\nTrailer: x-t\r\nx-kept: yes\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nbody to the close",
    b"HTTP/1.1 099 Odd\r\n\r\n",
]

CHUNKED = [
    b"5\r\nhello\r\n6 ; name=value\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"3;name=v\r\nabc\r\n0\r\n\r\n",
    b"3\nabc\n0\n\n",
    b"3\r\nabc\n0\r\n\r\n",
    b"3;a\rb\r\nabc\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\nx-sum: 42\r\nhost: evil\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\nx",
    b"1\t \r\na\r\n0\r\n\n",
]


def write(target, inputs):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    for data in inputs:
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


write("request_head", REQUESTS)
write("request_roundtrip", REQUESTS)
IDENTITY = [
    b"GET /public/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /public/%2e%2E/admin/%7Ex%2fy?q=/../ HTTP/1.1\r\nHost: a:80\r\n\r\n",
    b"GET //a//b/./c/ HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    b"GET http://a.example/x/.. HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET /p/..;/q HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
]
# The first byte chooses merge_slashes.
write("request_identity", [bytes([m]) + r for r in REQUESTS + IDENTITY for m in (0, 1)])
# One input per method the target can pick (first byte).
write("response_head", [bytes([m]) + r for r in RESPONSES for m in range(9)])
# The first two bytes choose where the body is split into two reads.
write(
    "chunked_strict",
    [struct.pack("<H", at) + c for c in CHUNKED for at in {0, 1, len(c) // 2, len(c) - 1}],
)

# Tokens as clients send them (first byte 0), and header/claims pairs the target signs (first
# byte 1, split at 0xff).
TOKENS = [
    b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln",
    b"eyJhbGciOiJub25lIn0.e30.",
    b"e30.e30.e30.e30",
    b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJleHAiOjF9.AAAA",
    b'{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}',
]
SIGNED = [
    (b'{"alg":"HS256"}', b'{"iss":"https://idp/","aud":"api","exp":1800000000,"sub":"a","scope":"x y"}'),
    (b'{"alg":"HS256","crit":["b64"],"b64":false}', b"{}"),
    (b'{"alg":"HS256","alg":"HS256"}', b'{"exp":1e400}'),
    (b'{"alg":"HS256"}', b'{"aud":["api",1],"nbf":1800000000,"exp":1800000001,"exp":2}'),
    (b'{"alg":"HS512","kid":"x"}', b'{"iss":"https://idp/","aud":"api","exp":-1}'),
]
write("jwt_token", [b"\x00" + t for t in TOKENS] + [b"\x01" + h + b"\xff" + c for h, c in SIGNED])

# cache_headers: request Cache-Control, response Cache-Control, Vary, Expires, Date, Age,
# If-None-Match, If-Modified-Since, ETag, Last-Modified, split at 0xff.
CACHE = [
    [b"max-age=0", b"public, max-age=60, s-maxage=30", b"accept-encoding", b"",
     b"Tue, 14 Nov 2023 22:13:20 GMT", b"10", b'"v1"', b"", b'"v1"', b""],
    [b"no-cache, min-fresh=5", b'max-age="120", stale-while-revalidate=30', b"*",
     b"Sunday, 06-Nov-94 08:49:37 GMT", b"", b"x", b'W/"a", "b"',
     b"Sun, 06 Nov 1994 08:49:37 GMT", b'W/"a"', b"Sun Nov  6 08:49:37 1994"],
    [b"max-stale, only-if-cached", b"no-store, private=\"set-cookie\", =x", b", ,a, b",
     b"0", b"yesterday", b"99999999999999999999", b"*", b"", b"", b""],
]
write("cache_headers", [b"\xff".join(fields) for fields in CACHE])

# cache_entry: first byte odd = the rest follows a valid header (magic, status, times, key):
# field count, fields (u16 name length, name, u32 value length, value), body.
def fields(*pairs):
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">H", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


write("cache_entry", [
    b"\x01" + fields((b"cache-control", b"max-age=60"), (b"etag", b'"v1"')) + b"body",
    b"\x01" + fields((b"x-a", b"1"), (b"x-a", b"2"), (b"cache-tag", b"a, b")),
    b"\x01" + fields(),
    b"\x00SGC1\x00\xc8" + b"\x00" * 32,
])

# trace_context: a traceparent, 0xff, a tracestate.
write("trace_context", [
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\xffvendor=opaque,other=x",
    b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future\xff",
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01\xff==,,k=v",
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
])

# cache_query: a byte choosing the listed names (page, sort, q, "a b"), then the query.
write("cache_query", [
    b"\x0fpage=2&sort=asc&utm=x",
    b"\x01PAGE=1&p%61ge=2&page[]=3&page=4",
    b"\x03page=1;sort=desc",
    b"\x08a+b=1&a%20b=2&%zz=3",
    b"\x07&&=&q&q=&page",
])
