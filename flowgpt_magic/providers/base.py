"""The one provider: what every protocol shares, and the answer stream it returns.

A protocol is a subclass that says only what differs: its models, how a request is written
(``prepare``) and how its stream is read (``parser``). The rest is here, once: the checks
before anything is sent, the delivery (timeouts, retries), the streaming, and the answer,
an :class:`AsyncResult` whose ``async for`` gives the text pieces and whose ``events()``
gives everything the server said (see ``events.py``).

No IPython here; aiohttp is imported on first use, so loading the extension stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..exceptions import FlowGptError, InvalidRequestError, ModelNotFoundError
from .checks import Messages, check_params, check_temperature, checked_messages
from .errors import request_failures, translate_error
from .events import Event, Reasoning
from .http import (
    CONNECT_TIMEOUT,
    RETRIES,
    TIMEOUT,
    Delivery,
    HttpRequest,
    RetryNotice,
    answering,
    check_proxy,
    client_timeout,
    within,
)
from .lines import LineBuffer

if TYPE_CHECKING:
    import aiohttp

#: How an answer is read: text pieces, every event, or text pieces a list a read.
Mode = Literal["text", "events", "batches"]


class StreamParser(Protocol):
    """Turns a block of whole lines of a streamed body into events (see ``events.py``).

    A block is what arrived since the last one, cut after its last newline; it holds at
    least one line, and no final newline. Parsing many lines at once is what makes long
    answers cheap (see ``lines.decode_json_lines``).
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


