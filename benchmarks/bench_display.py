"""Display overhead: a 20,000-piece answer through the whole magic in a real kernel,
against the provider alone in the same kernel.

Two servers (``stream_server.py``, each in its own process): one as fast as it can, to
measure what the display costs per piece (cell time, magic against provider alone); one at
10,000 pieces a second after a 0.2 s pause, as a fast local model streams, to count the
display updates that reach the frontend and how soon the first piece does.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import goal_lines
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

PIECES = 20_000
RATE = 10_000.0
SERVER = Path(__file__).parent / "stream_server.py"

PROVIDER_CELL = """\
import time as _time
from flowgpt_magic import FlowGpt as _FlowGpt
_t = _time.perf_counter()
_pieces = [p async for p in _FlowGpt.create_async_generator(
    "gpt-3.5-turbo", [{{"role": "user", "content": "x"}}], api_url={url!r})]
_seconds = _time.perf_counter() - _t
assert len(_pieces) == {pieces}
print(_seconds)
"""
MAGIC_CELL = """\
_t = _time.perf_counter()
get_ipython().run_cell_magic("flowgpt", "--no-history", "x")
_seconds = _time.perf_counter() - _t
"""


def start_server(*args: str) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, str(SERVER), str(PIECES), *args], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def execute(kc: BlockingKernelClient, code: str) -> list[tuple[float, dict[str, Any]]]:
    """Run ``code``; return its iopub messages, each with the wall-clock time it arrived."""
    msg_id = kc.execute(code)
    received = []
    while True:
        message = kc.get_iopub_msg(timeout=120)
        arrived = time.time()
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        received.append((arrived, message))
        if message["msg_type"] == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return received


def seconds_of(kc: BlockingKernelClient) -> float:
    (line,) = [
        m["content"]["text"] for _, m in execute(kc, "print(_seconds)") if m["msg_type"] == "stream"
    ]
    return float(line)


def run(runs: int = 5) -> dict[str, Any]:
    fast, fast_url = start_server()
    paced, paced_url = start_server(str(RATE))
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        execute(kc, "%load_ext flowgpt_magic")
        provider_s, magic_s, rates, latencies, updates = [], [], [], [], []
        paced_provider_s, paced_magic_s = [], []
        for _ in range(runs):
            execute(kc, PROVIDER_CELL.format(url=fast_url, pieces=PIECES))
            provider_s.append(seconds_of(kc))
            execute(kc, f"%config FlowGptMagics.api_url = {fast_url!r}")
            execute(kc, MAGIC_CELL)
            magic_s.append(seconds_of(kc))

            assert paced.stdout is not None
            execute(kc, PROVIDER_CELL.format(url=paced_url, pieces=PIECES))
            paced_provider_s.append(seconds_of(kc))
            paced.stdout.readline()  # the provider's request's first-piece line
            execute(kc, f"%config FlowGptMagics.api_url = {paced_url!r}")
            messages = execute(kc, MAGIC_CELL)
            paced_magic_s.append(seconds_of(kc))
            first_piece_sent = float(paced.stdout.readline().split()[1])
            texts = [t for t, m in messages if m["msg_type"] == "stream"]
            streaming = texts[-1] - texts[0]
            # Text updates, the waiting line's removal, and the final static text.
            count = len(texts) + sum(
                1 for _, m in messages if m["msg_type"] in ("comm_msg", "update_display_data")
            )
            updates.append(count)
            rates.append((len(texts) - 1) / streaming)
            latencies.append(texts[0] - first_piece_sent)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        for server in (fast, paced):
            server.terminate()
            server.wait(timeout=30)
    provider, magic = min(provider_s), min(magic_s)
    return {
        "pieces": PIECES,
        "runs": runs,
        "provider_alone_seconds": provider_s,
        "magic_seconds": magic_s,
        "paced_rate": RATE,
        "paced_display_messages": updates,
        "paced_text_updates_per_second": rates,
        "first_piece_latency_seconds": latencies,
        "paced_provider_alone_seconds": paced_provider_s,
        "paced_magic_seconds": paced_magic_s,
        "ratios": {
            "magic_vs_provider": magic / provider,
            "paced_magic_vs_provider": min(paced_magic_s) / min(paced_provider_s),
        },
        "summary": {
            "magic_vs_provider": magic / provider,
            "text_updates_per_second": max(rates),
            "first_piece_latency_ms": 1000 * statistics.median(latencies),
        },
        "goals": {
            "magic_vs_provider": ("<=", 1.25),
            "text_updates_per_second": ("<=", 30.0),
            "first_piece_latency_ms": ("<=", 50.0),
        },
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"2. Display overhead, {result['pieces']:,} pieces through %%flowgpt in a real kernel "
        f"(best/median of {result['runs']})",
        f"   provider alone {min(result['provider_alone_seconds']) * 1000:8.1f} ms",
        f"   %%flowgpt      {min(result['magic_seconds']) * 1000:8.1f} ms",
        f"   at {RATE:,.0f} pieces/s: provider alone "
        f"{min(result['paced_provider_alone_seconds']) * 1000:.0f} ms, %%flowgpt "
        f"{min(result['paced_magic_seconds']) * 1000:.0f} ms "
        f"({result['ratios']['paced_magic_vs_provider']:.3f}x)",
        *goal_lines(result["summary"], result["goals"]),
        f"   display messages per paced answer: {result['paced_display_messages']} "
        f"(over {PIECES / RATE:.0f} s of streaming)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
