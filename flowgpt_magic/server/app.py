"""The local server's application, and ``LocalServer``: the same in a background thread."""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from aiohttp import web

from . import flowgpt, openai
from .openai import OPENAI_PATH
from .state import PATH, STATE, ServerOptions, ServerState

#: Requests up to this size are read (aiohttp's default is 1 MiB): long prompts and
#: histories are the point of some tests.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def make_app(options: ServerOptions | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE] = ServerState(options or ServerOptions())
    app.router.add_post(PATH, flowgpt.chat)
    app.router.add_get(f"{OPENAI_PATH}/models", openai.models)
    app.router.add_post(f"{OPENAI_PATH}/chat/completions", openai.chat)
    app.router.add_get("/", _index)
    return app


async def _index(request: web.Request) -> web.Response:
    return web.Response(
        text=f"flowgpt-magic local server. POST {PATH} speaks FlowGPT's anonymous chat protocol.\n"
    )


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
