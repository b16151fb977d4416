"""What every provider shares: the interface the magics use, and streaming over aiohttp.

A provider is a class with ``models``, ``model_aliases``, ``default_model``, ``get_model()``
and a ``create_async_generator()`` that returns an :class:`AsyncResult` of text pieces. The
HTTP part is common: POST a JSON body, check the status, cut the streamed body into blocks
of whole lines and let the provider's :class:`BlockParser` turn each block into text pieces.
Failures become the package's own exceptions, with credentials redacted.

No IPython here; aiohttp is imported on first use, so loading the extension stays cheap.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeVar
from urllib.parse import urlsplit

from .exceptions import (
    ConfigurationError,
    ConnectionFailedError,
    ConnectionLostError,
    FlowGptError,
    HTTPStatusError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestFailedError,
    ResponseFormatError,
    ResponseTimeoutError,
    redact_url,
)

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")
Message = Mapping[str, str]
Messages = Sequence[Message]

#: A streamed line longer than this is an error rather than a reason to buffer forever.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: A request body larger than this is streamed rather than written at once.
LARGE_BODY_BYTES = 1024 * 1024
#: How much of an error body we read: enough for any error message, bounded for HTML pages.
MAX_ERROR_BODY_BYTES = 64 * 1024


class ProviderModelMixin:
    """Model names, aliases and the default model of a provider."""

    default_model: ClassVar[str]
    models: ClassVar[list[str]]
    model_aliases: ClassVar[dict[str, str]] = {}

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
        """The models on offer; providers whose server lists them ask it."""
        return list(cls.models)


class AsyncGeneratorProvider:
    """A provider whose answer is an async iterator of text pieces."""

    url: ClassVar[str]
    working: ClassVar[bool] = True
    supports_stream: ClassVar[bool] = True
    supports_message_history: ClassVar[bool] = False
    supports_system_message: ClassVar[bool] = False


class AsyncResult:
    """The answer stream returned by ``create_async_generator``.

    Iterate it directly (``async for piece in FlowGpt.create_async_generator(...)``) or
    await it first, as the seed's example does (``gen = await ...; async for piece in gen``).
    ``aclose()`` (or ``contextlib.aclosing``) closes the connection at once.

    ``batches()`` gives the same pieces a list at a time: those one read of the response
    brought. Every step of an async generator costs something, which for a fast model is
    a good part of the cost of reading its answer; a consumer that keeps pieces rather than
    acts on each (the magics) takes them by the list. Use one way or the other.
    """

    def __init__(self, stream: Callable[[bool], AsyncGenerator[Any, None]]) -> None:
        # The stream is made when it is first read, one piece or one list a step: a
        # generator that flattened the lists of another would cost a tenth more per piece.
        self._stream = stream
        self._generator: AsyncGenerator[Any, None] | None = None
        self._batched = False

    def _read(self, batched: bool) -> AsyncGenerator[Any, None]:
        if self._generator is None:
            self._generator, self._batched = self._stream(batched), batched
        elif batched != self._batched:
            raise RuntimeError("An answer is read piece by piece or by batches(), not both.")
        return self._generator

    def __aiter__(self) -> AsyncIterator[str]:
        return self._read(batched=False)

    async def __anext__(self) -> str:
        piece: str = await self._read(batched=False).__anext__()
        return piece

    def batches(self) -> AsyncIterator[list[str]]:
        """The pieces as lists, each what one read brought (never an empty list)."""
        return self._read(batched=True)

    def __await__(self) -> Generator[Any, None, AsyncResult]:
        return self._itself().__await__()

    async def _itself(self) -> AsyncResult:
        return self

    async def aclose(self) -> None:
        if self._generator is not None:
            await self._generator.aclose()


class BlockParser(Protocol):
    """Turns a block of whole lines of a streamed body into pieces of answer text.

    A block is what arrived since the last one, cut after its last newline; it holds at
    least one line, and no final newline. Parsing many lines at once is what makes long
    answers cheap (see ``decode_json_lines``).
    """

    #: Set once the stream says the answer is complete; later bytes are not read.
    done: bool
    #: Set when a block held a bad line: raised once the pieces before it are delivered,
    #: so that nothing that arrived intact is lost.
    error: FlowGptError | None

    def parse(self, block: bytes) -> list[str]: ...

    def finish(self) -> list[str]:
        """Called at the end of the body: text held back for a last, unterminated event."""


# -- validation ---------------------------------------------------------------------------


def check_temperature(value: object) -> float:
    """Return ``value`` as a float if it is a number in [0, 2]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"Temperature must be a number from 0 to 2, not {value!r}.")
    if not (math.isfinite(value) and 0 <= value <= 2):
        raise InvalidRequestError(f"Temperature must be a number from 0 to 2, not {value!r}.")
    return float(value)


