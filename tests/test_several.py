"""Several models at once, and what answers cost: in a shell (as terminal IPython is) and
in a real kernel, against the local server's two dialects."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from kernels import Kernel, finish
from messages import said

from flowgpt_magic import AnswerInterrupted
from flowgpt_magic.display.columns import CHUNK_CHARS
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.record import record_in
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, offline_answer

THREE = "-m openai:gpt-4o -m openai:llama3.2 -m gemini"


@pytest.fixture
def served(shell: InteractiveShell, flowgpt_server: LocalServer) -> Iterator[LocalServer]:
    """The local server for both dialects."""
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    shell.run_line_magic("config", f"OpenAI.base_url = {base!r}")
    yield flowgpt_server


def answer_to(server: LocalServer, question: str, model: str) -> str:
    (body,) = [
        r.body
        for r in server.state.requests
        if r.body.get("model") == model
        and (r.body.get("question") or r.body["messages"][-1]["content"]) == question
    ]
    return offline_answer(body)


# -- several models at once ----------------------------------------------------------------


def test_every_model_answers_at_once_each_labelled_and_the_first_goes_on(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every answer holds until all three have been asked: at once, or one by one?
    served.state.options.hold = hold = threading.Event()
    threading.Thread(
        target=lambda: served.state.wait_for(lambda s: len(s.requests) == 3, 30) and hold.set()
    ).start()
    assert shell.run_cell(f"%%flowgpt {THREE}\nWhich is best?").error_in_exec is None
    assert hold.is_set()  # (else the first alone would have been asked, and held)
    answers = {
        model: answer_to(served, "Which is best?", model)
        for model in ("gpt-4o", "llama3.2", "google-gemini")
    }

    out = capsys.readouterr().out
    # The first as it came, under its name; each other whole, under its name, after it.
    blocks = re.split(r"(?:^|\n)── (\S+) ──\n", out)[1:]
    assert blocks[0::2] == ["openai:gpt-4o", "openai:llama3.2", "google-gemini"]
    for text, answer in zip(blocks[1::2], answers.values(), strict=True):
        assert text.startswith(f"{answer}\n(") and " · first piece in " in text
    assert shell.user_ns["_flowgpt"] == {
        "openai:gpt-4o": answers["gpt-4o"],
        "openai:llama3.2": answers["llama3.2"],
        "google-gemini": answers["google-gemini"],
    }
    # The conversation goes on with the first model's answer alone.
    (record,) = magics.conversation
    assert (record.model, record.answer) == ("openai:gpt-4o", answers["gpt-4o"])


def test_a_model_that_fails_says_so_in_its_place_and_the_others_answer(
    shell: InteractiveShell, served: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = "%%flowgpt -m openai:gpt-4o -m openai:no-such-model -o both\nHello?"
    assert shell.run_cell(cell).error_in_exec is None
    out = capsys.readouterr().out
    failed = out.split("── openai:no-such-model ──\n", 1)[1]
    assert failed.startswith("■ ") and "answered 404 Not Found" in failed
    assert list(shell.user_ns["both"]) == ["openai:gpt-4o"]

    error = shell.run_cell("%%flowgpt -m openai:nope-1 -m openai:nope-2\nHi").error_in_exec
    assert isinstance(error, UsageError) and "answered 404 Not Found" in said(error)


# -- what it costs ---------------------------------------------------------------------------


def test_a_priced_model_s_answer_shows_its_cost_and_usage_adds_up(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.prices = {'openai:gpt-4o': [2.5, 10]}")
    for question in ("One", "Two"):
        assert shell.run_cell(f"%%flowgpt -m openai:gpt-4o\n{question}").error_in_exec is None
    assert shell.run_cell("%%flowgpt -m gemini\nThree").error_in_exec is None
    first, second = list(magics.conversation)[:2]
    assert first.cost == pytest.approx(
        (first.usage.input_tokens * 2.5 + first.usage.output_tokens * 10) / 1e6
    )
    out = capsys.readouterr().out
    assert f" · ${first.cost:.6f}".rstrip("0") in out or " · $0.000" in out

    shell.run_line_magic("flowgpt_usage", "")
    table = capsys.readouterr().out
    tokens_in = first.usage.input_tokens + second.usage.input_tokens
    row = next(line for line in table.splitlines() if line.startswith("openai:gpt-4o"))
    assert row.split()[1:4] == ["2", f"{tokens_in:,}", f"{first.usage.output_tokens * 2:,}"]
    assert "gpt-3.5-turbo" not in table and "google-gemini" in table  # (FlowGPT: no tokens)
    assert "had no known cost" in table  # gemini has no price
    shell.run_line_magic("flowgpt_usage", "--reset")
    shell.run_line_magic("flowgpt_usage", "")
    assert "No requests yet." in capsys.readouterr().out


def test_a_cost_limit_refuses_a_prompt_too_dear_and_limits_the_answer(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.prices = {'openai:gpt-4o': [1000, 2000]}")
    error = shell.run_cell("%%flowgpt -m openai:gpt-4o --max-cost 0.001\n" + "word " * 100)
    assert isinstance(error.error_in_exec, UsageError)
    assert "The prompt alone could cost $0.26, more than the $0.0010 allowed" in str(
        error.error_in_exec
    )
    assert "up to 257 tokens" in said(error.error_in_exec) and served.state.requests == []

    # $0.20: the prompt is estimated at 5 tokens, and before the model has said what a
    # prompt takes, counted as up to 71 ($0.071); the rest pays for 64 tokens.
    assert shell.run_cell("%%flowgpt -m openai:gpt-4o --max-cost 0.2\nHi").error_in_exec is None
    assert served.state.requests[-1].body["max_tokens"] == 64
    (record,) = magics.conversation  # (what was sent, as it was sent)
    assert (record.params, record.max_cost) == ({"max_tokens": 64}, 0.2)
    # The server said it took 1 token: from now on the estimate and a margin (5), and the
    # rest pays for 97. (--no-history: the answer above, as context, would cost more.)
    cell = "%%flowgpt -m openai:gpt-4o --max-cost 0.2 --no-history\nHi"
    assert shell.run_cell(cell).error_in_exec is None
    assert served.state.requests[-1].body["max_tokens"] == 97
    # A smaller max_tokens of the user's is kept.
    cell = "%%flowgpt -m openai:gpt-4o --max-cost 0.2 -p max_tokens=3 --no-history\nHi"
    assert shell.run_cell(cell).error_in_exec is None
    assert served.state.requests[-1].body["max_tokens"] == 3

    error = shell.run_cell("%%flowgpt -m openai:llama3.2 --max-cost 1\nHi").error_in_exec
    assert isinstance(error, UsageError) and "needs the price of openai:llama3.2" in said(error)


# -- in a real kernel ---------------------------------------------------------------------------


def models_of(run: Any) -> list[str]:
    return [
        m["content"]["data"]["state"]["_model_name"]
        for m in run.of_type("comm_open")
        if "_model_name" in m["content"]["data"]["state"]
    ]


def test_columns_stream_side_by_side_then_one_output_holds_every_answer(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.01
    run = finish(kc, kc.execute(f"%%flowgpt {THREE}\nSide by side?"))
    assert run.reply["status"] == "ok"
    # One box, a column a model (a VBox of its name, its answer's chunks (a VBox) and its
    # status line).
    opened = models_of(run)
    assert opened.count("HBoxModel") == 1 and opened.count("VBoxModel") == 6
    # No column captures the cell's output: no stream, no display message but the box.
    assert not run.of_type("stream") and len(run.of_type("display_data")) == 1
    (update,) = run.of_type("update_display_data")
    data, metadata = update["content"]["data"], update["content"]["metadata"]
    records = [record_in({"metadata": {"flowgpt_magic": r}}) for r in metadata["answers"]]
    assert [r.model for r in records] == ["openai:gpt-4o", "openai:llama3.2", "google-gemini"]
    for record in records:
        assert f"**{record.model}**\n\n{record.answer}\n\n<small><i>" in data["text/markdown"]
        assert f"── {record.model} ──\n{record.answer}\n\n(" in data["text/plain"]
    assert record_in(update["content"]) == records[0]  # (the one the conversation keeps)


def test_a_long_answer_in_columns_is_sent_once_in_chunks_not_again_whole_per_update(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.002
    flowgpt_server.state.options.min_pieces = 6_000  # ~ 30,000 characters a model
    run = finish(kc, kc.execute("%%flowgpt -m openai:gpt-4o -m gemini\nTell me a lot."), 120)
    assert run.reply["status"] == "ok", run.reply
    (update,) = run.of_type("update_display_data")
    answers = [len(r["answer"]) for r in update["content"]["metadata"]["answers"]]
    assert min(answers) > 25_000
    states = [m["content"]["data"].get("state", {}) for m in run.of_type("comm_msg")]
    sizes = [len(str(state["outputs"])) for state in states if state.get("outputs")]
    # Each update carries one chunk (or the unfinished block), never the answer so far;
    # in all, a few times the answers (the unfinished block goes again at each update),
    # where appending to one Output sent them some 30 times.
    assert max(sizes) < 3 * CHUNK_CHARS
    assert sum(sizes) < 12 * sum(answers), (sum(sizes), sum(answers))


def test_the_stop_button_stops_every_model(kernel: Kernel, flowgpt_server: LocalServer) -> None:
    km, kc = kernel
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 50_000
    msg_id = kc.execute(f"%%flowgpt {THREE}\nTell me everything.")
    assert flowgpt_server.state.wait_for(lambda s: len(s.requests) == 3, timeout=30)
    km.interrupt_kernel()
    rest = finish(kc, msg_id, timeout=10)
    assert rest.reply.get("ename") == AnswerInterrupted.__name__, rest.reply
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 3, timeout=10)
    (update,) = rest.of_type("update_display_data")
    outcomes = [r["outcome"] for r in update["content"]["metadata"]["answers"]]
    assert outcomes == ["interrupted"] * 3
    flowgpt_server.state.options.min_pieces = 0
    check = finish(kc, kc.execute("%%flowgpt -m openai:gpt-4o\nStill there?"))
    assert check.reply["status"] == "ok"
