"""The HTTP side of every provider: where to send, how long to wait, how often to try again.

Every default of a request's delivery is here, once: the magics' settings, the providers'
signatures and the docs take them from this module.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from ..exceptions import ConfigurationError, HTTPStatusError, RequestFailedError, redact_url
from .errors import request_failures, status_error, translate_error
from .events import RetryNotice

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")

#: Seconds the server may stay silent between pieces; no limit applies to a whole answer.
TIMEOUT = 120.0
#: Seconds allowed for connecting.
CONNECT_TIMEOUT = 30.0
#: How often a request that failed before any text arrived is tried again.
RETRIES = 2
#: The first retry waits about this long (with jitter), each later one twice as long.
RETRY_BACKOFF = 0.5
#: No retry waits longer than this, whatever the backoff or the server's Retry-After.
MAX_RETRY_WAIT = 30.0
#: A request body larger than this is streamed rather than written at once.
LARGE_BODY_BYTES = 1024 * 1024


# Small immutable records here and in the magics' modules are NamedTuples, not frozen
# dataclasses: a dataclass writes its methods with exec() as the module loads, about 1 ms
# a class that every %load_ext would pay.
class Delivery(NamedTuple):
    """How an answer is fetched: how long to wait, and how often to try again.

    ``timeout`` is the silence allowed between pieces; ``first_piece_timeout`` the silence
    allowed before the first one (None: the same); neither limits a whole answer. A request
    that fails before any piece arrived (no connection, a close before answering, 429, 5xx)
    is tried up to ``retries`` more times, after an exponential, jittered pause, or after
    the server's Retry-After (at most MAX_RETRY_WAIT seconds); never once text has arrived,
    so no text is ever repeated.
    """

    timeout: float | None = TIMEOUT
    first_piece_timeout: float | None = None
    connect_timeout: float | None = CONNECT_TIMEOUT
    retries: int = RETRIES

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


class HttpRequest(NamedTuple):
    """A request ready to send: where, with which headers and body, and how to say what
    went wrong (``endpoint_hint``: how to change the endpoint; ``status_advice``: what to
    do about a status)."""

    url: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]
    proxy: str | None = None
    endpoint_hint: str = ""
    status_advice: Mapping[int, str] = {}
    #: Fields of the body that a server may not know: one that refuses the request with a
    #: 400 or 422 naming one of them is asked once more without them.
    optional: tuple[str, ...] = ()
    #: A sentence added to the message of a request that failed before any answer.
    advice: str = ""
    #: How errors name the server, when not by its host and port ("the local model X").
    label: str = ""
    #: What the request waits for before it is sent, and holds while its answer streams (a
    #: local model's server): an async generator given the request, that yields lines for a
    #: person while it waits (a model loading), then the request as it is to be sent, and
    #: is closed when the answer has ended.
    ready: Callable[[HttpRequest], AsyncGenerator[str | HttpRequest, None]] | None = None

    def without_optional(self, failure: RequestFailedError) -> HttpRequest | None:
        """The request without its optional fields, if ``failure`` refused one of them."""
        if not isinstance(failure, HTTPStatusError) or failure.status not in (400, 422):
            return None
        if not any(name in failure.body_excerpt for name in self.optional):
            return None
        body = {k: v for k, v in self.body.items() if k not in self.optional}
        return self._replace(body=body, optional=())

    def __repr__(self) -> str:
        # Not the headers (an API key), the body (the conversation) nor the proxy (a password).
        return f"HttpRequest(url={redact_url(self.url)!r})"


def check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds (or None for no limit), not {value!r}."
        )
    return float(value)


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


def retry_delay(attempt: int, failure: RequestFailedError) -> float:
    retry_after = failure.retry_after if isinstance(failure, HTTPStatusError) else None
    if retry_after is not None:
        return min(MAX_RETRY_WAIT, retry_after)
    return min(MAX_RETRY_WAIT, RETRY_BACKOFF * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def within(awaitable: Awaitable[T], limit: float | None) -> T:
    """``await awaitable``, raising TimeoutError after ``limit`` seconds (None: no limit)."""
    import asyncio

    if limit is None:
        return await awaitable
    async with asyncio.timeout(limit):  # no task a call, unlike wait_for
        return await awaitable


def client_timeout(delivery: Delivery) -> aiohttp.ClientTimeout:
    """aiohttp's limits: the connection's only. The silences are ours (see ``within``), and
    a total would cut a long answer short."""
    import aiohttp

    return aiohttp.ClientTimeout(total=None, connect=delivery.connect_timeout)


class Answered(NamedTuple):
    """The server answered 2xx: its response, and when (the loop's clock) it was asked."""

    response: aiohttp.ClientResponse
    sent: float


async def answering(
    session: aiohttp.ClientSession, request: HttpRequest, delivery: Delivery
) -> AsyncGenerator[RetryNotice | Answered, None]:
    """POST the request until the server answers 2xx, then yield its response (last).
    Failures before that are tried again as ``delivery`` says, each retry told by a
    :class:`RetryNotice` first, and raised as our own errors."""
    import asyncio
    import io

    loop = asyncio.get_running_loop()
    failures = request_failures()
    timeout = client_timeout(delivery)
    payload = json.dumps(request.body, ensure_ascii=False).encode()
    attempt, resent = 0, False
    while True:
        # A body of megabytes goes as a stream, so that sending it never blocks the loop.
        data = io.BytesIO(payload) if len(payload) > LARGE_BODY_BYTES else payload
        sent = loop.time()
        try:
            response = await within(
                session.post(
                    request.url,
                    data=data,
                    headers=request.headers,
                    proxy=request.proxy,
                    timeout=timeout,
                ),
                delivery.first_piece_limit,
            )
        except failures as error:
            if not resent and stale_connection(error):
                resent = True  # (sent again at once, on a new connection: not a retry)
                continue
            failure = translate_error(
                error,
                request.url,
                request.proxy,
                request.endpoint_hint,
                timeout,
                silence=delivery.first_piece_limit,
                label=request.label,
            )
        else:
            if 200 <= response.status < 300:
                yield Answered(response, sent)
                return
            async with response:
                failure = await status_error(
                    response, request.url, request.status_advice, label=request.label
                )
        if (simpler := request.without_optional(failure)) is not None:
            request, payload = simpler, json.dumps(simpler.body, ensure_ascii=False).encode()
            continue  # (not a retry: another request)
        if attempt >= delivery.retries or not failure.retryable:
            raise failure.adding(request.advice) from None
        attempt += 1
        delay = retry_delay(attempt, failure)
        status = failure.status if isinstance(failure, HTTPStatusError) else None
        yield RetryNotice(attempt, delivery.retries, delay, str(failure), status)
        await asyncio.sleep(delay)


def stale_connection(error: BaseException) -> bool:
    """Whether ``error`` is a kept-alive connection the server had closed by the time the
    request went out on it (llama.cpp closes one after a streamed answer; the close can
    come just after the answer's end was read), not a server that cannot be reached."""
    import aiohttp

    return isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) and not (
        isinstance(error, aiohttp.ClientConnectorError)
    )


async def get_json(
    url: str,
    headers: Mapping[str, str],
    *,
    proxy: str | None,
    timeout: float,
    endpoint_hint: str,
    status_advice: Mapping[int, str],
) -> Any:
    """GET ``url`` and decode its JSON body, with the same errors as a chat request."""
    import aiohttp

    from ..exceptions import ResponseFormatError

    limits = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limits) as session:
        try:
            async with session.get(url, headers=headers, proxy=check_proxy(proxy)) as response:
                if response.status != 200:
                    raise await status_error(response, url, status_advice)
                return await response.json(content_type=None)
        except request_failures() as error:
            raise translate_error(
                error, url, proxy, endpoint_hint, limits, silence=timeout
            ) from None
        except ValueError:
            raise ResponseFormatError(f"{url} did not answer with JSON.") from None
