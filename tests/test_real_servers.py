"""Against servers that no one here wrote, with a real model: llama.cpp's own server
(SmolLM2-135M-Instruct), and LiteLLM's proxy in front of it (uvicorn), on loopback (the
fixtures are in conftest.py; how they are installed and started, in real_servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said
from real_servers import MASTER_KEY, RunningServer

from flowgpt_magic import OpenAICompatible, RequestFailedError, ResponseTimeoutError
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.providers import Finish, Reasoning, RetryNotice, ServedBy, Usage
from flowgpt_magic.record import dollars

QUESTION = [{"role": "user", "content": "Name three colours, one word each."}]


def official(server: RunningServer, model: str, key: str | None = None, **params: Any) -> Any:
    """The official client's streamed answer: its text, its reasoning and its usage."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key=key or "sk-none", max_retries=0)
    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        **params,
    )
    text, reasoning, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
    return "".join(text), "".join(reasoning), usage


async def ours(server: RunningServer, model: str, key: str | None = None, **kw: Any) -> list[Any]:
    answer = OpenAICompatible.create_async_generator(
        model, QUESTION, base_url=server.base_url, api_key=key, **kw
    )
    return [event async for event in answer.events()]


def texts(events: list[Any]) -> str:
    return "".join(event for event in events if isinstance(event, str))


@pytest.fixture
def pointed_at(shell: InteractiveShell, magics: FlowGptMagics) -> Iterator[Any]:
    """Point the shell's OpenAI-compatible provider at a real server."""

    def point(server: RunningServer, key: str | None = None) -> FlowGptMagics:
        shell.run_line_magic("config", f"OpenAI.base_url = {server.base_url!r}")
        if key:
            shell.run_line_magic("config", f"OpenAI.api_key = {key!r}")
        return magics

    yield point


def cell(shell: InteractiveShell, line: str, prompt: str) -> BaseException | None:
    error: BaseException | None = shell.run_cell(f"%%flowgpt {line}\n{prompt}").error_in_exec
    return error


# -- the text, exactly ---------------------------------------------------------------------


@pytest.mark.parametrize("through", ["llama.cpp", "LiteLLM"])
async def test_at_temperature_0_our_text_is_the_official_clients(
    llama: RunningServer, litellm: RunningServer, through: str
) -> None:
    server, model, key = (
        (llama, "SmolLM2", None) if through == "llama.cpp" else (litellm, "smollm2", MASTER_KEY)
    )
    expected, _, _ = official(server, model, key, temperature=0, max_tokens=40)
    events = await ours(server, model, key, temperature=0, params={"max_tokens": 40})
    assert texts(events) == expected and len(expected) > 20


def test_a_notebook_cell_gets_the_same_text(
    shell: InteractiveShell, pointed_at: Any, llama: RunningServer
) -> None:
    pointed_at(llama)
    expected, _, _ = official(llama, "SmolLM2", temperature=0, max_tokens=40)
    assert cell(shell, "-m openai:SmolLM2 -t 0 -p max_tokens=40", QUESTION[0]["content"]) is None
    assert shell.user_ns["_flowgpt"] == expected


def test_a_schema_through_litellm_reaches_llama_cpp_s_grammar(
    shell: InteractiveShell, pointed_at: Any, litellm: RunningServer
) -> None:
    setup = (
        "import dataclasses\nfrom typing import Literal\n"
        "@dataclasses.dataclass\nclass Colour:\n"
        "    name: str\n    warm: bool\n    kind: Literal['primary', 'secondary', 'other']\n"
    )
    assert shell.run_cell(setup).error_in_exec is None
    magics = pointed_at(litellm, MASTER_KEY)
    line = "-m openai:smollm2 -t 0 -p max_tokens=100 --schema Colour"
    assert cell(shell, line, "Describe the colour of grass.") is None
    # (A dataclass, without pydantic: checked against its type hints.)
    value = shell.user_ns["_flowgpt"]
    assert type(value) is shell.user_ns["Colour"]
    assert value.kind in ("primary", "secondary", "other") and isinstance(value.warm, bool)
    (record,) = magics.conversation
    assert record.asked_again is None and record.finish_reason == "stop"

    # A list has no end a grammar knows of: SmolLM2 goes on naming colours to its limit,
    # and that is said at once (asked again, it would be cut again).
    error = cell(shell, "-m openai:smollm2 -t 0 -p max_tokens=60 --schema list[Colour]", "Two?")
    assert said(error).startswith("The answer did not follow ColourList: it is not JSON (")
    assert "(it was cut at its token limit: raise it, -p max_tokens=4096)" in said(error)
    assert len(magics.conversation) == 1