def check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds (or None for no limit), not {value!r}."
        )
    return float(value)


def check_unexpected(provider: str, kwargs: Mapping[str, Any], accepted: str) -> None:
    if kwargs:
        raise InvalidRequestError(
            f"Unexpected argument(s) {', '.join(sorted(kwargs))} for {provider}. It accepts "
            f"{accepted}."
        )


def resolve_endpoint(url: str | None, env: str, default: str, example: str) -> str:
    """The endpoint to use: the argument, else ``$env``, else the default; checked."""
    chosen = url or os.environ.get(env) or default
    parts = urlsplit(chosen)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        source = "the argument" if url else env if os.environ.get(env) else "the default"
        raise ConfigurationError(
            f"The endpoint {redact_url(chosen)!r} (from {source}) is not an http(s) URL with a "
            f"host. Give a full URL, for example {example}."
        )
    return chosen


def check_proxy(proxy: str | None) -> str | None:
    if not proxy:
        return None
    parts = urlsplit(proxy)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"The proxy {redact_url(proxy)!r} is not an http(s) proxy URL. Use the form "
            "http://[user:password@]host:port."
        )
    return proxy


def checked_messages(messages: Messages) -> Sequence[Message]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"not {type(messages).__name__}."
        )
    for index, message in enumerate(messages):
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise InvalidRequestError(
                f"messages[{index}] must be a dict with string 'role' and 'content', "
                f"not {message!r:.80}."
            )
    return messages


# -- streaming ----------------------------------------------------------------------------


class LineBuffer:
    """Cuts network reads into blocks of whole lines, however the bytes were split.

    Blocks are cut after a ``\\n`` byte before anything is decoded, so a multi-byte UTF-8
    character split across reads is reassembled: ``\\n`` never occurs inside one.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> bytes | None:
        """The whole lines received so far (without the last newline), or None if none.

        Not b"" for none: b"" is one empty line, which ends an event in server-sent events.
        """
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > self._max_line_bytes:
                raise ResponseFormatError(
                    f"The server sent a line longer than {self._max_line_bytes} bytes; this is "
                    "not a chat answer stream. Check the endpoint URL."
                )
            self._buffer = buffer
            return None
        self._buffer = buffer[end + 1 :]
        return buffer[:end]

    def close(self) -> bytes:
        """What is left after the last newline (a final line need not end with one)."""
        rest, self._buffer = self._buffer, b""
        return rest


# A "}" followed by "," within a line: see decode_json_lines.
_OBJECT_THEN_COMMA = re.compile(rb"\}[ \t\r]*,")


def decode_json_lines(block: bytes) -> list[Any]:
    """Every non-blank line of ``block`` as JSON, exactly as decoding line by line would.

    One ``json.loads`` of the lines joined into an array is several times faster than one
    call a line, but could accept what line by line would not: a value spanning two lines,
    made up for by a line holding two values. So the fast path is taken only when that
    cannot happen: the lines are joined with ",\\n" (a string cannot span the newline),
    every line starts with "{" (so every top-level value is an object), no "}" is followed
    by "," within a line (so no line holds a second value), and the array has exactly one
    value a line (so no value spans lines). Otherwise, and on any error, line by line,
    which also names the bad line.
    """
    breaks = block.count(b"\n")
    every_line_an_object = block[:1] == b"{" and block.count(b"\n{") == breaks
    if every_line_an_object and not _OBJECT_THEN_COMMA.search(block):
        try:
            # replace, not split and join: no bytes object a line.
            values = json.loads((b"[" + block.replace(b"\n", b",\n") + b"]").decode("utf-8"))
        except ValueError:
            pass
        else:
            if len(values) == breaks + 1:
                return values  # type: ignore[no-any-return]
    values = []
    for line in block.split(b"\n"):
        if line.strip():
            try:
                values.append(decode_json_line(line))
            except ResponseFormatError as error:
                raise PartialBlockError(values, error) from None
    return values


class PartialBlockError(ResponseFormatError):
    """A block's bad line: ``values`` holds what came before it, ``error`` what to raise."""

    def __init__(self, values: list[Any], error: ResponseFormatError) -> None:
        super().__init__(str(error))
        self.values, self.error = values, error


