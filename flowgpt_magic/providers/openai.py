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
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from traitlets import Unicode, validate
from traitlets.config import Configurable

from ..exceptions import (
    FlowGptError,
    InvalidRequestError,
    RequestFailedError,
    ResponseFormatError,
    Secret,
    SecretURL,
)
from .base import Provider
from .checks import Messages
from .events import Event, Finish, Reasoning, ServedBy, Usage
from .http import HttpRequest, get_json, resolve_endpoint
from .lines import decode_json_line

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
    roles = ("system", "developer", "user", "assistant")
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
    usage = {"include_usage": True}
    if isinstance(params.get("stream_options"), Mapping):
        usage |= params["stream_options"]
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
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


class SseParser:
    """Server-sent events carrying chat-completion chunks; ``data: [DONE]`` ends them.

    A chunk's ``choices[0].delta`` carries the answer (``content``) and, from servers that
    parse it out, the reasoning (``reasoning_content``: llama.cpp, vLLM, DeepSeek;
    ``reasoning``: OpenRouter and others); ``finish_reason`` says why it ended; ``usage``
    comes in the last chunk, or one of its own with no choices; ``model`` in every chunk.
    A server without a reasoning parser leaves a ``<think>`` block at the start of the
    content; it is taken out as reasoning too. After reasoning, the blank lines a model
    writes before its answer are dropped; otherwise the content is as it came.
    """

    text_only: ClassVar[bool] = False

    def __init__(self) -> None:
        self.done = False
        self.error: FlowGptError | None = None
        self._data: list[bytes] = []
        self._model: str | None = None
        self._inline: InlineReasoning | None = InlineReasoning()  # until the answer shows
        self._answered = False  # some of the answer's text has come
        self._reasoned = False  # some reasoning has

    def parse(self, block: bytes) -> list[Event]:
        events: list[Event] = []
        for line in block.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line:  # a blank line ends an event
                try:
                    self._dispatch(events)
                except FlowGptError as error:
                    self.error = error  # raised after the events before it
                    break
                if self.done:
                    break
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            # Comments (":"), "event:", "id:" and "retry:" lines carry nothing.
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        self._dispatch(events)
        self._end_of_content(events)
        return events

    def _end_of_content(self, events: list[Event]) -> None:
        """The answer is over: what was held back of its start is all there is."""
        if self._inline is not None:
            self._answer(self._inline.finish(), events)

    def _dispatch(self, events: list[Event]) -> None:
        data, self._data = b"\n".join(self._data), []
        if not data:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            self._end_of_content(events)
            return
        self._read_chunk(decode_json_line(data), events)

    def _read_chunk(self, chunk: Any, events: list[Event]) -> None:
        if not isinstance(chunk, dict) or not ("choices" in chunk or "usage" in chunk):
            if isinstance(chunk, dict) and "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                message = str(message).strip().rstrip(".")
                raise RequestFailedError(
                    f"The server stopped the answer with an error: {message}. What had "
                    "arrived is kept. Try again."
                )
            raise ResponseFormatError(
                f"The server sent an event that is not a chat-completion chunk "
                f"({json.dumps(chunk)[:80]!r})."
            )
        model = chunk.get("model")
        if isinstance(model, str) and model and model != self._model:
            self._model = model
            events.append(ServedBy(model))
        choices = chunk.get("choices") or []
        choice = choices[0] if isinstance(choices, list) and choices else {}
        if not isinstance(choice, dict):
            raise ResponseFormatError("The server sent a chunk whose choice is not an object.")
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise ResponseFormatError("The server sent a delta that is not an object.")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            events.append(Reasoning(_string(reasoning, "reasoning")))
            self._reasoned = True
        content = delta.get("content")
        if content:
            content = _string(content, "content")
            if self._inline is None and self._answered:
                events.append(content)  # (the answer's middle: as it comes)
            else:
                self._answer(
                    [content] if self._inline is None else self._inline.feed(content), events
                )
        if choice.get("finish_reason"):
            events.append(Finish(str(choice["finish_reason"])))
        if isinstance(usage := chunk.get("usage"), dict):
            events.append(usage_of(usage))

    def _answer(self, found: list[Event], events: list[Event]) -> None:
        """Add what the content held: reasoning, or text; after reasoning, less the blank
        lines a model writes before its answer (otherwise the content is as it came)."""
        if self._inline is not None and self._inline.opened:
            self._reasoned = True  # (even by an empty <think></think>)
        for event in found:
            if isinstance(event, Reasoning):
                self._reasoned = True
            elif isinstance(event, str) and not self._answered:
                event = event.lstrip("\r\n") if self._reasoned else event
                self._answered = bool(event)
            if event:
                events.append(event)
        if self._inline is not None and self._inline.decided:
            self._inline = None


class InlineReasoning:
    """A ``<think>`` block at the start of an answer's content, taken out as reasoning.

    Until the content shows whether it opens with the tag, it is held back (a few
    characters); inside the block, only what could be the start of the closing tag is.
    """

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._held = ""
        self.opened = False  # the content opened with the tag
        self.decided = False  # the block is over, or there is none: content is all answer

    def feed(self, text: str) -> list[Event]:
        held = self._held + text
        if not self.opened:
            start = held.lstrip()
            if start.startswith(self.OPEN):
                self.opened, held = True, start[len(self.OPEN) :]
            elif self.OPEN.startswith(start):  # ("", "<", "<thi": too soon to say)
                self._held = held
                return []
            else:
                self._held, self.decided = "", True
                return [held]
        end = held.find(self.CLOSE)
        if end >= 0:
            self._held, self.decided = "", True
            thought, rest = held[:end], held[end + len(self.CLOSE) :]
            return [event for event in (Reasoning(thought) if thought else "", rest) if event]
        keep = _partial_suffix(held, self.CLOSE)
        self._held = held[len(held) - keep :]
        thought = held[: len(held) - keep]
        return [Reasoning(thought)] if thought else []

    def finish(self) -> list[Event]:
        """What was held back when the content ended."""
        held, self._held = self._held, ""
        self.decided = True
        if not held:
            return []
        return [Reasoning(held) if self.opened else held]


def _partial_suffix(text: str, tag: str) -> int:
    """How long the longest end of ``text`` is that could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ResponseFormatError(f"The server sent a delta whose {name} is not a string.")
    return value


def usage_of(usage: dict[str, Any]) -> Usage:
    """OpenAI's usage object (``prompt_tokens``, ``completion_tokens``, and details)."""

    def count(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    details = usage.get("completion_tokens_details")
    cost = usage.get("cost")
    return Usage(
        input_tokens=count(usage.get("prompt_tokens")),
        output_tokens=count(usage.get("completion_tokens")),
        reasoning_tokens=count(details.get("reasoning_tokens"))
        if isinstance(details, dict)
        else None,
        cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )
