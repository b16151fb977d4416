"""A local server that speaks FlowGPT's anonymous chat protocol, and OpenAI's chat
completions, for tests, demos and offline work.

    python -m flowgpt_magic.server [--host 127.0.0.1] [--port 0] [--delay 0.03]

FlowGPT's protocol is served at ``/v3/chat-anonymous``: the server checks what a client sends
as strictly as the protocol document describes (signature headers, every body field) and
rejects a bad request with a 400 that says what was wrong. OpenAI's is served under ``/v1``
(``/v1/chat/completions``, streamed or not, and ``/v1/models``), with OpenAI's error shapes.
A good request gets a deterministic answer, clearly labelled as offline, that echoes the
question and the context it came with, streamed one word at a time.

``LocalServer`` runs the same server in a background thread, for tests and notebooks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from .providers.flowgpt import GREETING, FlowGpt

PATH = "/v3/chat-anonymous"
OPENAI_PATH = "/v1"
#: The models the OpenAI-compatible side serves; others get OpenAI's 404.
OPENAI_MODELS = ["gpt-4o-mini", "gpt-4o", "llama3.2"]
MAX_CLOCK_SKEW = 300  # seconds a request's x-timestamp may be off
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DEVICE_ID = re.compile(r"f-[a-z0-9]{19}")
_PIECE = re.compile(r"\s*\S+\s*")  # word by word, keeping every space and line break
#: A prompt whose first line is this gets the rest of itself back, word by word: a way to
#: see how any text (Markdown, code) streams and renders.
ECHO = "/echo"


@dataclass
class ServerOptions:
    #: Seconds to wait before each piece (makes streaming visible).
    delay: float = 0.0
    #: Seconds to wait, once, before the first piece, as a model does before its first word.
    first_delay: float = 0.0
    #: Pad every answer to at least this many pieces (long answers for tests).
    min_pieces: int = 0
    #: When set, the OpenAI-compatible side requires ``Authorization: Bearer <api_key>``.
    api_key: str | None = None
    #: A fault to commit on every request (see FAULTS); a request's ``x-flowgpt-fault``
    #: header or ``?fault=`` parameter overrides it.
    fault: str | None = None
    #: Keep each request in ``ServerState.requests`` (a long soak test may not want to).
    record: bool = True
    #: Commit ``fault`` on only this many requests, then answer normally (0: on all).
    fault_times: int = 0
    #: The Retry-After (seconds) sent with an injected 429 or 503.
    retry_after: float = 1.0


@dataclass
class ReceivedRequest:
    headers: dict[str, str]
    body: dict[str, Any]
    path: str = PATH


@dataclass
class ServerState:
    """What the server saw. Safe to read from another thread; ``wait_for`` blocks on it."""

    options: ServerOptions = field(default_factory=ServerOptions)
    requests: list[ReceivedRequest] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    completed: int = 0
    disconnects: int = 0
    faults_committed: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def note(self, change: Callable[[ServerState], None]) -> None:
        with self._changed:
            change(self)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[ServerState], bool], timeout: float) -> bool:
        """Block until ``predicate(state)`` holds or ``timeout`` seconds pass."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)


STATE = web.AppKey("state", ServerState)

#: Faults the server commits on request, so that clients' failures can be tested. The
#: content faults (malformed and after) are FlowGPT's; the others apply to both protocols.
FAULTS = {
    "status-NNN": "answer with HTTP status NNN (a 429 or 503 with Retry-After)",
    "html-NNN": "answer with status NNN and an HTML error page",
    "close": "close the connection before sending any headers",
    "hang": "send nothing at all, until the client gives up",
    "empty": "answer 200 with an empty body",
    "reset": "send three pieces, then reset the connection",
    "stall": "send three pieces, then nothing, until the client gives up",
    "malformed": "send three pieces, then a line that is not JSON",
    "long-line": "send three pieces, then a line longer than 1 MiB",
    "bad-utf8": "send three pieces, then a text event that is not UTF-8",
    "data-not-string": "send three pieces, then a text event whose data is a number",
    "trickle": "send the whole answer one byte at a time",
}
_FAULT_LINES = {
    "malformed": b"{not json}\n",
    "long-line": b'{"event": "text", "data": "' + b"x" * (1536 * 1024) + b'"}\n',
    "bad-utf8": b'{"event": "text", "data": "\xff\xfe"}\n',
    "data-not-string": b'{"event": "text", "data": 42}\n',
}
_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} Error</title></head>"
    "<body><h1>{status} Error</h1><p>The upstream server failed.</p></body></html>"
)