class Provider:
    """A chat protocol. Subclasses set the class attributes and write ``endpoint``,
    ``prepare`` and ``parser``; ``create_async_generator`` is this one."""

    url: ClassVar[str]
    working: ClassVar[bool] = True
    supports_stream: ClassVar[bool] = True
    supports_message_history: ClassVar[bool] = True
    supports_system_message: ClassVar[bool] = True
    default_model: ClassVar[str]
    models: ClassVar[list[str]]
    model_aliases: ClassVar[dict[str, str]] = {}
    #: The roles a message may have.
    roles: ClassVar[tuple[str, ...]] = ("system", "user", "assistant")
    #: Whether a message's content may hold images (OpenAI's content parts).
    images: ClassVar[bool] = False
    #: Keyword arguments of this protocol's own (its endpoint, a key), beside the common ones.
    options: ClassVar[tuple[str, ...]] = ()
    #: How a user changes the endpoint, and what to do about an HTTP status: for errors.
    endpoint_hint: ClassVar[str] = ""
    status_advice: ClassVar[Mapping[int, str]] = {}

    @classmethod
    def create_async_generator(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        temperature: float | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = TIMEOUT,
        first_piece_timeout: float | None = None,
        connect_timeout: float | None = CONNECT_TIMEOUT,
        retries: int = RETRIES,
        on_retry: Callable[[RetryNotice], None] | None = None,
        on_progress: Callable[[str], None] | None = None,
        session: aiohttp.ClientSession | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Stream the answer to ``messages``: the last is the question, the others context.

        ``temperature`` None is the protocol's own default. ``params`` are more of the
        model's parameters (``max_tokens``, ``top_p``, ``seed``, ``stop``...), sent as they
        are where the protocol takes them. ``timeout`` is how long the server may stay
        silent between pieces, ``first_piece_timeout`` before the first (None: as
        ``timeout``); nothing limits a whole answer. A request that fails before
        any text arrived is tried up to ``retries`` more times, and ``on_retry`` is told
        each time; ``on_progress`` is told what happens before a request can go out (a
        local model loading). ``session`` is an aiohttp session of the caller's to reuse
        (left open).
        ``options`` are the protocol's own (see ``options``). Everything is checked here,
        before anything is sent; nothing is sent until the answer is read.
        """
        if unexpected := sorted(options.keys() - set(cls.options)):
            raise InvalidRequestError(
                f"Unexpected argument(s) {', '.join(unexpected)} for {cls.__name__}. It "
                f"accepts {', '.join(cls.arguments())}."
            )
        checked = None if temperature is None else check_temperature(temperature)
        request = cls.prepare(
            cls.get_model(model),
            checked_messages(messages, cls.roles, cls.images and cls.__name__),
            checked,
            check_params(params or {}),
            **options,
        )
        request = request._replace(
            proxy=check_proxy(proxy),
            endpoint_hint=request.endpoint_hint or cls.endpoint_hint,
            status_advice=request.status_advice or cls.status_advice,
        )
        delivery = Delivery(
            timeout, first_piece_timeout, connect_timeout, retries, on_retry, on_progress
        )
        stream = functools.partial(_stream, request, cls.parser(), delivery.checked(), session)
        return AsyncResult(stream)

    @classmethod
    def arguments(cls) -> list[str]:
        """The names ``create_async_generator`` accepts."""
        import inspect  # (only for an error message: not at import time)

        common = inspect.signature(Provider.create_async_generator).parameters
        return [name for name in common if name not in ("cls", "options")] + list(cls.options)

    # -- what a protocol says ----------------------------------------------------------

    @classmethod
    def endpoint(cls, **options: Any) -> str:
        """The URL requests go to, from the protocol's ``options`` (checked)."""
        raise NotImplementedError

    @classmethod
    def prepare(
        cls,
        model: str,
        messages: Messages,
        temperature: float | None,
        params: Mapping[str, Any],
        **options: Any,
    ) -> HttpRequest:
        """The request for checked arguments: URL, headers and JSON body."""
        raise NotImplementedError

    @classmethod
    def parser(cls) -> StreamParser:
        """A new reader of one answer's stream."""
        raise NotImplementedError

    # -- models ------------------------------------------------------------------------

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """Resolve ``model`` (a name or an alias, any case) to a model name.

        An empty name means the default model. Raises :class:`ModelNotFoundError`,
        which lists the known models, for anything else.
        """
        if not model:
            return cls.default_model
        if model in cls.models:
            return model
        if model in cls.model_aliases:
            return cls.model_aliases[model]
        by_folded_name = {name.lower(): name for name in (*cls.models, *cls.model_aliases)}
        if model.lower() in by_folded_name:
            return cls.get_model(by_folded_name[model.lower()])
        raise ModelNotFoundError(model, cls.models, cls.model_aliases)

    @classmethod
    def aliases_of(cls, model: str) -> list[str]:
        """Every alias that resolves to ``model``."""
        return [alias for alias, target in cls.model_aliases.items() if target == model]

    @classmethod
    async def list_models(cls, **options: Any) -> list[str]:
        """The models on offer; protocols whose server lists them ask it."""
        return list(cls.models)


class AsyncResult:
    """The answer stream returned by ``create_async_generator``.

    Iterate it for the text pieces (``async for piece in FlowGpt.create_async_generator(...)``),
    or await it first, as the seed's example does (``gen = await ...; async for piece in
    gen``). ``events()`` gives every event instead: text pieces and the typed events of
    ``events.py`` (reasoning, usage, why it finished, which model answered), in order.
    ``aclose()`` (or ``contextlib.aclosing``) closes the connection at once.

    ``batches()`` gives the events too, but the text pieces a list at a time (those one read
    of the response brought), and each other event alone. Every step of an async generator
    costs something, which for a fast model is a good part of the cost of reading its
    answer; a consumer that keeps pieces rather than acts on each (the magics) takes them
    by the list. Read an answer one way only.
    """

    def __init__(self, stream: Callable[[Mode], AsyncGenerator[Any, None]]) -> None:
        # The stream is made when it is first read, in the mode it is read in: a generator
        # that took apart the lists of another would cost a tenth more per piece.
        self._stream = stream
        self._generator: AsyncGenerator[Any, None] | None = None
        self._mode: Mode | None = None

    def _read(self, mode: Mode) -> AsyncGenerator[Any, None]:
        if self._generator is None:
            self._generator, self._mode = self._stream(mode), mode
        elif mode != self._mode:
            raise RuntimeError(
                f"This answer is being read as {self._mode}; an answer is read one way only "
                "(text pieces, events() or batches())."
            )
        return self._generator

    def __aiter__(self) -> AsyncIterator[str]:
        return self._read("text")

    async def __anext__(self) -> str:
        piece: str = await self._read("text").__anext__()
        return piece

    def events(self) -> AsyncIterator[Event]:
        """Every event: text pieces (``str``) and the typed events, one at a time."""
        return self._read("events")

    def batches(self) -> AsyncIterator[list[str] | Event]:
        """Lists of text pieces (each what one read brought; never empty), and every other
        event by itself, in order."""
        return self._read("batches")

    def __await__(self) -> Generator[Any, None, AsyncResult]:
        return self._itself().__await__()

    async def _itself(self) -> AsyncResult:
        return self

    async def aclose(self) -> None:
        if self._generator is not None:
            await self._generator.aclose()


# -- checks -------------------------------------------------------------------------------


async def _stream(
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
    try:
        response, sent = await answering(session, request, delivery)
        async with response:
            lines = LineBuffer()
            read = response.content.readany
            silence, started = delivery.first_piece_limit, False
            deadline = None if silence is None else sent + silence
            try:
                while chunk := await within(read(), _until(deadline, clock)):
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
                ) from None
            rest = lines.close()
            if last := [*(parser.parse(rest) if rest else []), *parser.finish()]:
                for item in _items(last, parser.text_only, mode):
                    yield item
            if parser.error is not None:
                raise parser.error
    finally:
        if own_session:
            await session.close()


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
