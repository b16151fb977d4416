"""FlowGpt: FlowGPT's anonymous chat protocol as an async generator of text pieces.

The wire format is described in ``docs/flowgpt-protocol.md`` of the project's shared notes:
signed headers, the history and system message folded into one JSON body, and an NDJSON
stream whose ``{"event": "text", "data": ...}`` lines carry the answer.

This module knows nothing of IPython. aiohttp is imported on first use, so that loading the
extension stays cheap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import string
import time
from collections.abc import AsyncGenerator, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from .exceptions import (
    ConfigurationError,
    ConnectionFailedError,
    ConnectionLostError,
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

Message = Mapping[str, str]
Messages = Sequence[Message]

#: Environment variable that overrides the endpoint (a full URL of the chat endpoint).
API_URL_ENV = "FLOWGPT_API_URL"
DEFAULT_SYSTEM_MESSAGE = "You are helpful assistant. Follow the user's instructions carefully."
GREETING = {"role": "assistant", "content": "Hello, how can I help you today?"}
ANONYMOUS_AUTHORIZATION = "Bearer null"
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
#: A protocol line longer than this is an error rather than a reason to buffer forever.
MAX_LINE_BYTES = 16 * 1024 * 1024
#: How much of an error body we read: enough for any error message, bounded for HTML pages.
MAX_ERROR_BODY_BYTES = 64 * 1024
_DEVICE_ID_ALPHABET = string.ascii_lowercase + string.digits
# On Python 3.10 asyncio.TimeoutError is not the builtin TimeoutError; aiohttp raises the former.
_TIMEOUTS = (asyncio.TimeoutError, TimeoutError)


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
    """

    def __init__(self, pieces: AsyncGenerator[str, None]) -> None:
        self._pieces = pieces

    def __aiter__(self) -> AsyncResult:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    def __await__(self) -> Generator[Any, None, AsyncResult]:
        return self._itself().__await__()

    async def _itself(self) -> AsyncResult:
        return self

    async def aclose(self) -> None:
        await self._pieces.aclose()


class FlowGpt(AsyncGeneratorProvider, ProviderModelMixin):
    """FlowGPT's anonymous chat endpoint.

    Upstream (g4f) marked this provider as not working in 2024; the endpoint is therefore
    configurable: ``api_url=`` per call, or the ``FLOWGPT_API_URL`` environment variable,
    which the bundled local server (``python -m flowgpt_magic.server``) prints.
    """

    url = "https://flowgpt.com/chat"
    api_endpoint: ClassVar[str] = "https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous"
    working = False
    supports_message_history = True
    supports_system_message = True
    default_model = "gpt-3.5-turbo"
    models: ClassVar[list[str]] = [
        "gpt-3.5-turbo",
        "gpt-3.5-long",
        "gpt-4-turbo",
        "google-gemini",
        "claude-instant",
        "claude-v1",
        "claude-v2",
        "llama2-13b",
        "mythalion-13b",
        "pygmalion-13b",
        "chronos-hermes-13b",
        "Mixtral-8x7B",
        "Dolphin-2.6-8x7B",
    ]
    model_aliases: ClassVar[dict[str, str]] = {
        "gemini": "google-gemini",
        "gemini-pro": "google-gemini",
    }

    @classmethod
    def create_async_generator(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        temperature: float = 0.7,
        *,
        api_url: str | None = None,
        timeout: float | None = 120.0,
        connect_timeout: float | None = 30.0,
        session: aiohttp.ClientSession | None = None,
        **kwargs: Any,
    ) -> AsyncResult:
        """Stream the answer to ``messages`` as text pieces.

        ``timeout`` is how long the server may stay silent (before the first piece and
        between pieces); there is no limit on the whole answer. ``session`` lets a caller
        reuse its own aiohttp session, which is then left open. Everything is validated
        here, before anything is sent.
        """
        if kwargs:
            raise InvalidRequestError(
                f"Unexpected argument(s) {', '.join(sorted(kwargs))} for FlowGpt. It accepts "
                "model, messages, proxy, temperature, api_url, timeout, connect_timeout and "
                "session."
            )
        resolved = cls.get_model(model)
        body = build_body(resolved, messages, check_temperature(temperature))
        endpoint = resolve_endpoint(api_url, cls.api_endpoint)
        return AsyncResult(
            _stream_answer(
                endpoint,
                signed_headers(),
                body,
                proxy=check_proxy(proxy),
                timeout=_check_timeout("timeout", timeout),
                connect_timeout=_check_timeout("connect_timeout", connect_timeout),
                session=session,
            )
        )


