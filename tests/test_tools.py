"""The notebook's functions as tools (--tools): described as the official client sends
them, each call asked about before it runs (or run unasked, --approve), its result sent
back and the answer read on; refused where they cannot work. Against the bundled server's
OpenAI dialect (which calls ``/call NAME ARGUMENTS``, or a tool's first function), in a
shell and in a real kernel (where the question is the frontend's input box and the stop
button works while it waits); the real model's test is in test_real_servers.py."""

from __future__ import annotations

import builtins
import json
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from kernels import MAGICS, Kernel, finish, kernel_value, run
from messages import said

from flowgpt_magic.functions import DECLINED
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer

FUNCTIONS = '''
import threading
calls = []

def add(a: int, b: int = 0) -> int:
    """Add two whole numbers.

    Only the first paragraph describes it."""
    calls.append((a, b, threading.current_thread().name))
    return a + b

def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b
'''

DESCRIBE = "%%flowgpt -m openai:gpt-4o --tools describe --approve\n"
ASKED = '/call add {"a": 2, "b": 3}'
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two whole numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a"],
        },
    },
}


@pytest.fixture
def served(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return flowgpt_server


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the person answers when asked (in order); the questions are appended after."""
    said = ["y", "n", "y", "y"]
    asked: list[str] = []

    def ask(question: str = "") -> str:
        asked.append(question)
        return said[len(asked) - 1]

    monkeypatch.setattr(builtins, "input", ask)
    return asked


def cell(shell: InteractiveShell, text: str) -> BaseException | None:
    result = shell.run_cell(text)
    return result.error_in_exec or result.error_before_exec


def bodies(server: LocalServer) -> list[dict[str, Any]]:
    return [request.body for request in server.state.requests]


def test_functions_are_sent_as_the_official_client_sends_them_and_their_results_return(
    shell: InteractiveShell, served: LocalServer, answers: list[str]
) -> None:
    import openai

    client = openai.OpenAI(base_url=served.url.removesuffix(PATH) + OPENAI_PATH, api_key="k")
    try:
        first = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": ASKED}], tools=[ADD]
        )
        (call,) = first.choices[0].message.tool_calls or []
        asked = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
        client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "user", "content": ASKED},
                asked,  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": "5"},
            ],
            tools=[ADD],
        )
    finally:
        client.close()
    theirs = bodies(served)[-2:]
    served.state.requests.clear()

    assert cell(shell, FUNCTIONS) is None
    assert cell(shell, '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 2, "b": 3}') is None
    ours = bodies(served)
    assert len(ours) == 2 and ours[0]["tools"] == ours[1]["tools"] == theirs[0]["tools"] == [ADD]

    def same_ids(messages: list[dict[str, Any]]) -> str:  # (each answer names its own call)
        text = json.dumps(messages, sort_keys=True)
        for n, message in enumerate(messages):
            for c in message.get("tool_calls") or []:
                text = text.replace(c["id"], f"call-{n}")
        return text

    # After the first question the same messages, in the same shape, as the client's.
    assert same_ids(ours[1]["messages"][1:]) == same_ids(theirs[1]["messages"][1:])
    assert ours[1]["messages"][-1]["content"] == "5"
    assert answers == ["Run add(a=2, b=3)? [y/N] "]
    assert shell.user_ns["calls"] == [(2, 3, "MainThread")]  # (the cell's thread: the kernel's)
    assert "The tools said: «5»" in shell.user_ns["_flowgpt"]


def test_a_declined_call_is_not_run_and_the_model_hears_so(
    shell: InteractiveShell, served: LocalServer, answers: list[str]
) -> None:
    assert cell(shell, FUNCTIONS) is None
    assert cell(shell, '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 1}') is None
    assert cell(shell, '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 4}') is None
    assert answers == ["Run add(a=1)? [y/N] ", "Run add(a=4)? [y/N] "]  # (y, then n)
    assert shell.user_ns["calls"] == [(1, 0, "MainThread")]
    assert bodies(served)[-1]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": bodies(served)[-1]["messages"][-2]["tool_calls"][0]["id"],
        "content": DECLINED,
    }


def test_approved_calls_run_unasked_and_an_error_goes_back_in_one_line(
    shell: InteractiveShell, served: LocalServer, answers: list[str], magics: FlowGptMagics
) -> None:
    assert cell(shell, FUNCTIONS) is None
    magics.approve_tools = True
    assert (
        cell(shell, '%%flowgpt -m openai:gpt-4o --tools divide\n/call divide {"a": 1, "b": 0}')
        is None
    )
    assert (
        bodies(served)[-1]["messages"][-1]["content"] == "ZeroDivisionError: float division by zero"
    )
    magics.approve_tools = False
    assert (
        cell(shell, '%%flowgpt -m openai:gpt-4o --tools add --approve\n/call add {"a": 5}') is None
    )
    assert (
        cell(shell, '%%flowgpt -m openai:gpt-4o --tools add --approve\n/call add {"c": 5}') is None
    )
    assert bodies(served)[-1]["messages"][-1]["content"].startswith("The arguments do not fit add:")
    assert answers == [] and shell.user_ns["calls"] == [(5, 0, "MainThread")]


def test_the_calls_are_kept_in_the_conversation_shown_and_carried_to_follow_ups(
    shell: InteractiveShell,
    served: LocalServer,
    answers: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cell(shell, FUNCTIONS) is None
    assert cell(shell, '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 2, "b": 3}') is None
    shown = capsys.readouterr().err  # (as it was asked, and as it ran)
    assert "(openai:gpt-4o asks to run add(a=2, b=3).)\n(add(a=2, b=3) → 5 (" in shown
    assert cell(shell, "%%flowgpt -m openai:gpt-4o\nAnd then?") is None
    follow_up = bodies(served)[-1]
    assert "tools" not in follow_up  # (this cell offered none; the calls are history)
    assert [m["role"] for m in follow_up["messages"]] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert follow_up["messages"][2]["content"] == "5"
    assert cell(shell, "%flowgpt_history") is None
    assert "Called add(a=2, b=3) → 5 (" in capsys.readouterr().out
    # FlowGPT's protocol has no place for calls: its history has the exchange's text alone.
    assert cell(shell, "%%flowgpt\nAnd FlowGPT?") is None
    history = bodies(served)[-1]["history"]
    assert [m["role"] for m in history] == ["assistant", "user", "assistant", "user", "assistant"]


def test_the_built_in_tools_describe_variables_but_never_their_values(
    shell: InteractiveShell,
    served: LocalServer,
    answers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", "tok-never-sent-0123")
    assert (
        cell(shell, "import os\npassword = os.environ['SERVICE_TOKEN']\nnumbers = [3, 1, 2]")
        is None
    )
    assert (
        cell(shell, "%%flowgpt -m openai:gpt-4o --tools variables --approve\n/call variables {}")
        is None
    )
    listed = bodies(served)[-1]["messages"][-1]["content"]
    assert "numbers: list, 3 items" in listed and "password: str" in listed
    assert "os:" not in listed  # (modules are not variables)
    assert (
        cell(
            shell,
            DESCRIBE + '/call describe {"name": "numbers"}',
        )
        is None
    )
    assert bodies(served)[-1]["messages"][-1]["content"] == "[3, 1, 2]"
    assert (
        cell(
            shell,
            DESCRIBE + '/call describe {"name": "password"}',
        )
        is None
    )
    # A value the notebook knows to be a secret never goes back, even when asked for.
    assert "tok-never-sent-0123" not in json.dumps(bodies(served))
    assert "***" in bodies(served)[-1]["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (
            "-m openai:gpt-4o --tools nothing",
            "--tools nothing: there is no nothing in the notebook.",
        ),
        ("-m openai:gpt-4o --tools numbers", "--tools numbers: numbers is list, not a function"),
        ("-m openai:gpt-4o --tools spread", "--tools spread: its *args cannot be described"),
        ("-m openai:gpt-4o --tools first", "--tools first: its parameter x is positional-only"),
        ("--tools add", "FlowGPT's protocol has no tools (--tools)"),
        (
            "-m openai:gpt-4o --tools add --background",
            "--tools and --background do not go together",
        ),
        (
            "-m openai:gpt-4o --tools add -p tools=[]",
            "--tools sends its own tools: leave -p tools out.",
        ),
        ("-m openai:gpt-4o --tools add --each numbers", "--each asks every row on its own"),
    ],
)
def test_what_cannot_be_a_tool_is_refused_before_anything_is_sent(
    shell: InteractiveShell, served: LocalServer, options: str, complaint: str
) -> None:
    setup = FUNCTIONS + "\nnumbers = [1]\ndef spread(*args): pass\ndef first(x, /): pass"
    assert cell(shell, setup) is None
    error = cell(shell, f"%%flowgpt {options}\nUse them.")
    assert isinstance(error, UsageError) and complaint in said(error)
    assert served.state.requests == []


def test_a_notebook_wide_tool_list_is_offered_unless_a_cell_names_its_own(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics, answers: list[str]
) -> None:
    assert cell(shell, FUNCTIONS) is None
    magics.tools = ["add"]
    assert cell(shell, '%%flowgpt -m openai:gpt-4o\n/call add {"a": 7}') is None
    assert bodies(served)[-1]["tools"] == [ADD] and shell.user_ns["calls"][-1][0] == 7
    assert cell(shell, "%%flowgpt -m openai:gpt-4o --tools variables --approve\nWhich?") is None
    assert [t["function"]["name"] for t in bodies(served)[-1]["tools"]] == ["variables"]


def test_the_stop_button_inside_a_function_stops_the_answer_and_records_nothing(
    shell: InteractiveShell, served: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    stopping = "import signal\ndef stop() -> str:\n    signal.raise_signal(signal.SIGINT)\n"
    assert cell(shell, stopping) is None
    cell(shell, "%%flowgpt -m openai:gpt-4o --tools stop --approve\n/call stop {}")
    assert "■ Interrupted after 0 characters" in capsys.readouterr().out
    assert len(served.state.requests) == 1  # (the call's result was never sent)
    assert cell(shell, "%%flowgpt -m openai:gpt-4o\nStill here?") is None
    assert bodies(served)[-1]["messages"] == [{"role": "user", "content": "Still here?"}]


# -- in a real kernel: the question is the frontend's input box -----------------------------


def test_in_a_kernel_the_call_is_asked_in_the_frontend_and_runs_in_the_kernel(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel
    assert run(kc, FUNCTIONS).reply["status"] == "ok"
    msg_id = kc.execute(
        '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 2, "b": 3}', allow_stdin=True
    )
    request = kc.get_stdin_msg(timeout=30)
    assert request["content"]["prompt"] == "Run add(a=2, b=3)? [y/N] "
    kc.input("y")
    done = finish(kc, msg_id)
    assert done.reply["status"] == "ok"
    assert kernel_value(kc, "calls") == [[2, 3, "MainThread"]]
    assert flowgpt_server.state.requests[-1].body["messages"][-1]["content"] == "5"
    saved = kernel_value(kc, f"[*{MAGICS}.chat.conversation][-1].tool_runs[0].line()")
    assert saved.startswith("add(a=2, b=3) → 5 (")


def test_in_a_kernel_that_cannot_ask_a_call_is_declined_and_says_how_to_approve(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    _km, kc = kernel  # (as nbclient and nbconvert run notebooks: no input box)
    assert run(kc, FUNCTIONS).reply["status"] == "ok"
    done = finish(
        kc,
        kc.execute('%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 2}', allow_stdin=False),
    )
    assert done.reply["status"] == "ok" and kernel_value(kc, "calls") == []
    result = flowgpt_server.state.requests[-1].body["messages"][-1]["content"]
    assert result.startswith(DECLINED) and "--approve runs calls unasked" in result


def test_in_a_kernel_the_stop_button_works_while_the_question_waits(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    km, kc = kernel
    assert run(kc, FUNCTIONS).reply["status"] == "ok"
    msg_id = kc.execute(
        '%%flowgpt -m openai:gpt-4o --tools add\n/call add {"a": 2}', allow_stdin=True
    )
    kc.get_stdin_msg(timeout=30)
    km.interrupt_kernel()
    done = finish(kc, msg_id)
    assert done.reply.get("ename") == "AnswerInterrupted", done.reply
    (error,) = done.of_type("error")  # (one line, no traceback)
    assert error["content"]["traceback"] == [
        "■ Interrupted after 0 characters; the partial answer above was not added to the "
        "conversation."
    ]
    assert kernel_value(kc, "calls") == [] and len(flowgpt_server.state.requests) == 1
    assert kernel_value(kc, f"len({MAGICS}.chat.conversation)") == 0
    assert run(kc, "%%flowgpt -m openai:gpt-4o\nStill here?").reply["status"] == "ok"


def test_a_model_that_never_stops_calling_is_stopped_after_the_rounds_allowed(
    shell: InteractiveShell, served: LocalServer, magics: FlowGptMagics
) -> None:
    assert cell(shell, FUNCTIONS) is None
    magics.tool_rounds = 2
    error = cell(
        shell, '%%flowgpt -m openai:gpt-4o --tools add --approve\n/call-again add {"a": 1}'
    )
    assert isinstance(error, UsageError)
    assert said(error) == (
        "The model still asked for function calls after 2 rounds of them (2 calls); nothing "
        "was added to the conversation. Raise FlowGptMagics.tool_rounds, or ask for less."
    )
    assert len(served.state.requests) == 3 and len(shell.user_ns["calls"]) == 2
    assert len(magics.conversation) == 0


def test_the_calls_survive_a_saved_history_and_go_out_again_after_loading(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    tmp_path: Any,
) -> None:
    assert cell(shell, FUNCTIONS) is None
    assert (
        cell(shell, '%%flowgpt -m openai:gpt-4o --tools add --approve\n/call add {"a": 2}') is None
    )
    path = tmp_path / "history.json"
    assert cell(shell, f"%flowgpt_history --save {path}") is None
    assert cell(shell, "%flowgpt_history --reset") is None
    assert cell(shell, f"%flowgpt_history --load {path}") is None
    (record,) = magics.conversation
    assert [(r.name, r.result, r.outcome) for r in record.tool_runs] == [("add", "2", "ran")]
    assert cell(shell, "%%flowgpt -m openai:gpt-4o\nAnd then?") is None
    sent = bodies(served)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2}'}
