"""OpenAICompatible: the chat-completions protocol that OpenAI, OpenRouter, Ollama, vLLM,
llama.cpp's server and LM Studio all speak.

``POST {base_url}/chat/completions`` with ``"stream": true`` answers with server-sent events,
``data: {...}`` lines whose ``choices[0].delta.content`` is the next piece, ending with
``data: [DONE]``. Messages go as they are: system message, history, prompt.

Settings (``%config OpenAI.base_url = ...``) live in :class:`OpenAI`, a traitlets
Configurable; the environment variables ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` are used
when they are not set. The API key is never shown: not in errors, reprs or ``%config``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets import Unicode, validate
from traitlets.config import Configurable

from .exceptions import (
    FlowGptError,
    InvalidRequestError,
    RequestFailedError,
    ResponseFormatError,
    Secret,
    SecretURL,
)
from .provider import (
    AsyncGeneratorProvider,
    AsyncResult,
    Delivery,
    Messages,
    ProviderModelMixin,
    RetryNotice,
    check_proxy,
    check_temperature,
    check_unexpected,
    checked_messages,
    decode_json_line,
    resolve_endpoint,
    start_stream,
)

if TYPE_CHECKING:
    import aiohttp

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ENDPOINT_HINT = f"{BASE_URL_ENV} or OpenAI.base_url"
_STATUS_ADVICE = {
    400: "The server rejected the request; the message above says why.",
    401: f"The API key was refused: set {API_KEY_ENV} or %config OpenAI.api_key.",
    403: "The API key may not use this model or endpoint.",
    404: f"The model is not served there, or the base URL is wrong ({_ENDPOINT_HINT}).",
    429: "The server is rate limiting, or the account is out of quota; wait and try again.",
}


class OpenAI(Configurable):
    """Where the OpenAI-compatible provider sends requests, and with which key."""

    base_url = Unicode(
        None,
        allow_none=True,
        help=f"Base URL of the API, e.g. http://localhost:11434/v1 for Ollama. None: "
        f"${BASE_URL_ENV} if set, else {DEFAULT_BASE_URL}.",
    ).tag(config=True)
    api_key = Unicode(
        None, allow_none=True, help=f"API key. None: ${API_KEY_ENV}. Never shown."
    ).tag(config=True)

    @validate("api_key")
    def _hide_key(self, proposal: Any) -> str | None:
        return None if proposal.value is None else Secret(proposal.value)

    @validate("base_url")
    def _hide_url_credentials(self, proposal: Any) -> str | None:
        return None if proposal.value is None else SecretURL(proposal.value)

    def request_options(self) -> dict[str, Any]:
        """The keyword arguments ``OpenAICompatible`` takes from these settings."""
        return {"base_url": self.base_url, "api_key": self.api_key}


class OpenAICompatible(AsyncGeneratorProvider, ProviderModelMixin):
    """Any server that speaks OpenAI's chat-completions protocol, streamed."""

    url = "https://platform.openai.com/docs/api-reference/chat"
    working = True
    supports_message_history = True
    supports_system_message = True
    default_model = "gpt-4o-mini"
    #: Shown when the server's own list (GET /models) cannot be had.
    models: ClassVar[list[str]] = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "o4-mini"]
    model_aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """Any model name: the server decides which it serves (and says so with a 404)."""
        if not model:
            return cls.default_model
        if model != model.strip() or not model.isprintable():
            raise InvalidRequestError(f"{model!r} is not a model name.")
        return model

    @classmethod
    def create_async_generator(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        temperature: float = 0.7,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = 120.0,
        first_piece_timeout: float | None = None,
        connect_timeout: float | None = 30.0,
        retries: int = 2,
        on_retry: Callable[[RetryNotice], None] | None = None,
        session: aiohttp.ClientSession | None = None,
        **kwargs: Any,
    ) -> AsyncResult:
        """Stream the answer to ``messages`` as text pieces; validated before sending."""
        check_unexpected(
            "OpenAICompatible",
            kwargs,
            "model, messages, proxy, temperature, base_url, api_key, timeout, "
            "first_piece_timeout, connect_timeout, retries, on_retry and session",
        )
        body = {
            "model": cls.get_model(model),
            "messages": [
                {"role": m["role"], "content": m["content"]} for m in checked_messages(messages)
            ],
            "temperature": check_temperature(temperature),
            "stream": True,
        }
        return start_stream(
            cls.endpoint(base_url) + "/chat/completions",
            headers=_headers(api_key, accept="text/event-stream"),
            body=body,
            parser=SseTextParser(),
            proxy=proxy,
            delivery=Delivery(timeout, first_piece_timeout, connect_timeout, retries, on_retry),
            session=session,
            endpoint_hint=_ENDPOINT_HINT,
            status_advice=_STATUS_ADVICE,
        )

    @classmethod
    def endpoint(cls, base_url: str | None = None, **options: Any) -> str:
        """The base URL in use: ``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's."""
        return resolve_endpoint(
            base_url, BASE_URL_ENV, DEFAULT_BASE_URL, "http://localhost:11434/v1"
        ).rstrip("/")

    @classmethod
    async def list_models(
        cls,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        proxy: str | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> list[str]:
        """The model ids the server offers (``GET {base_url}/models``), sorted."""
        import aiohttp

        from .provider import status_error, timeout_errors, translate_error

        url = cls.endpoint(base_url) + "/models"
        failures: tuple[type[Exception], ...] = (aiohttp.ClientError, *timeout_errors())
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            try:
                async with session.get(
                    url,
                    headers=_headers(api_key, accept="application/json"),
                    proxy=check_proxy(proxy),
                ) as response:
                    if response.status != 200:
                        raise await status_error(response, url, _STATUS_ADVICE)
                    data = await response.json(content_type=None)
            except failures as error:
                raise translate_error(
                    error, url, proxy, _ENDPOINT_HINT, client_timeout, silence=timeout
                ) from None
            except ValueError:
                raise ResponseFormatError(f"{url} did not answer with JSON.") from None
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ResponseFormatError(f"{url} did not answer with a list of models.")
        return sorted(str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e)


def _headers(api_key: str | None, *, accept: str) -> dict[str, str]:
    import os

    key = api_key or os.environ.get(API_KEY_ENV)
    headers = {"Content-Type": "application/json", "Accept": accept}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


class SseTextParser:
    """Server-sent events carrying chat-completion chunks; ``data: [DONE]`` ends them."""

    def __init__(self) -> None:
        self.done = False
        self.error: FlowGptError | None = None
        self._data: list[bytes] = []

    def parse(self, block: bytes) -> list[str]:
        pieces = []
        for line in block.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line:  # a blank line ends an event
                try:
                    text = self._dispatch()
                except FlowGptError as error:
                    self.error = error  # raised after the pieces before it
                    break
                if text:
                    pieces.append(text)
                if self.done:
                    break
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            # Comments (":"), "event:", "id:" and "retry:" lines carry no text.
        return pieces

    def finish(self) -> list[str]:
        text = self._dispatch()
        return [text] if text else []

    def _dispatch(self) -> str | None:
        data, self._data = b"\n".join(self._data), []
        if not data:
            return None
        if data.strip() == b"[DONE]":
            self.done = True
            return None
        return _delta_text(decode_json_line(data))


def _delta_text(chunk: Any) -> str | None:
    if isinstance(chunk, dict) and "error" in chunk:
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise RequestFailedError(f"The server reported an error mid-answer: {message}")
    try:
        content = chunk["choices"][0]["delta"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        if isinstance(chunk, dict) and chunk.get("choices") == []:
            return None  # e.g. a final usage-only chunk
        raise ResponseFormatError(
            f"The server sent an event that is not a chat-completion chunk "
            f"({json.dumps(chunk)[:80]!r})."
        ) from None
    if content is None:
        return None
    if not isinstance(content, str):
        raise ResponseFormatError("The server sent a delta whose content is not a string.")
    return content
