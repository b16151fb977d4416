"""What streaming costs the browser: JupyterLab 4 and Notebook 7 in Debian's Chromium.

A Markdown answer (headings, paragraphs, lists, tables, code blocks) of 5,000, 20,000 and
80,000 characters, cut into words, is served by ``stream_server.py`` (a process of its own)
at a real model's pace (50 pieces a second) and fast (1,000 a second, as a small local
model writes). Each is shown three ways in the same notebook, in turn:

- ``%%flowgpt``, streaming;
- the final answer shown once, ``display(Markdown(text))``: the floor;
- the naive way: ``update_display`` of all the Markdown so far, 15 times a second (the
  magic's own update rate), the pieces paced in the kernel as the server paces them.

For each, over the whole answer: the page's main-thread time (script, style and layout,
from CDP's ``Performance.getMetrics``, less the idle page's own rate), the bytes over the
kernel's websocket in each direction (Playwright's frames), and the longest main-thread
task (the ``longtask`` entries, which are those over 50 ms). Then: the kernel's CPU per
second of streaming at 50 pieces a second; the tab's JavaScript heap and DOM nodes after 20
answers and with the notebook reopened, against 20 static displays; and whether a reader
scrolled above the answer is moved while it streams and when it ends.

Before measuring, the page's animations (the busy kernel's stripes, the cursor's blink)
are switched off with injected CSS, autosave is off, and one small answer warms it up: an
idle JupyterLab page otherwise spends 11 to 28 ms a second on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import nbformat
from common import goal_lines
from test_browser import CHROMIUM, CHROMIUM_ARGS, TOKEN, Lab, wait_until

SERVER = Path(__file__).parent / "stream_server.py"
SIZES = (5_000, 20_000, 80_000)
REAL_PACE, FAST_PACE = 50, 1_000  # pieces a second
UPDATES_PER_SECOND = 15  # the magic's FLUSH_INTERVAL, for the naive way
ROWS = 200  # for --each, each answered with a short answer

QUIET_CSS = "*, *::before, *::after { animation: none !important; transition: none !important; }"
LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
}).observe({ type: "longtask", buffered: true });
"""
#: In an answer's footer only, which replaces the live view when it ends.
FOOTER = "pieces · "
NEXT_FRAME = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"


def markdown_answer(chars: int) -> str:
    """A Markdown answer of about ``chars`` characters, as a model writes one; its last line
    is a mark to wait for."""
    parts: list[str] = []
    total, part = 0, 0
    while total < chars - 60:
        part += 1
        section = (
            f"## Part {part}: what a notebook keeps\n\n"
            f"A notebook keeps code, its outputs and the prose around them in one file, so "
            f"that step {part} can be read, run again and shared. **Cells** run in any order; "
            f"the kernel remembers `x_{part}` until it restarts.\n\n"
            f"- a code cell runs in the kernel and shows what it returns\n"
            f"- a *Markdown* cell is text, rendered in the browser\n"
            f"- outputs are saved with the notebook, as JSON\n\n"
            f"| cell | runs | keeps |\n|---|---|---|\n"
            f"| code | {part} | outputs |\n| markdown | never | text |\n\n"
            f"```python\ndef step_{part}(rows):\n    return [row * {part} for row in rows]\n```\n\n"
        )
        parts.append(section)
        total += len(section)
    parts.append(f"That is all: answer-end-{chars}.\n")
    return "".join(parts)


