"""A server for benchmarks: answers any POST with one pre-encoded NDJSON answer of N pieces.

    python benchmarks/stream_server.py PIECES     # prints its URL, serves until killed

It runs in its own process, so that the client being measured has a core of its own, and
writes the body in 64 KiB blocks, so that the server is never the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web


def piece(index: int) -> str:
    return f"w{index} "


def answer_body(pieces: int) -> bytes:
    lines = [json.dumps({"event": "start", "data": {"model": "gpt-3.5-turbo"}})]
    lines += [json.dumps({"event": "text", "data": piece(i)}) for i in range(pieces)]
    lines.append(json.dumps({"event": "done"}))
    return ("\n".join(lines) + "\n").encode()


def expected_text(pieces: int) -> str:
    return "".join(piece(i) for i in range(pieces))


async def main(pieces: int) -> None:
    body = answer_body(pieces)

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start : start + 65536])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"http://{host}:{port}/v3/chat-anonymous", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
