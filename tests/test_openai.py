"""The OpenAI-compatible provider, the local server's OpenAI dialect (checked with the official
``openai`` client), and the magics with ``provider:model`` ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic import (
    HTTPStatusError,
    InvalidRequestError,
    OpenAICompatible,
    RequestFailedError,
    ResponseFormatError,
    ResponseTimeoutError,
)
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.providers import AsyncResult, Finish, Reasoning, RetryNotice, ServedBy, Usage
from flowgpt_magic.server import OPENAI_MODELS, OPENAI_PATH, PATH, LocalServer, answer_pieces

RawServerFactory = Callable[..., Awaitable[RawTestServer]]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "One"},
    {"role": "assistant", "content": "Two"},
    {"role": "user", "content": "Three?"},
]


def base_url(server: LocalServer) -> str:
    return server.url.removesuffix(PATH) + OPENAI_PATH


async def collect(result: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in result]


@pytest.fixture
def openai_server(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv("OPENAI_BASE_URL", base_url(flowgpt_server))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return flowgpt_server


# -- the provider -------------------------------------------------------------------------


async def test_streams_the_answer_and_sends_messages_as_they_are(
    openai_server: LocalServer,
) -> None:
    pieces = await collect(
        OpenAICompatible.create_async_generator("llama3.2", MESSAGES, temperature=0.3)
    )
    (request,) = openai_server.state.requests
    assert request.path == "/v1/chat/completions"
    assert request.body == {
        "model": "llama3.2",
        "messages": MESSAGES,
        "temperature": 0.3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.headers["Accept"] == "text/event-stream"
    assert "Authorization" not in request.headers  # no key configured: none sent
    assert pieces == answer_pieces(request.body)
    assert "Context: 2 earlier messages; system message: «Be brief.»" in "".join(pieces)


async def test_the_api_key_comes_from_the_argument_or_the_environment(
    openai_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    openai_server.state.options.api_key = "sk-local-test"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-test")
    await collect(OpenAICompatible.create_async_generator("gpt-4o", MESSAGES))
    monkeypatch.delenv("OPENAI_API_KEY")
    await collect(
        OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, api_key="sk-local-test")
    )
    assert [r.headers["Authorization"] for r in openai_server.state.requests] == [
        "Bearer sk-local-test"
    ] * 2


async def test_a_refused_key_is_a_401_that_never_shows_the_key(openai_server: LocalServer) -> None:
    openai_server.state.options.api_key = "sk-right"
    with pytest.raises(HTTPStatusError) as caught:
        await collect(
            OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, api_key="sk-wrong-secret")
        )
    assert caught.value.status == 401
    assert "Incorrect API key provided" in str(caught.value)
    assert "set OPENAI_API_KEY, or enter it with %flowgpt_key" in str(caught.value)
    assert "sk-wrong-secret" not in str(caught.value)


async def test_a_key_asked_for_and_not_sent_says_how_to_give_one(
    openai_server: LocalServer,
) -> None:
    openai_server.state.options.api_key = "sk-needed"
    with pytest.raises(HTTPStatusError) as caught:
        await collect(OpenAICompatible.create_async_generator("gpt-4o", MESSAGES))
    assert caught.value.status == 401
    assert "No API key was sent: if the server needs one, set OPENAI_API_KEY" in str(caught.value)


async def test_an_unknown_model_is_a_404_that_says_so(openai_server: LocalServer) -> None:
    with pytest.raises(HTTPStatusError) as caught:
        await collect(OpenAICompatible.create_async_generator("gpt-5-imaginary", MESSAGES))
    assert caught.value.status == 404
    assert "The model `gpt-5-imaginary` does not exist" in str(caught.value)
    assert "the base URL is wrong" in str(caught.value)


async def test_the_base_url_argument_beats_the_environment(
    openai_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = base_url(openai_server)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert await collect(OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, base_url=real))


def test_bad_input_is_refused_before_sending() -> None:
    with pytest.raises(InvalidRequestError, match="Temperature must be"):
        OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, temperature=9)
    with pytest.raises(InvalidRequestError, match="is not a model name"):
        OpenAICompatible.create_async_generator(" gpt-4o", MESSAGES)
    with pytest.raises(InvalidRequestError, match="api_url"):
        OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, api_url="http://x")


def sse_handler(chunks: list[bytes]) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    return handler


def delta(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}, ensure_ascii=False)


async def test_server_sent_events_are_read_as_the_spec_says(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    stream = (
        ": a comment, then a role-only chunk\n"
        'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n'
        f"event: message\ndata: {delta('Grüße ')}\n\n"
        f"data: {delta('✓')}\r\n\r\n"
        'data: {"choices": []}\n\n'
        "data: [DONE]\n\n"
        "this is not read: the answer ended at [DONE]\n"
    ).encode()
    server = await aiohttp_raw_server(sse_handler([stream[i : i + 1] for i in range(len(stream))]))
    pieces = await collect(
        OpenAICompatible.create_async_generator("m", MESSAGES, base_url=str(server.make_url("/v1")))
    )
    assert pieces == ["Grüße ", "✓"]


@pytest.mark.parametrize(
    ("stream", "error", "words"),
    [
        (b'data: {"error": {"message": "overloaded"}}\n\n', RequestFailedError, "overloaded"),
        (b"data: {broken\n\n", ResponseFormatError, "not UTF-8 JSON"),
        (b'data: {"object": "something else"}\n\n', ResponseFormatError, "not a chat-completion"),
    ],
)
async def test_bad_events_raise_our_own_errors(
    aiohttp_raw_server: RawServerFactory, stream: bytes, error: type[Exception], words: str
) -> None:
    server = await aiohttp_raw_server(sse_handler([stream]))
    with pytest.raises(error, match=words):
        await collect(
            OpenAICompatible.create_async_generator(
                "m", MESSAGES, base_url=str(server.make_url("/v1"))
            )
        )


def chunk(choice: dict[str, object] | None, **fields: object) -> bytes:
    body = {"model": "served-model", "choices": [choice] if choice else [], **fields}
    return f"data: {json.dumps(body)}\n\n".encode()


THINKING_STREAM = [
    chunk({"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me think. "}}),
    chunk({"index": 0, "delta": {"reasoning": "Done. "}}),  # (OpenRouter's name for it)
    chunk({"index": 0, "delta": {"content": "Hello"}}),
    chunk({"index": 0, "delta": {"content": " there"}}),
    chunk({"index": 0, "delta": {}, "finish_reason": "length"}),
    chunk(
        None,
        usage={
            "prompt_tokens": 12,
            "completion_tokens": 30,
            "completion_tokens_details": {"reasoning_tokens": 20},
            "cost": 0.0001,
        },
    ),
    b"data: [DONE]\n\n",
]


async def test_events_carry_the_reasoning_the_finish_the_usage_and_the_model(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    server = await aiohttp_raw_server(sse_handler(THINKING_STREAM))
    url = str(server.make_url("/v1"))

    def answer() -> AsyncResult:
        return OpenAICompatible.create_async_generator("asked-model", MESSAGES, base_url=url)

    events = [event async for event in answer().events()]
    assert events == [
        ServedBy("served-model"),
        Reasoning("Let me think. "),
        Reasoning("Done. "),
        "Hello",
        " there",
        Finish("length"),
        Usage(input_tokens=12, output_tokens=30, reasoning_tokens=20, cost=0.0001),
    ]
    # Read for text, the same stream gives the answer alone.
    assert await collect(answer()) == ["Hello", " there"]
    # By batches: the text pieces in lists, every other event by itself, in order.
    batches = [batch async for batch in answer().batches()]
    runs = [batch for batch in batches if isinstance(batch, list)]
    assert [piece for run in runs for piece in run] == ["Hello", " there"]
    assert [batch for batch in batches if not isinstance(batch, list)] == [
        *events[:3],
        *events[-2:],
    ]
    assert batches.index(runs[0]) == 3


async def test_no_temperature_is_sent_unless_one_is_given(openai_server: LocalServer) -> None:
    await collect(OpenAICompatible.create_async_generator("gpt-4o", MESSAGES))
    assert "temperature" not in openai_server.state.requests[0].body


async def test_models_are_listed_by_the_server(openai_server: LocalServer) -> None:
    assert await OpenAICompatible.list_models() == sorted(OPENAI_MODELS)


# -- the official client against our server ------------------------------------------------


def test_the_official_openai_client_streams_from_the_local_server(
    openai_server: LocalServer,
) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url(openai_server), api_key="sk-anything")
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0.5,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "".join(answer_pieces(openai_server.state.requests[0].body))

    whole = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == "".join(
        answer_pieces(openai_server.state.requests[1].body)
    )
    assert sorted(model.id for model in client.models.list()) == sorted(OPENAI_MODELS)

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]


# -- the magics ---------------------------------------------------------------------------


def test_a_cell_can_name_the_provider(
    shell: InteractiveShell, openai_server: LocalServer, magics: FlowGptMagics
) -> None:
    assert shell.run_cell("%%flowgpt\nFirst, to FlowGPT").error_in_exec is None
    assert shell.run_cell("%%flowgpt -m openai:llama3.2\nThen to Ollama").error_in_exec is None
    assert shell.run_cell("%%flowgpt -m flowgpt:gemini\nBack again").error_in_exec is None

    flowgpt_1, openai, flowgpt_2 = openai_server.state.requests
    assert (flowgpt_1.path, openai.path, flowgpt_2.path) == (PATH, "/v1/chat/completions", PATH)
    assert openai.body["model"] == "llama3.2"
    # The conversation carries over between providers.
    assert [m["content"] for m in openai.body["messages"]][::2] == [
        "First, to FlowGPT",
        "Then to Ollama",
    ]
    assert flowgpt_2.body["model"] == "google-gemini"
    assert len(flowgpt_2.body["history"]) == 5
    assert [record.model for record in magics.conversation] == [
        "gpt-3.5-turbo",
        "openai:llama3.2",
        "google-gemini",
    ]


def test_config_points_the_provider_at_a_server_and_hides_the_key(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    flowgpt_server.state.options.api_key = "sk-notebook-secret"
    shell.run_line_magic("config", f"OpenAI.base_url = {base_url(flowgpt_server)!r}")
    shell.run_line_magic("config", "OpenAI.api_key = 'sk-notebook-secret'")
    assert shell.run_cell("%%flowgpt -m openai:gpt-4o\nHello").error_in_exec is None
    assert flowgpt_server.state.requests[0].headers["Authorization"] == "Bearer sk-notebook-secret"

    shell.run_line_magic("config", "OpenAI")
    out = capsys.readouterr().out
    assert "Current: '***'" in out and "sk-notebook-secret" not in out


def test_the_default_model_can_be_any_provider_s(
    shell: InteractiveShell,
    openai_server: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shell.run_line_magic("flowgpt_model", "openai:llama3.2")
    assert magics.default_model == "openai:llama3.2"
    shell.run_cell("%%flowgpt\nHi")
    assert openai_server.state.requests[0].body["model"] == "llama3.2"

    capsys.readouterr()
    shell.run_line_magic("flowgpt_model", "")
    listing = capsys.readouterr().out
    assert listing.startswith("Default model: openai:llama3.2")
    assert "flowgpt: FlowGPT's anonymous chat" in listing
    assert "   google-gemini  (aliases: gemini, gemini-pro)" in listing
    assert f"  endpoint: {base_url(openai_server)}" in listing
    # The OpenAI-compatible server's own models, asked for with GET /models.
    assert " * openai:llama3.2" in listing and "   openai:gpt-4o-mini" in listing


def test_an_unknown_provider_is_a_clear_error(shell: InteractiveShell) -> None:
    error = shell.run_cell("%%flowgpt -m anthropic:claude\nHi").error_in_exec
    assert isinstance(error, UsageError)
    assert "Unknown provider 'anthropic'" in said(error) and "flowgpt, openai" in said(error)


def test_listing_falls_back_to_known_models_when_the_server_is_unreachable(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalServer() as gone:
        closed = base_url(gone)
    monkeypatch.setenv("OPENAI_BASE_URL", closed)
    shell.run_line_magic("flowgpt_model", "")
    listing = capsys.readouterr().out
    assert "(could not list the server's models: Could not connect to 127.0.0.1:" in listing
    assert "   openai:gpt-4o-mini" in listing


async def test_a_read_holding_only_the_blank_line_still_ends_the_event(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    # Found by hypothesis: a network read of exactly "\n" was taken for "no line yet", so the
    # blank line ending an event was lost, and two events' data ran together.
    chunks = [f"data: {delta('one ')}\n".encode(), b"\n", f"data: {delta('two')}\n\n".encode()]
    server = await aiohttp_raw_server(sse_handler([*chunks, b"data: [DONE]\n\n"]))
    pieces = await collect(
        OpenAICompatible.create_async_generator("m", MESSAGES, base_url=str(server.make_url("/v1")))
    )
    assert pieces == ["one ", "two"]


# -- what real servers do -----------------------------------------------------------------


def test_a_role_the_protocol_has_not_is_refused_before_sending() -> None:
    messages = [{"role": "robot", "content": "Beep"}, {"role": "user", "content": "Hi"}]
    with pytest.raises(InvalidRequestError, match=r"messages\[0\] has the role 'robot'"):
        OpenAICompatible.create_async_generator("gpt-4o", messages)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"model": "x"}, "model cannot be given as parameters"),
        ({"temperature": 0.2}, "temperature has its own option"),
        ({"bad name": 1}, "'bad name' is not a parameter name"),
        ({"seed": object()}, "must be a JSON value"),
    ],
)
def test_parameters_that_cannot_be_sent_are_refused(params: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words):
        OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, params=params)


async def test_parameters_go_beside_the_messages(openai_server: LocalServer) -> None:
    params = {"max_tokens": 7, "top_p": 0.5, "stop": ["\n\n"], "stream_options": {"x": 1}}
    pieces = await collect(
        OpenAICompatible.create_async_generator("gpt-4o", MESSAGES, params=params)
    )
    body = openai_server.state.requests[0].body
    assert (body["max_tokens"], body["top_p"], body["stop"]) == (7, 0.5, ["\n\n"])
    assert body["stream_options"] == {"include_usage": True, "x": 1}
    assert len(pieces) == 7  # (the local server counts words as tokens)


async def test_a_server_that_refuses_stream_options_is_asked_again_without(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    bodies: list[dict[str, object]] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        bodies.append(await request.json())
        if "stream_options" in bodies[-1]:
            error = {"error": {"message": "Unrecognized request argument: stream_options"}}
            return web.json_response(error, status=400)
        return await sse_handler([f"data: {delta('Hi')}\n\n".encode(), b"data: [DONE]\n\n"])(
            request
        )

    server = await aiohttp_raw_server(handler)
    answer = OpenAICompatible.create_async_generator(
        "m", MESSAGES, base_url=str(server.make_url("/v1"))
    )
    events = [event async for event in answer.events()]
    pieces = [event for event in events if isinstance(event, str)]
    notices = [event for event in events if isinstance(event, RetryNotice)]
    assert pieces == ["Hi"]
    assert ["stream_options" in body for body in bodies] == [True, False]
    assert notices == []  # not a retry: a request the server can take


async def test_keep_alive_comments_do_not_keep_a_silent_model_alive(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    # llama.cpp sends ":" lines while it reads a long prompt; they carry no answer.
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(100):  # 10 s of comments, unless the client leaves first
            await response.write(b":\n\n")
            await asyncio.sleep(0.1)
        return response

    server = await aiohttp_raw_server(handler)
    # (Were the comments taken for the server speaking, there would be no error: the
    # handler ends after its comments, and the answer with it.)
    with pytest.raises(ResponseTimeoutError, match=r"sent no text for 0\.5 s before the first"):
        await collect(
            OpenAICompatible.create_async_generator(
                "m", MESSAGES, base_url=str(server.make_url("/v1")), first_piece_timeout=0.5
            )
        )


# -- the magics, with what real servers send -----------------------------------------------


def test_parameters_come_from_the_settings_and_the_cell(
    shell: InteractiveShell, openai_server: LocalServer
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.params = {'max_tokens': 50, 'top_p': 0.9}")
    cell = (
        '%%flowgpt -m openai:gpt-4o -p max_tokens=200 -p stop=\'["\\n\\n", "END"]\' -p user=me\nHi'
    )
    assert shell.run_cell(cell).error_in_exec is None
    body = openai_server.state.requests[0].body
    assert (body["max_tokens"], body["top_p"], body["user"]) == (200, 0.9, "me")
    assert body["stop"] == ["\n\n", "END"]
    assert "temperature" not in body  # none set: the server's own


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("-m openai:gpt-4o -p max_tokens", "-p takes NAME=VALUE, such as -p max_tokens=200"),
        ("-m openai:gpt-4o -p temperature=1", "temperature has its own option (-t"),
        ("-p max_tokens=20", "FlowGPT's protocol has no parameter max_tokens"),
    ],
)
def test_a_parameter_that_cannot_be_sent_is_one_line_and_nothing_is_sent(
    shell: InteractiveShell, openai_server: LocalServer, line: str, words: str
) -> None:
    error = shell.run_cell(f"%%flowgpt {line}\nHi").error_in_exec
    assert isinstance(error, UsageError) and words in said(error)
    assert openai_server.state.requests == []


def test_an_answer_cut_at_its_token_limit_says_so_and_is_kept(
    shell: InteractiveShell,
    openai_server: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert shell.run_cell("%%flowgpt -m openai:gpt-4o -p max_tokens=6\nHi").error_in_exec is None
    out = capsys.readouterr().out
    (record,) = magics.conversation  # a cut answer is still what the model said
    assert record.finish_reason == "length" and len(record.answer.split()) == 6
    assert f"{record.answer}\n(openai:gpt-4o · first piece in " in out
    assert " · 1 token in, 6 out" in out  # the usage the server counted ("Hi")
    assert '■ Cut short: the model reached its token limit (finish reason "length").' in out
    assert "-p max_tokens=4096" in out


def test_reasoning_is_shown_apart_kept_in_the_record_and_never_sent_back(
    shell: InteractiveShell,
    openai_server: LocalServer,
    magics: FlowGptMagics,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert shell.run_cell("%%flowgpt -m openai:gpt-4o -o kept\n/think\nWhy?").error_in_exec is None
    out = capsys.readouterr().out
    (record,) = magics.conversation
    assert record.reasoning.startswith("(Offline reasoning.) The question is «Why?».")
    assert out.startswith(f"Reasoning: {record.reasoning}\n{record.answer}\n(")
    assert "\x1b[" not in out  # (dim only where the screen is a terminal)
    assert shell.user_ns["kept"] == shell.user_ns["_flowgpt"] == record.answer
    assert "reasoning" not in record.answer.lower()

    assert shell.run_cell("%%flowgpt -m openai:gpt-4o\nAnd then?").error_in_exec is None
    context = openai_server.state.requests[1].body["messages"][:-1]
    assert context == record.wire_messages()


def test_a_model_that_only_thought_says_why_there_is_no_answer(
    shell: InteractiveShell, openai_server: LocalServer, magics: FlowGptMagics
) -> None:
    error = shell.run_cell("%%flowgpt -m openai:gpt-4o -p max_tokens=3\n/think\nWhy?").error_in_exec
    assert isinstance(error, UsageError)
    assert "spent its whole token limit reasoning" in said(error) and "max_tokens" in said(error)
    assert len(magics.conversation) == 0
