"""Provider throughput: pieces per second for a 200,000-piece answer from a local server.

Four consumers read the same answer, served by ``stream_server.py`` in its own process:

(a) baseline: aiohttp line by line (``async for line in response.content`` + ``json.loads``)
(b) baseline: 64 KiB blocks, split into lines, ``json.loads`` per line
(c) ceiling: the whole body first, then ONE ``json.loads`` of the lines joined into an array
(d) ``FlowGpt.create_async_generator``, one piece yielded per text event

Each checks that it got exactly the expected text. Best of ``--runs`` runs each, interleaved.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from flowgpt_magic import FlowGpt

sys.path.insert(0, str(Path(__file__).parent))
from common import goal_lines
from stream_server import expected_text

PIECES = 200_000
MESSAGES = [{"role": "user", "content": "Count."}]
Consumer = Callable[[aiohttp.ClientSession, str], Awaitable[str]]


def texts(events: list[Any]) -> str:
    return "".join(e["data"] for e in events if e.get("event") == "text")


async def a_line_by_line(session: aiohttp.ClientSession, url: str) -> str:
    events = []
    async with session.post(url, json={}) as response:
        async for line in response.content:
            if line.strip():
                events.append(json.loads(line))
    return texts(events)


async def b_blocks_per_line(session: aiohttp.ClientSession, url: str) -> str:
    events, rest = [], b""
    async with session.post(url, json={}) as response:
        async for block in response.content.iter_chunked(65536):
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            events += [json.loads(line) for line in lines if line.strip()]
    if rest.strip():
        events.append(json.loads(rest))
    return texts(events)


async def c_whole_body_one_call(session: aiohttp.ClientSession, url: str) -> str:
    async with session.post(url, json={}) as response:
        body = await response.read()
    lines = [line for line in body.split(b"\n") if line]
    return texts(json.loads(b"[" + b",".join(lines) + b"]"))


async def d_flowgpt(session: aiohttp.ClientSession, url: str) -> str:
    pieces = []
    async for piece in FlowGpt.create_async_generator(
        "gpt-3.5-turbo", MESSAGES, api_url=url, session=session
    ):
        pieces.append(piece)
    return "".join(pieces)


CONSUMERS: dict[str, Consumer] = {
    "a_line_by_line": a_line_by_line,
    "b_blocks_per_line": b_blocks_per_line,
    "c_whole_body_one_json_call": c_whole_body_one_call,
    "d_flowgpt_provider": d_flowgpt,
}


async def measure(url: str, runs: int) -> dict[str, list[float]]:
    expected = expected_text(PIECES)
    seconds: dict[str, list[float]] = {name: [] for name in CONSUMERS}
    async with aiohttp.ClientSession() as session:
        for _ in range(runs):
            for name, consume in CONSUMERS.items():  # interleaved: drift hits all alike
                start = time.perf_counter()
                text = await consume(session, url)
                seconds[name].append(time.perf_counter() - start)
                if text != expected:
                    raise SystemExit(f"{name} did not get the expected text")
    return seconds


def run(runs: int = 9) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "stream_server.py"), str(PIECES)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        seconds = asyncio.run(measure(url, runs))
    finally:
        server.terminate()
        server.wait(timeout=30)
    rates = {name: PIECES / min(times) for name, times in seconds.items()}
    baseline, ceiling = rates["a_line_by_line"], rates["c_whole_body_one_json_call"]
    return {
        "pieces": PIECES,
        "runs": runs,
        "seconds": seconds,
        "pieces_per_second": rates,
        "ratios": {
            "b_vs_a": rates["b_blocks_per_line"] / baseline,
            "c_vs_a": ceiling / baseline,
        },
        "summary": {
            "d_vs_a": rates["d_flowgpt_provider"] / baseline,
            "d_vs_c": rates["d_flowgpt_provider"] / ceiling,
        },
        "goals": {"d_vs_a": (">=", 6.0), "d_vs_c": (">=", 1.0)},
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"1. Provider throughput, {result['pieces']:,} pieces (best of {result['runs']})"]
    for name, rate in result["pieces_per_second"].items():
        lines.append(f"   {name:28} {rate:>12,.0f} pieces/s")
    for name, ratio in result["ratios"].items():
        lines.append(f"   {name:28} {ratio:10.2f}")
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    print(report(run()))
