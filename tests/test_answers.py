"""Answers that are not what they seem, through the magics: a stream cut short, an answer
sent whole, a model that asks to call a function, JSON, one model named twice. Against the
bundled server's OpenAI dialect (a real server on loopback), in a shell."""

from __future__ import annotations

import json

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic.display import static_bundle
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, answer_pieces, offline_answer


@pytest.fixture
def served(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return flowgpt_server


def test_a_stream_cut_short_keeps_what_came_and_is_not_recorded(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served.state.options.fault = "cut"
    error = shell.run_cell("%%flowgpt -m openai:gpt-4o\nTell me.").error_in_exec
    assert isinstance(error, UsageError)
    assert "ended without saying the answer was complete (no finish reason, no [DONE])" in said(
        error
    )
    body = served.state.requests[-1].body
    assert capsys.readouterr().out.startswith("".join(answer_pieces(body)[:3]))
    assert len(magics.conversation) == 0 and "_flowgpt" not in shell.user_ns


def test_an_answer_sent_whole_is_the_answer(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics
) -> None:
    served.state.options.fault = "whole"
    assert shell.run_cell("%%flowgpt -m openai:gpt-4o\nAll at once?").error_in_exec is None
    answer = offline_answer(served.state.requests[-1].body)
    assert shell.user_ns["_flowgpt"] == answer
    (record,) = magics.conversation
    assert (record.answer, record.finish_reason, record.outcome) == (answer, "stop", "complete")
    assert record.usage is not None and record.usage.output_tokens == len(answer.split())


def test_a_model_that_asks_to_call_a_function_says_which_and_records_nothing(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    cell = f"%%flowgpt -m openai:gpt-4o -p tools='{json.dumps(tools)}'\nWeather in Oslo?"
    error = shell.run_cell(cell).error_in_exec
    assert isinstance(error, UsageError)
    assert said(error).startswith(
        'The model asked to call weather({"city": "example"}), and this magic does not run '
        "functions; nothing was added to the conversation."
    )
    assert len(magics.conversation) == 0


@pytest.mark.parametrize(
    ("models", "named"),
    [
        ("-m openai:gpt-4o -m openai:gpt-4o", "-m openai:gpt-4o and -m openai:gpt-4o"),
        ("-m gemini -m google-gemini", "-m gemini and -m google-gemini"),
    ],
)
def test_one_model_named_twice_is_refused_before_sending(
    shell: InteractiveShell, served: LocalServer, models: str, named: str
) -> None:
    error = shell.run_cell(f"%%flowgpt {models}\nHi").error_in_exec
    assert isinstance(error, UsageError)
    assert said(error).startswith(f"{named} name the same model")
    assert served.state.requests == []


def test_json_asked_for_is_kept_as_its_value_and_shown_as_json(
    shell: InteractiveShell, served: LocalServer
) -> None:
    answer = '{"sentiment": "positive", "score": 4}'
    assert (
        shell.run_cell(f"%%flowgpt -m openai:gpt-4o -f json\n/echo\n{answer}").error_in_exec is None
    )
    assert served.state.requests[-1].body["response_format"] == {"type": "json_object"}
    assert shell.user_ns["_flowgpt"] == {"sentiment": "positive", "score": 4}
    # (Asked for with -p response_format, it is shown as JSON too.)
    shell.run_cell(
        '%%flowgpt -m openai:gpt-4o -p response_format=\'{"type": "json_object"}\'\n/echo\n[1, 2]'
    )
    assert shell.user_ns["_flowgpt"] == [1, 2]


def test_a_json_answer_is_one_highlighted_block_not_a_paragraph() -> None:
    shown = static_bundle('{"a": [1, 2], "b": "c"}', "markdown", "footer")
    indented = '{\n  "a": [\n    1,\n    2\n  ],\n  "b": "c"\n}'
    assert shown["text/markdown"] == f"```json\n{indented}\n```\n\n<small><i>footer</i></small>"
    assert static_bundle("Not {json} at all", "markdown")["text/markdown"] == "Not {json} at all"
