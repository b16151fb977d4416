"""One prompt over every row (--each): in a shell, in real kernels, against the bundled
server (its OpenAI dialect, which can say too many, fail a row, hold answers), llama.cpp
with SmolLM2, and from Python with no IPython."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from kernels import MAGICS, Kernel, finish, kernel_value, run
from messages import said

from flowgpt_magic.chat import Chat
from flowgpt_magic.command import Settings
from flowgpt_magic.display.progress import METADATA_KEY, TextProgress
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.rows import each
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, offline_answer

MODEL = "openai:gpt-4o-mini"


@pytest.fixture
def served(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return flowgpt_server


def reviews(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"review {i}" for i in range(n)], "stars": [i % 5 for i in range(n)]},
        index=[f"r{i}" for i in range(n)],
    )


def asked(server: LocalServer) -> dict[str, Any]:
    """Each request's body, by the prompt it asked."""
    return {r.body["messages"][-1]["content"]: r.body for r in server.state.requests}


def test_every_row_is_asked_alone_and_the_answers_come_back_with_its_index(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell.user_ns["df"] = df = reviews(12)
    cell = (
        f"%%flowgpt --each df -j 4 --into summary -m {MODEL}\nSum up: {{row.text}}, {{row.stars}}*"
    )
    assert shell.run_cell(cell).error_in_exec is None
    bodies = asked(served)
    assert sorted(bodies) == sorted(f"Sum up: review {i}, {i % 5}*" for i in range(12))
    assert all(len(body["messages"]) == 1 for body in bodies.values())  # (no conversation)
    answers = shell.user_ns["_flowgpt"]
    assert isinstance(answers, pd.Series) and list(answers.index) == list(df.index)
    for label, text, stars in zip(df.index, df.text, df.stars, strict=True):
        assert answers[label] == offline_answer(bodies[f"Sum up: {text}, {stars}*"])
    assert df["summary"].equals(answers.rename("summary"))
    assert len(magics.conversation) == 0 and shell.user_ns["_flowgpt_errors"] == {}
    out = capsys.readouterr().out
    assert "12 of 12 answers in " in out and "at most 4 at once" in out
    assert "  r0: [Offline answer" in out  # (the first few, under the summary)
    # {row} of a DataFrame: its columns, a line each.
    assert shell.run_cell(f"%%flowgpt --each df -m {MODEL}\n{{row}}").error_in_exec is None
    assert "text: review 3\nstars: 3\nsummary: [Offline answer" in "".join(asked(served))


def test_a_series_gives_a_series_and_a_list_a_list(
    shell: InteractiveShell, served: LocalServer
) -> None:
    shell.user_ns["s"] = pd.Series(["a", "b"], index=[10, 20])
    shell.user_ns["words"] = ["x", "y", "z"]
    assert shell.run_cell(f"%%flowgpt --each s -m {MODEL}\nSay {{row}}").error_in_exec is None
    series = shell.user_ns["_flowgpt"]
    assert list(series.index) == [10, 20] and series[20].startswith("[Offline answer")
    assert (
        shell.run_cell(f"%%flowgpt --each words -m {MODEL} -o out\nSay {{row}}").error_in_exec
        is None
    )
    out = shell.user_ns["out"]
    assert isinstance(out, list) and len(out) == 3 and "«Say z»" in out[2]


def test_several_models_give_a_column_each(shell: InteractiveShell, served: LocalServer) -> None:
    shell.user_ns["df"] = df = reviews(3)
    cell = f"%%flowgpt --each df -m {MODEL} -m gemini --into answer\nAbout {{row.text}}"
    assert shell.run_cell(cell).error_in_exec is None
    frame = shell.user_ns["_flowgpt"]
    assert list(frame.columns) == [MODEL, "google-gemini"] and list(frame.index) == list(df.index)
    assert "model google-gemini" in frame.loc["r2", "google-gemini"]
    assert f"answer ({MODEL})" in df.columns and "answer (google-gemini)" in df.columns


def test_never_more_than_n_requests_are_in_flight(
    shell: InteractiveShell, served: LocalServer
) -> None:
    served.state.options.delay = 0.01
    shell.user_ns["df"] = reviews(40)
    assert (
        shell.run_cell(f"%%flowgpt --each df -j 5 -m {MODEL}\nAbout {{row.text}}").error_in_exec
        is None
    )
    assert served.state.most_at_once == 5  # (the server's own count: 5, never 6)
    assert len(served.state.requests) == 40


def test_a_server_that_says_too_many_slows_the_run_which_speeds_up_again(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served.state.options.delay = 0.01
    served.state.options.capacity = 3  # (a 429, with Retry-After, past 3 at once)
    served.state.options.retry_after = 0.05
    shell.user_ns["df"] = reviews(60)
    assert (
        shell.run_cell(f"%%flowgpt --each df -j 12 -m {MODEL}\nAbout {{row.text}}").error_in_exec
        is None
    )
    answers = shell.user_ns["_flowgpt"]
    assert answers.notna().all() and shell.user_ns["_flowgpt_errors"] == {}
    summary = capsys.readouterr().out
    assert "at most 12 at once; slowed to " in summary and ", settled at " in summary
    assert served.state.faults_committed > 0  # (it did say too many)


def test_a_failed_row_never_stops_the_run(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    magics.retries = 0
    texts = ["fine", "/fail 503", "fine too", "/fail 400", "also fine"]
    shell.user_ns["df"] = pd.DataFrame({"text": texts}, index=list("abcde"))
    assert shell.run_cell(f"%%flowgpt --each df -m {MODEL}\n{{row.text}}").error_in_exec is None
    answers = shell.user_ns["_flowgpt"]
    assert answers.isna().tolist() == [False, True, False, True, False]
    errors = shell.user_ns["_flowgpt_errors"]
    assert sorted(errors) == ["b", "d"] and answers.attrs["errors"] == errors
    assert "answered 503 Service Unavailable" in errors["b"]
    assert "answered 400 Bad Request" in errors["d"]
    out = capsys.readouterr().out
    assert "5 of 5 answers in " in out and " · 2 failed" in out
    assert "2 failed (b, d): 127.0.0.1:" in out and "_flowgpt.attrs['errors'] has each." in out


def test_a_template_wrong_for_the_first_row_sends_nothing(
    shell: InteractiveShell, served: LocalServer
) -> None:
    shell.user_ns["df"] = reviews(3)
    error = shell.run_cell(f"%%flowgpt --each df -m {MODEL}\n{{row.title}}").error_in_exec
    assert isinstance(error, UsageError)
    assert (
        "{row.title} cannot be filled in: .title failed (AttributeError: the row has no "
        in said(error)
    )
    assert "its columns: text, stars" in said(error) and served.state.requests == []
    for line, words in [
        ("--each nothing", "--each nothing names 'nothing', which is not defined"),
        ("--each df.head(2)", "make it a variable first (rows = df.head(100))"),
        ("--each df --background", "--background does not go with it"),
        ("--into x", "-j and --into go with --each NAME"),
    ]:
        error = shell.run_cell(f"%%flowgpt {line}\nHi {{row}}").error_in_exec
        assert isinstance(error, UsageError) and words in said(error), line


def test_a_cost_limit_holds_for_the_whole_run(
    shell: InteractiveShell, served: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("config", f"FlowGptMagics.prices = {{{MODEL!r}: [1000, 1000]}}")
    shell.user_ns["df"] = reviews(10)
    cell = f"%%flowgpt --each df -m {MODEL} --max-cost 0.001\nAbout {{row.text}}"
    error = shell.run_cell(cell).error_in_exec
    assert isinstance(error, UsageError) and "The run's 10 prompts alone could cost" in said(error)
    assert served.state.requests == []
    # $0.80 for 10 answers: each gets what $0.08 leaves after its prompt.
    assert shell.run_cell(cell.replace("0.001", "0.8")).error_in_exec is None
    limits = {body["max_tokens"] for body in asked(served).values()}
    assert len(limits) == 1 and 0 < limits.pop() < 80
    spent = sum(float(r.body["max_tokens"]) for r in served.state.requests)
    assert spent <= 800  # (at $1,000 a million tokens: never more than $0.80)
    capsys.readouterr()
    # The dry run: the first row in full, then the run's reckoning.
    assert (
        shell.run_cell(cell.replace("--max-cost 0.001", "--dry-run --max-cost 0.8")).error_in_exec
        is None
    )
    dry = capsys.readouterr().out
    assert dry.startswith("The first row (r0), of 10:\nDry run: nothing was sent.")
    assert "The run: 10 rows, 10 answers (openai:gpt-4o-mini); prompts up to " in dry
    assert "; it costs at most $0." in dry


def test_the_python_api_needs_no_ipython(served: LocalServer) -> None:
    chat, screen = Chat(), io.StringIO()
    settings = Settings(MODEL, None, None, "markdown")
    try:
        done = each(
            ["one", "two"],
            "Say {row}",
            chat=chat,
            view=TextProgress("rows", screen),
            settings=settings,
        )
    finally:
        chat.close()
    assert [a.split("«")[1].split("»")[0] for a in done.values(["one", "two"])] == [
        "Say one",
        "Say two",
    ]
    assert screen.getvalue().startswith("\r2 of 2 answers in ")  # (a file: the summary alone)


# -- in real kernels -------------------------------------------------------------------------


def test_in_a_notebook_a_progress_bar_then_a_summary_a_saved_notebook_shows(
    flowgpt_server: LocalServer, served: LocalServer
) -> None:
    import nbformat
    from nbclient import NotebookClient

    flowgpt_server.state.options.delay = 0.01
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "%load_ext flowgpt_magic\nimport pandas as pd\n"
            "df = pd.DataFrame({'text': [f'review {i}' for i in range(30)]})"
        ),
        nbformat.v4.new_code_cell(f"%%flowgpt --each df -j 4 -m {MODEL}\nSum up {{row.text}}"),
        nbformat.v4.new_code_cell("print(_flowgpt.notna().sum(), len(_flowgpt))"),
    ]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    (shown,) = nb.cells[1].outputs
    assert "application/vnd.jupyter.widget-view+json" not in shown["data"]  # (replaced)
    markdown = shown["data"]["text/markdown"]
    assert markdown.startswith("**--each df**\n\n30 of 30 answers in ")
    assert "| row | answer |" in markdown and "| 0 | [Offline answer" in markdown
    saved = shown["metadata"][METADATA_KEY]
    assert (saved["total"], saved["done"], saved["failed"], saved["most_at_once"]) == (30, 30, 0, 4)
    assert nb.cells[2].outputs[0]["text"] == "30 30\n"


def test_the_stop_button_ends_the_run_and_keeps_what_came(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    km, kc = kernel
    state = flowgpt_server.state
    assert run(kc, "df = __import__('pandas').DataFrame({'t': range(200)})").reply["status"] == "ok"
    msg_id = kc.execute(f"%%flowgpt --each df -j 4 -m {MODEL}\nAbout {{row.t}}")
    assert state.wait_for(lambda s: s.completed >= 6, 60)
    state.options.hold = threading.Event()  # (the answers asked from now on are held)
    assert state.wait_for(lambda s: s.answering == 4 and s.completed + 4 == len(s.requests), 30)
    km.interrupt_kernel()
    stopped = finish(kc, msg_id, timeout=20)
    assert stopped.reply["ename"] == "RowsInterrupted"
    (mark,) = stopped.of_type("error")
    assert mark["content"]["traceback"][0].startswith("■ Stopped after ")
    came = kernel_value(kc, "int(_flowgpt.notna().sum())")
    assert came == state.completed and kernel_value(kc, "len(_flowgpt)") == 200
    assert state.wait_for(lambda s: s.disconnects == 4, 10)  # (the four held: let go at once)
    assert kernel_value(kc, f"len({MAGICS}.conversation)") == 0
    state.options.hold = None
    assert run(kc, f"%%flowgpt -m {MODEL}\nStill there?").reply["status"] == "ok"


def test_the_local_model_answers_rows_several_at_once(
    shell: InteractiveShell, flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from real_servers import smollm2_gguf

    monkeypatch.setenv("FLOWGPT_LOCAL_MODEL", str(smollm2_gguf()))
    shell.run_line_magic("config", "Local.parallel = 4")
    shell.run_line_magic("config", "Local.threads = 1")
    try:
        shell.user_ns["colours"] = [
            "red",
            "green",
            "blue",
            "yellow",
            "black",
            "white",
            "pink",
            "grey",
        ]
        cell = "%%flowgpt --each colours -j 4 -m local -t 0 -p max_tokens=8\nA thing that is {row}?"
        assert shell.run_cell(cell).error_in_exec is None
        answers = shell.user_ns["_flowgpt"]
        assert len(answers) == 8 and all(answers) and shell.user_ns["_flowgpt_errors"] == {}
    finally:
        shell.config.pop("Local", None)


def test_a_held_run_has_exactly_n_in_flight(served: LocalServer) -> None:
    # (The server holds every answer: the run's N are all out, and no more, at once.)
    served.state.options.hold = hold = threading.Event()
    chat = Chat()
    settings = Settings(MODEL, None, None, "markdown")
    waiter = threading.Thread(
        target=lambda: served.state.wait_for(lambda s: s.answering == 6, 30) and hold.set()
    )
    waiter.start()
    try:
        done = each(
            list(range(30)),
            "N {row}",
            chat=chat,
            view=TextProgress("n", io.StringIO()),
            settings=settings,
            concurrency=6,
        )
    finally:
        chat.close()
        waiter.join()
    assert hold.is_set() and served.state.most_at_once == 6
    assert all(done.values(list(range(30))))


def test_rows_write_nothing_to_the_conversation_file(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics, tmp_path: Path
) -> None:
    shell.user_ns["rows"] = ["a", "b"]
    shell.run_cell(f"%%flowgpt --each rows -m {MODEL}\n{{row}}")
    shell.run_line_magic("flowgpt_history", f"--save {tmp_path / 'c.json'}")
    assert '"exchanges": []' in (tmp_path / "c.json").read_text()


# -- beyond one machine: Dask ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A Dask cluster on loopback: two worker processes, one thread each."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=50,
        ) as made,
        distributed.Client(made) as client,
    ):
        yield client


def test_a_dask_dataframe_is_answered_a_partition_on_each_worker(
    shell: InteractiveShell, served: LocalServer, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import dask.dataframe as dd

    df = reviews(24)
    df["text"] = "Sum up " + df["text"]
    df.loc["r5", "text"] = "/fail 400"  # (a row that fails, on whichever worker)
    shell.user_ns["ddf"] = dd.from_pandas(df, npartitions=4, sort=False)
    cell = f"%%flowgpt --each ddf -j 3 -m {MODEL}\n{{row.text}}"
    assert shell.run_cell(cell).error_in_exec is None
    answers = shell.user_ns["_flowgpt"]
    assert isinstance(answers, pd.Series) and list(answers.index) == list(df.index)
    assert answers.drop("r5").str.contains("«Sum up review").all() and answers["r5"] is None
    errors = shell.user_ns["_flowgpt_errors"]
    assert list(errors) == ["r5"] and "answered 400" in errors["r5"]
    assert len(served.state.requests) == 24
    out = capsys.readouterr().out
    assert "24 of 24 answers in " in out and "1 failed (r5)" in out
    error = shell.run_cell(f"%%flowgpt --each ddf -m {MODEL} -m gemini\nHi").error_in_exec
    assert isinstance(error, UsageError) and "asks one model" in said(error)


def test_each_dask_worker_runs_its_own_local_model(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    cluster: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dask.dataframe as dd
    from real_servers import smollm2_gguf

    shell.run_line_magic("config", f"Local.model_path = {str(smollm2_gguf())!r}")
    shell.run_line_magic("config", "Local.threads = 1")
    try:
        rows = pd.Series(["red", "green", "blue", "black"])
        shell.user_ns["colours"] = dd.from_pandas(rows, npartitions=2)
        cell = "%%flowgpt --each colours -m local -t 0 -p max_tokens=6\nA thing that is {row}?"
        assert shell.run_cell(cell).error_in_exec is None
        answers = shell.user_ns["_flowgpt"]
        assert len(answers) == 4 and answers.notna().all()
        # Each worker started a model of its own (a llama.cpp child of its process).
        pids = cluster.run(
            lambda: __import__("flowgpt_magic.cluster").cluster._WORKER["local"]._process.pid
        )
        assert len(set(pids.values())) == 2
    finally:
        shell.config.pop("Local", None)
