"""The extension in real Jupyter kernels: a notebook executed with nbclient, and single cells
driven with jupyter_client to watch the messages a frontend would receive."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.blocking.client import BlockingKernelClient
from kernels import Execution, Kernel, contents, finish
from messages import said
from nbclient import NotebookClient

from flowgpt_magic.record import record_in
from flowgpt_magic.server import (
    OPENAI_PATH,
    PATH,
    LocalServer,
    answer_pieces,
    offline_answer,
)
from flowgpt_magic.server.answers import reasoning_pieces

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def closed_port_url() -> str:
    with LocalServer() as server:
        return server.url


# -- a whole notebook with nbclient -------------------------------------------------------


def test_a_notebook_holds_a_conversation(flowgpt_server: LocalServer) -> None:
    failing_url = closed_port_url()
    sources = [
        "%load_ext flowgpt_magic",
        "%%flowgpt\nWhat is a notebook?",  # 1
        "%%flowgpt\nSay more.",  # 2
        "%flowgpt_model gemini",  # 3
        "%%flowgpt -t 0.1\nThird question",  # 4
        "%flowgpt_history --reset",  # 5
        "%%flowgpt\nAfter the reset",  # 6
        f"%config FlowGptMagics.api_url = {failing_url!r}",  # 7
        "%%flowgpt\nThis one cannot be sent",  # 8
        "%config FlowGptMagics.api_url = None",  # 9
        "import asyncio\nawait asyncio.sleep(0)\nprint('top-level await still works')",  # 10
        "%%flowgpt\nStill there?",  # 11
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.cells[8].metadata["tags"] = ["raises-exception"]
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()

    bodies = [request.body for request in flowgpt_server.state.requests]
    assert [body["question"] for body in bodies] == [
        "What is a notebook?",
        "Say more.",
        "Third question",
        "After the reset",
        "Still there?",
    ]
    assert [len(body["history"]) - 1 for body in bodies] == [0, 2, 4, 0, 2]
    assert [body["model"] for body in bodies] == ["gpt-3.5-turbo"] * 2 + ["google-gemini"] * 3
    assert [body["temperature"] for body in bodies] == [0.7, 0.7, 0.1, 0.7, 0.7]
    assert bodies[4]["history"][1]["content"] == "After the reset"

    # Each answer ends up in the cell as one static output, Markdown (what a saved notebook
    # shows) with a footer under it and the exchange beside it ...
    answered = [nb.cells[i] for i in (1, 2, 4, 6, 11)]
    for cell, body in zip(answered, bodies, strict=True):
        (output,) = cell.outputs
        assert output.output_type == "display_data"
        answer = offline_answer(body)
        assert output.metadata["flowgpt_magic"]["answer"] == record_in(output).answer == answer
        footer = output.data["text/plain"].removeprefix(f"{answer}\n\n")
        assert footer.startswith(f"({body['model']} · first piece in ")
        assert footer.endswith(f" · {len(answer):,} characters)")
        html_footer = f"<small><i>{footer[1:-1]}</i></small>"
        assert output.data["text/markdown"] == f"{answer}\n\n{html_footer}"

    # The failed cell: a one-line error, and nothing else to show (or, had the live view been
    # due before the connection failed, the waiting line given way to nothing).
    *shown, error = nb.cells[8].outputs
    assert [output.data for output in shown] in ([], [{"text/plain": ""}])
    # IPython prints a UsageError as one stderr line, with no traceback.
    assert (error.output_type, error.name) == ("stream", "stderr")
    assert said(error.text).startswith(
        f"UsageError: Could not connect to {failing_url.split('/')[2]}"
    )
    assert "aiohttp" not in error.text
    assert "".join(o.text for o in nb.cells[10].outputs) == "top-level await still works\n"
    assert "Default model is now google-gemini (alias 'gemini')." in nb.cells[3].outputs[0].text


# -- single cells with jupyter_client -----------------------------------------------------


def test_text_streams_coalesced_into_a_widget_then_stays_as_static_text(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.min_pieces = 10_000
    flowgpt_server.state.options.first_delay = 0.5  # a model slow to start: the waiting line
    run = finish(kc, kc.execute("%%flowgpt -f text\nCount for me"))

    assert run.reply["status"] == "ok"
    body = flowgpt_server.state.requests[-1].body
    pieces = answer_pieces(body, 10_000)
    types = [m["msg_type"] for m in run.messages]

    # The waiting line is in the status widget as it is shown, before any text.
    waiting = [
        m
        for m in run.of_type("comm_open")
        if "Waiting for gpt-3.5-turbo" in str(m["content"]["data"]["state"].get("outputs", ""))
    ]
    assert waiting and types.index("comm_open") < types.index("stream")
    assert types.index("display_data") < types.index("stream")
    # A frontend without widgets shows the waiting line too, not the box's repr.
    shown = run.of_type("display_data")[0]["content"]["data"]
    assert shown["text/plain"].startswith("Waiting for gpt-3.5-turbo")
    assert WIDGET_VIEW in shown

    # 10,000 pieces arrive as far fewer display updates, in order.
    streams = run.of_type("stream")
    assert len(pieces) == 10_000
    assert 0 < len(streams) < 200
    streamed = "".join(m["content"]["text"] for m in streams)
    assert streamed and "".join(pieces).startswith(streamed)

    # At the end the widgets are replaced, in one update, by static text and a footer.
    (answer,) = run.of_type("update_display_data")
    plain = answer["content"]["data"]["text/plain"]
    assert answer["content"]["data"] == {"text/plain": plain}
    assert plain.startswith("".join(pieces) + "\n\n(gpt-3.5-turbo · first piece in ")
    assert " · 10,000 pieces · " in plain
    assert answer["content"]["metadata"]["flowgpt_magic"]["format"] == "text"
    # A box, two Output widgets in it and the Layout they share: all closed with the answer
    # (a Layout left open keeps every view that used it alive in the frontend).
    assert (len(run.of_type("comm_open")), len(run.of_type("comm_close"))) == (4, 4)


def test_an_answer_complete_before_the_live_view_is_due_is_shown_once(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    # The live view is due soon after the request (display.widget.SHOW_AFTER); put it off, so that
    # this does not depend on how fast this machine is.
    finish(kc, kc.execute("import flowgpt_magic.display.widget as w; w.SHOW_AFTER = 60"))
    run = finish(kc, kc.execute("%%flowgpt\nA quick one"))
    assert run.reply["status"] == "ok"
    answer = offline_answer(flowgpt_server.state.requests[-1].body)

    # No widget, no stream, no update: one display message, the finished answer.
    assert not run.of_type("comm_open", "comm_msg", "stream", "update_display_data")
    (output,) = run.of_type("display_data")
    assert output["content"]["data"]["text/markdown"].startswith(f"{answer}\n\n<small><i>")
    assert record_in(output["content"]).answer == answer


SECTION = (
    "## Part {n}\n\nSome *text* for part {n}, with `code`.\n\n"
    "```python\nprint({n})\n\nx = {n}\n```\n\n"
)


def test_markdown_streams_as_finished_blocks_and_one_growing_tail(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.001
    markdown = "".join(SECTION.format(n=n) for n in range(60)).strip()  # (as IPython does)
    run = finish(kc, kc.execute(f"%%flowgpt\n/echo\n{markdown}"))
    assert run.reply["status"] == "ok"

    # Finished blocks are appended to the answer widget, each sent once, in order; the
    # unfinished block is the status widget's one output, replaced as it grows.
    captured = [m for m in run.of_type("display_data") if "text/markdown" in m["content"]["data"]]
    blocks = contents(captured, "text/markdown")
    tails = contents(run.of_type("comm_msg"), "text/markdown")
    sent = "".join(blocks)
    assert len(blocks) > 5 and len(sent) > len(markdown) // 2 and markdown.startswith(sent)
    assert all(block.startswith(("## Part", "Some *text*", "```python")) for block in blocks)
    assert tails and all(tail in markdown and len(tail) < len(SECTION) + 5 for tail in tails)
    assert len(blocks) + len(tails) < len(flowgpt_server.state.requests[-1].body["question"]) / 20

    # At the end: the whole answer as static Markdown, with the exchange, and the footer.
    (answer,) = run.of_type("update_display_data")
    data = answer["content"]["data"]
    assert data["text/markdown"].startswith(f"{markdown}\n\n<small><i>gpt-3.5-turbo · first ")
    assert data["text/plain"].startswith(f"{markdown}\n\n(gpt-3.5-turbo · first piece")
    assert answer["content"]["metadata"]["flowgpt_magic"]["format"] == "markdown"

    # The frontend is to let go of the answer's widgets: each Output is emptied while its
    # view is still on the page (JupyterLab keeps closed Output models and their views),
    # then the static output replaces the box, then every widget opened is closed, its
    # Layout too.
    at = run.messages.index(answer)
    emptied = {
        m["content"]["comm_id"]
        for m in run.messages[:at]
        if m["msg_type"] == "comm_msg" and m["content"]["data"].get("state") == {"outputs": []}
    }
    opened = {m["content"]["comm_id"]: m for m in run.of_type("comm_open")}
    outputs = {
        i
        for i, m in opened.items()
        if m["content"]["data"]["state"].get("_model_name") == "OutputModel"
    }
    assert len(outputs) == 2 and emptied == outputs
    closed = [m["content"]["comm_id"] for m in run.messages[at:] if m["msg_type"] == "comm_close"]
    assert sorted(closed) == sorted(opened)


def test_interrupt_stops_the_answer_and_the_kernel_carries_on(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    km, kc = kernel
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 100_000
    msg_id = kc.execute("%%flowgpt -f text\nTell me everything")

    deadline = time.monotonic() + 30
    before: list[dict[str, Any]] = []
    while not any(m["msg_type"] == "stream" for m in before):
        message = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if message["parent_header"].get("msg_id") == msg_id:
            before.append(message)
    km.interrupt_kernel()
    rest = finish(kc, msg_id, timeout=10)  # (of the 1,000 s the answer would take)

    assert rest.reply["status"] == "error"
    assert rest.reply.get("ename") == "AnswerInterrupted", rest.reply
    (error,) = rest.of_type("error")
    assert len(error["content"]["traceback"]) == 1
    assert "Interrupted after" in error["content"]["traceback"][0]
    (update,) = rest.of_type("update_display_data")
    record = update["content"]["metadata"]["flowgpt_magic"]
    partial = record_in(update["content"]).answer
    assert partial is not None
    assert record["outcome"] == "interrupted"
    plain = update["content"]["data"]["text/plain"]
    assert plain.startswith(f"{partial}\n\n(")
    assert plain.endswith(f" · {len(partial):,} characters)")
    full = "".join(answer_pieces(flowgpt_server.state.requests[0].body, 100_000))
    assert 0 < len(partial) < len(full) and full.startswith(partial)
    # What stays on screen is what had streamed in, and what was on its way to the screen.
    streamed = [m for m in before + rest.messages if m["msg_type"] == "stream"]
    assert partial.startswith("".join(m["content"]["text"] for m in streamed))
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)
    assert flowgpt_server.state.completed == 0

    # Nothing streams into the cell after it ended, and the kernel answers normally.
    flowgpt_server.state.options.min_pieces = 0
    flowgpt_server.state.options.delay = 0
    after = finish(kc, kc.execute("%%flowgpt\nAre you still there?"))
    assert after.reply["status"] == "ok"
    assert flowgpt_server.state.requests[-1].body["history"][1:] == []
    assert all(m["parent_header"]["msg_id"] != msg_id for m in after.messages)
    check = finish(kc, kc.execute("%flowgpt_history"))
    text = "".join(m["content"]["text"] for m in check.of_type("stream"))
    assert "Are you still there?" in text and "Tell me everything" not in text


def test_the_waiting_line_says_when_a_request_is_retried(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    options = flowgpt_server.state.options
    options.fault, options.fault_times, options.retry_after = "status-503", 1, 0.2
    run = finish(kc, kc.execute("%%flowgpt\nAre you there?"))
    assert run.reply["status"] == "ok"
    notes = [
        str(m["content"]["data"].get("state", {}).get("outputs", ""))
        for m in run.of_type("comm_open", "comm_msg")
    ]
    assert any(
        "answered 503 Service Unavailable" in n and "Trying again in 0.2 s (1 of 2)" in n
        for n in notes
    )
    (update,) = run.of_type("update_display_data")
    assert update["content"]["data"]["text/plain"].startswith("[Offline answer")


def test_reasoning_streams_open_above_the_answer_then_folds(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    flowgpt_server.state.options.delay = 0.02  # slow enough for a live view
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    finish(kc, kc.execute(f"%config OpenAI.base_url = {base!r}"))
    run = finish(kc, kc.execute("%%flowgpt -m openai:gpt-4o\n/think\nWhy?"))
    assert run.reply["status"] == "ok"
    body = flowgpt_server.state.requests[-1].body
    reasoning, answer = "".join(reasoning_pieces(body)), "".join(answer_pieces(body))

    # The reasoning's fold opens, titled, and the reasoning streams into it (the cell's
    # output, captured there) before any of the answer; then it folds, its size in its title.
    (fold,) = [
        m
        for m in run.of_type("comm_open")
        if m["content"]["data"]["state"].get("_model_name") == "AccordionModel"
    ]
    assert fold["content"]["data"]["state"]["titles"] == ["Reasoning…"]
    # (What had come when it opened is its first output; the rest streams in.)
    opened = [
        output["text"]
        for m in run.of_type("comm_open")
        for output in m["content"]["data"]["state"].get("outputs", [])
        if output.get("output_type") == "stream"
    ]
    streamed = "".join(m["content"]["text"] for m in run.of_type("stream"))
    assert "".join(opened) + streamed == reasoning and streamed
    folds = [
        m["content"]["data"]["state"]
        for m in run.of_type("comm_msg")
        if m["content"]["comm_id"] == fold["content"]["comm_id"]
        and "titles" in m["content"]["data"].get("state", {})
    ]
    assert folds[-1]["titles"] == [f"Reasoning ({len(reasoning):,} characters)"]
    # The answer's blocks come after the reasoning, in the answer's own widget.
    types = [m["msg_type"] for m in run.messages]
    last_reasoning = max(i for i, t in enumerate(types) if t == "stream")
    blocks = [m for m in run.of_type("display_data") if "text/markdown" in m["content"]["data"]]
    assert all(run.messages.index(m) > last_reasoning for m in blocks)

    # At the end: the reasoning folded in HTML above the answer; the plain text, the answer.
    (update,) = run.of_type("update_display_data")
    data = update["content"]["data"]
    assert data["text/markdown"].startswith(
        f"<details><summary>Reasoning ({len(reasoning):,} characters)</summary>\n"
    )
    assert (
        f"</details>\n\n{answer}\n\n<small><i>openai:gpt-4o · first piece in "
        in (data["text/markdown"])
    )
    assert data["text/plain"].startswith(f"{answer}\n\n(openai:gpt-4o · ")
    assert record_in(update["content"]).reasoning == reasoning


def test_a_key_entered_as_a_password_is_used_and_never_shown(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    key = "sk-typed-in-a-password-box-0123"
    flowgpt_server.state.options.api_key = key
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    finish(kc, kc.execute(f"%config OpenAI.base_url = {base!r}"))

    msg_id = kc.execute("%flowgpt_key", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    assert request["msg_type"] == "input_request" and request["content"]["password"] is True
    kc.input(key)
    entered = finish(kc, msg_id)
    asked = finish(kc, kc.execute("%%flowgpt -m openai:gpt-4o\nHi"))
    shown = finish(kc, kc.execute("%config OpenAI"))

    assert entered.reply["status"] == asked.reply["status"] == "ok"
    assert flowgpt_server.state.requests[0].headers["Authorization"] == f"Bearer {key}"
    for run in (entered, asked, shown):
        assert key not in json.dumps(run.messages, default=str)  # no output, record or repr
    assert "Current: '***'" in "".join(m["content"]["text"] for m in shown.of_type("stream"))


def execute_in_cell(kc: BlockingKernelClient, code: str, cell_id: str) -> Execution:
    """Execute as JupyterLab and Notebook 7 do: the cell's id in the request's metadata."""
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    message = kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
    kc.shell_channel.send(message)
    return finish(kc, message["header"]["msg_id"])


def test_a_notebook_cell_run_twice_leaves_one_exchange(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    for prompt in ("First try", "Second try"):
        assert execute_in_cell(kc, f"%%flowgpt\n{prompt}", "cell-7").reply["status"] == "ok"
    assert execute_in_cell(kc, "%%flowgpt\nAnother cell", "cell-8").reply["status"] == "ok"
    run = finish(kc, kc.execute("%flowgpt_history --json"))
    text = "".join(m["content"]["text"] for m in run.of_type("stream"))
    history = json.loads(text)
    assert [(e["prompt"], e["cell_id"]) for e in history["exchanges"]] == [
        ("Second try", "cell-7"),
        ("Another cell", "cell-8"),
    ]
    assert flowgpt_server.state.requests[1].body["history"][1:] == []  # not its own old try


def test_saved_answers_carry_their_exchange_and_outlive_the_kernel(
    flowgpt_server: LocalServer, tmp_path: Path
) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(source)
        for source in [
            "%load_ext flowgpt_magic",
            "%%flowgpt\nFirst question",
            "%%flowgpt -t 0.3\nSecond question",
            "%%flowgpt --no-history\nAn aside",
        ]
    ]
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)

    record = nb.cells[2].outputs[0].metadata["flowgpt_magic"]
    assert (record["prompt"], record["temperature"], record["outcome"]) == (
        "Second question",
        0.3,
        "complete",
    )
    assert (
        nb.cells[2]
        .outputs[0]
        .data["text/plain"]
        .startswith(f"{record_in(nb.cells[2].outputs[0]).answer}\n\n(")
    )
    assert record["pieces"] > 10 and 0 <= record["first_piece_seconds"] <= record["total_seconds"]

    # Exported, the notebook shows every answer (no widget state needed).
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nbformat.read(path, as_version=4))
    for asked in ("First question", "Second question", "An aside"):
        assert f"You asked: «{asked}»" in html

    # A new kernel, as after a restart, picks the conversation up from the saved answers.
    again = nbformat.v4.new_notebook()
    again.cells = [
        nbformat.v4.new_code_cell(source)
        for source in [
            "%load_ext flowgpt_magic",
            f"%flowgpt_history --from-notebook {path}",
            "%%flowgpt\nWhere were we?",
        ]
    ]
    NotebookClient(again, kernel_name="python3", timeout=60).execute()
    assert again.cells[1].outputs[0].text.startswith("Rebuilt 2 exchanges from")
    sent = flowgpt_server.state.requests[-1].body["history"][1:]
    assert [m["content"] for m in sent if m["role"] == "user"] == [
        "First question",
        "Second question",
    ]
