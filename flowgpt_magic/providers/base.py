"""The one provider: what every protocol shares, and the answer stream it returns.

A protocol is a subclass that says only what differs: its models, how a request is written
(``prepare``) and how its stream is read (``parser``). The rest is here, once: the checks
before anything is sent, the delivery (timeouts, retries), the streaming (``stream.py``), and
the answer, an :class:`AsyncResult` whose ``async for`` gives the text pieces and whose ``events()``
gives everything the server said (see ``events.py``).

No IPython here; aiohttp is imported on first use, so loading the extension stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import InvalidRequestError, ModelNotFoundError
from .checks import Messages, check_params, check_temperature, checked_messages
from .events import Event
from .http import CONNECT_TIMEOUT, RETRIES, TIMEOUT, Delivery, HttpRequest, check_proxy
from .stream import Mode, StreamParser, stream

if TYPE_CHECKING:
    import aiohttp


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
    #: Whether a message's content may hold images (OpenAI's content parts); and why not,
    #: for a person (see also ``takes_images``).
    images: ClassVar[bool] = False
    no_images: ClassVar[str] = "its protocol carries text only"
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
        session: aiohttp.ClientSession | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Stream the answer to ``messages``: the last is the question, the others context.

        ``temperature`` None is the protocol's own default. ``params`` are more of the
        model's parameters (``max_tokens``, ``top_p``, ``seed``, ``stop``...), sent as they
        are where the protocol takes them. ``timeout`` is how long the server may stay
        silent between pieces, ``first_piece_timeout`` before the first (None: as
        ``timeout``); nothing limits a whole answer. A request that fails before any text
        arrived is tried up to ``retries`` more times (``events()`` gives a
        ``RetryNotice`` before each, and a ``Progress`` for what happens before a request
        can go out: a local model loading). ``session`` is an aiohttp session of the
        caller's to reuse (left open). ``options`` are the protocol's own (see
        ``options``). Everything is checked here, before anything is sent; nothing is
        sent until the answer is read.
        """
        if unexpected := sorted(options.keys() - set(cls.options)):
            raise InvalidRequestError(
                f"Unexpected argument(s) {', '.join(unexpected)} for {cls.__name__}. It "
                f"accepts {', '.join(cls.arguments())}."
            )
        checked = None if temperature is None else check_temperature(temperature)
        request = cls.prepare(
            cls.get_model(model),
            checked_messages(messages, cls.roles, cls.takes_images(**options) and cls.__name__),
            checked,
            check_params(params or {}),
            **options,
        )
        request = request._replace(
            proxy=check_proxy(proxy),
            endpoint_hint=request.endpoint_hint or cls.endpoint_hint,
            status_advice=request.status_advice or cls.status_advice,
        )
        delivery = Delivery(timeout, first_piece_timeout, connect_timeout, retries)
        answer = functools.partial(stream, request, cls.parser(), delivery.checked(), session)
        return AsyncResult(answer)

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
    def available(cls, **options: Any) -> bool:
        """Whether asking it, with these ``options``, can answer here."""
        return cls.working

    @classmethod
    def unavailable(cls, **options: Any) -> str:
        """Why it cannot answer here, in a few words (when ``available`` says so)."""
        return "not working"

    @classmethod
    def max_output_tokens(cls, model: str, **options: Any) -> int | None:
        """The most tokens ``model`` writes in one answer, where that is known."""
        return None

    @classmethod
    def on_this_computer(cls, **options: Any) -> bool:
        """Whether the model runs on this computer (and so costs nothing to ask)."""
        return False

    @classmethod
    def takes_images(cls, **options: Any) -> bool:
        """Whether a message may hold images, with these ``options`` (see ``images``)."""
        return cls.images

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
    ``async with`` (or ``aclose()``) closes the connection at once; leaving ``async for``
    with ``break`` alone leaves it open until the generator is collected.

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

    # ``async with`` closes the connection on leaving, whatever happened: a ``break`` out of
    # ``async for`` alone does not (Python closes an async generator only when collected).
    async def __aenter__(self) -> AsyncResult:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