#: Requests up to this size are read (aiohttp's default is 1 MiB): long prompts and
#: histories are the point of some tests.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def make_app(options: ServerOptions | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE] = ServerState(options or ServerOptions())
    app.router.add_post(PATH, _chat)
    app.router.add_get(f"{OPENAI_PATH}/models", _openai_models)
    app.router.add_post(f"{OPENAI_PATH}/chat/completions", _openai_chat)
    app.router.add_get("/", _index)
    return app


async def _index(request: web.Request) -> web.Response:
    return web.Response(
        text=f"flowgpt-magic local server. POST {PATH} speaks FlowGPT's anonymous chat protocol.\n"
    )


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    problems = header_problems(request.headers)
    try:
        body = await request.json()
    except ValueError:
        body = None
        problems.append("the body is not JSON")
    else:
        problems += body_problems(body)
    if problems:
        reason = "; ".join(problems)
        state.note(lambda s: s.rejected.append(reason))
        return web.json_response({"error": f"Bad request: {reason}."}, status=400)

    if state.options.record:
        received = ReceivedRequest(dict(request.headers), body)
        state.note(lambda s: s.requests.append(received))
    fault = choose_fault(request)
    early = await _early_fault(request, fault)
    if early is not None:
        return early
    return await _stream(
        request,
        "application/x-ndjson; charset=utf-8",
        first=_line({"event": "start", "data": {"model": body["model"]}}),
        pieces=[
            _line({"event": "text", "data": piece})
            for piece in answer_pieces(body, state.options.min_pieces)
        ],
        last=_line({"event": "done"}),
        fault=fault,
    )


def choose_fault(request: web.Request) -> str | None:
    """The fault to commit on this request (counted; call once a request)."""
    state = request.app[STATE]
    fault = request.headers.get("x-flowgpt-fault") or request.query.get("fault")
    if fault is None and state.options.fault is not None:
        times = state.options.fault_times
        if not times or state.faults_committed < times:
            fault = state.options.fault
    if fault is not None:
        state.note(lambda s: setattr(s, "faults_committed", s.faults_committed + 1))
    return fault


async def _early_fault(request: web.Request, fault: str | None) -> web.StreamResponse | None:
    """Commit a fault that comes before the answer starts, if one is asked for."""
    if fault is None:
        return None
    kind, _, number = fault.partition("-")
    if kind in ("status", "html") and number.isdigit():
        status = int(number)
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = f"{request.app[STATE].options.retry_after:g}"
        if kind == "html":
            page = _HTML_PAGE.format(status=status)
            return web.Response(status=status, text=page, content_type="text/html", headers=headers)
        error = {"error": f"Injected fault: status {status}."}
        return web.json_response(error, status=status, headers=headers)
    if fault == "close":
        assert request.transport is not None
        request.transport.close()
        return web.Response()
    if fault == "hang":
        await _until_client_leaves(request)
        return web.Response()
    if fault == "empty":
        return web.Response(body=b"", content_type="application/x-ndjson")
    if fault in FAULTS:
        return None  # committed while streaming
    return web.json_response({"error": f"Unknown fault {fault!r}; see FAULTS."}, status=400)


