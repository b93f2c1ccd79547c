"""A discarding OTLP/HTTP receiver for the benchmark: answers 200 to every POST, counts bytes.

    python -m bench.sink PORT

It stands in for an OTel Collector without decoding protobuf (tests/support/otlp.py decodes;
that costs CPU the benchmark should not charge to Lungwatch), and it runs as its own process
so its work never shares the harness's or the load client's interpreter. GET /stats answers
the counts, so the harness can check that the instrumented system really exported.
"""

from __future__ import annotations

import asyncio
import json
import sys

COUNTS: dict[str, int] = {}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path = lines[0].split(b" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            key = path.decode(errors="replace")
            if method == b"GET" and key == "/stats":
                body = json.dumps(COUNTS).encode()
            else:
                COUNTS[key] = COUNTS.get(key, 0) + 1
                COUNTS[key + ":bytes"] = COUNTS.get(key + ":bytes", 0) + length
                body = b""
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
