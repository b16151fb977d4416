"""A server for benchmarks: answers any POST with one pre-encoded NDJSON answer of N pieces.

    python benchmarks/stream_server.py PIECES [RATE [PAUSE]]  # prints its URL, serves
    python benchmarks/stream_server.py --text FILE 0 [RATE [PAUSE]]  # FILE's words as pieces

It runs in its own process, so that the client being measured has a core of its own. With
no RATE it writes the body in 64 KiB blocks as fast as it can, so that the server is never
the bottleneck. With RATE (pieces a second) it waits PAUSE seconds (0.2 unless given), as a
model does before its first word, then sends the pieces at that rate (a write every 10 ms,
or every 1/RATE s if longer), and prints on stdout the wall-clock time at which it wrote
the first piece ("first-piece TIME").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path

from aiohttp import web


def piece(index: int) -> str:
    return f"w{index} "


def words(text: str) -> list[str]:
    """``text`` cut as a model's tokens come, roughly: each word with the spaces after it."""
    return re.findall(r"\S+\s*|\s+", text)


def answer_body(pieces: int | list[str]) -> bytes:
    texts = [piece(i) for i in range(pieces)] if isinstance(pieces, int) else pieces
    lines = [json.dumps({"event": "start", "data": {"model": "gpt-3.5-turbo"}})]
    lines += [json.dumps({"event": "text", "data": text}) for text in texts]
    lines.append(json.dumps({"event": "done"}))
    return ("\n".join(lines) + "\n").encode()


def expected_text(pieces: int) -> str:
    return "".join(piece(i) for i in range(pieces))


async def main(pieces: int | list[str], rate: float | None, pause: float) -> None:
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
            interval = max(0.01, 1 / rate)  # (a write at most every 10 ms)
            per_tick = max(1, round(rate * interval))
            started = time.monotonic()
            for tick, start in enumerate(range(1, len(lines), per_tick)):
                await asyncio.sleep(max(0.0, started + tick * interval - time.monotonic()))
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pieces", type=int)
    parser.add_argument("rate", type=float, nargs="?")
    parser.add_argument("pause", type=float, nargs="?", default=0.2)
    parser.add_argument("--text", type=Path, help="answer with this file's words instead")
    args = parser.parse_args()
    pieces = words(args.text.read_text()) if args.text else args.pieces
    asyncio.run(main(pieces, args.rate, args.pause))
