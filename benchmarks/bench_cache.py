"""A cached answer: %%flowgpt answering from its cache (FlowGptMagics.cache) in a real
kernel, against the same kernel displaying the same text directly (IPython's
``display(Markdown(text))``).

Each is timed as a person waits for it, from the execute request to the kernel's idle (the
frontend's view), and inside the kernel (the cell's own time). The answer is a Markdown text
of 2,000 words (to a short prompt), asked once of the bundled server to fill the cache;
the server is stopped before the timed runs, so that a request sent would fail, not be
timed.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import goal_lines
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from flowgpt_magic.server import LocalServer

WORDS = 2_000
PROMPT = "Tell me about notebooks."

CACHED_CELL = f"""\
_t = _time.perf_counter()
get_ipython().run_cell_magic("flowgpt", "--no-history", {PROMPT!r})
_seconds = _time.perf_counter() - _t
"""
# The same text, displayed as IPython displays Markdown: what the cache is measured against.
DIRECT_CELL = """\
_t = _time.perf_counter()
_display(_Markdown(_answer))
_seconds = _time.perf_counter() - _t
"""


def execute(kc: BlockingKernelClient, code: str) -> tuple[float, list[dict[str, Any]]]:
    """Run ``code``: the seconds from the request to the kernel's idle, and the messages."""
    started = time.perf_counter()
    msg_id = kc.execute(code)
    received = []
    while True:
        message = kc.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        received.append(message)
        if message["msg_type"] == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return time.perf_counter() - started, received


def seconds_of(kc: BlockingKernelClient) -> float:
    _, messages = execute(kc, "print(_seconds)")
    return float("".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream"))


def run(runs: int = 21) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="bench-cache-")
    cache = str(Path(folder) / "answers.sqlite")
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        execute(
            kc,
            "import time as _time\nfrom IPython.display import Markdown as _Markdown, "
            "display as _display\n%load_ext flowgpt_magic\n"
            f"%config FlowGptMagics.cache = {cache!r}",
        )
        with LocalServer() as server:
            server.state.options.min_pieces = WORDS  # (a word a piece)
            execute(kc, f"%config FlowGptMagics.api_url = {server.url!r}")
            execute(kc, CACHED_CELL)  # (asked: the answer is kept)
            asked = len(server.state.requests)
        assert asked == 1
        execute(kc, "_answer = _flowgpt")
        direct_wall, direct_cell, cached_wall, cached_cell = [], [], [], []
        for _ in range(runs):
            wall, messages = execute(kc, CACHED_CELL)
            assert not any(m["msg_type"] == "stream" and "UsageError" in str(m) for m in messages)
            cached_wall.append(wall)
            cached_cell.append(seconds_of(kc))
            wall, _ = execute(kc, DIRECT_CELL)
            direct_wall.append(wall)
            direct_cell.append(seconds_of(kc))
        _, messages = execute(kc, "%flowgpt_cache")
        shown = "".join(m["content"].get("text", "") for m in messages)
        assert f"Taken from it {runs:,} times" in shown, shown
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    median = statistics.median
    return {
        "words": WORDS,
        "runs": runs,
        "cached_wall_seconds": cached_wall,
        "direct_wall_seconds": direct_wall,
        "cached_cell_seconds": cached_cell,
        "direct_cell_seconds": direct_cell,
        "summary": {
            "cached_vs_direct_display": median(cached_wall) / median(direct_wall),
        },
        "goals": {"cached_vs_direct_display": ("<=", 1.2)},
    }


def report(result: dict[str, Any]) -> str:
    median = statistics.median
    lines = [
        f"9. A cached answer ({result['words']:,} words) in a real kernel, against "
        f"displaying the same text directly (median of {result['runs']})",
        f"   as the frontend waits: %%flowgpt from the cache "
        f"{median(result['cached_wall_seconds']) * 1000:.1f} ms, display(Markdown(text)) "
        f"{median(result['direct_wall_seconds']) * 1000:.1f} ms",
        f"   the cell's own time: %%flowgpt {median(result['cached_cell_seconds']) * 1000:.2f} ms,"
        f" display {median(result['direct_cell_seconds']) * 1000:.2f} ms",
        *goal_lines(result["summary"], result["goals"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
