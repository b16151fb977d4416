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

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from traitlets import Unicode, validate
from traitlets.config import Configurable

from ..exceptions import InvalidRequestError, ResponseFormatError, Secret, SecretURL
from .base import Provider
from .checks import Messages
from .http import HttpRequest, get_json, resolve_endpoint
from .sse import SseParser

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_ENDPOINT_HINT = f"{BASE_URL_ENV} or OpenAI.base_url"
#: What a request says itself, and no parameter may.
_OURS = frozenset({"model", "messages", "stream", "temperature"})


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


class OpenAICompatible(Provider):
    """Any server that speaks OpenAI's chat-completions protocol, streamed."""

    url = "https://platform.openai.com/docs/api-reference/chat"
    default_model = "gpt-4o-mini"
    #: Shown when the server's own list (GET /models) cannot be had.
    models: ClassVar[list[str]] = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "o4-mini"]
    roles = ("system", "developer", "user", "assistant", "tool")
    images = True
    options = ("base_url", "api_key")
    endpoint_hint = _ENDPOINT_HINT
    status_advice: ClassVar[dict[int, str]] = {
        400: "The server rejected the request; the message above says why.",
        401: f"The API key was refused: set {API_KEY_ENV}, or enter it with %flowgpt_key.",
        403: "The API key may not use this model or endpoint.",
        404: f"The model is not served there, or the base URL is wrong ({_ENDPOINT_HINT}).",
        429: "The server is rate limiting, or the account is out of quota; wait and try again.",
    }

    #: The most tokens OpenAI's own models write in one answer (as OpenAI documents them).
    MAX_OUTPUT: ClassVar[dict[str, int]] = {
        "gpt-4o-mini": 16_384,
        "gpt-4o": 16_384,
        "gpt-4.1-mini": 32_768,
        "gpt-4.1": 32_768,
        "o4-mini": 100_000,
    }

    @classmethod
    def max_output_tokens(cls, model: str, **options: Any) -> int | None:
        return cls.MAX_OUTPUT.get(model)

    @classmethod
    def on_this_computer(cls, base_url: str | None = None, **options: Any) -> bool:
        """Whether the server is on this computer (Ollama, llama.cpp, LM Studio)."""
        from urllib.parse import urlsplit

        return urlsplit(cls.endpoint(base_url)).hostname in ("localhost", "127.0.0.1", "::1")

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """Any model name: the server decides which it serves (and says so with a 404)."""
        if not model:
            return cls.default_model
        if model != model.strip() or not model.isprintable():
            raise InvalidRequestError(f"{model!r} is not a model name.")
        return model

    @classmethod
    def endpoint(cls, base_url: str | None = None, **options: Any) -> str:
        """The base URL in use: ``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's."""
        return resolve_endpoint(
            base_url, BASE_URL_ENV, DEFAULT_BASE_URL, "http://localhost:11434/v1"
        ).rstrip("/")

    @classmethod
    def prepare(
        cls,
        model: str,
        messages: Messages,
        temperature: float | None,
        params: Mapping[str, Any],
        base_url: str | None = None,
        api_key: str | None = None,
        **options: Any,
    ) -> HttpRequest:
        headers = _headers(api_key, accept="text/event-stream")
        advice = cls.status_advice if "Authorization" in headers else _NO_KEY_ADVICE
        body = chat_body(model, messages, temperature, params)
        url = cls.endpoint(base_url) + "/chat/completions"
        # Not every server knows stream_options: one that refuses it is asked again without.
        return HttpRequest(url, headers, body, status_advice=advice, optional=("stream_options",))

    @classmethod
    def parser(cls) -> SseParser:
        return SseParser()

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
        url = cls.endpoint(base_url) + "/models"
        data = await get_json(
            url,
            _headers(api_key, accept="application/json"),
            proxy=proxy,
            timeout=timeout,
            endpoint_hint=cls.endpoint_hint,
            status_advice=cls.status_advice,
        )
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ResponseFormatError(f"{url} did not answer with a list of models.")
        return sorted(str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e)


#: What a message carries besides its role and content: the calls an assistant's asks for,
#: and the call a tool's answers.
_CALL_KEYS = ("tool_calls", "tool_call_id")


def _wire(message: Mapping[str, Any]) -> dict[str, Any]:
    wired = {"role": message["role"], "content": message["content"]}
    wired.update((key, message[key]) for key in _CALL_KEYS if key in message)
    return wired


def chat_body(
    model: str, messages: Messages, temperature: float | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    """A streamed chat-completions request: messages as they are, the parameters beside
    them; a temperature only when one is given (some models refuse any); the usage asked
    for."""
    if taken := sorted(params.keys() & _OURS):
        raise InvalidRequestError(
            f"The parameter(s) {', '.join(taken)} cannot be given as parameters: the "
            "model, the messages and streaming are the request's own, and the "
            "temperature has its own option (-t, or temperature=)."
        )
    if isinstance(params.get("n"), int) and params["n"] > 1:
        raise InvalidRequestError(
            f"-p n={params['n']} asks for {params['n']} answers at once, and a cell shows one. "
            "To compare answers, ask several models at once (-m A -m B), or run the cell "
            "again."
        )
    usage = {"include_usage": True}
    if isinstance(params.get("stream_options"), Mapping):
        usage |= params["stream_options"]
    body: dict[str, Any] = {
        "model": model,
        "messages": [_wire(m) for m in messages],
        "stream": True,
        **params,
        "stream_options": usage,
    }
    if temperature is not None:
        body["temperature"] = temperature
    return body


_NO_KEY = (
    f"No API key was sent: if the server needs one, set {API_KEY_ENV} or enter it with "
    "%flowgpt_key."
)
#: What to do about a refusal when no key was sent (some servers fail with a 500).
_NO_KEY_ADVICE = {
    **OpenAICompatible.status_advice,
    401: _NO_KEY,
    403: _NO_KEY,
    500: f"The server failed. {_NO_KEY}",
}


def _headers(api_key: str | None, *, accept: str) -> dict[str, str]:
    key = api_key or os.environ.get(API_KEY_ENV)
    headers = {"Content-Type": "application/json", "Accept": accept}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers
