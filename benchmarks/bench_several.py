"""Several models at once: four answers through one ``%%flowgpt`` cell, against the slowest
of the same four asked alone, in a real kernel.

The bundled server answers on its OpenAI-compatible side, a word every 20 ms (about a second
an answer); the four models are its three and FlowGPT's. Each cell is timed inside the kernel;
the figure is the best of ``runs`` for each, interleaved.
"""

from __future__ import annotations

from typing import Any

from common import goal_lines
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, ServerOptions

MODELS = ["openai:gpt-4o-mini", "openai:gpt-4o", "openai:llama3.2", "gemini"]
TIMED = """\
import time as _time
_t = _time.perf_counter()
get_ipython().run_cell_magic("flowgpt", {line!r}, "Which is best?")
print(_time.perf_counter() - _t)
"""


def seconds(kc: BlockingKernelClient, line: str) -> float:
    msg_id = kc.execute(TIMED.format(line=f"--no-history {line}"))
    printed = []
    while True:
        message = kc.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return float("".join(printed).split()[-1])


def run(runs: int = 5) -> dict[str, Any]:
    with LocalServer(options=ServerOptions(delay=0.02)) as server:
        km, kc = start_new_kernel(kernel_name="python3")
        try:
            base = server.url.removesuffix(PATH) + OPENAI_PATH
            setup = (
                "%load_ext flowgpt_magic\n"
                f"%config OpenAI.base_url = {base!r}\n"
                f"%config FlowGptMagics.api_url = {server.url!r}"
            )
            kc.execute_interactive(setup, timeout=60)
            alone: dict[str, float] = dict.fromkeys(MODELS, float("inf"))
            together = float("inf")
            for _ in range(runs):
                for model in MODELS:
                    alone[model] = min(alone[model], seconds(kc, f"-m {model}"))
                together = min(together, seconds(kc, " ".join(f"-m {m}" for m in MODELS)))
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    slowest = max(alone.values())
    return {
        "alone_seconds": alone,
        "together_seconds": together,
        "summary": {"together_vs_slowest_alone": together / slowest},
        "goals": {"together_vs_slowest_alone": ("<=", 1.1)},
    }


def report(result: dict[str, Any]) -> str:
    alone = ", ".join(f"{m} {s:.2f} s" for m, s in result["alone_seconds"].items())
    lines = [
        f"6. Four models at once (best of runs): together {result['together_seconds']:.2f} s",
        f"   alone: {alone}",
    ]
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    print(report(run()))