# -- what they send besides the text --------------------------------------------------------


async def test_usage_is_asked_for_and_read_wherever_it_comes(
    llama: RunningServer, litellm: RunningServer
) -> None:
    # llama.cpp sends it in a chunk with no choices; LiteLLM in one with a choice.
    for server, model, key in ((llama, "SmolLM2", None), (litellm, "mock-gpt", MASTER_KEY)):
        _, _, expected = official(server, model, key, temperature=0, max_tokens=20)
        events = await ours(server, model, key, temperature=0, params={"max_tokens": 20})
        (usage,) = [event for event in events if isinstance(event, Usage)]
        assert (usage.input_tokens, usage.output_tokens) == (
            expected.prompt_tokens,
            expected.completion_tokens,
        )


def test_an_answer_cut_at_max_tokens_says_so_and_counts_its_tokens(
    shell: InteractiveShell,
    pointed_at: Any,
    llama: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    magics = pointed_at(llama)
    assert cell(shell, "-m openai:SmolLM2 -t 0 -p max_tokens=5", "Tell me a long story.") is None
    (record,) = magics.conversation
    assert record.finish_reason == "length" and record.usage.output_tokens == 5
    out = capsys.readouterr().out
    assert " tokens in, 5 out" in out  # (how fast, only for an answer that took a while)
    assert '■ Cut short: the model reached its token limit (finish reason "length").' in out


def test_the_record_names_the_model_that_answered(
    shell: InteractiveShell,
    pointed_at: Any,
    llama: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # llama.cpp answers a model it does not have with its own.
    magics = pointed_at(llama)
    assert cell(shell, "-m openai:gpt-imaginary -p max_tokens=5", "Hi") is None
    (record,) = magics.conversation
    assert (record.model, record.served_by) == ("openai:gpt-imaginary", "SmolLM2")
    assert (
        "(openai:gpt-imaginary (answered by SmolLM2) · first piece in " in capsys.readouterr().out
    )


def test_a_cost_the_server_reports_comes_first_and_reaches_the_footer(
    shell: InteractiveShell,
    pointed_at: Any,
    litellm: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    magics = pointed_at(litellm, MASTER_KEY)
    # A price of our own, that the server's word overrides.
    shell.run_line_magic("config", "FlowGptMagics.prices = {'openai:priced-mock': [100, 100]}")
    assert cell(shell, "-m openai:priced-mock", "Say hi") is None
    (record,) = magics.conversation
    usage = record.usage
    expected = usage.input_tokens * 0.000001 + usage.output_tokens * 0.000002
    assert usage.cost == pytest.approx(expected) and record.cost == usage.cost
    assert f" · {dollars(record.cost)} · " in capsys.readouterr().out
    shell.run_line_magic("flowgpt_usage", "")
    assert dollars(record.cost) in capsys.readouterr().out


# -- reasoning ----------------------------------------------------------------------------


async def test_reasoning_from_a_server_that_parses_it_is_apart_from_the_answer(
    thinking_llama: RunningServer,
) -> None:
    text, reasoning, _ = official(thinking_llama, "SmolLM2", temperature=0)
    events = await ours(thinking_llama, "SmolLM2", temperature=0)
    thought = "".join(event.text for event in events if isinstance(event, Reasoning))
    assert (thought, texts(events)) == (reasoning, text.lstrip("\n"))
    assert thought and text
    # All the reasoning comes before any of the answer.
    kinds = [type(event) for event in events if isinstance(event, (str, Reasoning))]
    assert kinds == sorted(kinds, key=lambda kind: kind is str)


async def test_a_think_block_left_in_the_content_is_reasoning_too(
    inline_llama: RunningServer,
) -> None:
    content, _, _ = official(inline_llama, "SmolLM2", temperature=0)
    assert content.startswith("<think>\n")  # what the server sends, as it is
    thought, answer = content.removeprefix("<think>").split("</think>", 1)
    events = await ours(inline_llama, "SmolLM2", temperature=0)
    assert "".join(e.text for e in events if isinstance(e, Reasoning)) == thought
    assert texts(events) == answer.lstrip("\n") and answer.strip()


def test_a_notebook_shows_the_reasoning_apart_and_keeps_the_answer_alone(
    shell: InteractiveShell,
    pointed_at: Any,
    thinking_llama: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    magics = pointed_at(thinking_llama)
    assert cell(shell, "-m openai:SmolLM2 -t 0 -o answer", "What is 2+2?") is None
    (record,) = magics.conversation
    assert record.reasoning and record.answer and record.reasoning not in record.answer
    assert shell.user_ns["answer"] == shell.user_ns["_flowgpt"] == record.answer
    out = capsys.readouterr().out
    assert out.startswith(f"Reasoning: {record.reasoning}")
    assert record.wire_messages()[1]["content"] == record.answer  # never sent back

    error = cell(shell, "-m openai:SmolLM2 -t 0 -p max_tokens=3", "And 3+3?")
    assert isinstance(error, UsageError)
    assert "spent its whole token limit reasoning" in said(error)
    assert len(magics.conversation) == 1


# -- how they behave -----------------------------------------------------------------------


async def test_keep_alive_comments_do_not_keep_a_silent_model_alive(llama: RunningServer) -> None:
    # A long prompt: llama.cpp reads it before the first piece, sending ':' every second
    # meanwhile. How long it reads is this machine's: measured on one prompt, the limit for
    # another of the same length is a third of that. (Not the same prompt: one it has read
    # once, it would not read again.)
    def long(animal: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Summarize: the {animal} sat on the mat. " * 150}]

    url = f"{llama.base_url}/chat/completions"
    async with aiohttp.ClientSession() as session:  # (to see the comments ourselves)
        body = {"model": "SmolLM2", "messages": long("cat"), "stream": True, "max_tokens": 1}
        sent = time.monotonic()
        async with session.post(url, json=body) as response:
            lines = [await asyncio.wait_for(response.content.readline(), 120)]
            while not lines[-1].startswith(b"data:"):
                lines.append(await asyncio.wait_for(response.content.readline(), 120))
            reading = time.monotonic() - sent
    assert b":\n" in lines  # comments do come before any answer (the test's premise)
    limit = round(reading / 3, 1)
    assert limit >= 2, f"llama.cpp read the prompt in {reading:.1f} s: make it longer"
    with pytest.raises(
        ResponseTimeoutError, match=rf"sent no text for {limit:g} s before the first"
    ):
        async for _ in OpenAICompatible.create_async_generator(
            "SmolLM2", long("dog"), base_url=llama.base_url, first_piece_timeout=limit, retries=0
        ):
            pass


def established_with(port: int, state: str) -> bool:
    """Whether a loopback TCP connection to ``port`` is in ``state`` ("01": ESTABLISHED;
    "08": CLOSE_WAIT, the server has closed its side and we have not yet)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(
        line.split()[2].endswith(f":{port:04X}") and line.split()[3] == state for line in lines
    )


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_a_cell_after_the_server_closed_its_idle_connection_goes_out_fresh(
    shell: InteractiveShell,
    pointed_at: Any,
    litellm: RunningServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # uvicorn closes a connection idle for 5 s. When no loop ran between cells (terminal
    # IPython, before answers had a thread of their own) the next cell was sent on it: a
    # false retry, or a failure. Now the answers' loop runs on, and closes its side at once.
    magics = pointed_at(litellm, MASTER_KEY)
    magics.retries = 0
    assert cell(shell, "-m openai:mock-gpt", "One") is None
    assert established_with(litellm.port, "01")  # (kept alive for the next cell)
    deadline = time.monotonic() + 20
    while established_with(litellm.port, "01") or established_with(litellm.port, "08"):
        assert time.monotonic() < deadline, "the connection was not closed"
        time.sleep(0.2)  # (waiting for the server's own idle timeout)
    assert cell(shell, "-m openai:mock-gpt", "Two") is None
    assert "Trying again" not in capsys.readouterr().err
    assert len(magics.conversation) == 2


def test_an_error_inside_the_stream_keeps_the_partial_answer_and_records_nothing(
    shell: InteractiveShell,
    pointed_at: Any,
    litellm: RunningServer,
    doomed_llama: RunningServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The model behind the proxy dies mid-answer; the proxy says so inside its 200 stream.
    class KillTheModelOnTheThirdWrite(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            if self.writes == 3:
                doomed_llama.process.send_signal(signal.SIGKILL)
            return super().write(text)

    magics = pointed_at(litellm, MASTER_KEY)
    screen = KillTheModelOnTheThirdWrite()
    monkeypatch.setattr("sys.stdout", screen)
    error = cell(shell, "-m openai:doomed -p max_tokens=300", "Tell me a long story.")
    assert isinstance(error, UsageError)
    assert said(error).startswith("The server stopped the answer with an error: ")
    assert "What had arrived is kept." in said(error)
    assert len(screen.getvalue().split("\n")[0]) > 0  # the partial answer, on screen
    assert len(magics.conversation) == 0


@pytest.mark.parametrize(
    ("key", "status", "words"),
    [
        ("sk-wrong", 400, "The API key was refused: set OPENAI_API_KEY, or enter it with"),
        (None, 500, "No API key was sent: if the server needs one, set OPENAI_API_KEY"),
    ],
)
async def test_a_refused_key_says_so_however_the_server_answers(
    litellm: RunningServer,
    key: str | None,
    status: int,
    words: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    events: list[object] = []
    answer = OpenAICompatible.create_async_generator(
        "mock-gpt", QUESTION, base_url=litellm.base_url, api_key=key, retries=1
    )
    with pytest.raises(RequestFailedError) as caught:
        async for event in answer.events():
            events.append(event)
    assert f"answered {status} " in str(caught.value) and words in str(caught.value)
    notices = [event for event in events if isinstance(event, RetryNotice)]
    assert key is None or notices == []  # a refused key is not tried again


async def test_the_events_of_a_real_answer_come_in_order(llama: RunningServer) -> None:
    events = await ours(llama, "SmolLM2", temperature=0, params={"max_tokens": 8})
    kinds = [type(event).__name__ for event in events]
    assert kinds[0] == ServedBy.__name__ and kinds[-2:] == [Finish.__name__, Usage.__name__]
    assert set(kinds[1:-2]) == {"str"}


def test_a_text_only_model_refuses_an_image_in_one_line_and_is_not_asked_again(
    shell: InteractiveShell, pointed_at: Any, llama: RunningServer, tmp_path: Path
) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    magics = pointed_at(llama)
    screen = io.StringIO()
    with contextlib.redirect_stdout(screen):
        error = cell(shell, f"-m openai:SmolLM2 -i {tmp_path / 'red.png'}", "What colour is it?")
    assert isinstance(error, UsageError)
    assert "answered 500" in said(error) and "image input is not supported" in said(error)
    assert "This model takes no images: ask one that sees them" in said(error)
    assert "hint:" not in said(error)  # (llama.cpp's hint, which says what ours says)
    assert "trying again" not in screen.getvalue()  # (a refusal: not retried)
    assert len(magics.conversation) == 0


def test_an_image_in_the_conversation_does_not_break_a_model_that_takes_none(
    shell: InteractiveShell,
    pointed_at: Any,
    llama: RunningServer,
    flowgpt_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    from flowgpt_magic.server import OPENAI_PATH, PATH

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    vision = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH  # (its gpt-4o-mini sees)
    shell.run_line_magic("config", f"OpenAI.base_url = {vision!r}")
    assert cell(shell, f"-m openai:gpt-4o-mini -i {tmp_path / 'red.png'}", "What is it?") is None
    magics = pointed_at(llama)  # (the same provider, now at llama.cpp: SmolLM2 sees none)
    error = cell(shell, "-m openai:SmolLM2 -p max_tokens=5", "And in words?")
    assert isinstance(error, UsageError)  # (it could not be known before asking once)
    assert "Later cells to this model leave the conversation's images out." in said(error)
    capsys.readouterr()
    assert cell(shell, "-m openai:SmolLM2 -p max_tokens=5", "And in words?") is None
    assert "(The conversation's 1 image is left out for openai:SmolLM2, which takes none;" in (
        capsys.readouterr().out
    )
    first, second = magics.conversation
    assert len(first.images) == 1 and second.outcome == "complete"  # (the image is kept)


def test_a_cost_limit_is_never_passed_though_the_chat_template_adds_tokens(
    shell: InteractiveShell, llama: RunningServer, pointed_at: Any
) -> None:
    # llama.cpp's SmolLM2 wraps "Hi" in its template (a system prompt, markers): 31 tokens
    # for what its characters make 5 of. At $1,000 a million, $0.20 pays for 200 tokens,
    # and the model writes as many as it is allowed (ignore_eos).
    magics = pointed_at(llama)
    shell.run_line_magic("config", "FlowGptMagics.prices = {'openai:SmolLM2': [1000, 1000]}")
    line = "-m openai:SmolLM2 --max-cost 0.2 --no-history -p ignore_eos=true"
    costs = []
    for _ in range(2):  # (before the model has said what a prompt takes, and after)
        spent = magics.chat.ledger.total().cost
        assert cell(shell, line, "Hi") is None
        costs.append(magics.chat.ledger.total().cost - spent)
    # Never more than the limit; the second, knowing the template, comes closer to it.
    assert all(cost <= 0.2 for cost in costs) and costs[0] < costs[1], costs


async def test_a_connection_llama_cpp_closed_after_an_answer_is_not_a_retry(
    llama: RunningServer,
) -> None:
    # llama.cpp closes a connection after a streamed answer; the next request, sent at once
    # on the kept-alive connection, found it closing: it waited out a retry's pause (0.25
    # to 0.5 s). Now it goes again at once, on a new connection.
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            answer = OpenAICompatible.create_async_generator(
                "SmolLM2",
                QUESTION,
                base_url=llama.base_url,
                params={"max_tokens": 3},
                session=session,
            )
            events = [event async for event in answer.events()]
            assert [e for e in events if isinstance(e, RetryNotice)] == []
            assert any(isinstance(e, str) for e in events)


# -- the notebook's functions, called by a real model --------------------------------------


def test_a_real_model_calls_a_notebook_function_and_answers_on_its_result(
    shell: InteractiveShell, pointed_at: Any, tools_llama: RunningServer
) -> None:
    magics = pointed_at(tools_llama)
    setup = (
        "asked = []\n"
        "def weather(city: str) -> str:\n"
        '    """The weather in a city, today."""\n'
        "    asked.append(city)\n"
        "    return 'Sunny, 21 degrees'"
    )
    assert shell.run_cell(setup).error_in_exec is None
    line = "-m openai:SmolLM2 -t 0 -p max_tokens=60 --tools weather --approve"
    assert cell(shell, line, "What is the weather in Oslo?") is None
    # llama.cpp's parser made the call of the model's <tool_call> text; the magic ran it in
    # the notebook and sent its result back; the model answered on, in text.
    (record,) = magics.conversation
    (run,) = record.tool_runs
    assert (run.name, run.outcome, run.result) == ("weather", "ran", "Sunny, 21 degrees")
    assert len(run.id) >= 16 and shell.user_ns["asked"] == [json.loads(run.arguments)["city"]]
    assert record.outcome == "complete" and record.answer.strip()
    assert record.finish_reason in ("stop", "length") and not record.tool_calls
