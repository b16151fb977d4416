"""The user's own asyncio, in the same kernel, before the first answer and after 50 answers.

A kernel's cell runs a workload of many small tasks (10 rounds of gathering 2,000 coroutines
that each ``await asyncio.sleep(0)``), timed inside the kernel (each run after a garbage
collection, and right after a plain Python loop); then the
kernel answers 50 cells of every kind (one model, two at once, in the background) against
the bundled server; then the workload again. The figure is the speed after against the
speed before, in the same kernel: answers must leave the user's asyncio as fast as it was
(>= 0.95x). Measured naively it swings by a third from kernel to kernel here (a shared
virtual machine, and a kernel that ran anything at all gets slower at this workload: 50
cells of plain JSON work gave 0.86x), so: each run's workload is timed against a plain
Python loop run just before it (the machine's speed of the moment), and a control kernel,
started with it and measured in turn, runs 50 plain cells while the other answers; the
figure is the answering kernel's ratio over the control's, the median of five pairs. The
raw best times are reported beside it. Each kernel also says whether ``asyncio.Task``,
``asyncio.Future``, ``asyncio.run`` and its loop's class are still the ones it had.

    python benchmarks/bench_kernel_asyncio.py [--against PATH]

``--against PATH`` measures another checkout of the package too, its kernels taking turns
with these (its ``flowgpt_magic`` first on their path): an older commit, to see what it did.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from common import goal_lines
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, ServerOptions

WORKLOAD = """\
import asyncio as _asyncio, gc as _gc, statistics as _statistics, time as _time
async def _small():
    await _asyncio.sleep(0)
async def _rounds():
    for _ in range(10):
        await _asyncio.gather(*(_small() for _ in range(2_000)))
def _control():
    return sum(i * i for i in range(300_000))
_times, _ratios = [], []
for _ in range({runs}):
    _gc.collect()  # (what earlier runs left is not this run's to pay)
    _t = _time.perf_counter()
    _control()
    _c = _time.perf_counter() - _t
    _t = _time.perf_counter()
    await _rounds()
    _w = _time.perf_counter() - _t
    _times.append(_w)
    _ratios.append(_w / _c)
print(min(_times), _statistics.median(_ratios))
"""
IDENTITY = """\
import asyncio as _asyncio, json as _json
_loop = _asyncio.get_running_loop()
print(_json.dumps([id(_asyncio.Task), id(_asyncio.Future), id(_asyncio.run),
                   type(_loop).__name__, getattr(_loop, "_nest_patched", False)]))
"""
#: Before each measurement, the kernel waits until its other threads have been idle for a
#: second (at most 60 s): after 50 answers its IO thread is still sending their widgets'
#: messages, which this process reads, on a machine of two cores.
SETTLE = """\
import os as _os, threading as _threading, time as _time
def _others():
    main, used = _threading.main_thread().native_id, 0
    for task in _os.listdir("/proc/self/task"):
        if int(task) != main:
            fields = open(f"/proc/self/task/{task}/stat").read().rsplit(")", 1)[1].split()
            used += int(fields[11]) + int(fields[12])
    return used
_deadline, _quiet = _time.monotonic() + 60, 0
while _quiet < 4 and _time.monotonic() < _deadline:
    _before = _others()
    _time.sleep(0.25)
    _quiet = _quiet + 1 if _others() == _before else 0