def check_temperature(value: object) -> float:
    """Return ``value`` as a float if it is a number in [0, 2]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"Temperature must be a number from 0 to 2, not {value!r}.")
    if not (math.isfinite(value) and 0 <= value <= 2):
        raise InvalidRequestError(f"Temperature must be a number from 0 to 2, not {value!r}.")
    return float(value)


def _check_timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds (or None for no limit), not {value!r}."
        )
    return float(value)


def resolve_endpoint(api_url: str | None, default: str) -> str:
    """The endpoint to use: the argument, else ``$FLOWGPT_API_URL``, else the default."""
    url = api_url or os.environ.get(API_URL_ENV) or default
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        source = "api_url" if api_url else API_URL_ENV if os.environ.get(API_URL_ENV) else "url"
        raise ConfigurationError(
            f"The endpoint {redact_url(url)!r} (from {source}) is not an http(s) URL with a "
            "host. Give the full URL of the chat endpoint, for example "
            "http://127.0.0.1:8765/v3/chat-anonymous."
        )
    return url


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


def signed_headers(authorization: str = ANONYMOUS_AUTHORIZATION) -> dict[str, str]:
    """Request headers with a fresh timestamp, nonce, signature and device id."""
    timestamp = str(int(time.time()))
    nonce = secrets.token_hex(16)
    signature = hashlib.md5(
        f"{timestamp}-{nonce}-{authorization}".encode(), usedforsecurity=False
    ).hexdigest()
    device_id = "f-" + "".join(secrets.choice(_DEVICE_ID_ALPHABET) for _ in range(19))
    return {
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        "Accept-Language": "en-US;q=0.7,en;q=0.3",
        "Referer": "https://flowgpt.com/",
        "Content-Type": "application/json",
        "Authorization": authorization,
        "Origin": "https://flowgpt.com",
        "x-flow-device-id": device_id,
        "x-nonce": nonce,
        "x-signature": signature,
        "x-timestamp": timestamp,
    }


def build_body(model: str, messages: Messages, temperature: float) -> dict[str, Any]:
    """The JSON body: last message as the question, earlier ones as history, systems folded."""
    checked = _checked_messages(messages)
    history = [GREETING] + [
        {"role": m["role"], "content": m["content"]} for m in checked[:-1] if m["role"] != "system"
    ]
    system = "\n".join(m["content"] for m in checked if m["role"] == "system")
    return {
        "model": model,
        "nsfw": False,
        "question": checked[-1]["content"],
        "history": history,
        "system": system or DEFAULT_SYSTEM_MESSAGE,
        "temperature": temperature,
        "promptId": f"model-{model}",
        "documentIds": [],
        "chatFileDocumentIds": [],
        "generateImage": False,
        "generateAudio": False,
    }


def _checked_messages(messages: Messages) -> Sequence[Message]:
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


class NdjsonDecoder:
    """Turns network reads into JSON values, one per line, however the bytes were split.

    Lines are cut at ``\\n`` bytes before decoding, so a multi-byte UTF-8 character split
    across reads is reassembled: ``\\n`` never occurs inside one.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        end = self._buffer.rfind(b"\n")
        if end < 0:
            if len(self._buffer) > self._max_line_bytes:
                raise ResponseFormatError(
                    f"The server sent a line longer than {self._max_line_bytes} bytes; this is "
                    "not a FlowGPT answer stream. Check the endpoint URL."
                )
            return []
        block = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return [_decode_line(line) for line in block.split(b"\n") if line.strip()]

    def close(self) -> list[Any]:
        """Decode what is left after the last newline (a final line need not end with one)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [_decode_line(rest)] if rest.strip() else []


def _decode_line(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        excerpt = line[:80].decode("utf-8", "replace")
        raise ResponseFormatError(
            f"The server sent a line that is not UTF-8 JSON ({excerpt!r}); this is not a "
            "FlowGPT answer stream. Check the endpoint URL."
        ) from None


def text_of(event: Any) -> str | None:
    """The answer text an event carries, or None for events that carry none."""
    if not isinstance(event, dict) or event.get("event") != "text":
        return None
    data = event.get("data")
    if not isinstance(data, str):
        raise ResponseFormatError(
            f"The server sent a text event whose data is {type(data).__name__}, not a string; "
            "this is not a FlowGPT answer stream."
        )
    return data


async def _stream_answer(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    *,
    proxy: str | None,
    timeout: float | None,
    connect_timeout: float | None,
    session: aiohttp.ClientSession | None,
) -> AsyncGenerator[str, None]:
    # One generator, not two nested ones: closing it (break, aclose, cancellation) must
    # unwind the response and the session right here, not whenever an inner one is collected.
    import aiohttp

    client_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
    own_session = session is None
    if session is None:
        session = aiohttp.ClientSession(timeout=client_timeout)
    try:
        try:
            response = await session.post(
                url, json=body, headers=headers, proxy=proxy, timeout=client_timeout
            )
        except (aiohttp.ClientError, *_TIMEOUTS) as error:
            raise _translate(error, url, proxy, client_timeout) from None
        async with response:
            if not 200 <= response.status < 300:
                raise await _status_error(response, url)
            decoder = NdjsonDecoder()
            try:
                async for chunk in response.content.iter_any():
                    for event in decoder.feed(chunk):
                        text = text_of(event)
                        if text:
                            yield text
            except (aiohttp.ClientError, *_TIMEOUTS) as error:
                raise _translate(error, url, proxy, client_timeout) from None
            for event in decoder.close():
                text = text_of(event)
                if text:
                    yield text
    finally:
        if own_session:
            await session.close()


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname}:{parts.port or default_port}"


def _translate(
    error: BaseException, url: str, proxy: str | None, timeout: aiohttp.ClientTimeout
) -> RequestFailedError:
    """One clear sentence for an aiohttp or timeout failure, with secrets redacted."""
    import aiohttp

    host = _host_of(url)
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
            "endpoint URL (FLOWGPT_API_URL or api_url) and your network."
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        return ConnectionFailedError(
            f"Could not connect to {host}: {_reason(error)}. Check that the server is running "
            "and that the endpoint URL (FLOWGPT_API_URL or api_url) is right."
        )
    if isinstance(error, _TIMEOUTS):
        if isinstance(error, aiohttp.ConnectionTimeoutError):
            return ResponseTimeoutError(
                f"Connecting to {host} took longer than {timeout.connect} s. Check that the "
                "server is reachable, or raise the connect timeout."
            )
        return ResponseTimeoutError(
            f"{host} sent nothing for {timeout.sock_read} s, so the request was abandoned. "
            "The server may be overloaded; try again, or raise the timeout."
        )
    if isinstance(error, aiohttp.InvalidURL):
        return ConnectionFailedError(
            f"The endpoint URL {redact_url(url)!r} is not valid: {_reason(error)}."
        )
    return ConnectionLostError(
        f"The connection to {host} failed while the answer was streaming "
        f"({type(error).__name__}: {_reason(error)}). Try again."
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


async def _status_error(response: aiohttp.ClientResponse, url: str) -> HTTPStatusError:
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
    advice = _STATUS_ADVICE.get(status) or (
        "The server failed; try again later." if status >= 500 else "Check the request."
    )
    detail = f": {excerpt}" if excerpt else ""
    return HTTPStatusError(
        f"{_host_of(url)} answered {status} {response.reason or ''}".rstrip()
        + f"{detail}. {advice}",
        status=status,
        body_excerpt=excerpt,
    )


_STATUS_ADVICE = {
    400: "The server rejected the request as malformed.",
    401: "The endpoint refused anonymous access.",
    403: "The endpoint refused anonymous access.",
    404: "Check the endpoint URL (FLOWGPT_API_URL or api_url).",
    429: "The server is rate limiting; wait a little and try again.",
}


def error_excerpt(body: bytes, content_type: str, limit: int = 200) -> str:
    """A short, single-line summary of an error body: its JSON message, or its text."""
    text = body.decode("utf-8", "replace").strip()
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            text = _json_error_message(data) or text
    if "html" in content_type or text.lstrip().lower().startswith(("<!doctype", "<html")):
        text = "an HTML page" + (f" titled {title!r}" if (title := _html_title(text)) else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_error_message(data: Any) -> str | None:
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict):
                return _json_error_message(value)
    return None


def _html_title(html: str) -> str:
    lower = html.lower()
    start, end = lower.find("<title>"), lower.find("</title>")
    return html[start + 7 : end].strip() if 0 <= start < end else ""
