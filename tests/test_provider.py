"""FlowGpt against real servers on loopback: the bundled one, and raw aiohttp servers that
misbehave on purpose."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from real_servers import smollm2_gguf

import flowgpt_magic
from flowgpt_magic import (
    ConfigurationError,
    ConnectionFailedError,
    FlowGpt,
    FlowGptError,
    HTTPStatusError,
    InvalidRequestError,
    ModelNotFoundError,
    ResponseFormatError,
    ResponseTimeoutError,
)
from flowgpt_magic.providers.flowgpt import DEFAULT_SYSTEM_MESSAGE, GREETING
from flowgpt_magic.server import PATH, LocalServer, answer_pieces

RawServerFactory = Callable[..., Awaitable[RawTestServer]]
USER = [{"role": "user", "content": "Hello"}]


async def collect(result: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in result]


# -- models -------------------------------------------------------------------------------


def test_class_attributes_follow_the_seed() -> None:
    assert FlowGpt.url == "https://flowgpt.com/chat"
    assert FlowGpt.working is False
    assert FlowGpt.supports_message_history and FlowGpt.supports_system_message
    assert FlowGpt.default_model == "gpt-3.5-turbo"
    assert len(FlowGpt.models) == 13 and "Dolphin-2.6-8x7B" in FlowGpt.models


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("gemini", "google-gemini"),
        ("gemini-pro", "google-gemini"),
        ("google-gemini", "google-gemini"),
        ("mixtral-8x7b", "Mixtral-8x7B"),
        ("", "gpt-3.5-turbo"),
    ],
)
def test_get_model_resolves_aliases_and_case(name: str, model: str) -> None:
    assert FlowGpt.get_model(name) == model


def test_unknown_model_error_names_it_and_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        FlowGpt.get_model("gpt-5")
    message = str(caught.value)
    assert "'gpt-5'" in message
    assert all(model in message for model in FlowGpt.models)
    assert "gemini -> google-gemini" in message


# -- the request on the wire --------------------------------------------------------------


async def test_signature_headers_are_verified_by_the_server(flowgpt_server: LocalServer) -> None:
    await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER))
    await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER))

    assert flowgpt_server.state.rejected == []
    first, second = (r.headers for r in flowgpt_server.state.requests)
    signed = f"{first['x-timestamp']}-{first['x-nonce']}-Bearer null".encode()
    assert first["x-signature"] == hashlib.md5(signed).hexdigest()
    assert first["Authorization"] == "Bearer null"
    assert first["x-nonce"] != second["x-nonce"]
    assert first["x-flow-device-id"].startswith("f-") and len(first["x-flow-device-id"]) == 21


async def test_history_and_system_messages_are_folded(flowgpt_server: LocalServer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "Three?"},
    ]
    await collect(FlowGpt.create_async_generator("gemini", messages, temperature=0.25))

    (request,) = flowgpt_server.state.requests
    assert request.body == {
        "model": "google-gemini",
        "nsfw": False,
        "question": "Three?",
        "history": [
            GREETING,
            {"role": "user", "content": "One"},
            {"role": "assistant", "content": "Two"},
        ],
        "system": "Be brief.\nUse French.",
        "temperature": 0.25,
        "promptId": "model-google-gemini",
        "documentIds": [],
        "chatFileDocumentIds": [],
        "generateImage": False,
        "generateAudio": False,
    }


async def test_default_system_message_when_none_given(flowgpt_server: LocalServer) -> None:
    await collect(FlowGpt.create_async_generator("gpt-4-turbo", USER))
    assert flowgpt_server.state.requests[0].body["system"] == DEFAULT_SYSTEM_MESSAGE
    assert flowgpt_server.state.requests[0].body["temperature"] == 0.7


async def test_pieces_are_streamed_exactly(flowgpt_server: LocalServer) -> None:
    pieces = await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER))
    expected = answer_pieces(flowgpt_server.state.requests[0].body)
    assert pieces == expected
    assert len(pieces) > 20


async def test_batches_hold_the_same_pieces_as_they_arrived(flowgpt_server: LocalServer) -> None:
    flowgpt_server.state.options.min_pieces = 5_000  # sent at once: blocks of many pieces
    batches = [b async for b in FlowGpt.create_async_generator("gpt-3.5-turbo", USER).batches()]
    expected = answer_pieces(flowgpt_server.state.requests[0].body, 5_000)
    assert [piece for batch in batches for piece in batch] == expected
    assert all(batches) and 1 < len(batches) < len(expected)  # (as many as reads took)


def test_a_request_shows_no_secret() -> None:
    from flowgpt_magic.providers.http import HttpRequest

    request = HttpRequest(
        "http://user:pw@127.0.0.1:1/v1",
        {"Authorization": "Bearer sk-secret"},
        {"messages": "private"},
        "http://proxyuser:proxypw@127.0.0.1:2",
        "",
        {},
    )
    shown = repr(request)
    assert "127.0.0.1:1" in shown
    assert not any(s in shown for s in ("sk-secret", "private", "proxypw", ":pw@"))


async def test_an_answer_is_read_one_way_or_the_other(flowgpt_server: LocalServer) -> None:
    answer = FlowGpt.create_async_generator("gpt-3.5-turbo", USER)
    async with aclosing(answer):
        assert await answer.__anext__() == answer_pieces(flowgpt_server.state.requests[0].body)[0]
        for other_way in (answer.batches, answer.events):
            with pytest.raises(RuntimeError, match="read as text; an answer is read one way"):
                other_way()


async def test_closing_after_the_first_batch_closes_the_connection(
    flowgpt_server: LocalServer,
) -> None:
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 10_000
    async with aclosing(FlowGpt.create_async_generator("gpt-3.5-turbo", USER)) as answer:
        async for batch in answer.batches():
            assert batch
            break
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)
    assert flowgpt_server.state.completed == 0


async def test_seed_await_form_works(flowgpt_server: LocalServer) -> None:
    generator = await FlowGpt.create_async_generator(model="gpt-3.5-turbo", messages=USER)
    assert "You asked: «Hello»" in "".join([piece async for piece in generator])


async def test_api_url_argument_beats_the_environment(
    flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWGPT_API_URL", "http://127.0.0.1:9/v3/chat-anonymous")
    pieces = await collect(
        FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=flowgpt_server.url)
    )
    assert pieces


def test_the_real_endpoint_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWGPT_API_URL", raising=False)
    assert FlowGpt.endpoint() == ("https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous")


async def test_proxy_is_used(flowgpt_server: LocalServer) -> None:
    # The local server doubles as an HTTP proxy here: an absolute-form request for an
    # unresolvable host can only reach it through the proxy.
    proxy = flowgpt_server.url.removesuffix(PATH)
    pieces = await collect(
        FlowGpt.create_async_generator(
            "gpt-3.5-turbo", USER, proxy=proxy, api_url=f"http://flowgpt.invalid{PATH}"
        )
    )
    assert pieces
    assert flowgpt_server.state.requests[0].headers["Host"] == "flowgpt.invalid"


# -- validation before anything is sent ---------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"temperature": 2.5}, "from 0 to 2"),
        ({"temperature": "hot"}, "from 0 to 2"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"temprature": 0.2}, "temprature"),
        ({"api_url": "ftp://example.org/x"}, "not an http(s) URL"),
        ({"proxy": "socks5://127.0.0.1:1080"}, "not an http(s) proxy"),
        ({"timeout": -1}, "positive number"),
    ],
)
def test_bad_input_is_refused_at_once(kwargs: dict[str, Any], words: str) -> None:
    arguments: dict[str, Any] = {"model": "gpt-3.5-turbo", "messages": USER, **kwargs}
    with pytest.raises((InvalidRequestError, ConfigurationError)) as caught:
        FlowGpt.create_async_generator(**arguments)
    assert words in str(caught.value)


# -- failures -----------------------------------------------------------------------------


async def test_connection_refused_names_the_host() -> None:
    with LocalServer() as server:
        url = server.url  # a port that was just free, and is closed again after this block
    with pytest.raises(ConnectionFailedError) as caught:
        await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=url))
    host = url.split("/")[2]
    assert f"Could not connect to {host}: connection refused" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_wrong_path_is_an_http_error_with_status(flowgpt_server: LocalServer) -> None:
    url = flowgpt_server.url.replace(PATH, "/v2/nothing-here")
    with pytest.raises(HTTPStatusError) as caught:
        await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=url))
    assert caught.value.status == 404
    assert "answered 404 Not Found" in str(caught.value)
    assert "Check the endpoint URL" in str(caught.value)


def respond_with(status: int, body: bytes, content_type: str) -> web.Response:
    return web.Response(status=status, body=body, content_type=content_type)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "excerpt"),
    [
        (500, b'{"error": "model overloaded"}', "application/json", "model overloaded"),
        (
            503,
            b"<html><title>Down for maintenance</title>" + b"x" * 10000,
            "text/html",
            "an HTML page titled 'Down for maintenance'",
        ),
        (429, b"slow down", "text/plain", "slow down"),
    ],
)
async def test_http_errors_carry_status_and_a_short_excerpt(
    aiohttp_raw_server: RawServerFactory, status: int, body: bytes, content_type: str, excerpt: str
) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        return respond_with(status, body, content_type)

    server = await aiohttp_raw_server(handler)
    with pytest.raises(HTTPStatusError) as caught:
        await collect(
            FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=str(server.make_url("/")))
        )
    assert caught.value.status == status
    assert caught.value.body_excerpt == excerpt
    assert len(str(caught.value)) < 400


def stream_handler(
    chunks: list[bytes],
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    return handler


async def test_bytes_split_anywhere_on_the_network_decode_the_same(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    lines = [
        {"event": "start"},
        {"event": "text", "data": "héllo "},
        {"no": "event"},
        {"event": "text", "data": "wörld ✓"},
    ]
    stream = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in lines)
    one_byte_at_a_time = [stream[i : i + 1] for i in range(len(stream))]
    server = await aiohttp_raw_server(stream_handler(one_byte_at_a_time))
    pieces = await collect(
        FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=str(server.make_url("/")))
    )
    assert pieces == ["héllo ", "wörld ✓"]


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (b'{"event": "text", "data": "ok"}\n{not json}\n', "not UTF-8 JSON"),
        (b'{"event": "text", "data": 42}\n', "data is int"),
        (b'{"event": "text", "data": "\xff\xfe"}\n', "not UTF-8 JSON"),
    ],
)
async def test_malformed_streams_raise_our_own_error(
    aiohttp_raw_server: RawServerFactory, stream: bytes, words: str
) -> None:
    server = await aiohttp_raw_server(stream_handler([stream]))
    with pytest.raises(ResponseFormatError, match=words):
        await collect(
            FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=str(server.make_url("/")))
        )


async def test_silence_longer_than_the_timeout_is_a_clear_error(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    never = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"event": "text", "data": "first "}\n')
        await never.wait()  # silent until the client gives up
        return response

    server = await aiohttp_raw_server(handler)
    url = str(server.make_url("/"))
    pieces: list[str] = []
    with pytest.raises(ResponseTimeoutError, match=r"sent no text for 0\.2 s"):
        async for piece in FlowGpt.create_async_generator(
            "gpt-3.5-turbo", USER, api_url=url, timeout=0.2
        ):
            pieces.append(piece)
    assert pieces == ["first "]


async def test_proxy_credentials_never_appear_in_errors() -> None:
    with LocalServer() as server:
        closed = server.url.split("/")[2]
    proxy = f"http://alice:s3cret-token@{closed}"
    with pytest.raises(FlowGptError) as caught:
        await collect(
            FlowGpt.create_async_generator(
                "gpt-3.5-turbo", USER, proxy=proxy, api_url=f"http://flowgpt.invalid{PATH}"
            )
        )
    assert "s3cret-token" not in str(caught.value)
    assert "alice" not in str(caught.value)
    assert "proxy" in str(caught.value)


# -- stopping early -----------------------------------------------------------------------


async def test_break_closes_the_connection(flowgpt_server: LocalServer) -> None:
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 10_000
    async with aclosing(FlowGpt.create_async_generator("gpt-3.5-turbo", USER)) as answer:
        async for _piece in answer:
            break
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)
    assert flowgpt_server.state.completed == 0


async def test_cancellation_closes_the_connection(flowgpt_server: LocalServer) -> None:
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 10_000
    first_piece = asyncio.Event()

    async def consume() -> None:
        async for _piece in FlowGpt.create_async_generator("gpt-3.5-turbo", USER):
            first_piece.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_piece.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)


def test_no_unclosed_session_warnings_after_break(flowgpt_server: LocalServer) -> None:
    # Plain `break`, no aclosing: what aiohttp complains about when a session or connector is
    # garbage-collected open ("Unclosed client session") goes to the loop's exception
    # handler and to ResourceWarning; both are recorded here.
    reports: list[dict[str, Any]] = []
    flowgpt_server.state.options.min_pieces = 1_000

    leftover: list[asyncio.Task[object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reports.append(ctx))
        async for _piece in FlowGpt.create_async_generator("gpt-3.5-turbo", USER):
            break
        await asyncio.sleep(0)  # let the generator's finaliser run
        leftover.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    assert reports == []
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert [t for t in leftover if not t.done()] == []  # no task left streaming


# -- boundaries ---------------------------------------------------------------------------


def test_providers_the_conversation_and_the_chat_import_nothing_of_ipython_or_the_display() -> None:
    code = (
        "import sys, flowgpt_magic.providers, flowgpt_magic.conversation, flowgpt_magic.chat; "
        "names = {m.split('.')[0] for m in sys.modules} | set(sys.modules); "
        "print(sorted(names & {'IPython', 'ipywidgets', 'aiohttp', 'flowgpt_magic.display'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # aiohttp too: it is imported on the first request, not when the extension loads.
    assert out.stdout.strip() == "[]"


def test_no_module_is_over_400_lines() -> None:
    package = Path(flowgpt_magic.__file__).parent
    sizes = {
        str(path.relative_to(package)): len(path.read_text(encoding="utf-8").splitlines())
        for path in package.rglob("*.py")
    }
    assert len(sizes) > 20 and {name: n for name, n in sizes.items() if n > 400} == {}


def test_lines_are_the_same_for_every_split_of_the_bytes() -> None:
    from flowgpt_magic.providers.lines import LineBuffer

    stream = '{"data":"Grüße "}\r\n\n{"data":"✓ 🎉"}\n{"a":1}'.encode()
    for cut in range(len(stream) + 1):
        buffer = LineBuffer()
        blocks = [buffer.feed(stream[:cut]), buffer.feed(stream[cut:]), buffer.close()]
        assert b"\n".join(block for block in blocks if block is not None) == stream, cut


def test_the_line_buffer_refuses_an_endless_line() -> None:
    from flowgpt_magic.providers.lines import LineBuffer

    buffer = LineBuffer(max_line_bytes=1000)
    buffer.feed(b"x" * 600)
    with pytest.raises(ResponseFormatError, match="longer than 1000 bytes"):
        buffer.feed(b"x" * 600)


@pytest.mark.parametrize(
    "block",
    [
        b'{"event": "text", "data": "a"}\n{"event": "text", "data": "b"}',
        b'{"event": "start", "data": {"model": "m"}, "n": 1}\n{"event": "text", "data": "},"}',
        b'{"a": 1}\r\n\n  {"b": [1, 2]}\n{"c": "\\u00e9"}',
        b'[1, 2]\n"text"\n{"d": null}',
    ],
)
def test_batched_decoding_gives_what_line_by_line_gives(block: bytes) -> None:
    from flowgpt_magic.providers.lines import decode_json_lines

    by_line = [json.loads(line) for line in block.split(b"\n") if line.strip()]
    assert decode_json_lines(block) == by_line


@pytest.mark.parametrize(
    "block",
    [
        # A value spanning two lines, made up for by a line holding two values: joined into
        # one array this parses with one value a line, but no single line is valid JSON.
        b'{"a": [{"b": 1}\n{"c": 2}]}\n'
        b'{"event": "text", "data": "x"},{"event": "text", "data": "y"}',
        # A string spanning the line break.
        b'{"a": "}\n{", "b": 1}\n{"c": 1}, {"d": 2}',
        b'{"ok": 1}\n{not json}',
        b'{"ok": 1}\n{"bad": "\xff"}',
    ],
)
def test_batched_decoding_refuses_what_line_by_line_refuses(block: bytes) -> None:
    from flowgpt_magic.providers.lines import decode_json_lines

    with pytest.raises(ResponseFormatError, match="not UTF-8 JSON"):
        decode_json_lines(block)


RUN = b"\n".join(b'{"event": "text", "data": "%d"}' % i for i in range(3))


@pytest.mark.parametrize(
    ("first", "last", "before", "fails"),
    [
        (b'{"event": "start"}', b'{"event": "done"}', ["0", "1", "2"], False),
        (b"{not json", b'{"event": "done"}', [], True),
        (b'{"event": "text", "data": 5}', b'{"event": "done"}', [], True),
        (b'{"event": "start"}', b"{not json", ["0", "1", "2"], True),
    ],
)
def test_a_run_of_text_events_between_other_lines_stops_at_a_bad_one(
    first: bytes, last: bytes, before: list[str], fails: bool
) -> None:
    # The pieces before a bad line are delivered, then its error raised; none after it.
    from flowgpt_magic.providers.flowgpt import NdjsonTextParser

    parser = NdjsonTextParser()
    run = b"\n".join(b'{"event": "text", "data": "%d"}' % i for i in range(3))
    assert parser.parse(b"\n".join([first, run, last])) == before
    assert (parser.error is not None) == fails


def test_the_spanning_value_would_fool_a_naive_batch() -> None:
    # Why decode_json_lines checks before it batches: this block, joined into one array,
    # parses with exactly one value a line, and yields text no line really carries.
    lines = [
        b'{"a": [{"b": 1}',
        b'{"c": 2}]}',
        b'{"event": "text", "data": "x"},{"event": "text", "data": "y"}',
    ]
    naive = json.loads(b"[" + b",\n".join(lines) + b"]")
    assert len(naive) == len(lines)
    assert [event.get("data") for event in naive[1:]] == ["x", "y"]


async def test_an_unresolvable_host_is_named() -> None:
    # .invalid is reserved (RFC 2606): no resolver may answer it.
    with pytest.raises(ConnectionFailedError) as caught:
        await collect(
            FlowGpt.create_async_generator(
                "gpt-3.5-turbo", USER, api_url=f"http://flowgpt.invalid{PATH}", connect_timeout=10
            )
        )
    assert str(caught.value).startswith(
        "Could not connect to flowgpt.invalid:80: the host name could not be resolved."
    )


@pytest.mark.parametrize("installed", [True, False], ids=["local model", "no local model"])
async def test_flowgpt_s_own_endpoint_failing_says_it_is_gone_and_what_works_instead(
    monkeypatch: pytest.MonkeyPatch, installed: bool
) -> None:
    # These machines have no internet: the public endpoint cannot even be resolved.
    monkeypatch.delenv("FLOWGPT_API_URL", raising=False)
    model = smollm2_gguf() if installed else "/nowhere/model.gguf"
    monkeypatch.setenv("FLOWGPT_LOCAL_MODEL", str(model))
    with pytest.raises(FlowGptError) as caught:
        await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER, retries=0))
    message = str(caught.value)
    assert (
        "FlowGPT's public endpoint has not worked since 2024 (g4f removed it in 2025)." in message
    )
    # The way that works here first: the local model, when it is installed.
    assert message.endswith(
        "Ask a model on this computer, installed here: %flowgpt_model local; or an "
        "OpenAI-compatible server: -m openai:MODEL, with %config OpenAI.base_url."
        if installed
        else "Ask an OpenAI-compatible server: -m openai:MODEL, with %config OpenAI.base_url; "
        "or a model on this computer (pip install 'flowgpt-magic[local]')."
    )
