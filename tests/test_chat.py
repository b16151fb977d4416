"""The chat on its own, with no IPython shell: ask, stream into a view, remember."""

from __future__ import annotations

import io
import os
import signal

import pytest

from flowgpt_magic import AnswerInterrupted, RequestFailedError
from flowgpt_magic.chat import Chat
from flowgpt_magic.command import Settings, build_request
from flowgpt_magic.display import TextView
from flowgpt_magic.providers.flowgpt import GREETING
from flowgpt_magic.server import LocalServer, offline_answer

SETTINGS = Settings("gemini", 0.7, "Be brief.", "text")


def test_the_chat_asks_streams_and_remembers(flowgpt_server: LocalServer) -> None:
    chat = Chat()
    screen = io.StringIO()
    try:
        first = chat.ask(build_request("One?", SETTINGS, namespace=None), TextView(False, screen))
        second = chat.ask(build_request("Two?", SETTINGS, namespace=None), TextView(True, screen))
    finally:
        chat.close()

    one, two = (request.body for request in flowgpt_server.state.requests)
    assert (first.prompt, first.answer, first.model) == (
        "One?",
        offline_answer(one),
        "google-gemini",
    )
    assert (first.outcome, first.system, first.pieces > 20) == ("complete", "Be brief.", True)
    assert two["history"] == [GREETING, *first.wire_messages()]
    assert list(chat.conversation) == [first, second]
    assert screen.getvalue() == (
        f"{offline_answer(one)}\n{offline_answer(two)}\n({second.footer()})\n"
    )


def test_an_answer_without_text_is_an_error_and_is_not_remembered(
    flowgpt_server: LocalServer,
) -> None:
    flowgpt_server.state.options.fault = "empty"
    chat = Chat()
    try:
        with pytest.raises(RequestFailedError, match="ended the answer without any text"):
            chat.ask(build_request("Hi", SETTINGS, namespace=None), TextView(True, io.StringIO()))
    finally:
        chat.close()
    assert len(chat.conversation) == 0


def test_an_interrupted_answer_keeps_its_text_on_screen_and_out_of_the_conversation(
    flowgpt_server: LocalServer,
) -> None:
    class StopAtThirdPiece(TextView):
        def extend(self, pieces: list[str]) -> None:
            super().extend(pieces)
            if len(self.pieces) >= 3 and not self.pressed:
                self.pressed = True
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, or the kernel's stop button

        pressed = False

    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 1_000
    screen = io.StringIO()
    chat = Chat()
    try:
        with pytest.raises(AnswerInterrupted) as caught:
            chat.ask(build_request("Go", SETTINGS, namespace=None), StopAtThirdPiece(True, screen))
    finally:
        chat.close()
    assert len(chat.conversation) == 0
    shown = screen.getvalue()
    assert caught.value.characters == len(shown.split("\n")[0]) > 0
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)