"""
ANSWERS = [
    "%%flowgpt -m openai:gpt-4o-mini\nQuestion {n}",
    "%%flowgpt -m openai:gpt-4o -m gemini\nQuestion {n}",
    "%%flowgpt --background -m openai:llama3.2\nQuestion {n}",
]


def printed(kc: BlockingKernelClient, code: str, timeout: float = 120) -> str:
    msg_id = kc.execute(code)
    out = []
    while True:
        message = kc.get_iopub_msg(timeout=timeout)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "error":
            raise RuntimeError("\n".join(message["content"]["traceback"]))
        if message["msg_type"] == "stream":
            out.append(message["content"]["text"])
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            return "".join(out)


class Kernel:
    """A kernel with the extension loaded, on this tree or another checkout."""

    def __init__(self, server: LocalServer, tree: Path | None) -> None:
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
        env["FLOWGPT_API_URL"] = server.url
        env["OPENAI_BASE_URL"] = server.url.removesuffix(PATH) + OPENAI_PATH
        self.km, self.kc = start_new_kernel(kernel_name="python3", env=env)
        printed(self.kc, "%load_ext flowgpt_magic")
        where = printed(self.kc, "import flowgpt_magic; print(flowgpt_magic.__file__)")
        self.package = str(Path(where.strip()).parent.parent)

    def identity(self) -> Any:
        return json.loads(printed(self.kc, IDENTITY))

    def workload(self, runs: int) -> tuple[float, float]:
        """The workload's best time, and its median time against the control's."""
        printed(self.kc, SETTLE)
        best, steady = map(float, printed(self.kc, WORKLOAD.format(runs=runs)).split())
        return best, steady

    def cells(self, count: int, answers: bool) -> None:
        for n in range(count):
            printed(self.kc, ANSWERS[n % len(ANSWERS)].format(n=n) if answers else "pass")
        printed(self.kc, WAIT)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


#: Until the background answers have ended.
WAIT = (
    "import time\nwhile get_ipython().magics_manager.registry['FlowGptMagics']"
    ".chat.background:\n    time.sleep(0.01)"
)


def one_pair(runs: int, answers: int, tree: Path | None) -> dict[str, Any]:
    """Two kernels, measured in turn: one answers ``answers`` cells, the other (the control)
    runs as many plain ones; each's workload before and after."""
    with LocalServer(options=ServerOptions(record=False)) as server:
        asking, control = Kernel(server, tree), Kernel(server, tree)
        try:
            identity = asking.identity()
            before = asking.workload(runs), control.workload(runs)
            asking.cells(answers, answers=True)
            control.cells(answers, answers=False)
            after = asking.workload(runs), control.workload(runs)
            as_it_was = asking.identity() == identity
        finally:
            asking.close()
            control.close()
    raw = before[0][0] / after[0][0]
    steady = before[0][1] / after[0][1]
    steady_control = before[1][1] / after[1][1]
    return {
        "package": asking.package,
        "raw": raw,
        "steady": steady,
        "control": steady_control,
        "net": steady / steady_control,
        "as_it_was": as_it_was,
    }


def run(
    runs: int = 21, answers: int = 50, pairs: int = 5, against: Path | None = None
) -> dict[str, Any]:
    """``pairs`` pairs of kernels on this tree (and as many on ``against``, taking turns):
    the medians of their figures."""
    import statistics

    trees: dict[str, Path | None] = {"this": None}
    if against is not None:
        trees["against"] = against
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(pairs):
        for name, tree in trees.items():
            seen[name].append(one_pair(runs, answers, tree))
    result: dict[str, Any] = {"pairs": seen}
    for name, pairs_seen in seen.items():
        result[name] = {"package": pairs_seen[0]["package"]}
        for figure in ("raw", "steady", "control", "net"):
            values = [pair[figure] for pair in pairs_seen]
            result[name][figure] = {"values": values, "median": statistics.median(values)}
        result[name]["as_it_was"] = all(pair["as_it_was"] for pair in pairs_seen)
    result["summary"] = {"speed_after_vs_before": result["this"]["net"]["median"]}
    result["goals"] = {"speed_after_vs_before": (">=", 0.95)}
    return result


def report(result: dict[str, Any]) -> str:
    lines = ["7. The user's asyncio in the kernel, before the first answer and after 50:"]
    for name in ("this", "against"):
        if name not in result:
            continue
        seen = result[name]

        def figure(key: str, seen: dict[str, Any] = seen) -> str:
            values = ", ".join(f"{v:.2f}" for v in seen[key]["values"])
            return f"median {seen[key]['median']:.2f} ({values})"

        lines += [
            f"   {seen['package']}: asyncio's Task, Future, run and loop class as they "
            f"were: {seen['as_it_was']}",
            f"     speed after / before, net of the control kernel's: {figure('net')}",
            f"     that kernel's alone, against its plain loop: {figure('steady')}; the "
            f"control's: {figure('control')}; raw best times: {figure('raw')}",
        ]
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout, measured in turn")
    print(report(run(against=parser.parse_args().against)))
