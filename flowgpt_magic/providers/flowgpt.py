"""FlowGpt: FlowGPT's anonymous chat protocol as an async generator of text pieces.

The wire format is described in ``docs/flowgpt-protocol.md`` of the project's shared notes:
signed headers, the history and system message folded into one JSON body, and an NDJSON
stream whose ``{"event": "text", "data": ...}`` lines carry the answer.

This module knows nothing of IPython. aiohttp is imported on first use.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from ..exceptions import FlowGptError, InvalidRequestError, ResponseFormatError
from .base import Provider
from .checks import Messages
from .events import Event
from .http import HttpRequest, resolve_endpoint
from .lines import PartialBlockError, decode_json_lines

#: Environment variable that overrides the endpoint (a full URL of the chat endpoint).
API_URL_ENV = "FLOWGPT_API_URL"
DEFAULT_SYSTEM_MESSAGE = "You are helpful assistant. Follow the user's instructions carefully."
#: The protocol requires a temperature; this one is sent when none is given.
DEFAULT_TEMPERATURE = 0.7
GREETING = {"role": "assistant", "content": "Hello, how can I help you today?"}
ANONYMOUS_AUTHORIZATION = "Bearer null"
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
_DEVICE_ID_ALPHABET = string.ascii_lowercase + string.digits


def upstream_gone() -> str:
    """What is said when FlowGPT's own endpoint fails: that it is gone, and first the way
    that works here (the local model, when it is installed)."""
    from ..llama import local_model_installed

    gone = "FlowGPT's public endpoint has not worked since 2024 (g4f removed it in 2025)."
    local = "a model on this computer, installed here: %flowgpt_model local"
    server = "an OpenAI-compatible server: -m openai:MODEL, with %config OpenAI.base_url"
    if local_model_installed():
        return f"{gone} Ask {local}; or {server}."
    return f"{gone} Ask {server}; or a model on this computer (pip install 'flowgpt-magic[local]')."


class FlowGpt(Provider):
    """FlowGPT's anonymous chat endpoint.

    Upstream (g4f) marked this provider as not working in 2024; the endpoint is therefore
    configurable: ``api_url=`` per call, or the ``FLOWGPT_API_URL`` environment variable,
    which the bundled local server (``python -m flowgpt_magic.server``) prints.
    """

    url = "https://flowgpt.com/chat"
    api_endpoint: ClassVar[str] = "https://prod-backend-k8s.flowgpt.com/v3/chat-anonymous"
    working = False
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
    options = ("api_url",)
    endpoint_hint = f"{API_URL_ENV} or api_url"
    status_advice: ClassVar[dict[int, str]] = {
        400: "The server rejected the request as malformed.",
        401: "The endpoint refused anonymous access.",
        403: "The endpoint refused anonymous access.",
        404: f"Check the endpoint URL ({API_URL_ENV} or api_url).",
        429: "The server is rate limiting; wait a little and try again.",
    }

    @classmethod
    def available(cls, api_url: str | None = None, **options: Any) -> bool:
        """FlowGPT's own endpoint is gone; another that speaks its protocol (the bundled
        server) answers."""
        try:
            return cls.endpoint(api_url) != cls.api_endpoint
        except FlowGptError:
            return False

    @classmethod
    def unavailable(cls, **options: Any) -> str:
        return "its public endpoint has not worked since 2024"

    @classmethod
    def endpoint(cls, api_url: str | None = None, **options: Any) -> str:
        """The chat endpoint in use: ``api_url``, else ``$FLOWGPT_API_URL``, else FlowGPT's."""
        return resolve_endpoint(
            api_url, API_URL_ENV, cls.api_endpoint, "http://127.0.0.1:8765/v3/chat-anonymous"
        )

    @classmethod
    def prepare(
        cls,
        model: str,
        messages: Messages,
        temperature: float | None,
        params: Mapping[str, Any],
        api_url: str | None = None,
        **options: Any,
    ) -> HttpRequest:
        if "response_format" in params:
            raise InvalidRequestError(
                "FlowGPT's protocol cannot ask for JSON or for a schema (-f json, --schema): "
                "it takes a prompt and a temperature alone. Nothing was sent. Ask an "
                "OpenAI-compatible model (-m openai:MODEL) or the local one (-m local)."
            )
        if "tools" in params:
            raise InvalidRequestError(
                "FlowGPT's protocol has no tools (--tools): it carries text alone. Nothing "
                "was sent. Ask an OpenAI-compatible model (-m openai:MODEL) that calls "
                "functions."
            )
        if params:
            raise InvalidRequestError(
                f"FlowGPT's protocol has no parameter {', '.join(params)}: it takes the "
                "temperature alone. Leave them out, or ask an OpenAI-compatible model "
                "(-m openai:MODEL)."
            )
        temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
        body = build_body(model, messages, temperature)
        url = cls.endpoint(api_url=api_url)
        advice = upstream_gone() if url == cls.api_endpoint else ""
        return HttpRequest(url, signed_headers(), body, advice=advice)

    @classmethod
    def parser(cls) -> NdjsonTextParser:
        return NdjsonTextParser()