class Frames:
    """Bytes over the page's kernel websockets, in each direction, and the execute replies
    received (a cell has ended: known without asking the page anything)."""

    def __init__(self) -> None:
        self.sent = self.received = self.replies = 0

    def watch(self, websocket: Any) -> None:
        if "/channels" not in websocket.url:
            return
        websocket.on("framesent", lambda payload: self._add("sent", payload))
        websocket.on("framereceived", lambda payload: self._add("received", payload))

    def _add(self, direction: str, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        setattr(self, direction, getattr(self, direction) + len(data))
        if direction == "received" and b'"execute_reply"' in data:
            self.replies += 1


class Page:
    """A notebook open in the frontend, its CDP session, and what is measured of it."""

    def __init__(self, lab: Lab, browser: Any, name: str, cells: list[str]) -> None:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nb.metadata.kernelspec = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, lab.root / name)
        self.lab, self.name, self.frames = lab, name, Frames()
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.page.on("websocket", self.frames.watch)
        self.page.add_init_script(LONG_TASKS)
        self.open()
        self.cdp = self.page.context.new_cdp_session(self.page)
        self.cdp.send("Performance.enable", {"timeDomain": "threadTicks"})

    def open(self) -> None:
        if self.lab.frontend == "notebook":
            url = f"{self.lab.base}/notebooks/{self.name}?token={TOKEN}"
        else:
            workspace = self.name.removesuffix(".ipynb").lower()
            url = f"{self.lab.base}/lab/workspaces/{workspace}/tree/{self.name}?reset&token={TOKEN}"
        self.page.goto(url)
        self.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        self.page.add_style_tag(content=QUIET_CSS)
        wait_until(lambda: self.lab.kernel_idle(self.name), 60, "the kernel to be idle")

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def main_thread(self) -> float:
        """Seconds the page's main thread has spent on script, style and layout so far."""
        metrics = {
            m["name"]: m["value"] for m in self.cdp.send("Performance.getMetrics")["metrics"]
        }
        self.tasks = float(metrics["TaskDuration"])  # (all of its work, paint and GC too)
        return float(
            metrics["ScriptDuration"] + metrics["RecalcStyleDuration"] + metrics["LayoutDuration"]
        )

    def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for ``condition`` without touching the page (Playwright's own timer lets the
        websocket's frame events in; a sleep would hold them back)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self.page.wait_for_timeout(50)

    def start(self, index: int) -> int:
        """Run cell ``index``: the count of execute replies its end will pass."""
        replies = self.frames.replies
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")
        return replies

    def run(self, index: int, done: str, timeout: float = 600) -> None:
        """Run cell ``index`` and wait, without touching the page, for its execute reply;
        then for ``done`` on the page and two frames."""
        replies = self.start(index)
        self.until(lambda: self.frames.replies > replies, timeout, f"cell {index} to end")
        cell = "document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        script = f"(i) => {cell}.innerText.includes({json.dumps(done)})"
        self.page.wait_for_function(script, arg=index, polling=100, timeout=60_000)
        self.page.evaluate(NEXT_FRAME)

    def measure(self, index: int, done: str, idle_rate: float) -> dict[str, float]:
        """Run cell ``index``: its main-thread time (less the idle rate), bytes and longest task."""
        self.page.evaluate("window.__longTasks.length = 0")
        sent, received = self.frames.sent, self.frames.received
        before, started = self.main_thread(), time.monotonic()
        tasks = self.tasks
        self.run(index, done)
        wall = time.monotonic() - started
        busy = self.main_thread() - before
        tasks = self.tasks - tasks
        long_tasks = self.page.evaluate("window.__longTasks")
        return {
            "wall_seconds": wall,
            "main_thread_seconds": max(0.0, busy - idle_rate * wall),
            "all_tasks_seconds": tasks,
            "bytes_received": self.frames.received - received,
            "bytes_sent": self.frames.sent - sent,
            "longest_task_ms": max(long_tasks, default=0.0),
            "long_tasks": len(long_tasks),
        }

    def idle_rate(self, seconds: float = 3.0) -> float:
        """The idle page's main-thread seconds a second."""
        before, started = self.main_thread(), time.monotonic()
        self.page.wait_for_timeout(seconds * 1000)  # (the idle page itself is measured)
        return (self.main_thread() - before) / (time.monotonic() - started)

    def heap(self) -> dict[str, float]:
        """The JavaScript heap after a garbage collection, and the DOM's nodes."""
        self.cdp.send("HeapProfiler.collectGarbage")
        used = self.cdp.send("Runtime.getHeapUsage")["usedSize"]
        nodes = self.cdp.send("Memory.getDOMCounters")["nodes"]
        return {"heap_mb": used / 1e6, "dom_nodes": float(nodes)}

    def close(self) -> None:
        self.page.close()
        session = self.lab.session(self.name)
        if session:
            self.lab.api(f"/api/sessions/{session['id']}", method="DELETE")


@contextmanager
def stream_servers(
    texts: dict[str, Path], paces: tuple[int, ...]
) -> Iterator[dict[tuple[str, int], str]]:
    """One server a text and pace, each in its own process: their URLs."""
    processes, urls = [], {}
    try:
        for key, path in texts.items():
            for pace in paces:
                process = subprocess.Popen(
                    [sys.executable, str(SERVER), "--text", str(path), "0", str(pace), "0.2"],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                processes.append(process)
                assert process.stdout is not None
                urls[key, pace] = process.stdout.readline().strip()
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)


#: Code added to every notebook's first cell (``--setup``: to try a change, such as another
#: update rate, without editing the package).
EXTRA_SETUP = ""


def setup_cell(folder: Path) -> str:
    return (
        EXTRA_SETUP
        + f"""\
%load_ext flowgpt_magic
import re as _re, time as _time
from pathlib import Path as _Path
from IPython.display import Markdown as _Markdown, display as _display
_texts = {{_p.stem: _p.read_text() for _p in _Path({str(folder)!r}).glob("*.md")}}

def _naive(key, rate):
    pieces = _re.findall(r"\\S+\\s*|\\s+", _texts[key])
    handle = _display(_Markdown(""), display_id=True)
    text, started, last = "", _time.monotonic() + 0.2, 0.0
    for index, piece in enumerate(pieces):
        _time.sleep(max(0.0, started + index / rate - _time.monotonic()))
        text += piece
        if _time.monotonic() - last >= 1 / {UPDATES_PER_SECOND}:
            handle.update(_Markdown(text))
            last = _time.monotonic()
    handle.update(_Markdown(text))
"""
    )


#: The cell's options for each way of asking (the first, one answer in the foreground).
OPTIONS = {
    "ours": "--no-history",
    "columns": "--no-history -m gpt-3.5-turbo -m gpt-4",
    "background": "--no-history --background",
    "each": "--each _rows -j 8",
}
#: What the end of each way's answer shows, and no view before it.
DONE = {
    "ours": FOOTER,
    "columns": FOOTER,
    "background": FOOTER,
    "each": f"{ROWS} of {ROWS} answers",
}


def ours_cell(url: str, options: str = OPTIONS["ours"]) -> str:
    return (
        f"%config FlowGptMagics.api_url = {url!r}\n"
        f"_rows = [f'row {{_i}}' for _i in range({ROWS})]\n"
        "_cpu, _wall = _time.process_time(), _time.monotonic()\n"
        f'get_ipython().run_cell_magic("flowgpt", {options!r}, "Tell me about notebooks.")\n'
        "_kernel_cpu = (_time.process_time() - _cpu) / (_time.monotonic() - _wall)"
    )


def run_frontend(
    lab: Lab, browser: Any, folder: Path, urls: dict[tuple[str, int], str], real: bool
) -> dict[str, Any]:
    """Every measurement in one frontend."""
    runs: list[tuple[str, str, int]] = [("warm", "ours", FAST_PACE)]
    for size in SIZES:
        runs += [(str(size), way, FAST_PACE) for way in ("static", "ours")]
    runs += [("20000", way, FAST_PACE) for way in ("naive", "static2", "columns", "background")]
    runs += [("warm", "each", FAST_PACE)]
    if real:
        runs += [("20000", way, REAL_PACE) for way in ("static", "ours", "naive")]
    cells = [setup_cell(folder)]
    for key, way, pace in runs:
        if way == "static":
            cells.append(f"_display(_Markdown(_texts[{key!r}]))")
        elif way == "static2":  # (two answers shown once: what columns are measured against)
            cells.append(f"_display(_Markdown(_texts[{key!r}]), _Markdown(_texts[{key!r}]))")
        elif way in ("columns", "background", "each"):
            cells.append(ours_cell(urls[key, pace], OPTIONS[way]))
        elif way == "naive":
            cells.append(f"_naive({key!r}, {pace})")
        else:
            cells.append(ours_cell(urls[key, pace]))
    cells.append("print(f'kernel-cpu {_kernel_cpu:.5f}')")
    page = Page(lab, browser, f"bench-{lab.frontend}.ipynb", cells)
    try:
        page.run(0, "")
        page.run(1, FOOTER)
        idle = page.idle_rate()
        measured: dict[str, dict[str, float]] = {}
        for index, (key, way, pace) in enumerate(runs[1:], start=2):
            pace_name = "real" if pace == REAL_PACE else "fast"
            done = DONE.get(way, f"answer-end-{key}")
            measured[f"{way}-{key}-{pace_name}"] = page.measure(index, done, idle)
        page.run(len(cells) - 1, "kernel-cpu")
        printed = page.cell(len(cells) - 1).locator(".jp-Cell-outputArea").inner_text()
        kernel_cpu = float(printed.split("kernel-cpu")[1].split()[0])
    finally:
        page.close()
    return {"idle_rate": idle, "runs": measured, "kernel_cpu_at_real_pace": kernel_cpu}


def memory(lab: Lab, browser: Any, folder: Path, url: str) -> dict[str, Any]:
    """The tab after 20 answers, and reopened, against 20 static displays of the same text."""
    result: dict[str, Any] = {}
    for way in ("static", "ours"):
        cell = "_display(_Markdown(_texts['20000']))" if way == "static" else ours_cell(url)
        page = Page(
            lab, browser, f"memory-{way}-{lab.frontend}.ipynb", [setup_cell(folder)] + [cell] * 20
        )
        try:
            page.run(0, "")
            opened = page.heap()
            for index in range(1, 21):
                page.run(index, FOOTER if way == "ours" else "answer-end-20000")
            after = page.heap()
            path = lab.root / page.name
            saved = path.stat().st_mtime_ns
            page.page.keyboard.press("Control+s")
            page.until(lambda: path.stat().st_mtime_ns != saved, 30, "the save")  # noqa: B023
            page.open()
            # (Reopened, the frontend renders the cells in view: what a reopened tab holds.)
            page.page.wait_for_function("document.body.textContent.includes('answer-end-20000')")
            page.page.evaluate(NEXT_FRAME)
            reopened = page.heap()
        finally:
            page.close()
        result[way] = {"opened": opened, "after_20": after, "reopened": reopened}
    return result


def scrolling(lab: Lab, browser: Any, folder: Path, url: str) -> dict[str, float]:
    """How far a reader above a streaming answer is moved: the cell being read, sampled
    every 50 ms while the answer streams and after it ends."""
    tall = "# a long cell being read\n" + "\n".join(f"x_{i} = {i}" for i in range(40))
    page = Page(
        lab, browser, f"scroll-{lab.frontend}.ipynb", [setup_cell(folder), tall, ours_cell(url)]
    )
    top = "document.querySelectorAll('.jp-Notebook .jp-Cell')[1].getBoundingClientRect().top"
    try:
        page.run(0, "")
        replies = page.start(2)
        page.until(lambda: "Waiting" in page.cell(2).inner_text(), 30, "the answer's box")
        # The reader scrolls up: the cell read at the top, the answer's start in view below.
        page.page.evaluate("document.querySelectorAll('.jp-Notebook .jp-Cell')[1].scrollIntoView()")
        page.page.evaluate(NEXT_FRAME)
        start = page.page.evaluate(top)
        moved = 0.0
        deadline = time.monotonic() + 120
        while page.frames.replies == replies and time.monotonic() < deadline:
            moved = max(moved, abs(page.page.evaluate(top) - start))
            page.page.wait_for_timeout(50)  # (a sample rate, not a wait for something)
        page.page.wait_for_function(f"document.body.innerText.includes({FOOTER!r})")
        page.page.evaluate(NEXT_FRAME)
        moved = max(moved, abs(page.page.evaluate(top) - start))
    finally:
        page.close()
    return {"moved_px": moved}


PARTS = ("streams", "memory", "scroll")


def run(
    frontends: tuple[str, ...] = ("jupyterlab", "notebook"),
    quick: bool = False,
    parts: tuple[str, ...] = PARTS,
) -> dict[str, Any]:
    """``quick``: only the fast pace; ``parts``: some of the measurements (to look at a
    change). The goals are reckoned only for a whole run."""
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    folder = root / "answers"
    folder.mkdir()
    texts = {}
    for key, chars in [("warm", 600), *[(str(size), size) for size in SIZES]]:
        texts[key] = folder / f"{key}.md"
        texts[key].write_text(
            markdown_answer(chars).replace(f"answer-end-{chars}", f"answer-end-{key}")
        )
    result: dict[str, Any] = {"sizes": {key: len(path.read_text()) for key, path in texts.items()}}
    with stream_servers(texts, (FAST_PACE, REAL_PACE)) as urls, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for frontend in frontends:
                home = root / frontend
                settings = home / ".settings" / "@jupyterlab" / "docmanager-extension"
                settings.mkdir(parents=True)
                (settings / "plugin.jupyterlab-settings").write_text(
                    json.dumps({"autosave": False})
                )
                lab = Lab(home, frontend)
                try:
                    fast = urls["20000", FAST_PACE]
                    figures: dict[str, Any] = result.setdefault(frontend, {"runs": {}})
                    if "streams" in parts:
                        figures.update(run_frontend(lab, browser, folder, urls, not quick))
                    if "memory" in parts:
                        figures["memory"] = memory(lab, browser, folder, fast)
                    if "scroll" in parts:
                        figures["scroll"] = scrolling(lab, browser, folder, fast)
                finally:
                    lab.stop()
        finally:
            browser.close()
    if not quick and parts == PARTS:
        result["summary"], result["goals"] = summarise(result, frontends)
    return result


def summarise(
    result: dict[str, Any], frontends: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, tuple[str, float]]]:
    summary: dict[str, float] = {}
    goals: dict[str, tuple[str, float]] = {}
    size = result["sizes"]["20000"]
    for frontend in frontends:
        runs = result[frontend]["runs"]
        short = "lab" if frontend == "jupyterlab" else "nb7"
        for pace in ("fast", "real"):
            ours, static, naive = (
                runs[f"{way}-20000-{pace}"] for way in ("ours", "static", "naive")
            )
            main = ours["main_thread_seconds"]
            summary[f"{short} {pace}: vs static"] = main / max(static["main_thread_seconds"], 1e-3)
            summary[f"{short} {pace}: vs naive"] = main / max(naive["main_thread_seconds"], 1e-3)
            summary[f"{short} {pace}: bytes/answer"] = ours["bytes_received"] / size
            summary[f"{short} {pace}: longest task ms"] = ours["longest_task_ms"]
            goals[f"{short} {pace}: vs static"] = ("<=", 1.5)
            goals[f"{short} {pace}: vs naive"] = ("<=", 0.2)
            goals[f"{short} {pace}: bytes/answer"] = ("<=", 1.5)
            goals[f"{short} {pace}: longest task ms"] = ("<=", 50)
        # Growth: the log-log slope of main-thread time over 5,000 to 80,000 characters.
        import math

        small, large = runs["ours-5000-fast"], runs["ours-80000-fast"]
        ratio = large["main_thread_seconds"] / max(small["main_thread_seconds"], 1e-3)
        chars = result["sizes"]["80000"] / result["sizes"]["5000"]
        summary[f"{short} fast: growth slope"] = math.log(ratio) / math.log(chars)
        goals[f"{short} fast: growth slope"] = ("<=", 1.1)
        summary[f"{short}: kernel CPU %"] = 100 * result[frontend]["kernel_cpu_at_real_pace"]
        goals[f"{short}: kernel CPU %"] = ("<=", 2)
        memory = result[frontend]["memory"]
        summary[f"{short}: heap vs static"] = (
            memory["ours"]["after_20"]["heap_mb"] / memory["static"]["after_20"]["heap_mb"]
        )
        goals[f"{short}: heap vs static"] = ("<=", 1.2)
        summary[f"{short}: reader moved px"] = result[frontend]["scroll"]["moved_px"]
        goals[f"{short}: reader moved px"] = ("<=", 0)
    return summary, goals


