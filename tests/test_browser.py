"""What a person sees: JupyterLab 4 and Notebook 7 in Debian's headless Chromium, via Playwright.

Screenshots go to ``test-artifacts/screenshots/`` (ignored by git), for a person to look at.
Chromium is never downloaded: the tests use Debian's ``/usr/bin/chromium`` (``.ci/run``
installs it) and fail, rather than skip, without it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from real_servers import smollm2_gguf

from flowgpt_magic.record import record_in
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, answer_pieces

CHROMIUM = Path(os.environ.get("FLOWGPT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).parent.parent / "test-artifacts" / "screenshots"
TOKEN = "flowgpt-magic-test"
DONE_PROMPT = re.compile(r"\[\d+\]:")
FOOTER = re.compile(
    r"[\w.-]+ · first piece in [\d.]+ s · [\d.]+ s in all · [\d,]+ pieces? · [\d,]+ characters"
)

if sys.platform != "linux":
    pytest.skip("the browser tests drive Debian's Chromium on Linux", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Lab:
    """A Jupyter frontend's server (JupyterLab or Notebook 7) on a free loopback port, with
    its own settings and a temporary root folder."""

    def __init__(self, root: Path, frontend: str) -> None:
        self.root, self.frontend = root, frontend
        settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        # No news or update pop-ups over the notebook.
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(root / ".config"),
            JUPYTER_DATA_DIR=str(root / ".data"),
            JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"),
        )
        self.log = (root / ".lab.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                frontend,
                "--no-browser",
                f"--port={self.port}",
                f"--IdentityProvider.token={TOKEN}",
                "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={root}",
                "--ip=127.0.0.1",
                "--allow-root",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 90, f"{frontend} to start")

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.base}{path}?token={TOKEN}", method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"{self.frontend} exited: see {self.root / '.lab.log'}")
        try:
            self.api("/api/status")
        except OSError:
            return False
        return True

    def session(self, name: str) -> dict[str, Any] | None:
        sessions = self.api("/api/sessions")
        return next((s for s in sessions if s["path"] == name), None)

    def kernel_idle(self, name: str) -> bool:
        session = self.session(name)
        return bool(
            session
            and session["kernel"]["execution_state"] == "idle"
            and session["kernel"]["connections"] > 0
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module", params=["jupyterlab", "notebook"])
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """JupyterLab 4, then Notebook 7: the same tests run in both."""
    server = Lab(tmp_path_factory.mktemp(request.param), request.param)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Debian's Chromium is not at {CHROMIUM}. Install it with `apt-get install chromium` "
            "(.ci/run does), or point FLOWGPT_TEST_CHROMIUM at a Chromium binary."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Notebook:
    """A notebook open in JupyterLab, seen through the page as a person sees it."""

    def __init__(self, lab: Lab, page: Any, name: str) -> None:
        self.lab, self.page, self.name = lab, page, name

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def run(self, index: int) -> None:
        self.cell(index).locator(".jp-InputPrompt").click()
        self.page.keyboard.press("Shift+Enter")

    def prompt(self, index: int) -> str:
        return str(self.cell(index).locator(".jp-InputPrompt").inner_text())

    def output(self, index: int) -> str:
        area = self.cell(index).locator(".jp-Cell-outputArea")
        return str(area.inner_text()).strip() if area.count() else ""

    def run_and_wait(self, index: int, timeout: float = 60) -> str:
        self.run(index)
        wait_until(lambda: bool(DONE_PROMPT.search(self.prompt(index))), timeout, f"cell {index}")
        return self.output(index)

    def answer(self, index: int) -> str:
        """The answer shown in a cell above its footer, once both are on the page (the
        Markdown may render a moment after the cell has finished)."""
        wait_until(lambda: "\n" in self.output(index), 10, f"cell {index}'s answer")
        answer, footer = self.output(index).rsplit("\n", 1)
        assert FOOTER.fullmatch(footer), footer
        return answer.strip()

    def screenshot(self, name: str, of_cell: int | None = None) -> None:
        """The page, or one cell (scrolled into view) when its output is long."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = str(SCREENSHOTS / f"{self.lab.frontend}-{name}")
        if of_cell is None:
            self.page.screenshot(path=path, full_page=True)
        else:
            self.cell(of_cell).screenshot(path=path)


