"""A local server that speaks FlowGPT's anonymous chat protocol, for tests, demos and offline work.

    python -m flowgpt_magic.server [--host 127.0.0.1] [--port 0] [--delay 0.03]

It checks what a client sends as strictly as the protocol document describes (signature
headers, every body field) and rejects a bad request with a 400 that says what was wrong.
A good request gets a deterministic answer, clearly labelled as offline, that echoes the
question and the context it came with, streamed as NDJSON one word at a time.

``LocalServer`` runs the same server in a background thread, for tests and notebooks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from .provider import GREETING, FlowGpt

PATH = "/v3/chat-anonymous"
MAX_CLOCK_SKEW = 300  # seconds a request's x-timestamp may be off
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DEVICE_ID = re.compile(r"f-[a-z0-9]{19}")
_PIECE = re.compile(r"\S+\s*")


@dataclass
class ServerOptions:
    #: Seconds to wait before each piece (makes streaming visible).
    delay: float = 0.0
    #: Pad every answer to at least this many pieces (long answers for tests).
    min_pieces: int = 0


@dataclass
class ReceivedRequest:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class ServerState:
    """What the server saw. Safe to read from another thread; ``wait_for`` blocks on it."""

    options: ServerOptions = field(default_factory=ServerOptions)
    requests: list[ReceivedRequest] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    completed: int = 0
    disconnects: int = 0
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


def make_app(options: ServerOptions | None = None) -> web.Application:
    app = web.Application()
    app[STATE] = ServerState(options or ServerOptions())
    app.router.add_post(PATH, _chat)
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

    received = ReceivedRequest(dict(request.headers), body)
    state.note(lambda s: s.requests.append(received))
    options = state.options
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
    await response.prepare(request)
    try:
        await response.write(_line({"event": "start", "data": {"model": body["model"]}}))
        for piece in answer_pieces(body, options.min_pieces):
            if options.delay:
                await asyncio.sleep(options.delay)
            await response.write(_line({"event": "text", "data": piece}))
        await response.write(_line({"event": "done"}))
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
    """The deterministic answer to a valid request body."""
    context = len(body["history"]) - 1  # the greeting is not context
    return (
        f"[Offline answer from the flowgpt-magic local server; model {body['model']}, "
        f"temperature {body['temperature']:g}.] You asked: «{_excerpt(body['question'])}». "
        f"Context: {context} earlier message{'s' if context != 1 else ''}; system message: "
        f"«{_excerpt(body['system'])}». No model runs here: this text streams word by word "
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
        "--min-pieces", type=int, default=0, help="pad answers to at least this many pieces"
    )
    args = parser.parse_args(argv)
    if args.delay < 0 or args.min_pieces < 0:
        parser.error("--delay and --min-pieces cannot be negative")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


async def _serve_forever(args: argparse.Namespace) -> None:
    app = make_app(ServerOptions(delay=args.delay, min_pieces=args.min_pieces))
    try:
        runner, url = await start_site(app, args.host, args.port)
    except OSError as error:
        raise SystemExit(f"Cannot listen on {args.host}:{args.port}: {error.strerror}.") from None
    print(f"flowgpt-magic local server listening; chat endpoint: {url}", flush=True)
    print(f"Use it with:  export FLOWGPT_API_URL={url}", flush=True)
    print("Stop it with Ctrl-C.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