def report(result: dict[str, Any]) -> str:
    lines = ["11. Streaming in the browser (JupyterLab 4 and Notebook 7, Debian's Chromium)"]
    for frontend in ("jupyterlab", "notebook"):
        if frontend not in result:
            continue
        if "idle_rate" in result[frontend]:
            lines.append(
                f"   {frontend}: idle page {result[frontend]['idle_rate'] * 1000:.1f} ms/s"
            )
        for name, run in result[frontend]["runs"].items():
            lines.append(
                f"     {name:20} main thread {run['main_thread_seconds']:7.3f} s "
                f"(all tasks {run['all_tasks_seconds']:6.3f} s) in "
                f"{run['wall_seconds']:6.1f} s; received {run['bytes_received'] / 1e3:9.1f} kB, "
                f"sent {run['bytes_sent'] / 1e3:7.1f} kB; longest task "
                f"{run['longest_task_ms']:5.0f} ms ({run['long_tasks']} over 50 ms)"
            )
        for way, memory in result[frontend].get("memory", {}).items():
            lines.append(
                "     memory, "
                + way
                + ": "
                + "; ".join(
                    f"{when} {m['heap_mb']:.1f} MB heap, {m['dom_nodes']:,.0f} nodes"
                    for when, m in memory.items()
                )
            )
    if "summary" in result:
        lines += goal_lines(result["summary"], result["goals"])
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", choices=("jupyterlab", "notebook"), action="append")
    parser.add_argument("--quick", action="store_true", help="the fast pace only")
    parser.add_argument("--part", choices=PARTS, action="append", help="only these")
    parser.add_argument("--json", type=Path, help="write the raw figures here too")
    parser.add_argument("--setup", default="", help="Python code to run first in each kernel")
    args = parser.parse_args()
    EXTRA_SETUP = args.setup + "\n" if args.setup else ""
    frontends = tuple(args.frontend or ("jupyterlab", "notebook"))
    figures = run(frontends, args.quick, tuple(args.part or PARTS))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(report(figures))