@pytest.fixture
def open_notebook(
    lab: Lab, browser: Any, flowgpt_server: LocalServer, request: pytest.FixtureRequest
) -> Iterator[Callable[[list[str]], Notebook]]:
    """Write a notebook whose first cell loads the extension against this test's server."""
    pages: list[Any] = []
    name = re.sub(r"[^A-Za-z0-9_]+", "-", request.node.name).strip("-") + ".ipynb"

    def open_(cells: list[str]) -> Notebook:
        setup = f"%load_ext flowgpt_magic\n%config FlowGptMagics.api_url = {flowgpt_server.url!r}"
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source) for source in [setup, *cells]]
        nb.metadata.kernelspec = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, lab.root / name)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        pages.append(page)
        if lab.frontend == "notebook":
            page.goto(f"{lab.base}/notebooks/{name}?token={TOKEN}")
        else:  # a JupyterLab workspace of its own, reset: no tabs restored from earlier tests
            workspace = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())
            page.goto(f"{lab.base}/lab/workspaces/{workspace}/tree/{name}?reset&token={TOKEN}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        wait_until(lambda: lab.kernel_idle(name), 60, "the notebook's kernel to be idle")
        notebook = Notebook(lab, page, name)
        notebook.run_and_wait(0)
        return notebook

    yield open_
    for page in pages:
        page.close()
    session = lab.session(name)
    if session:
        lab.api(f"/api/sessions/{session['id']}", method="DELETE")


def test_the_answer_visibly_grows_while_it_streams(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.first_delay = 0.5  # long enough to see the waiting line
    flowgpt_server.state.options.delay = 0.04
    flowgpt_server.state.options.min_pieces = 80  # about three seconds of streaming
    notebook = open_notebook(["%%flowgpt\nWhat is a notebook?"])

    notebook.run(1)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not DONE_PROMPT.search(notebook.prompt(1)):
        assert time.monotonic() < deadline, "the answer did not finish within 60 s"
        text = notebook.output(1)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
            if len(seen) == 4:
                notebook.screenshot("streaming-mid.png")
        time.sleep(0.05)

    final = notebook.answer(1)
    expected = "".join(answer_pieces(flowgpt_server.state.requests[0].body, 80)).strip()
    assert final == expected
    assert seen[0] == "Waiting for gpt-3.5-turbo…"
    growing = [text for text in seen[1:] if not FOOTER.search(text)]
    assert len(growing) >= 3, f"saw only {len(growing)} partial texts"
    for shorter, longer in zip(growing, [*growing[1:], final], strict=True):
        assert longer.startswith(shorter) and len(longer) > len(shorter)


def test_the_stop_button_stops_the_answer_and_the_notebook_carries_on(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.04
    flowgpt_server.state.options.min_pieces = 5_000  # minutes of answer, unless stopped
    notebook = open_notebook(
        ["%%flowgpt\nTell me a long story.", "%%flowgpt\nAre you still there?", "%flowgpt_history"]
    )
    notebook.run(1)
    wait_until(lambda: len(notebook.output(1)) > 60, 30, "the answer to start streaming")

    notebook.page.locator('[data-jp-item-name="interrupt"]').first.click()
    wait_until(lambda: "Interrupted after" in notebook.output(1), 10, "the interrupted mark")
    # Stopped, not finished: the server saw the connection close with minutes left to send.
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=5)
    assert flowgpt_server.state.completed == 0
    wait_until(lambda: notebook.lab.kernel_idle(notebook.name), 10, "the kernel to go idle")
    wait_until(lambda: notebook.output(1).count("\n") >= 2, 10, "the partial answer's Markdown")
    notebook.screenshot("interrupted.png")

    shown, mark = notebook.output(1).rsplit("\n", 1)
    partial, footer = shown.strip().rsplit("\n", 1)
    partial = partial.strip()
    assert FOOTER.fullmatch(footer), footer
    full = "".join(answer_pieces(flowgpt_server.state.requests[0].body, 5_000))
    assert partial and full.startswith(partial) and len(partial) < len(full)
    assert re.fullmatch(
        r"■ Interrupted after \d+ characters; the partial answer above was not added to the "
        r"conversation\.",
        mark,
    )
    assert notebook.output(1) == f"{shown}\n{mark}"  # nothing more arrived

    flowgpt_server.state.options.min_pieces = 0
    answer = notebook.run_and_wait(2)
    assert "You asked: «Are you still there?». Context: 0 earlier messages" in answer
    history = notebook.run_and_wait(3)
    assert "Are you still there?" in history and "Tell me a long story." not in history


def test_a_saved_notebook_shows_its_answers_when_reopened(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer, lab: Lab
) -> None:
    notebook = open_notebook(["%%flowgpt\nFirst question", "%%flowgpt -m gemini\nSecond question"])
    notebook.run_and_wait(1)
    notebook.run_and_wait(2)
    answers = [notebook.answer(1), notebook.answer(2)]
    expected = ["".join(answer_pieces(r.body)) for r in flowgpt_server.state.requests]
    assert answers == [answer.strip() for answer in expected]

    notebook.page.keyboard.press("Control+s")
    path = lab.root / notebook.name

    def saved_outputs() -> list[Any]:
        try:
            cells = nbformat.read(path, as_version=4).cells
        except nbformat.reader.NotJSONError:
            # Jupyter's "atomic" save writes the file in place (it keeps a copy to restore
            # on failure): read while it writes, the file is still empty.
            return [[]]
        return [cell.outputs for cell in cells[1:3]]  # Shift+Enter on the last cell added one

    wait_until(lambda: all(saved_outputs()), 30, "the notebook to be saved with its outputs")
    for outputs, answer in zip(saved_outputs(), expected, strict=True):
        # Static Markdown, not a widget view: readable without widget state, in any viewer.
        (saved,) = outputs
        assert record_in(saved).answer == answer
        markdown, small = saved.data["text/markdown"].rsplit("\n\n", 1)
        footer = re.fullmatch(r"<small><i>(.*)</i></small>", small)
        assert markdown == answer and footer and FOOTER.fullmatch(footer[1])
        assert saved.data["text/plain"] == f"{answer}\n\n({footer[1]})"

    notebook.page.reload()
    notebook.page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    wait_until(lambda: notebook.output(2) != "", 30, "the reopened notebook's outputs")
    shown = [notebook.answer(1), notebook.answer(2)]
    assert shown == [answer.strip() for answer in expected]
    notebook.screenshot("reopened.png")


MARKDOWN = """\
## Reading a file

Use **`open`** in a `with` block, so that the file is closed even when an error is raised:

```python
from pathlib import Path

def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()
```

Then check three things:

- the *encoding* of the file;
- what happens when it is missing (`FileNotFoundError`);
- how large it can get.

## Writing it back

The same, with `"w"`: `open(path, "w")`. That is all."""

# What the page shows of the answer: its headings, code blocks, highlighted code, list items.
RENDERED = """(cell) => {
    const area = cell.querySelector('.jp-Cell-outputArea');
    const count = (selector) => area.querySelectorAll(selector).length;
    const first = area.querySelector('.jp-RenderedMarkdown h2');
    if (first && !first.dataset.seen) first.dataset.seen = String(Date.now());
    return {
        h2: count('.jp-RenderedMarkdown h2'),
        pre: count('.jp-RenderedMarkdown pre'),
        highlighted: count('.jp-RenderedMarkdown pre span[class]'),
        li: count('.jp-RenderedMarkdown li'),
        strong: count('.jp-RenderedMarkdown strong'),
        firstKept: !!area.querySelector('.jp-RenderedMarkdown h2[data-seen]'),
        text: area.innerText,
    };
}"""


def test_markdown_renders_while_it_streams_and_finished_blocks_stay(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.06  # about six seconds of streaming
    notebook = open_notebook([f"%%flowgpt\n/echo\n{MARKDOWN}"])

    notebook.run(1)
    states: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while not DONE_PROMPT.search(notebook.prompt(1)):
        assert time.monotonic() < deadline, "the answer did not finish within 60 s"
        state = notebook.cell(1).evaluate(RENDERED)
        if not states or state != states[-1]:
            states.append(state)
            if state["pre"] and state["li"] and "Writing it back" not in state["text"]:
                notebook.screenshot("markdown-streaming.png", of_cell=1)
        time.sleep(0.05)

    # Before the answer was complete, it was already rendered: a heading, bold text, a
    # highlighted code block, list items ...
    streaming = [s for s in states if "That is all." not in s["text"]]
    assert any(s["h2"] == 1 and s["strong"] == 1 for s in streaming)
    assert any(s["pre"] == 1 and s["highlighted"] > 5 for s in streaming)
    assert any(0 < s["li"] < 3 for s in streaming), "no list seen growing item by item"
    # ... and the first heading, once rendered, stayed the same element until the end:
    # later pieces were appended, not rendered again with everything before them.
    after_heading = [s for s in streaming if s["h2"]]
    assert after_heading and all(s["firstKept"] for s in after_heading)

    final = notebook.cell(1).evaluate(RENDERED)
    assert (final["h2"], final["pre"], final["li"], final["strong"]) == (2, 1, 3, 1)
    assert final["highlighted"] > 5
    assert FOOTER.search(final["text"])
    notebook.screenshot("markdown-final.png", of_cell=1)


def test_reasoning_streams_open_then_folds_above_the_answer(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.1  # about two seconds of reasoning
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    notebook = open_notebook(
        [
            f"%config OpenAI.base_url = {base!r}",
            "%%flowgpt -m openai:gpt-4o -p max_tokens=45\n/think\nWhy is the sky blue?",
        ]
    )
    notebook.run_and_wait(1)
    thought = "(Offline reasoning.) The question is «Why is the sky blue?»."
    notebook.run(2)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not DONE_PROMPT.search(notebook.prompt(2)):
        assert time.monotonic() < deadline, "the answer did not finish within 60 s"
        text = notebook.output(2)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
            if "Reasoning…" in text and "The question" in text and "No model" not in text:
                notebook.screenshot("reasoning-open.png", of_cell=2)
            if "[Offline answer" in text and "Reasoning (" in text:
                notebook.screenshot("reasoning-folded.png", of_cell=2)
        time.sleep(0.05)

    # While the model thinks, its reasoning shows, open, under a title; no answer yet.
    thinking = [t for t in seen if "Reasoning…" in t]
    assert thinking and any(thought in t for t in thinking)
    assert not any("[Offline answer" in t for t in thinking)
    # Once the answer starts, the reasoning folds: its title and size stay, its text hides.
    answering = [t for t in seen if "[Offline answer" in t and "■" not in t]
    assert answering and all("Reasoning (" in t and thought not in t for t in answering)

    # The saved output: the reasoning folded above the answer, the footer, and the line
    # that says the answer was cut at its token limit.
    wait_until(lambda: "■ Cut short" in notebook.output(2), 10, "the finished output")
    final = notebook.output(2)
    assert final.startswith("Reasoning (") and thought not in final
    assert '■ Cut short: the model reached its token limit (finish reason "length").' in final
    notebook.screenshot("reasoning-final.png", of_cell=2)
    notebook.cell(2).locator("summary").click()
    wait_until(lambda: thought in notebook.output(2), 5, "the reasoning to unfold")
    notebook.screenshot("reasoning-unfolded.png", of_cell=2)


def test_a_local_model_says_it_loads_then_streams_its_answer(
    open_notebook: Callable[[list[str]], Notebook],
) -> None:
    notebook = open_notebook(
        [
            f"%config Local.model_path = {str(smollm2_gguf())!r}",
            "%%flowgpt -m local -t 0 -p max_tokens=120 -p ignore_eos=true\nTell me a story.",
            "%%flowgpt -m local -t 0 -p max_tokens=20\nAnd a short one?",
        ]
    )
    notebook.run_and_wait(1)
    notebook.run(2)
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while not DONE_PROMPT.search(notebook.prompt(2)):
        assert time.monotonic() < deadline, "the answer did not finish within 120 s"
        text = notebook.output(2)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
            if "Loading" in text:
                notebook.screenshot("local-loading.png", of_cell=2)
            elif len(seen) == 6:
                notebook.screenshot("local-streaming.png", of_cell=2)
        time.sleep(0.05)
    assert seen[0].startswith("Loading the local model SmolLM2-135M-Instruct.Q4_1 (98 MB)…")
    answers = [t for t in seen if "Loading" not in t and "local (answered by" not in t]
    assert len(answers) >= 3  # it grew while the model wrote it
    wait_until(lambda: "· first piece in" in notebook.output(2), 10, "the footer")
    assert "local (answered by SmolLM2-135M-Instruct.Q4_1) · first piece in " in notebook.output(2)
    notebook.screenshot("local-final.png", of_cell=2)
    second = notebook.run_and_wait(3)  # the model is loaded already: no line says it loads
    assert "Loading" not in second and "local (answered by SmolLM2" in second


def test_several_models_answer_side_by_side_and_stay_so(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.04
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    notebook = open_notebook(
        [
            f"%config OpenAI.base_url = {base!r}",
            "%%flowgpt -m openai:gpt-4o -m openai:llama3.2 -m gemini\nWhich is best?",
        ]
    )
    notebook.run_and_wait(1)
    columns = """(cell) => Array.from(cell.querySelectorAll(
        '.jp-Cell-outputArea .widget-hbox > .widget-vbox, .jp-Cell-outputArea div[style*="flex: 1"]'
    )).map((column) => {
        const box = column.getBoundingClientRect();
        return {left: Math.round(box.left), top: Math.round(box.top), text: column.innerText};
    })"""
    notebook.run(2)
    live: list[Any] = []
    deadline = time.monotonic() + 60
    while not DONE_PROMPT.search(notebook.prompt(2)):
        assert time.monotonic() < deadline, "the answers did not finish within 60 s"
        seen = notebook.cell(2).evaluate(columns)
        if len(seen) == 3 and all("[Offline answer" in c["text"] for c in seen):
            live.append(seen)
            if len(live) == 3:
                notebook.screenshot("several-streaming.png", of_cell=2)
        time.sleep(0.1)
    # While they streamed: three columns, side by side (one top, three lefts), each growing.
    assert live, "never saw the three columns streaming"
    assert len({c["top"] for c in live[0]}) == 1 and len({c["left"] for c in live[0]}) == 3
    wait_until(lambda: "google-gemini" in notebook.output(2), 10, "the finished answers")
    final = notebook.cell(2).evaluate(columns)
    notebook.screenshot("several-final.png", of_cell=2)
    # The saved output: every answer under its model's name, each with its footer, still
    # side by side (JupyterLab keeps the columns' style).
    assert [c["text"].split("\n")[0] for c in final] == [
        "openai:gpt-4o",
        "openai:llama3.2",
        "google-gemini",
    ]
    assert all(" · first piece in " in c["text"] for c in final)
    assert len({c["top"] for c in final}) == 1


#: The text still held by widget views no longer on the page, after a garbage collection.
DETACHED_WIDGET_TEXT = """function () {
    return this.filter((node) => {
        try { return !node.isConnected && !node.parentElement; } catch (e) { return false; }
    }).filter((node) => String(node.className).includes("jupyter-widgets"))
      .map((node) => node.textContent.length);
}"""


def test_the_tab_lets_go_of_answers_once_they_are_static(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.002
    flowgpt_server.state.options.min_pieces = 400  # ~2,000 characters: live, then static
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    kinds = [
        "%%flowgpt\nOne",
        "%%flowgpt -m openai:gpt-4o -m gemini\nTwo",
        "%%flowgpt -f text\nThree",
    ]
    notebook = open_notebook([f"%config OpenAI.base_url = {base!r}", *kinds, *kinds])
    notebook.run_and_wait(1)
    for index in range(2, 2 + 2 * len(kinds)):
        notebook.run_and_wait(index)
        wait_until(lambda: " · first piece in " in notebook.output(index), 10, "its footer")  # noqa: B023
    cdp = notebook.page.context.new_cdp_session(notebook.page)
    cdp.send("HeapProfiler.collectGarbage")
    prototype = cdp.send("Runtime.evaluate", {"expression": "Element.prototype"})["result"]
    elements = cdp.send("Runtime.queryObjects", {"prototypeObjectId": prototype["objectId"]})
    held = cdp.send(
        "Runtime.callFunctionOn",
        {
            "objectId": elements["objects"]["objectId"],
            "functionDeclaration": DETACHED_WIDGET_TEXT,
            "returnByValue": True,
        },
    )["result"]["value"]
    # Before: every answer's rendered Markdown stayed in the tab, in the views of closed
    # Output widgets (about 2,000 characters each), kept by their Layout and model.
    assert sum(held) < 200, held


def test_insert_adds_the_code_as_a_new_cell_below(
    open_notebook: Callable[[list[str]], Notebook],
) -> None:
    answer = "Try this:\n\n```python\nprint('from the answer')\n```"
    # (An empty cell after it, so that Shift+Enter moves on rather than adds a cell.)
    notebook = open_notebook([f"%%flowgpt --insert\n/echo\n{answer}", ""])
    cells = notebook.page.locator(".jp-Notebook .jp-Cell")
    before = cells.count()
    notebook.run_and_wait(1)
    wait_until(lambda: cells.count() == before + 1, 10, "a new cell below")
    new = notebook.cell(2).locator(".jp-InputArea .cm-content").inner_text()
    assert new == "print('from the answer')"
    notebook.screenshot("insert.png")


def test_a_background_answer_grows_while_another_cell_runs(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.05
    story = " ".join(f"word{n}" for n in range(120))  # six seconds of it
    notebook = open_notebook(
        [
            f"%%flowgpt --background\n/echo\n{story}",
            # A cell that keeps the kernel busy (no loop runs while it does):
            "import time\ntime.sleep(2)\nprint('done')",
        ]
    )
    notebook.run_and_wait(1)  # the cell is done at once; its answer is not
    first = notebook.output(1)
    assert "word119" not in first
    notebook.run(2)
    wait_until(lambda: "[*]" in notebook.prompt(2), 5, "the second cell to run")
    grew: list[str] = []
    while "[*]" in notebook.prompt(2):
        text = notebook.output(1)
        if not grew or text != grew[-1]:
            grew.append(text)
        time.sleep(0.1)
    assert len(grew) >= 3, "the background answer did not grow while the other cell ran"
    notebook.screenshot("background-growing.png")
    top = (
        "(cell) => Math.round(cell.querySelector('.jp-Cell-outputArea p')"
        ".getBoundingClientRect().top)"
    )
    growing_top = notebook.cell(1).evaluate(top)
    assert notebook.output(2) == "done"
    wait_until(lambda: "word119" in notebook.output(1), 20, "the background answer to end")
    wait_until(lambda: "first piece in" in notebook.output(1), 5, "its footer")
    assert "Stop" not in notebook.output(1)  # the box and its button are gone
    # Its title stays where it was, above the answer: nothing jumps when it ends.
    assert notebook.output(1).split("\n")[0] == grew[-1].split("\n")[0] == "gpt-3.5-turbo"
    assert abs(notebook.cell(1).evaluate(top) - growing_top) <= 4
    notebook.screenshot("background-final.png")


def test_an_answer_about_the_plot_a_cell_showed(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    notebook = open_notebook(
        [
            f"%config OpenAI.base_url = {base!r}",
            "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16])",  # [3]
            "%%flowgpt -m openai:gpt-4o-mini\nWhat does this plot show? {Out[3]}",
        ]
    )
    for index in (1, 2, 3):
        notebook.run_and_wait(index)
    assert notebook.cell(2).locator(".jp-OutputArea-output img").count() == 1
    wait_until(lambda: "Images: 1 (PNG " in notebook.output(3), 10, "the answer")
    answer = notebook.output(3)
    assert "You asked: «What does this plot show? [image 1]»" in answer
    assert "openai:gpt-4o-mini · first piece in " in answer
    sent = flowgpt_server.state.requests[-1].body["messages"][-1]["content"]
    assert [part["type"] for part in sent] == ["text", "image_url"]
    notebook.screenshot("plot-answer.png")


#: Of each column of several answers (live: widget boxes; saved: Markdown's flex divs): its
#: title's font, where its code sits, the gap under the code, and its text.
COLUMN_LOOKS = """(cell) => Array.from(cell.querySelectorAll(
    '.jp-Cell-outputArea .widget-hbox > .widget-vbox, .jp-Cell-outputArea div[style*="flex: 1"]'
)).map((column) => {
    const left = column.getBoundingClientRect().left;
    const title = column.querySelector('strong');
    const pre = column.querySelector('pre');
    const done = Array.from(column.querySelectorAll('p'))
        .find((p) => p.innerText.startsWith('Done'));
    const style = title ? getComputedStyle(title) : null;
    const box = (element) => element.getBoundingClientRect();
    return {
        title: title ? [title.innerText, style.fontSize, style.fontWeight] : null,
        code: pre ? Math.round(box(pre).left - left) : null,
        gap: pre && done ? Math.round(box(done).top - box(pre).bottom) : null,
        text: column.innerText,
    };
})"""


def test_what_streams_looks_as_what_stays_and_a_failed_model_keeps_its_error(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.05
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    words = " ".join(f"word{n}" for n in range(40))
    notebook = open_notebook(
        [
            f"%config OpenAI.base_url = {base!r}",
            # SmolLM2 is not served there: that column fails, the other streams on.
            "%%flowgpt -m openai:gpt-4o -m openai:SmolLM2\n/echo\nHere:\n\n```python\n"
            f"print('hi')\n```\n\nDone {words}",
        ]
    )
    notebook.run_and_wait(1)
    notebook.run(2)
    live: list[Any] = []
    while not DONE_PROMPT.search(notebook.prompt(2)):
        seen = notebook.cell(2).evaluate(COLUMN_LOOKS)
        if len(seen) == 2 and seen[0]["gap"] is not None and "word30" not in seen[0]["text"]:
            live = seen
            notebook.screenshot("columns-live.png", of_cell=2)
        time.sleep(0.1)
    assert live, "never saw the columns streaming with their code"
    wait_until(lambda: "first piece in" in notebook.output(2), 10, "the saved output")
    final = notebook.cell(2).evaluate(COLUMN_LOOKS)
    notebook.screenshot("columns-final.png", of_cell=2)
    # The same titles, the same code indent, the same gap under the code.
    assert [c["title"] for c in final] == [c["title"] for c in live]
    assert live[0]["title"][0] == "openai:gpt-4o" and live[1]["title"][0] == "openai:SmolLM2"
    assert live[0]["code"] > 10 and abs(final[0]["code"] - live[0]["code"]) <= 2, (live, final)
    assert abs(final[0]["gap"] - live[0]["gap"]) <= 2, (live, final)
    # The failed model's error: in its column while the other streamed, and after.
    for columns in (live, final):
        assert "answered 404 Not Found" in columns[1]["text"]


def test_unfolded_reasoning_is_set_apart_from_the_answer(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    notebook = open_notebook(
        [f"%config OpenAI.base_url = {base!r}", "%%flowgpt -m openai:gpt-4o\n/think\nWhy?"]
    )
    notebook.run_and_wait(1)
    notebook.run_and_wait(2)
    wait_until(lambda: "Reasoning (" in notebook.output(2), 10, "the folded reasoning")
    notebook.cell(2).locator("summary").click()
    wait_until(lambda: "(Offline reasoning.)" in notebook.output(2), 5, "the reasoning to unfold")
    looks = notebook.cell(2).evaluate(
        """(cell) => {
            const thought = getComputedStyle(cell.querySelector('details pre'));
            const answer = getComputedStyle(cell.querySelector('details + p, details ~ p'));
            return [thought.borderLeftWidth, thought.paddingLeft, thought.color, answer.color];
        }"""
    )
    border, padding, grey, text = looks
    assert border != "0px" and padding != "0px" and grey != text, looks
    notebook.screenshot("reasoning-unfolded-apart.png", of_cell=2)


def test_an_error_fits_its_box_without_a_word_broken(
    open_notebook: Callable[[list[str]], Notebook],
) -> None:
    with LocalServer() as gone:
        closed = gone.url.removesuffix(PATH) + OPENAI_PATH
    notebook = open_notebook(
        [f"%config OpenAI.base_url = {closed!r}", "%%flowgpt -m openai:gpt-4o\nHello?"]
    )
    notebook.run_and_wait(1)
    notebook.run_and_wait(2)
    looks = notebook.cell(2).evaluate(
        """(cell) => {
            const pre = cell.querySelector('.jp-RenderedText[data-mime-type*="stderr"] pre');
            const height = pre.getBoundingClientRect().height;
            const line = parseFloat(getComputedStyle(pre).lineHeight);
            return [pre.innerText, Math.round(height / line)];
        }"""
    )
    text, shown_lines = looks
    lines = text.strip().split("\n")
    assert text.startswith("UsageError: Could not connect to 127.0.0.1:") and len(lines) > 1
    # As many lines on screen as the message has: the browser broke none of them further.
    assert shown_lines == len(lines), looks
    notebook.screenshot("error-wrapped.png", of_cell=2)


def test_an_answer_off_its_schema_gives_way_to_the_one_asked_again(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    flowgpt_server.state.options.delay = 0.1  # (each answer streams for about a second)
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    wrong = '{"sentiment": "great", "score": 4, "draft": "first one", "more": "words here"}'
    notebook = open_notebook(
        [
            f"%config OpenAI.base_url = {base!r}",
            "from typing import Literal\nimport pydantic\n"
            "class Review(pydantic.BaseModel):\n"
            "    sentiment: Literal['positive', 'negative']\n    score: int",
            f"%%flowgpt -m openai:gpt-4o --schema Review\n/echo\n{wrong}",
            "print(repr(_flowgpt))",
        ]
    )
    notebook.run_and_wait(1)
    notebook.run_and_wait(2)
    notebook.run(3)
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while not DONE_PROMPT.search(notebook.prompt(3)):
        assert time.monotonic() < deadline, "the answers did not finish within 60 s"
        text = notebook.output(3)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
            if "asked again" in text and "first piece in" not in text:
                notebook.screenshot("schema-asked-again.png", of_cell=3)
        time.sleep(0.05)
    # The first answer streamed, then gave way: the line saying why, the second answer.
    assert any("first one" in text for text in seen), seen
    again = next(n for n, text in enumerate(seen) if "asked again" in text)
    assert "The answer did not follow Review (sentiment: Input should be" in seen[again]
    assert not any("first one" in text for text in seen[again:]), seen[again:]
    assert any('"sentiment"' in text for text in seen[again:]), "the second did not stream"

    wait_until(lambda: "first piece in" in notebook.output(3), 10, "the saved output")
    final = notebook.output(3)
    notebook.screenshot("schema-final.png", of_cell=3)
    assert "first one" not in final and "The first answer did not follow the schema" in final
    highlighted = notebook.cell(3).evaluate(
        "(cell) => cell.querySelectorAll('.jp-RenderedMarkdown pre span[class]').length"
    )
    assert highlighted > 3, "the JSON is not shown as highlighted code"
    assert notebook.run_and_wait(4) == "Review(sentiment='positive', score=1)"


def test_a_cached_answer_shows_at_once_and_says_so(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer, lab: Lab
) -> None:
    cache = lab.root / f"{lab.frontend}-answers.sqlite"
    cache.unlink(missing_ok=True)
    notebook = open_notebook(
        [
            f"%config FlowGptMagics.cache = {str(cache)!r}",
            "%%flowgpt --no-history\nWhat is a notebook?",
            "%%flowgpt --no-history\nWhat is a notebook?",
            "%flowgpt_usage",
        ]
    )
    notebook.run_and_wait(1)
    first = notebook.run_and_wait(2)
    second = notebook.run_and_wait(3)
    wait_until(lambda: "cached: answered" in notebook.output(3), 10, "the cached answer")
    second = notebook.output(3)
    notebook.screenshot("cached.png", of_cell=3)
    assert len(flowgpt_server.state.requests) == 1
    answer, footer = second.rsplit("\n", 1)
    assert answer.strip() == first.rsplit("\n", 1)[0].strip()
    assert re.fullmatch(r"gpt-3\.5-turbo · cached: answered [\d-]+ [\d:]+ in [\d.]+ s · .*", footer)
    usage = notebook.run_and_wait(4)
    assert "1 answer came from the cache (FlowGptMagics.cache)" in usage


def test_a_function_call_is_asked_in_the_input_box_then_folds_into_the_answer(
    open_notebook: Callable[[list[str]], Notebook], flowgpt_server: LocalServer
) -> None:
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    notebook = open_notebook(
        [
            f"%config OpenAI.base_url = {base!r}",
            "def add(a: int, b: int = 0) -> int:\n    return a + b",
            '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 2, "b": 3}',
        ]
    )
    notebook.run_and_wait(1)
    notebook.run_and_wait(2)
    notebook.run(3)
    box = notebook.cell(3).locator(".jp-Stdin-input")
    box.wait_for(timeout=30_000)
    asked = notebook.output(3)  # (not "Waiting for openai:gpt-4o": it waits for you)
    assert asked.splitlines() == [
        "openai:gpt-4o asks to run add(a=2, b=3).",
        "Run add(a=2, b=3)? [y/N]",
    ]
    notebook.screenshot("tools-asked.png", of_cell=3)
    box.fill("y")
    box.press("Enter")
    wait_until(lambda: "first piece in" in notebook.output(3), 30, "the answer")
    final = notebook.output(3)
    notebook.screenshot("tools-answered.png", of_cell=3)
    assert "1 function call" in final and "The tools said: «5»" in final
    notebook.cell(3).locator("summary", has_text="1 function call").click()
    assert "add(a=2, b=3) → 5 (" in notebook.output(3)
    notebook.screenshot("tools-unfolded.png", of_cell=3)
