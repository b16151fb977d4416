"""The answer cache (FlowGptMagics.cache): a request asked before is answered from the
file at once, for nothing; what decides an answer is its key, and a key never is; only
whole answers are kept; two kernels share a file; a file not ours is refused. Against the
bundled server (a real one, on loopback), in shells, in processes of their own, and in a
real kernel (nbclient), the server gone the second time."""

from __future__ import annotations

import io
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic.exceptions import AnswerInterrupted
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.record import record_in
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer

MODEL = "openai:gpt-4o"
KEY = "sk-test-cache-0123456789abcdef"


@pytest.fixture
def cached(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """The shell asks the bundled server's OpenAI dialect, with a key, a price and a cache."""
    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    path = tmp_path / "answers.sqlite"
    shell.run_line_magic("config", f"FlowGptMagics.cache = {str(path)!r}")
    shell.run_line_magic("config", f"FlowGptMagics.prices = {{{MODEL!r}: [2.5, 10]}}")
    return path


def run(shell: InteractiveShell, cell: str) -> BaseException | None:
    result = shell.run_cell(cell)
    return result.error_in_exec or result.error_before_exec


def test_a_request_asked_before_is_answered_from_the_cache_at_once_for_nothing(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    magics: FlowGptMagics,
    cached: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cell = f"%%flowgpt -m {MODEL} --no-history\nName a colour."
    assert run(shell, cell) is None
    first = shell.user_ns["_flowgpt"]
    asked = magics.chat.ledger.accounts[MODEL]
    assert (asked.requests, asked.cached) == (1, 0) and asked.cost > 0
    capsys.readouterr()

    assert run(shell, cell) is None
    assert len(flowgpt_server.state.requests) == 1  # (nothing sent)
    assert shell.user_ns["_flowgpt"] == first
    out = capsys.readouterr().out
    answer, footer = out.strip().rsplit("\n", 1)
    assert answer == first
    # The footer: cached, with the model, the time and the cost of when it was asked.
    assert footer.startswith(f"({MODEL} · cached: answered 20") and " in " in footer
    assert "$" in footer and "first piece" not in footer and "a second" not in footer
    account = magics.chat.ledger.accounts[MODEL]
    assert (account.requests, account.cached) == (1, 1)
    assert account.saved == pytest.approx(asked.cost)
    shell.run_line_magic("flowgpt_usage", "")
    usage = capsys.readouterr().out
    assert "1 answer came from the cache (FlowGptMagics.cache), not in the sums" in usage
    assert usage.split("\n")[0].split()[-1] == "cached"

    # With the conversation: the second cell's context is the cached first exchange.
    assert run(shell, f"%%flowgpt -m {MODEL}\nFirst.") is None
    assert run(shell, f"%%flowgpt -m {MODEL}\nSecond.") is None
    assert len(flowgpt_server.state.requests) == 3
    assert run(shell, "%flowgpt_history --reset") is None
    assert run(shell, f"%%flowgpt -m {MODEL}\nFirst.") is None
    assert run(shell, f"%%flowgpt -m {MODEL}\nSecond.") is None
    assert len(flowgpt_server.state.requests) == 3
    records = list(magics.conversation)
    assert [r.cached for r in records] == [True, True]


def test_what_decides_the_answer_is_in_the_key_and_the_api_key_is_not(
    shell: InteractiveShell, flowgpt_server: LocalServer, cached: Path
) -> None:
    setup = "import pydantic\nclass Colour(pydantic.BaseModel):\n    name: str"
    assert run(shell, setup) is None
    base = f"%%flowgpt -m {MODEL} --no-history"
    variants = [
        f"{base}\nName a colour.",
        f"{base} -t 0.2\nName a colour.",
        f"{base} -s 'Be brief.'\nName a colour.",
        f"{base} -p max_tokens=50\nName a colour.",
        f"{base} --schema Colour\nName a colour.",
        "%%flowgpt -m openai:llama3.2 --no-history\nName a colour.",
        f"{base}\nName a colour!",
    ]
    for cell in variants:
        assert run(shell, cell) is None
    assert len(flowgpt_server.state.requests) == len(variants)
    # Asked again, each one: from the cache, even with another key.
    shell.run_line_magic("config", "OpenAI.api_key = 'sk-another-key-0123456789'")
    for cell in variants:
        assert run(shell, cell) is None
    assert len(flowgpt_server.state.requests) == len(variants)
    keys = {r.headers.get("Authorization") for r in flowgpt_server.state.requests}
    assert keys == {f"Bearer {KEY}"}
    # Neither key is anywhere in the file.
    wal = Path(f"{cached}-wal")
    stored = cached.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert KEY.encode() not in stored and b"sk-another" not in stored
    assert b"Name a colour" in stored  # (what is kept: the answers, which echo the prompt)


def test_refresh_asks_again_and_replaces_and_no_cache_neither_takes_nor_keeps(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    magics: FlowGptMagics,
    cached: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cell = "Name a colour."
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history\n{cell}") is None
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history --refresh\n{cell}") is None
    assert len(flowgpt_server.state.requests) == 2
    # One entry still, the refreshed one: the next plain cell takes it.
    db = sqlite3.connect(cached)
    assert db.execute("SELECT count(*), sum(hits) FROM answers").fetchone() == (1, 0)
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history\n{cell}") is None
    assert len(flowgpt_server.state.requests) == 2

    assert run(shell, f"%%flowgpt -m {MODEL} --no-history --no-cache\n{cell}") is None
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history --no-cache\nOther.") is None
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history\nOther.") is None
    assert len(flowgpt_server.state.requests) == 5
    assert db.execute("SELECT count(*) FROM answers").fetchone() == (2,)
    db.close()
    error = run(shell, f"%%flowgpt -m {MODEL} --refresh --no-cache\n{cell}")
    assert said(error) == "--refresh keeps the new answer in the cache; --no-cache does not."


def test_failed_cut_short_and_interrupted_answers_are_never_kept(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    cached: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for cell in ("/fail 500\nHi", "/fail 400\nHi"):
        assert run(shell, f"%%flowgpt -m {MODEL} --no-history\n{cell}") is not None
    cut = f"%%flowgpt -m {MODEL} --no-history -p max_tokens=3\nTell me more."
    assert run(shell, cut) is None
    assert len(shell.user_ns["_flowgpt"].split()) == 3  # (three words: cut there)

    class InterruptOnThirdWrite(io.StringIO):
        """stdout that presses Ctrl-C (a real SIGINT) when the third read is written."""

        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            if self.writes == 3:
                signal.raise_signal(signal.SIGINT)
            return super().write(text)

    flowgpt_server.state.options.min_pieces = 100_000
    flowgpt_server.state.options.delay = 0.001
    with monkeypatch.context() as screen:
        screen.setattr("sys.stdout", InterruptOnThirdWrite())
        stopped = run(shell, f"%%flowgpt -m {MODEL} --no-history\nA long story.")
    assert isinstance(stopped, AnswerInterrupted)
    flowgpt_server.state.options.min_pieces = 0
    asked = len(flowgpt_server.state.requests)
    assert asked == 4 + 2  # (the first failure, retried twice)
    db = sqlite3.connect(cached)
    assert db.execute("SELECT count(*) FROM answers").fetchone() == (0,)
    db.close()
    # Each is asked again, and the whole answers now kept.
    assert run(shell, cut.replace("max_tokens=3", "max_tokens=3000")) is None
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history\nA long story.") is None
    assert len(flowgpt_server.state.requests) == asked + 2


WRITER = """
import sys
from IPython.core.interactiveshell import InteractiveShell
base, path, name = sys.argv[1:]
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "flowgpt_magic")
shell.run_line_magic("config", f"OpenAI.base_url = {base!r}")
shell.run_line_magic("config", f"FlowGptMagics.cache = {path!r}")
shell.user_ns["rows"] = [f"{name} row {n}" for n in range(40)]
result = shell.run_cell("%%flowgpt --each rows -j 8 -m openai:gpt-4o\\n{row}")
assert result.error_in_exec is None, result.error_in_exec
print(sum(v is not None for v in shell.user_ns["_flowgpt"]))
"""


def test_two_kernels_writing_at_once_lose_nothing(
    flowgpt_server: LocalServer, tmp_path: Path
) -> None:
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    path = str(tmp_path / "shared.sqlite")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)

    def start(name: str) -> subprocess.Popen[str]:
        command = [sys.executable, str(script), base, path, name]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    writers = [start("first"), start("second")]
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        assert out.strip().endswith("40")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("SELECT count(*) FROM answers").fetchone() == (80,)
    db.close()
    # Both again, at once: all from the cache, nothing sent.
    writers = [start("first"), start("second")]
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and out.strip().endswith("40"), err
    assert len(flowgpt_server.state.requests) == 80


def test_each_run_again_asks_only_the_rows_without_an_answer(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    cached: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell.user_ns["rows"] = [f"row {n}" for n in range(10)] + ["/fail 400"]
    assert run(shell, f"%%flowgpt --each rows -m {MODEL}\n{{row}}") is None
    assert len(flowgpt_server.state.requests) == 11
    first = list(shell.user_ns["_flowgpt"])
    capsys.readouterr()
    assert run(shell, f"%%flowgpt --each rows -m {MODEL}\n{{row}}") is None
    assert len(flowgpt_server.state.requests) == 12  # (the failed row alone)
    assert list(shell.user_ns["_flowgpt"]) == first and first[-1] is None
    out = capsys.readouterr().out
    assert "11 of 11 answers in " in out and "1 failed (10)" in out


def test_flowgpt_cache_shows_the_file_what_it_holds_and_saved(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    cached: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for cell in ("One.", "Two.", "One."):
        assert run(shell, f"%%flowgpt -m {MODEL} --no-history\n{cell}") is None
    capsys.readouterr()
    shell.run_line_magic("flowgpt_cache", "")
    path, held, taken = capsys.readouterr().out.strip().split("\n")
    assert path == f"Answer cache: {cached}"
    assert re.fullmatch(r"2 answers, 0\.\d MiB, asked (at|from) 20.*", held), held
    assert taken.startswith("Taken from it 1 time, which saved $0.000")
    shell.run_line_magic("flowgpt_cache", "--prune 1")
    assert capsys.readouterr().out.startswith(f"Removed 0 answers from {cached}.\n")
    shell.run_line_magic("flowgpt_cache", "--clear")
    out = capsys.readouterr().out
    assert out.startswith(f"Removed 2 answers from {cached}.\nAnswer cache: ")
    assert "\n0 answers, " in out
    assert run(shell, f"%%flowgpt -m {MODEL} --no-history\nOne.") is None
    assert len(flowgpt_server.state.requests) == 3

    shell.run_line_magic("config", "FlowGptMagics.cache = 'off'")
    capsys.readouterr()
    shell.run_line_magic("flowgpt_cache", "")
    assert capsys.readouterr().out.startswith("The answer cache is off. %config ")


def test_a_file_not_ours_or_damaged_is_a_clear_error_and_left_as_it_is(
    shell: InteractiveShell, flowgpt_server: LocalServer, cached: Path, tmp_path: Path
) -> None:
    def asked_with(path: Path) -> str:
        shell.run_line_magic("config", f"FlowGptMagics.cache = {str(path)!r}")
        return said(run(shell, f"%%flowgpt -m {MODEL} --no-history\nHi"))

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n" * 200)
    assert asked_with(notes) == (
        f"{notes} is not a flowgpt-magic cache: it is not an SQLite database (file is not a "
        "database). It was left as it is; point FlowGptMagics.cache at a new file (it is "
        "made on first use)."
    )
    assert notes.read_text() == "my notes, not a database\n" * 200
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE sales (id INTEGER)")
    db.close()
    before = other.read_bytes()
    assert "it is an SQLite database with the tables 'sales'." in asked_with(other)
    assert other.read_bytes() == before
    error = asked_with(tmp_path / "no-such-folder" / "answers.sqlite")
    assert error.startswith("The cache ")
    assert "cannot be used (unable to open database file)" in error

    # A cache damaged past its first page: read when it is asked.
    shell.run_line_magic("config", f"FlowGptMagics.cache = {str(cached)!r}")
    for n in range(30):
        assert run(shell, f"%%flowgpt -m {MODEL} --no-history\nPrompt {n} " + "x" * 2000) is None
    shell.run_line_magic("flowgpt_cache", "--prune 9999")  # (checkpoints it into the file)
    shell.run_line_magic("config", "FlowGptMagics.cache = 'off'")
    damaged = bytearray(cached.read_bytes())
    damaged[4096:] = b"\xff" * (len(damaged) - 4096)
    cached.write_bytes(bytes(damaged))
    error = asked_with(cached)
    assert error.startswith(f"The cache {cached} is damaged (") and "Delete it" in error
    assert len(flowgpt_server.state.requests) == 30


NOTEBOOK_CELLS = [
    "%load_ext flowgpt_magic\n%config FlowGptMagics.api_url = {url!r}\n"
    "%config FlowGptMagics.cache = {cache!r}",
    "%%flowgpt\nName a colour.",
    "%%flowgpt -t 0\nAnd another one?",
    "rows = ['one', 'two', 'three']",
    "%%flowgpt --each rows --no-history\nSay {{row}}.",
    "print(list(_flowgpt))",
]


def test_a_notebook_run_again_with_the_server_gone_shows_the_same_answers(
    tmp_path: Path,
) -> None:
    import nbformat
    from nbclient import NotebookClient

    cache = str(tmp_path / "answers.sqlite")

    def execute(url: str) -> nbformat.NotebookNode:
        nb = nbformat.v4.new_notebook()
        cells = [source.format(url=url, cache=cache) for source in NOTEBOOK_CELLS]
        nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(s)) for s in cells]
        NotebookClient(nb, timeout=120, kernel_name="python3").execute()
        return nb

    with LocalServer() as server:
        first = execute(server.url)
        asked = len(server.state.requests)
    assert asked == 5
    again = execute(server.url)  # (nothing listens there now)

    def answers(nb: nbformat.NotebookNode) -> list[object]:
        records = [record_in(o) for c in nb.cells for o in c.outputs if record_in(o)]
        return [(r.prompt, r.answer, r.usage, r.cost) for r in records]

    def printed(nb: nbformat.NotebookNode) -> str:
        return "".join(o.get("text", "") for o in nb.cells[-1].outputs)

    assert answers(again) == answers(first) and len(answers(first)) == 2
    assert printed(again) == printed(first) and "Say one." in printed(first)
    errors = [o for c in again.cells for o in c.outputs if o.output_type == "error"]
    assert errors == []
    kept = [record_in(o) for c in again.cells for o in c.outputs if record_in(o)]
    assert all(r.cached for r in kept)
