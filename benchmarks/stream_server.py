"""A server for benchmarks: answers any POST with one pre-encoded NDJSON answer of N pieces.

    python benchmarks/stream_server.py PIECES [RATE [PAUSE]]  # prints its URL, serves

It runs in its own process, so that the client being measured has a core of its own. With
no RATE it writes the body in 64 KiB blocks as fast as it can, so that the server is never
the bottleneck. With RATE (pieces a second) it waits PAUSE seconds (0.2 unless given), as a
model does before its first word, then sends the pieces every 10 ms at that rate, and
prints on stdout the wall-clock time at which it wrote the first piece ("first-piece
TIME").
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

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


async def main(pieces: int, rate: float | None, pause: float) -> None:
    body = answer_body(pieces)
    lines = body.splitlines(keepends=True)

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if rate is None:
            for start in range(0, len(body), 65536):
                await response.write(body[start : start + 65536])
        else:
            await response.write(lines[0])  # the start event
            await asyncio.sleep(pause)
            per_tick = max(1, round(rate / 100))
            started = time.monotonic()
            for tick, start in enumerate(range(1, len(lines), per_tick)):
                await asyncio.sleep(max(0.0, started + tick / 100 - time.monotonic()))
                await response.write(b"".join(lines[start : start + per_tick]))
                if tick == 0:
                    print(f"first-piece {time.time()}", flush=True)
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
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else None
    asyncio.run(main(int(sys.argv[1]), rate, float(sys.argv[3]) if len(sys.argv) > 3 else 0.2))