def signed_headers(authorization: str = ANONYMOUS_AUTHORIZATION) -> dict[str, str]:
    """Request headers with a fresh timestamp, nonce, signature and device id."""
    import hashlib  # here, not at import time: loading the extension must stay cheap
    import secrets

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
    history = [GREETING] + [
        {"role": m["role"], "content": m["content"]} for m in messages[:-1] if m["role"] != "system"
    ]
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    return {
        "model": model,
        "nsfw": False,
        "question": messages[-1]["content"],
        "history": history,
        "system": system or DEFAULT_SYSTEM_MESSAGE,
        "temperature": temperature,
        "promptId": f"model-{model}",
        "documentIds": [],
        "chatFileDocumentIds": [],
        "generateImage": False,
        "generateAudio": False,
    }


class NdjsonTextParser:
    """FlowGPT's stream: one JSON object a line; ``{"event": "text", "data": str}`` is text,
    the only event the protocol has."""

    text_only: ClassVar[bool] = True
    done = False
    error: FlowGptError | None = None

    def parse(self, block: bytes) -> list[Event]:
        texts = text_event_data(block)
        if texts is not None:
            return list(filter(None, texts))  # (empty pieces are skipped, as below)
        # A block's first or last line may be another event (the stream's start or end),
        # and the lines between it a run of text events still.
        first, last = block.find(b"\n"), block.rfind(b"\n")
        texts = text_event_data(block[first + 1 : last]) if first < last else None
        if texts is None:
            return self._events(block)
        pieces = self._events(block[:first])
        if self.error is not None:
            return pieces
        pieces += filter(None, texts)
        return pieces + self._events(block[last + 1 :])

    def _events(self, block: bytes) -> list[Event]:
        """The text in ``block``, decoded as any JSON lines."""
        try:
            events = decode_json_lines(block)
        except PartialBlockError as partial:
            events, self.error = partial.values, partial.error
        pieces: list[Event] = []
        # The hot loop of a long answer: plain checks inline, no call per event.
        for event in events:
            if event.__class__ is dict and event.get("event") == "text":
                data = event.get("data")
                if data.__class__ is not str:
                    self.error = ResponseFormatError(
                        f"The server sent a text event whose data is {type(data).__name__}, "
                        "not a string; this is not a FlowGPT answer stream."
                    )
                    break
                if data:
                    pieces.append(data)
        return pieces

    def finish(self) -> list[Event]:
        return []


#: How a text event begins, as servers write it: Python's ``json.dumps`` and compact JSON
#: (JavaScript's ``JSON.stringify``).
_TEXT_EVENT_OPENINGS = (b'{"event": "text", "data": ', b'{"event":"text","data":')


def text_event_data(block: bytes) -> list[str] | None:
    """The data of every line of ``block`` when every line is a text event written the same
    way, exactly as decoding the lines would give it; otherwise None.

    The middle of a long answer is nothing but such lines, and decoding their strings alone,
    in one ``json.loads`` and without a dict a line, takes half the time of decoding the
    lines. Each line's opening and final "}" are cut off with bytes methods, and what is
    left of the lines is decoded as one array, joined with ",\\n". Why that is exact, when
    the array holds as many values as the block has lines and every value is a string: a
    string cannot span a raw line break, and each line ends with a '"' (before its "}"),
    which can only close a string on that line; with no lists or objects in the array, that
    string is one of its values. So each line holds one value, a string, and only blanks
    besides: the line is a text event with that string as its data.
    """
    for opening in _TEXT_EVENT_OPENINGS:
        if block.startswith(opening):
            break
    else:
        return None
    breaks = block.count(b"\n")
    boundary = b'"}\n' + opening  # the end of one line and the start of the next
    if not block.endswith(b'"}') or block.count(boundary) != breaks:
        return None
    array = b"[" + block[len(opening) : -1].replace(boundary, b'",\n') + b"]"
    try:
        texts = json.loads(array.decode("utf-8"))
    except ValueError:
        return None
    # set(map(type, ...)) checks every value's type without a Python step a value.
    if len(texts) != breaks + 1 or not set(map(type, texts)) <= {str}:
        return None
    return texts  # type: ignore[no-any-return]
