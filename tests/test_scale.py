"""Size and time: long prompts and histories, many streams at once, a thousand cells."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tracemalloc
import warnings

import pytest
from IPython.core.interactiveshell import InteractiveShell

from flowgpt_magic import FlowGpt
from flowgpt_magic.conversation import Conversation
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.record import Record
from flowgpt_magic.server import LocalServer, answer_pieces


def filled(turns: int, size: int = 10) -> Conversation:
    return Conversation(
        Record(f"q{index}".ljust(size), f"a{index}".ljust(size), "m") for index in range(turns)
    )


def test_context_can_be_capped_by_turns_or_characters() -> None:
    conversation = filled(5)
    assert len(conversation.wire_messages()) == 10
    last_two = conversation.wire_messages(max_turns=2)
    assert [m["content"].strip() for m in last_two] == ["q3", "a3", "q4", "a4"]
    # 20 characters an exchange: 45 characters hold two whole exchanges.
    assert conversation.wire_messages(max_chars=45)[0]["content"].strip() == "q3"
    assert conversation.wire_messages(max_chars=5) == []
    assert len(conversation) == 5  # the conversation itself keeps everything


def test_the_magic_sends_only_the_capped_context(
    shell: InteractiveShell, magics: FlowGptMagics, flowgpt_server: LocalServer
) -> None:
    for index in range(4):
        shell.run_cell(f"%%flowgpt\nQuestion {index}")
    magics.history_turns = 1
    shell.run_cell("%%flowgpt\nWith one exchange of context")
    history = flowgpt_server.state.requests[-1].body["history"][1:]
    assert [m["content"] for m in history if m["role"] == "user"] == ["Question 3"]
    assert len(magics.conversation) == 5


def test_a_prompt_of_several_mebibytes_is_sent(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    prompt = "word " * (1024 * 1024)  # 5 MiB
    assert shell.run_cell(f"%%flowgpt\n{prompt}").error_in_exec is None
    assert len(flowgpt_server.state.requests[0].body["question"]) == len(prompt.strip())


def test_a_history_of_thousands_of_turns_is_sent(
    shell: InteractiveShell, magics: FlowGptMagics, flowgpt_server: LocalServer
) -> None:
    magics.conversation.replace_with(filled(3000, size=100))
    assert shell.run_cell("%%flowgpt\nAfter 3,000 turns").error_in_exec is None
    assert len(flowgpt_server.state.requests[0].body["history"]) == 1 + 6000


def open_descriptors() -> int:
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_two_hundred_streams_at_once_all_get_their_text() -> None:
    before = open_descriptors()
    with LocalServer() as server:

        async def one(index: int) -> str:
            messages = [{"role": "user", "content": f"Stream {index}"}]
            pieces = FlowGpt.create_async_generator("gpt-3.5-turbo", messages, api_url=server.url)
            return "".join([piece async for piece in pieces])

        async def all_of_them() -> list[str]:
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 120)

        texts = asyncio.run(all_of_them())
        bodies = {r.body["question"]: r.body for r in server.state.requests}
    gc.collect()
    after = open_descriptors()  # the server has stopped: only a client leak could remain
    assert len(texts) == 200
    for index, text in enumerate(texts):
        assert text == "".join(answer_pieces(bodies[f"Stream {index}"]))
    assert after == before, f"{after - before} descriptors left open"


def test_a_thousand_cells_hold_no_more_than_their_history(
    shell: InteractiveShell,
    magics: FlowGptMagics,
    flowgpt_server: LocalServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flowgpt_server.state.options.record = False  # the server's own memory is not ours
    magics.history_turns = 20  # what is sent stays small; what is kept grows

    def cells(count: int) -> None:
        # run_cell_magic, not run_cell: run_cell keeps every distinct cell's source in
        # IPython's compile cache (about 4 KB a cell), which is IPython's memory, not ours.
        for index in range(count):
            shell.run_cell_magic("flowgpt", "", f"Cell {index}")
        capsys.readouterr()  # the captured answers are the test's memory, not ours

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells(100)  # warm up: imports, caches, the session
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        kept_before = len(magics.conversation)
        cells(900)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.stop()
    added = list(magics.conversation)[kept_before:]
    # What the history itself holds for those exchanges: records, their texts and numbers,
    # and the list's pointers. Everything else would be a leak that grows with the cells.
    history = sum(
        sys.getsizeof(record) + sum(sys.getsizeof(value) for value in _own(record))
        for record in added
    ) + 8 * len(added)
    text = sum(len(record.prompt) + len(record.answer) for record in added)
    assert len(magics.conversation) == 1000
    assert caught == []
    assert grown < history * 1.1 + 64 * 1024, f"{grown} bytes grown; the history holds {history}"
    # With these short turns (an 8-character question) a record's fields and numbers weigh
    # about as much as its text; with realistic ones, far less (bench_history.py: 1.21x).
    assert history < 2.5 * text


def _own(record: Record) -> list[object]:
    """The values a record made for itself (not shared constants: None, True, short names)."""
    mine = (record.prompt, record.answer, record.time, record.first_piece_seconds)
    return [value for value in (*mine, record.total_seconds) if value is not None]
