"""How a cell runs a coroutine to completion, and how the stop button cancels it.

In a Jupyter kernel the cell runs inside the kernel's own, already running asyncio loop. We
run the coroutine there, made re-entrant by nest-asyncio2 (applied the first time it is
needed, never at import), which keeps widget updates on the kernel thread. In terminal
IPython no loop runs while a cell executes, so we keep a private loop for the session.
That loop stands still between cells: whatever happened meanwhile (a server closing an idle
keep-alive connection, as uvicorn does after 5 s) is handled when it next runs, before the
coroutine starts, so that no request goes out on a connection the server has closed.

Ctrl-C / the kernel's interrupt arrives as SIGINT. Raising KeyboardInterrupt at an arbitrary
bytecode inside the loop could leave aiohttp half-closed, so while our coroutine runs, SIGINT
cancels its task instead (as ``asyncio.Runner`` does); the task unwinds, the connection
closes, and then KeyboardInterrupt is raised to the caller. A second SIGINT while the task
is unwinding raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

T = TypeVar("T")


class LoopRunner:
    """Runs coroutines for one IPython shell; owns a private loop when no loop is running."""

    def __init__(self) -> None:
        self._private_loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop cells run on: the kernel's (made re-entrant), else our private one."""
        loop = _running_loop()
        if loop is None:
            return self._loop()
        _make_reentrant(loop)
        return loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        import asyncio  # here, not at import time: loading the extension must stay cheap

        loop = self.loop()
        if loop is self._private_loop:
            try:
                loop.run_until_complete(_settle())
            except BaseException:
                coroutine.close()  # (never started: nothing to unwind)
                raise
        task = loop.create_task(coroutine)
        interrupted = threading.Event()
        try:
            with _sigint_cancels(task, loop, interrupted):
                return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            raise
        except KeyboardInterrupt:
            # SIGINT arrived outside our handler's reach (not the main thread): still make
            # sure the task is finished, so it does not go on streaming after the cell ended.
            _cancel_and_wait(task, loop)
            raise

    def close(self) -> None:
        """Close the private loop, if one was made (on extension unload)."""
        loop, self._private_loop = self._private_loop, None
        if loop is not None and not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        if self._private_loop is None or self._private_loop.is_closed():
            self._private_loop = asyncio.new_event_loop()
        return self._private_loop


#: Seconds the private loop runs before a coroutine: one wait for I/O, after which every
#: event that arrived while it stood still has been handled (a closed connection's close
#: takes two steps of the loop: the end of the stream, then the protocol's lost connection).
SETTLE = 0.001


async def _settle() -> None:
    import asyncio

    await asyncio.sleep(SETTLE)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _make_reentrant(loop: asyncio.AbstractEventLoop) -> None:
    if getattr(loop, "_nest_patched", False):
        return
    import nest_asyncio2

    nest_asyncio2.apply(loop)


def _cancel_and_wait(task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop) -> None:
    import asyncio

    if task.done():
        return
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        loop.run_until_complete(task)


@contextmanager
def _sigint_cancels(
    task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, interrupted: threading.Event
) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set() or task.done():
            raise KeyboardInterrupt
        interrupted.set()
        task.cancel()
        # The handler runs while select() waits; wake the loop so it sees the cancellation.
        loop.call_soon_threadsafe(lambda: None)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
