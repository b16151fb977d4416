"""One answer's stream: the request sent (after what it waits for), its body read as it
arrives, cut into blocks of lines, parsed into events and yielded as the reader asked; the
silences allowed, measured; the connection left fit for the next request.

No IPython here; aiohttp is imported on first use.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..exceptions import FlowGptError
from .errors import request_failures, translate_error
from .events import Event, Progress, Reasoning
from .http import Answered, Delivery, HttpRequest, answering, client_timeout, within
from .lines import LineBuffer

if TYPE_CHECKING:
    import aiohttp

#: How an answer is read: text pieces, every event, or text pieces a list a read.
Mode = Literal["text", "events", "batches"]


class StreamParser(Protocol):
    """Turns a block of whole lines of a streamed body into events (see ``events.py``).

    A block is what arrived since the last one, cut after its last newline; it holds at
    least one line, and no final newline. Parsing many lines at once is what makes long
    answers cheap (see ``lines.decode_json_lines``). A parser may also have
    ``whole(data)``: the events of an answer sent whole, as one JSON body, to a streamed
    request (a server that does not stream); FlowGPT's, whose stream is JSON lines, has none.
    """

    #: Every event this parser makes is a text piece (so nothing need be sorted out).
    text_only: ClassVar[bool]
    #: Set once the stream says the answer is complete; later bytes are not read.
    done: bool
    #: Set when a block held a bad line: raised once the events before it are delivered,
    #: so that nothing that arrived intact is lost.
    error: FlowGptError | None

    def parse(self, block: bytes) -> list[Event]: ...

    def finish(self) -> list[Event]:
        """Called at the end of the body: what was held back for a last, unended event."""


async def stream(
    request: HttpRequest,
    parser: StreamParser,
    delivery: Delivery,
    session: aiohttp.ClientSession | None,
    mode: Mode,
) -> AsyncGenerator[Any, None]:
    """POST the request and yield the answer as ``parser`` reads it, as ``mode`` says.

    The silences allowed (before the first piece, between pieces) are measured from the
    last text or reasoning that arrived, not from the last bytes: a server's keep-alive
    comments (llama.cpp's ``:`` lines) do not keep a silent model alive.

    One generator, not nested ones: closing it (break, aclose, cancellation) unwinds the
    response and the session right here, not whenever an inner one is collected.
    """
    import asyncio

    import aiohttp

    failures = request_failures()
    clock = asyncio.get_running_loop().time
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(timeout=client_timeout(delivery))
    lease = None if request.ready is None else request.ready(request)
    answered: Answered | None = None
    try:
        if lease is not None:
            async for step in lease:  # (held until the answer ends: closed below)
                if not isinstance(step, str):
                    request = step
                    break
                if mode != "text":
                    yield Progress(step)
        async with aclosing(answering(session, request, delivery)) as attempts:
            async for attempt in attempts:
                if isinstance(attempt, Answered):
                    answered = attempt
                elif mode != "text":
                    yield attempt
        assert answered is not None  # (else answering raised)
        response, sent = answered
        async with response:
            if response.content_type == "application/json" and hasattr(parser, "whole"):
                events = parser.whole(await _whole_body(response, request, delivery))
                for item in _items(events, parser.text_only, mode):
                    yield item
                return
            lines = LineBuffer()
            read = response.content.readany
            silence, started = delivery.first_piece_limit, False
            deadline = None if silence is None else sent + silence
            try:
                while True:
                    limit = _until(deadline, clock)  # (before read(): no coroutine left over)
                    chunk = await within(read(), limit)
                    if not chunk:
                        break
                    block = lines.feed(chunk)
                    if block is not None:
                        events = parser.parse(block)
                        if events:
                            if _has_content(events):
                                if not started:
                                    silence, started = delivery.timeout, True
                                deadline = None if silence is None else clock() + silence
                            for item in _items(events, parser.text_only, mode):
                                yield item
                        if parser.error is not None:
                            raise parser.error
                        if parser.done:
                            await _drain(response, failures)
                            return
            except failures as error:
                raise translate_error(
                    error,
                    request.url,
                    request.proxy,
                    request.endpoint_hint,
                    client_timeout(delivery),
                    streaming=True,
                    silence=silence,
                    started=started,
                    label=request.label,
                ) from None
            rest = lines.close()
            if last := [*(parser.parse(rest) if rest else []), *parser.finish()]:
                for item in _items(last, parser.text_only, mode):
                    yield item
            if parser.error is not None:
                raise parser.error
    finally:
        if lease is not None:
            await lease.aclose()
        if own_session:
            await session.close()


#: The most of an answer sent whole (one JSON body) that is read.
MAX_WHOLE_BYTES = 16 * 1024 * 1024


async def _whole_body(
    response: aiohttp.ClientResponse, request: HttpRequest, delivery: Delivery
) -> Any:
    """The JSON of an answer sent whole, read to its end (within a bound)."""
    from ..exceptions import ResponseFormatError

    chunks, size = [], 0
    try:
        while size <= MAX_WHOLE_BYTES and (
            chunk := await within(response.content.readany(), delivery.first_piece_limit)
        ):
            chunks.append(chunk)
            size += len(chunk)
    except request_failures() as error:
        raise translate_error(
            error,
            request.url,
            request.proxy,
            request.endpoint_hint,
            client_timeout(delivery),
            streaming=True,
            silence=delivery.first_piece_limit,
            label=request.label,
        ) from None
    body = b"".join(chunks)
    if size > MAX_WHOLE_BYTES:
        raise ResponseFormatError(
            f"The server answered with more than {MAX_WHOLE_BYTES:,} bytes of JSON; this is "
            "not a chat answer. Check the endpoint URL."
        )
    try:
        return json.loads(body)
    except ValueError:
        raise ResponseFormatError(
            "The server said its answer was JSON, and it is not "
            f"({body[:80].decode('utf-8', 'replace')!r}). Check the endpoint URL."
        ) from None


#: After the end of an answer, what is read of the body's end (the last chunk, usually
#: there already), so that the connection serves the next request instead of closing.
DRAIN_BYTES, DRAIN_SECONDS = 64 * 1024, 1.0


async def _drain(response: aiohttp.ClientResponse, failures: tuple[type[Exception], ...]) -> None:
    """Read the body to its end, within limits: a server that sends more, or nothing,
    loses the connection instead (aiohttp closes one not read to its end)."""
    content, left = response.content, DRAIN_BYTES
    try:
        while left > 0 and not content.at_eof():
            left -= len(await within(content.readany(), DRAIN_SECONDS))
    except failures:
        pass


def _until(deadline: float | None, clock: Callable[[], float]) -> float | None:
    """Seconds left until ``deadline`` (None: no limit); none left is a timeout now."""
    if deadline is None:
        return None
    left = deadline - clock()
    if left <= 0:
        raise TimeoutError
    return left


def _has_content(events: list[Event]) -> bool:
    """Whether text or reasoning came: what the silences are measured from."""
    if events[-1].__class__ is str:  # (the common case, whatever came before)
        return True
    return any(event.__class__ is str or event.__class__ is Reasoning for event in events)


def _items(events: list[Event], text_only: bool, mode: Mode) -> list[Any]:
    """What the stream yields for a block's events, read as ``mode`` says."""
    if mode == "text":
        return events if text_only else [e for e in events if e.__class__ is str]
    if mode == "events":
        return events
    if text_only:
        return [events]
    items: list[Any] = []
    for event in events:
        if event.__class__ is not str:
            items.append(event)
        elif items and items[-1].__class__ is list:
            items[-1].append(event)
        else:
            items.append([event])
    return items
