"""Answers that become cells (--insert), and answers in the background (--background): in
real kernels over jupyter_client, and in a shell (as terminal IPython is)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.blocking.client import BlockingKernelClient
from kernels import Execution, Kernel, finish
from messages import said

from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.record import record_in
from flowgpt_magic.server import LocalServer, offline_answer

CODE_ANSWER = "Here it is:\n\n```python\nprint('hello')\n```\n\nand\n\n```python\nx = 1\n```"


# -- code into the next cell ----------------------------------------------------------------


def test_insert_puts_exactly_the_code_in_a_new_cell_below(
    kernel: Kernel,
) -> None:
    _km, kc = kernel
    run = finish(kc, kc.execute(f"%%flowgpt --insert\n/echo\n{CODE_ANSWER}"))
    assert run.reply["status"] == "ok"
    assert run.reply["payload"] == [
        {"source": "set_next_input", "text": "print('hello')\n\nx = 1", "replace": False}
    ]
    prose = finish(kc, kc.execute("%%flowgpt --insert\nNo code here, please."))
    assert prose.reply["payload"] == []
    said = "".join(m["content"]["text"] for m in prose.of_type("stream"))
    assert "(The answer has no code block: no cell was added.)" in said


def test_in_a_terminal_insert_puts_the_code_on_the_next_prompt(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    assert shell.run_cell(f"%%flowgpt --insert -f code\n/echo\n{CODE_ANSWER}").error_in_exec is None
    assert shell.rl_next_input == "print('hello')\n\nx = 1"


# -- answers in the background -------------------------------------------------------------


def display_id(run: Execution) -> str:
    (shown,) = run.of_type("display_data")
    return str(shown["content"]["transient"]["display_id"])


def until_updated(kc: BlockingKernelClient, shown: str, timeout: float = 60) -> dict[str, Any]:
    """The update that replaces display ``shown``, whichever cell's messages it comes with."""
    deadline = time.monotonic() + timeout
    while True:
        message = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        transient = message["content"].get("transient", {})
        if message["msg_type"] == "update_display_data" and transient["display_id"] == shown:
            return message["content"]  # type: ignore[no-any-return]


def history(kc: BlockingKernelClient) -> list[str]:
    run = finish(kc, kc.execute("%flowgpt_history --json"))
    data = json.loads("".join(m["content"]["text"] for m in run.of_type("stream")))
    return [exchange["prompt"] for exchange in data["exchanges"]]


def test_a_background_answer_streams_on_while_other_cells_run(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.hold = hold = threading.Event()  # (until it is let go)
    story = " ".join(f"word{n}" for n in range(150))
    started = finish(kc, kc.execute(f"%%flowgpt --background\n/echo\n{story}"))
    # The cell is over, its answer is not: the server is still sending it.
    assert started.reply["status"] == "ok"
    assert flowgpt_server.state.completed == 0
    shown = display_id(started)
    deadline, seen = time.monotonic() + 30, str(started.messages)
    while "word2" not in seen:  # (until its first pieces are on screen: the rest are held)
        seen = str(kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic())))

    other = finish(kc, kc.execute("x = 6 * 7\nprint(x)"))
    assert "".join(m["content"]["text"] for m in other.of_type("stream")) == "42\n"
    flowgpt_server.state.options.hold = None  # (the next answers go straight through)
    quick = finish(kc, kc.execute("%%flowgpt\nAnd meanwhile?"))
    assert quick.reply["status"] == "ok"
    said = "".join(m["content"]["text"] for m in quick.of_type("stream"))
    assert said.startswith("(The answer of cell [2] still streams in the background")
    assert flowgpt_server.state.requests[-1].body["history"][1:] == []  # left out, as said
    assert flowgpt_server.state.completed == 1  # the quick one; the first goes on

    hold.set()
    update = until_updated(kc, shown)
    assert record_in(update).answer == story and record_in(update).outcome == "complete"
    # (Its title stays, as it was while it streamed.)
    assert update["data"]["text/markdown"].startswith(
        f"**gpt-3.5-turbo**\n\n{story}\n\n<small><i>gpt-3.5-turbo · "
    )
    # It joined the conversation when it completed, in the order the cells were run.
    assert history(kc) == [f"/echo\n{story}", "And meanwhile?"]


def test_several_background_answers_at_once_each_into_its_box(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.01
    ids = [
        display_id(finish(kc, kc.execute(f"%%flowgpt --background\nQuestion {n}")))
        for n in range(3)
    ]
    updates = {}
    while len(updates) < 3:
        message = kc.get_iopub_msg(timeout=60)
        if message["msg_type"] == "update_display_data":
            updates[message["content"]["transient"]["display_id"]] = message["content"]
    for n, shown in enumerate(ids):
        asked = next(
            r.body for r in flowgpt_server.state.requests if r.body["question"] == f"Question {n}"
        )
        assert record_in(updates[shown]).answer == offline_answer(asked)
    assert sorted(history(kc)) == ["Question 0", "Question 1", "Question 2"]


def click(kc: BlockingKernelClient, comm_id: str) -> None:
    """What the frontend sends when a person clicks an ipywidgets Button."""
    content = {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}
    kc.shell_channel.send(kc.session.msg("comm_msg", content))


def test_the_stop_button_of_a_background_answer_stops_it_and_records_nothing(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 50_000  # minutes, unless stopped
    started = finish(kc, kc.execute("%%flowgpt --background\nTell me everything."))
    (button,) = [
        m["content"]["comm_id"]
        for m in started.of_type("comm_open")
        if m["content"]["data"]["state"].get("_model_name") == "ButtonModel"
    ]
    deadline = time.monotonic() + 30
    while True:  # until some of the answer is on screen
        message = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if message["msg_type"] == "comm_msg" and "[Offline" in json.dumps(message["content"]):
            break
    click(kc, button)
    update = until_updated(kc, display_id(started))
    record = record_in(update)
    assert record.outcome == "interrupted" and record.answer
    assert "■ Stopped after " in update["data"]["text/plain"]
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)
    assert history(kc) == []


def test_unloading_the_extension_stops_background_answers_and_leaves_no_task(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 50_000
    for n in range(2):
        finish(kc, kc.execute(f"%%flowgpt --background\nLong answer {n}"))
    assert flowgpt_server.state.wait_for(lambda s: len(s.requests) == 2, timeout=10)
    finish(kc, kc.execute("%unload_ext flowgpt_magic"))
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 2, timeout=10)
    left = finish(kc, kc.execute("import asyncio\nprint(len(asyncio.all_tasks()))"))
    # (the task that runs this cell, and ipykernel's own, are all that remain)
    assert int("".join(m["content"]["text"] for m in left.of_type("stream"))) <= 2


def test_in_a_terminal_background_is_refused_in_one_line(
    shell: InteractiveShell, magics: FlowGptMagics, flowgpt_server: LocalServer
) -> None:
    error = shell.run_cell("%%flowgpt --background\nHi").error_in_exec
    assert isinstance(error, UsageError)
    assert said(error).startswith("--background needs a notebook: in terminal IPython nothing")
    assert flowgpt_server.state.requests == []
    # As a default, it leaves a terminal's cells in the foreground.
    shell.run_line_magic("config", "FlowGptMagics.background = True")
    assert shell.run_cell("%%flowgpt\nHi").error_in_exec is None
    assert len(magics.conversation) == 1