def decode_json_line(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        excerpt = line[:80].decode("utf-8", "replace")
        raise ResponseFormatError(
            f"The server sent a line that is not UTF-8 JSON ({excerpt!r}); this is not a chat "
            "answer stream. Check the endpoint URL."
        ) from None


# Small immutable records here and in the magics' modules are NamedTuples, not frozen
# dataclasses: a dataclass writes its methods with exec() as the module loads, about 1 ms
# a class that every %load_ext would pay.
class RetryNotice(NamedTuple):
    """Told to ``on_retry`` before a failed request is tried again."""

    attempt: int  # the retry about to be made, from 1
    retries: int  # how many retries are allowed
    delay: float  # seconds until it
    reason: str  # the failure, one sentence


class Delivery(NamedTuple):
    """How an answer is fetched: how long to wait, and how often to try again.

    ``timeout`` is the silence allowed between pieces; ``first_piece_timeout`` the silence
    allowed before the first one (None: the same); neither limits a whole answer. A request
    that fails before any piece arrived (no connection, a close before answering, 429, 5xx)
    is tried up to ``retries`` more times, after an exponential, jittered pause, or after
    the server's Retry-After (at most MAX_RETRY_WAIT seconds); never once text has arrived,
    so no text is ever repeated.
    """

    timeout: float | None = 120.0
    first_piece_timeout: float | None = None
    connect_timeout: float | None = 30.0
    retries: int = 2
    on_retry: Callable[[RetryNotice], None] | None = None

    def checked(self) -> Delivery:
        for name in ("timeout", "first_piece_timeout", "connect_timeout"):
            check_timeout(name, getattr(self, name))
        if (
            isinstance(self.retries, bool)
            or not isinstance(self.retries, int)
            or not (0 <= self.retries <= 10)
        ):
            raise ConfigurationError(
                f"retries must be a whole number from 0 to 10, not {self.retries!r}."
            )
        return self

    @property
    def first_piece_limit(self) -> float | None:
        return self.timeout if self.first_piece_timeout is None else self.first_piece_timeout


#: The first retry waits about this long (with jitter), each later one twice as long.
RETRY_BACKOFF = 0.5
#: No retry waits longer than this, whatever the backoff or the server's Retry-After.
MAX_RETRY_WAIT = 30.0


def retry_delay(attempt: int, failure: RequestFailedError) -> float:
    retry_after = failure.retry_after if isinstance(failure, HTTPStatusError) else None
    if retry_after is not None:
        return min(MAX_RETRY_WAIT, retry_after)
    return min(MAX_RETRY_WAIT, RETRY_BACKOFF * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def start_stream(
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    parser: BlockParser,
    proxy: str | None,
    delivery: Delivery,
    session: aiohttp.ClientSession | None,
    endpoint_hint: str,
    status_advice: Mapping[int, str],
) -> AsyncResult:
    """Check the connection settings now, and return the answer stream; nothing is sent
    until it is iterated. ``endpoint_hint`` says how to change the endpoint (for errors)."""
    request = PreparedRequest(url, headers, body, check_proxy(proxy), endpoint_hint, status_advice)
    delivery = delivery.checked()
    return AsyncResult(functools.partial(_stream, request, parser, delivery, session))


class PreparedRequest(NamedTuple):
    url: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]
    proxy: str | None
    endpoint_hint: str
    status_advice: Mapping[int, str]

    def __repr__(self) -> str:
        # Not the headers (an API key), the body (the conversation) nor the proxy (a password).
        return f"PreparedRequest(url={redact_url(self.url)!r})"


async def _within(awaitable: Awaitable[T], limit: float | None) -> T:
    """``await awaitable``, raising TimeoutError after ``limit`` seconds (None: no limit)."""
    import asyncio

    if limit is None:
        return await awaitable
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(limit):  # no task a call, unlike wait_for
            return await awaitable
    return await asyncio.wait_for(awaitable, limit)


async def _stream(
    request: PreparedRequest,
    parser: BlockParser,
    delivery: Delivery,
    session: aiohttp.ClientSession | None,
    batched: bool,
) -> AsyncGenerator[Any, None]:
    """POST the request and yield the answer's text pieces as ``parser`` finds them: one by
    one, or (``batched``) a list for each block of lines in which it found some.

    One generator, not nested ones: closing it (break, aclose, cancellation) unwinds the
    response and the session right here, not whenever an inner one is collected.
    """
    import aiohttp

    failures: tuple[type[Exception], ...] = (aiohttp.ClientError, *timeout_errors())
    client_timeout = aiohttp.ClientTimeout(total=None, connect=delivery.connect_timeout)
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(timeout=client_timeout)
    try:
        response = await _answering(session, request, delivery, client_timeout, failures)
        async with response:
            lines = LineBuffer()
            read = response.content.readany
            silence, started = delivery.first_piece_limit, False
            try:
                while chunk := await _within(read(), silence):
                    block = lines.feed(chunk)
                    if block is not None:
                        pieces = parser.parse(block)
                        if pieces:
                            silence, started = delivery.timeout, True
                            for item in [pieces] if batched else pieces:
                                yield item
                        if parser.error is not None:
                            raise parser.error
                        if parser.done:
                            return
            except failures as error:
                raise translate_error(
                    error,
                    request.url,
                    request.proxy,
                    request.endpoint_hint,
                    client_timeout,
                    streaming=True,
                    silence=silence,
                    started=started,
                ) from None
            rest = lines.close()
            if last := [*(parser.parse(rest) if rest else []), *parser.finish()]:
                for item in [last] if batched else last:
                    yield item
            if parser.error is not None:
                raise parser.error
    finally:
        if own_session:
            await session.close()


async def _answering(
    session: aiohttp.ClientSession,
    request: PreparedRequest,
    delivery: Delivery,
    client_timeout: aiohttp.ClientTimeout,
    failures: tuple[type[Exception], ...],
) -> aiohttp.ClientResponse:
    """The response, once the server answers 2xx; failures before that are retried."""
    import asyncio
    import io

    payload = json.dumps(request.body, ensure_ascii=False).encode()
    attempt = 0
    while True:
        # A body of megabytes goes as a stream, so that sending it never blocks the loop.
        data = io.BytesIO(payload) if len(payload) > LARGE_BODY_BYTES else payload
        try:
            response = await _within(
                session.post(
                    request.url,
                    data=data,
                    headers=request.headers,
                    proxy=request.proxy,
                    timeout=client_timeout,
                ),
                delivery.first_piece_limit,
            )
        except failures as error:
            failure = translate_error(
                error,
                request.url,
                request.proxy,
                request.endpoint_hint,
                client_timeout,
                silence=delivery.first_piece_limit,
            )
        else:
            if 200 <= response.status < 300:
                return response
            async with response:
                failure = await status_error(response, request.url, request.status_advice)
        if attempt >= delivery.retries or not failure.retryable:
            raise failure from None
        attempt += 1
        delay = retry_delay(attempt, failure)
        if delivery.on_retry is not None:
            delivery.on_retry(RetryNotice(attempt, delivery.retries, delay, str(failure)))
        await asyncio.sleep(delay)


# -- errors -------------------------------------------------------------------------------


def timeout_errors() -> tuple[type[Exception], ...]:
    """The timeout exceptions aiohttp may raise (asyncio's is not the builtin on 3.10)."""
    import asyncio  # not at import time: loading the extension must stay cheap

    return (asyncio.TimeoutError, TimeoutError)


def host_of(url: str) -> str:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname}:{parts.port or default_port}"