async def _until_client_leaves(request: web.Request, cap: float = 300.0) -> None:
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP reset, as a crashed server or a proxy does."""
    assert request.transport is not None
    sock = request.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.abort()


async def _stream(
    request: web.Request,
    content_type: str,
    *,
    first: bytes,
    pieces: list[bytes],
    last: bytes,
    fault: str | None,
) -> web.StreamResponse:
    """Send ``first``, each piece after the configured delay, then ``last``; note the outcome.

    A fault asked for (see FAULTS) interrupts this after the third piece.
    """
    state = request.app[STATE]
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    try:
        if fault == "trickle":
            for byte in b"".join([first, *pieces, last]):
                await response.write(bytes([byte]))
            pieces, first, last = [], b"", b""
        await response.write(first)
        if state.options.first_delay:
            await asyncio.sleep(state.options.first_delay)
        for index, piece in enumerate(pieces):
            if state.options.delay:
                await asyncio.sleep(state.options.delay)
            if index == 3 and fault in ("reset", "stall", *_FAULT_LINES):
                if fault == "reset":
                    _reset(request)
                    raise ConnectionResetError
                if fault == "stall":
                    await _until_client_leaves(request)
                    raise ConnectionResetError
                await response.write(_FAULT_LINES[fault])
            await response.write(piece)
        await response.write(last)
        await response.write_eof()
    except ConnectionError:  # the client went away (stop button, break): normal, no traceback
        state.note(lambda s: setattr(s, "disconnects", s.disconnects + 1))
        return response
    except asyncio.CancelledError:
        state.note(lambda s: setattr(s, "disconnects", s.disconnects + 1))
        raise
    state.note(lambda s: setattr(s, "completed", s.completed + 1))
    return response


def _line(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode() + b"\n"


# -- the OpenAI-compatible side -----------------------------------------------------------


def _openai_error(status: int, message: str, code: str | None = None) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def _openai_key_refused(request: web.Request) -> web.Response | None:
    key = request.app[STATE].options.api_key
    if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
        return _openai_error(401, "Incorrect API key provided.", "invalid_api_key")
    return None


async def _openai_models(request: web.Request) -> web.Response:
    refused = _openai_key_refused(request)
    if refused is not None:
        return refused
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "flowgpt-magic-local"}
        for model in OPENAI_MODELS
    ]
    return web.json_response({"object": "list", "data": data})


async def _openai_chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    refused = _openai_key_refused(request)
    if refused is not None:
        return refused
    try:
        body = await request.json()
    except ValueError:
        return _openai_error(400, "The body is not JSON.")
    problems = openai_body_problems(body)
    if problems:
        reason = "; ".join(problems)
        state.note(lambda s: s.rejected.append(reason))
        return _openai_error(400, f"Bad request: {reason}.")
    if body["model"] not in OPENAI_MODELS:
        return _openai_error(
            404,
            f"The model `{body['model']}` does not exist or you do not have access to it.",
            "model_not_found",
        )
    if state.options.record:
        received = ReceivedRequest(dict(request.headers), body, f"{OPENAI_PATH}/chat/completions")
        state.note(lambda s: s.requests.append(received))
    fault = choose_fault(request)
    early = await _early_fault(request, fault)
    if early is not None:
        return early
    pieces = answer_pieces(body, state.options.min_pieces)
    if not body.get("stream"):
        state.note(lambda s: setattr(s, "completed", s.completed + 1))
        message = {"role": "assistant", "content": "".join(pieces)}
        return web.json_response(
            _completion(body, "chat.completion", {"message": message, "finish_reason": "stop"})
        )

    def event(choice: dict[str, Any]) -> bytes:
        chunk = _completion(body, "chat.completion.chunk", choice)
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    return await _stream(
        request,
        "text/event-stream; charset=utf-8",
        first=event({"delta": {"role": "assistant", "content": ""}, "finish_reason": None}),
        pieces=[event({"delta": {"content": p}, "finish_reason": None}) for p in pieces],
        last=event({"delta": {}, "finish_reason": "stop"}) + b"data: [DONE]\n\n",
        fault=fault,
    )


def _completion(body: Mapping[str, Any], kind: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-flowgpt-magic-local",
        "object": kind,
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, **choice}],
    }


_OPENAI_ROLES = ("system", "developer", "user", "assistant")


def openai_body_problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = []
    if not (isinstance(body.get("model"), str) and body["model"]):
        problems.append("model must be a non-empty string")
    messages = body.get("messages")
    if not (isinstance(messages, list) and messages):
        problems.append("messages must be a non-empty list")
    else:
        for index, message in enumerate(messages):
            if not (
                isinstance(message, dict)
                and message.get("role") in _OPENAI_ROLES
                and isinstance(message.get("content"), str)
            ):
                problems.append(f"messages[{index}] must have a role and string content")
                break
    temperature = body.get("temperature", 1)
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and 0 <= temperature <= 2
    ):
        problems.append("temperature must be a number from 0 to 2")
    if not isinstance(body.get("stream", False), bool):
        problems.append("stream must be true or false")
    return problems


def header_problems(headers: Mapping[str, str]) -> list[str]:
    problems = []
    authorization = headers.get("Authorization", "")
    timestamp = headers.get("x-timestamp", "")
    nonce = headers.get("x-nonce", "")
    if not authorization.startswith("Bearer "):
        problems.append("the Authorization header must be 'Bearer <token>' ('Bearer null')")
    if not timestamp.isdigit():
        problems.append("x-timestamp must be Unix time in whole seconds")
    elif abs(time.time() - int(timestamp)) > MAX_CLOCK_SKEW:
        problems.append(f"x-timestamp is more than {MAX_CLOCK_SKEW} s away from the server clock")
    if not _HEX32.fullmatch(nonce):
        problems.append("x-nonce must be 32 characters of 0-9a-f")
    expected = hashlib.md5(
        f"{timestamp}-{nonce}-{authorization}".encode(), usedforsecurity=False
    ).hexdigest()
    if headers.get("x-signature") != expected:
        problems.append("x-signature is not md5('{x-timestamp}-{x-nonce}-{Authorization}')")
    if not _DEVICE_ID.fullmatch(headers.get("x-flow-device-id", "")):
        problems.append("x-flow-device-id must be 'f-' and 19 characters of a-z0-9")
    if not headers.get("Content-Type", "").startswith("application/json"):
        problems.append("Content-Type must be application/json")
    return problems


_EXACT_FIELDS: dict[str, Any] = {
    "nsfw": False,
    "documentIds": [],
    "chatFileDocumentIds": [],
    "generateImage": False,
    "generateAudio": False,
}
_FIELDS = {"model", "question", "history", "system", "temperature", "promptId", *_EXACT_FIELDS}


def body_problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = []
    missing = sorted(_FIELDS - body.keys())
    unexpected = sorted(body.keys() - _FIELDS)
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected field(s) {', '.join(unexpected)}")
    model = body.get("model")
    if "model" in body and model not in FlowGpt.models:
        problems.append(f"model {model!r} is not a FlowGPT model name (aliases are resolved)")
    if "promptId" in body and body["promptId"] != f"model-{model}":
        problems.append("promptId must be 'model-' followed by the model")
    if "question" in body and not (isinstance(body["question"], str) and body["question"]):
        problems.append("question must be a non-empty string")
    if "system" in body and not (isinstance(body["system"], str) and body["system"]):
        problems.append("system must be a non-empty string")
    temperature = body.get("temperature")
    if "temperature" in body and not (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and 0 <= temperature <= 2
    ):
        problems.append("temperature must be a number from 0 to 2")
    if "history" in body:
        problems += _history_problems(body["history"])
    problems += [
        f"{name} must be {json.dumps(value)}"
        for name, value in _EXACT_FIELDS.items()
        if name in body and body[name] != value
    ]
    return problems


def _history_problems(history: Any) -> list[str]:
    if not isinstance(history, list) or not history or history[0] != GREETING:
        return ["history must be a list that starts with the assistant's greeting"]
    for index, message in enumerate(history):
        if not (
            isinstance(message, dict)
            and set(message) == {"role", "content"}
            and message["role"] in ("user", "assistant")
            and isinstance(message["content"], str)
        ):
            return [f"history[{index}] must be {{'role': 'user'|'assistant', 'content': str}}"]
    return []


def offline_answer(body: Mapping[str, Any]) -> str:
    """The deterministic answer to a valid request body, FlowGPT's or OpenAI's."""
    if "messages" in body:  # OpenAI's: the messages as they are
        messages = body["messages"]
        question = messages[-1]["content"]
        context = sum(1 for m in messages[:-1] if m["role"] not in ("system", "developer"))
        system = "\n".join(m["content"] for m in messages if m["role"] in ("system", "developer"))
        temperature = body.get("temperature", 1)
    else:  # FlowGPT's: folded, with a greeting that is not context
        question, system, temperature = body["question"], body["system"], body["temperature"]
        context = len(body["history"]) - 1
    if question.startswith(ECHO + "\n"):
        return str(question[len(ECHO) + 1 :])
    return (
        f"[Offline answer from the flowgpt-magic local server; model {body['model']}, "
        f"temperature {temperature:g}.] You asked: «{_excerpt(question)}». "
        f"Context: {context} earlier message{'s' if context != 1 else ''}; system message: "
        f"«{_excerpt(system or '(none)')}». No model runs here: this text streams word by word "
        "so that you can try flowgpt-magic without a network."
    )


def answer_pieces(body: Mapping[str, Any], min_pieces: int = 0) -> list[str]:
    pieces = _PIECE.findall(offline_answer(body))
    if len(pieces) < min_pieces:
        pieces[-1] += " Counting on: "
        pieces += [f"{n} " for n in range(1, min_pieces - len(pieces) + 1)]
    return pieces


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; returns the runner (to clean up) and the chat endpoint URL."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    if ":" in bound_host:
        bound_host = f"[{bound_host}]"
    return runner, f"http://{bound_host}:{bound_port}{PATH}"


class LocalServer:
    """The local server in a background thread: ``with LocalServer() as server: server.url``."""

    def __init__(
        self, *, host: str = "127.0.0.1", port: int = 0, options: ServerOptions | None = None
    ) -> None:
        self.app = make_app(options)
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name="flowgpt-local-server", daemon=True
        )
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.url = ""

    @property
    def state(self) -> ServerState:
        return self.app[STATE]

    def start(self) -> LocalServer:
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the local server did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the local server could not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=30)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            runner, self.url = await start_site(self.app, self._host, self._port)
        except OSError as error:
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flowgpt_magic.server",
        description="Serve FlowGPT's anonymous chat protocol locally, with offline answers.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument(
        "--delay", type=float, default=0.03, help="seconds before each piece (default 0.03)"
    )
    parser.add_argument(
        "--first-delay", type=float, default=0.0, help="seconds before the first piece"
    )
    parser.add_argument(
        "--min-pieces", type=int, default=0, help="pad answers to at least this many pieces"
    )
    parser.add_argument(
        "--fault",
        metavar="FAULT",
        help="commit this fault on every request: "
        + "; ".join(f"{name}: {what}" for name, what in FAULTS.items()),
    )
    args = parser.parse_args(argv)
    if min(args.delay, args.first_delay, args.min_pieces) < 0:
        parser.error("--delay, --first-delay and --min-pieces cannot be negative")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


async def _serve_forever(args: argparse.Namespace) -> None:
    app = make_app(
        ServerOptions(
            delay=args.delay,
            first_delay=args.first_delay,
            min_pieces=args.min_pieces,
            fault=args.fault,
        )
    )
    try:
        runner, url = await start_site(app, args.host, args.port)
    except OSError as error:
        raise SystemExit(f"Cannot listen on {args.host}:{args.port}: {error.strerror}.") from None
    print(f"flowgpt-magic local server listening; chat endpoint: {url}", flush=True)
    print(f"Use it with:  export FLOWGPT_API_URL={url}", flush=True)
    base = url.removesuffix(PATH) + OPENAI_PATH
    print(f"OpenAI-compatible too:  export OPENAI_BASE_URL={base}", flush=True)
    print("Stop it with Ctrl-C.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
