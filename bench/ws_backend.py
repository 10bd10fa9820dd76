#!/usr/bin/env python3
"""A WebSocket endpoint for the idle-tunnel benchmark: answers every upgrade with `101` and then
holds the connection, reading and dropping whatever arrives, until the other side closes.

Usage: bench/ws_backend.py PORT   (listens on 127.0.0.1:PORT; asyncio, so 10,000 open tunnels
cost it little and need nothing installed)
"""

import asyncio
import base64
import hashlib
import resource
import sys

# RFC 6455 4.2.2: the accept key is SHA-1 of the client's key and this GUID, base64-encoded.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def tunnel(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        while await reader.read(4096):
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(tunnel, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(int(sys.argv[1])))