def translate_error(
    error: BaseException,
    url: str,
    proxy: str | None,
    hint: str,
    timeout: aiohttp.ClientTimeout,
    *,
    streaming: bool = False,
    silence: float | None = None,
    started: bool = False,
) -> RequestFailedError:
    """One clear sentence for an aiohttp or timeout failure, with secrets redacted.

    ``hint`` says how to change the endpoint; ``streaming`` whether the answer had begun
    (the headers had arrived), ``started`` whether text had, and ``silence`` how long the
    server was allowed to stay silent.
    """
    import aiohttp

    host = host_of(url)
    if isinstance(error, aiohttp.ClientProxyConnectionError) or (
        proxy and isinstance(error, aiohttp.ClientHttpProxyError)
    ):
        return ConnectionFailedError(
            f"Could not reach {host} through the proxy {redact_url(proxy or '')}: "
            f"{_reason(error)}. Check the proxy address and credentials."
        )
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return ConnectionFailedError(
            f"Could not connect to {host}: the host name could not be resolved. Check the "
            f"endpoint URL ({hint}) and your network."
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        return ConnectionFailedError(
            f"Could not connect to {host}: {_reason(error)}. Check that the server is running "
            f"and that the endpoint URL ({hint}) is right.",
            retryable=True,
        )
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return ConnectionFailedError(
            f"Connecting to {host} took longer than {timeout.connect:g} s. Check that the "
            "server is reachable, or raise the connect timeout.",
            retryable=True,
        )
    if isinstance(error, timeout_errors()):
        when = "in the middle of the answer" if started else "before the first piece"
        setting = "timeout" if started else "first_piece_timeout"
        return ResponseTimeoutError(
            f"{host} sent nothing for {silence:g} s {when}, so the request was abandoned. "
            f"The server may be overloaded; try again, or raise the {setting}."
        )
    if isinstance(error, aiohttp.InvalidURL):
        return ConnectionFailedError(
            f"The endpoint URL {redact_url(url)!r} is not valid: {_reason(error)}."
        )
    if streaming:
        return ConnectionLostError(
            f"The connection to {host} broke while the answer was streaming; what had "
            "arrived is kept. Try again."
        )
    return ConnectionLostError(
        f"{host} closed the connection before answering; the server may have crashed or "
        "restarted. Try again.",
        retryable=True,
    )


def _reason(error: BaseException) -> str:
    os_error = getattr(error, "os_error", None)
    if isinstance(os_error, OSError):
        # asyncio's strerror is "Connect call failed (...)"; the errno says why, plainly.
        if os_error.errno:
            return os.strerror(os_error.errno).lower()
        if os_error.strerror:
            return os_error.strerror.lower()
    text = str(error) or type(error).__name__
    return redact_url(text) if "://" in text else text


async def status_error(
    response: aiohttp.ClientResponse, url: str, advice: Mapping[int, str]
) -> HTTPStatusError:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY_BYTES:
        try:
            chunk = await response.content.read(MAX_ERROR_BODY_BYTES - size)
        except Exception:  # a broken error body must not hide the status itself
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    excerpt = error_excerpt(b"".join(chunks), response.content_type)
    status = response.status
    what_to_do = advice.get(status) or (
        "The server failed; try again later." if status >= 500 else "Check the request."
    )
    detail = f": {excerpt.rstrip('.')}" if excerpt else ""
    return HTTPStatusError(
        f"{host_of(url)} answered {status} {response.reason or ''}".rstrip()
        + f"{detail}. {what_to_do}",
        status=status,
        body_excerpt=excerpt,
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # (rarely needed, and slow to import: not at load)

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_excerpt(body: bytes, content_type: str, limit: int = 200) -> str:
    """A short, single-line summary of an error body: its JSON message, or its text."""
    text = body.decode("utf-8", "replace").strip()
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            text = json_error_message(data) or text
    if "html" in content_type or text.lstrip().lower().startswith(("<!doctype", "<html")):
        text = "an HTML page" + (f" titled {title!r}" if (title := _html_title(text)) else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_error_message(data: Any) -> str | None:
    """The message of ``{"error": "..."}``, ``{"error": {"message": "..."}}`` and the like."""
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict):
                return json_error_message(value)
    return None


def _html_title(html: str) -> str:
    lower = html.lower()
    start, end = lower.find("<title>"), lower.find("</title>")
    return html[start + 7 : end].strip() if 0 <= start < end else ""
