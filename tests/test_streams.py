"""Odd but legal answers from OpenAI-compatible servers, read for what they are: several
choices, a stream cut without its end, an answer sent whole to a streamed request, function
calls in pieces. Each against a real server on loopback (aiohttp's raw test server)."""

from __future__ import annotations

import asyncio
import gc
import json
import warnings
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from flowgpt_magic import (
    ConnectionLostError,
    InvalidRequestError,
    OpenAICompatible,
    RequestFailedError,
    ResponseFormatError,
    ResponseTimeoutError,
)
from flowgpt_magic.providers import Finish, ServedBy, ToolCall, Usage

RawServerFactory = Callable[..., Awaitable[RawTestServer]]
MESSAGES = [{"role": "user", "content": "Hi"}]


def chunk(*choices: dict[str, object], **fields: object) -> bytes:
    body = {"model": "m", "choices": list(choices), **fields}
    return f"data: {json.dumps(body)}\n\n".encode()


def text(index: int, piece: str) -> dict[str, object]:
    return {"index": index, "delta": {"content": piece}}


def sse(chunks: list[bytes]) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in chunks:
            await response.write(piece)
        await response.write_eof()
        return response

    return handler


async def events_of(server: RawTestServer, **options: object) -> list[object]:
    url = str(server.make_url("/v1"))
    result = OpenAICompatible.create_async_generator("m", MESSAGES, base_url=url, **options)
    return [event async for event in result.events()]


async def test_only_the_first_choice_is_read_when_a_server_sends_two(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    # As llama.cpp streams -p n=2: the two answers' pieces interleaved, by index.
    stream = [
        chunk(text(0, "One ")),
        chunk(text(1, "Uno ")),
        chunk(text(1, "dos"), text(0, "two")),
        chunk({"index": 0, "delta": {}, "finish_reason": "stop"}),
        chunk({"index": 1, "delta": {}, "finish_reason": "length"}),
        b"data: [DONE]\n\n",
    ]
    server = await aiohttp_raw_server(sse(stream))
    assert await events_of(server) == [ServedBy("m"), "One ", "two", Finish("stop")]


def test_asking_for_several_choices_is_refused_before_sending() -> None:
    with pytest.raises(InvalidRequestError, match=r"-p n=2 asks for 2 answers at once"):
        OpenAICompatible.create_async_generator("m", MESSAGES, params={"n": 2})


async def test_a_stream_cut_without_its_end_is_an_error_after_what_came(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    server = await aiohttp_raw_server(sse([chunk(text(0, "Half an ")), chunk(text(0, "answer"))]))
    url = str(server.make_url("/v1"))
    pieces: list[str] = []
    with pytest.raises(ConnectionLostError, match=r"no finish reason, no \[DONE\]"):
        async for piece in OpenAICompatible.create_async_generator("m", MESSAGES, base_url=url):
            pieces.append(piece)
    assert pieces == ["Half an ", "answer"]  # (kept: they came)


@pytest.mark.parametrize(
    "end",
    [
        [chunk({"index": 0, "delta": {}, "finish_reason": "stop"})],  # (transformers serve)
        [b"data: [DONE]\n\n"],
    ],
    ids=["a finish reason alone", "[DONE] alone"],
)
async def test_a_stream_that_says_it_ended_either_way_is_complete(
    aiohttp_raw_server: RawServerFactory, end: list[bytes]
) -> None:
    server = await aiohttp_raw_server(sse([chunk(text(0, "Whole")), *end]))
    events = await events_of(server)
    assert [e for e in events if isinstance(e, str)] == ["Whole"]


async def test_an_answer_sent_whole_to_a_streamed_request_is_read_as_the_answer(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        assert (await request.json())["stream"] is True  # (asked to stream, it did not)
        completion = {
            "object": "chat.completion",
            "model": "whole-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "All at once."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        }
        return web.json_response(completion)

    server = await aiohttp_raw_server(handler)
    assert await events_of(server) == [
        ServedBy("whole-model"),
        "All at once.",
        Finish("stop"),
        Usage(input_tokens=5, output_tokens=3),
    ]


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        ({"error": {"message": "quota exceeded"}}, RequestFailedError, "quota exceeded"),
        (
            {"status": "ok"},
            ResponseFormatError,
            r"JSON that is not a chat completion \('\{\"status",
        ),
    ],
)
async def test_json_that_is_no_answer_says_what_came(
    aiohttp_raw_server: RawServerFactory,
    body: dict[str, object],
    error: type[Exception],
    words: str,
) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        return web.json_response(body)

    server = await aiohttp_raw_server(handler)
    with pytest.raises(error, match=words):
        await events_of(server)


async def test_function_calls_in_pieces_are_joined_by_index(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    def call(index: int, **function: str) -> dict[str, object]:
        piece: dict[str, object] = {"index": index, "function": function}
        if "name" in function:
            piece |= {"id": f"call_{index}", "type": "function"}
        return {"index": 0, "delta": {"tool_calls": [piece]}}

    stream = [
        chunk(call(0, name="weather", arguments="")),
        chunk(call(0, arguments='{"city": ')),
        chunk(call(1, name="clock", arguments="{}")),
        chunk(call(0, arguments='"Oslo"}')),
        chunk({"index": 0, "delta": {}, "finish_reason": "tool_calls"}),
        b"data: [DONE]\n\n",
    ]
    server = await aiohttp_raw_server(sse(stream))
    assert await events_of(server) == [
        ServedBy("m"),
        ToolCall("call_0", "weather", '{"city": "Oslo"}'),
        ToolCall("call_1", "clock", "{}"),
        Finish("tool_calls"),
    ]


async def test_leaving_async_with_closes_the_connection_at_once(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    left = asyncio.Event()

    async def endless(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for _ in range(1_000):  # (ten seconds, unless the client leaves)
                await response.write(chunk(text(0, "more ")))
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            left.set()
            raise
        return response

    server = await aiohttp_raw_server(endless)
    url = str(server.make_url("/v1"))
    async with OpenAICompatible.create_async_generator("m", MESSAGES, base_url=url) as answer:
        async for _ in answer:
            break
    # The server sees the client gone while the answer object is still alive.
    await asyncio.wait_for(left.wait(), 5)
    assert answer is not None


async def test_a_silence_that_ends_a_read_leaves_no_coroutine_unawaited(
    aiohttp_raw_server: RawServerFactory,
) -> None:
    async def comments(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        # Keep-alive comments, which carry no answer, as fast as they go: each read finds
        # some, so the silence ends between two reads rather than during one.
        for _ in range(200_000):
            await response.write(b":\n\n" * 50)
        return response

    server = await aiohttp_raw_server(comments)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ResponseTimeoutError):
            await events_of(server, first_piece_timeout=0.3, retries=0)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []
