"""One prompt over 2,000 rows (--each) in a real kernel, against the ideal and against the
official ``openai.AsyncOpenAI`` client driven with an ``asyncio.Semaphore`` over the same
rows, in the same kernel and run; and 50 real rows of the local model.

The bundled server runs in a process of its own and answers every request after a fixed
0.1 s (``--first-delay``), with a few words: the ideal run takes rows x 0.1 s / N. Both
ways stream their answers. Figures, at N = 8 and 64: the magic's wall time against the
ideal, its rows a second against the client's, the kernel's CPU a row against the
client's; and the magic's wall time with its progress bar against the same run with no
view at all (the Python API, ``rows.each``, with a view that shows nothing). Then the local
model (SmolLM2, llama.cpp with four slots, one thread): 50 rows through ``--each -j 4 -m
local`` against the client driving the same server, four at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from common import goal_lines
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from flowgpt_magic.server import OPENAI_PATH, PATH

ROWS, ANSWER_SECONDS = 2_000, 0.1
CLIENT = """\
import asyncio as _asyncio, time as _time, openai as _openai
async def _client(base, rows, n, model, key="sk-none", **extra):
    client = _openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=2)
    gate = _asyncio.Semaphore(n)
    async def one(row):
        async with gate:
            stream = await client.chat.completions.create(
                model=model, stream=True, messages=[{"role": "user", "content": row}], **extra
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    try:
        wall, cpu = _time.perf_counter(), _time.process_time()
        answers = await _asyncio.gather(*(one(row) for row in rows))
        return _time.perf_counter() - wall, _time.process_time() - cpu, sum(map(bool, answers))
    finally:
        await client.close()
"""
MAGIC = """\
import time as _time
_wall, _cpu = _time.perf_counter(), _time.process_time()
get_ipython().run_cell_magic("flowgpt", {line!r}, {template!r})
print(_json.dumps([_time.perf_counter() - _wall, _time.process_time() - _cpu,
                   int(sum(1 for a in _flowgpt if a))]))
"""
NO_VIEW = """\
import time as _time
from flowgpt_magic.rows import each as _each
class _Nothing:
    def begin(self, tally): pass
    def finish(self, tally, preview, failures): pass
_m = get_ipython().magics_manager.registry["FlowGptMagics"]
_wall, _cpu = _time.perf_counter(), _time.process_time()
_run = _each(rows, {template!r}, models=[{model!r}], chat=_m.chat, view=_Nothing(),
             settings=_m.settings(), concurrency={n})
print(_json.dumps([_time.perf_counter() - _wall, _time.process_time() - _cpu,
                   sum(1 for a in _run.values(rows) if a)]))
"""


def printed(kc: BlockingKernelClient, code: str, timeout: float = 600) -> str:
    msg_id = kc.execute(code)
    out = []
    while True:
        message = kc.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
            out.append(message["content"]["text"])
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return "".join(out)


def last_json(text: str) -> Any:
    return json.loads(text.strip().splitlines()[-1])


def run(rows: int = ROWS) -> dict[str, Any]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flowgpt_magic.server",
            "--port",
            "0",
            "--delay",
            "0",
            "--first-delay",
            str(ANSWER_SECONDS),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = server.stdout.readline().split("chat endpoint: ")[1].strip()
    base = url.removesuffix(PATH) + OPENAI_PATH
    env = dict(os.environ, OPENAI_BASE_URL=base, FLOWGPT_API_URL=url)
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    result: dict[str, Any] = {"rows": rows}
    try:
        printed(kc, f"%load_ext flowgpt_magic\nimport json as _json\n{CLIENT}")
        printed(kc, f"rows = [f'/echo\\\\nrow {{i}} is fine' for i in range({rows})]")
        model, template = "openai:gpt-4o-mini", "{row}"
        for n in (8, 64):
            ideal = rows * ANSWER_SECONDS / n
            client = last_json(
                printed(
                    kc, f"print(_json.dumps(await _client({base!r}, rows, {n}, 'gpt-4o-mini')))"
                )
            )
            line = f"--each rows -j {n} -m {model}"
            magic = last_json(printed(kc, MAGIC.format(line=line, template=template)))
            bare = last_json(printed(kc, NO_VIEW.format(template=template, model=model, n=n)))
            assert client[2] == magic[2] == bare[2] == rows, (client, magic, bare)
            result[f"n{n}"] = {
                "ideal_seconds": ideal,
                "magic": magic,
                "client": client,
                "no_view": bare,
                "wall_vs_ideal": magic[0] / ideal,
                "rate_vs_client": client[0] / magic[0],
                "cpu_a_row_vs_client": magic[1] / client[1],
                "view_vs_none": magic[0] / bare[0],
            }
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        server.terminate()
        server.wait(timeout=30)
    result["local"] = local_rows()
    n8, n64 = result["n8"], result["n64"]
    result["summary"] = {
        "wall_vs_ideal_n8": n8["wall_vs_ideal"],
        "wall_vs_ideal_n64": n64["wall_vs_ideal"],
        "rate_vs_client_n8": n8["rate_vs_client"],
        "rate_vs_client_n64": n64["rate_vs_client"],
        "cpu_a_row_vs_client_n64": n64["cpu_a_row_vs_client"],
        "progress_view_vs_none_n8": n8["view_vs_none"],
        "local_rate_vs_client": result["local"]["rate_vs_client"],
    }
    result["goals"] = {
        "wall_vs_ideal_n8": ("<=", 1.15),
        "wall_vs_ideal_n64": ("<=", 1.15),
        "rate_vs_client_n8": (">=", 1.0),
        "rate_vs_client_n64": (">=", 1.0),
        "cpu_a_row_vs_client_n64": ("<=", 1.0),
        "progress_view_vs_none_n8": ("<=", 1.05),
        "local_rate_vs_client": (">=", 0.95),
    }
    return result


def local_rows(rows: int = 50) -> dict[str, Any]:
    """50 real rows of SmolLM2 through --each -m local (four slots), against the client
    driving the same llama.cpp server, four at once."""
    from flowgpt_magic.llama import model_file

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        printed(
            kc,
            f"%load_ext flowgpt_magic\nimport json as _json\n{CLIENT}\n"
            f"%config Local.model_path = {str(model_file(None))!r}\n"
            "%config Local.parallel = 4\n%config Local.threads = 1",
        )
        printed(kc, f"rows = [f'Name a colour, number {{i}}.' for i in range({rows})]")
        printed(kc, "%%flowgpt -m local -p max_tokens=4\nHi")  # (loads the model once)
        magics = "get_ipython().magics_manager.registry['FlowGptMagics']"
        server = f"{magics}.provider_settings['local'].server()"
        base, key = (
            printed(kc, f"print({server}.{part})").strip() for part in ("base_url", "_key")
        )
        extra = "max_tokens=24, temperature=0, extra_body={'ignore_eos': True}"
        client = last_json(
            printed(
                kc,
                f"print(_json.dumps(await _client({base!r}, rows, 4, 'local', {key!r}, {extra})))",
            )
        )
        line = "--each rows -j 4 -m local -t 0 -p max_tokens=24 -p ignore_eos=true"
        magic = last_json(printed(kc, MAGIC.format(line=line, template="{row}")))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return {"rows": rows, "magic": magic, "client": client, "rate_vs_client": client[0] / magic[0]}


def report(result: dict[str, Any]) -> str:
    lines = [f"8. --each over {result['rows']:,} rows (answers of {ANSWER_SECONDS} s each):"]
    for n in (8, 64):
        seen = result[f"n{n}"]
        lines.append(
            f"   N={n}: ideal {seen['ideal_seconds']:.1f} s; --each {seen['magic'][0]:.1f} s "
            f"({seen['magic'][1] * 1e3 / result['rows']:.2f} ms CPU a row); openai client "
            f"{seen['client'][0]:.1f} s ({seen['client'][1] * 1e3 / result['rows']:.2f} ms CPU a "
            f"row); no view {seen['no_view'][0]:.1f} s"
        )
    local = result["local"]
    lines.append(
        f"   local, {local['rows']} rows four at once: --each {local['magic'][0]:.1f} s, "
        f"client {local['client'][0]:.1f} s"
    )
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    print(report(run()))
