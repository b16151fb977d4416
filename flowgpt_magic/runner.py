"""Where every answer runs: one thread of the shell's own, with one asyncio loop and one
aiohttp session, for answers of every kind (one, several at once, in the background).

The user's kernel is left as it was. Nothing runs on the kernel's loop, nothing makes it
re-entrant (no nest-asyncio: it replaces asyncio's Task and Future for the whole session),
and nothing changes asyncio's policy: a cell's own asyncio code, top-level ``await`` and
``%autoawait`` run as in a kernel that never answered. A cell that asks waits for its
answer on the thread it runs on; a background answer is not waited for; nothing else
differs.

Each answer runs in a copy of the asking cell's context (``contextvars``): ipykernel keeps
the request a message belongs to there, so what an answer displays, prints or updates
goes to the cell that asked, whichever thread sends it.

The stop button (the kernel's interrupt) and Ctrl-C arrive as SIGINT on the thread that
waits: while it waits, SIGINT cancels the answer (on its loop, through
``call_soon_threadsafe``), the answer unwinds and closes its connection, and then the wait
ends with ``KeyboardInterrupt``. A second SIGINT ends the wait at once.
"""

from __future__ import annotations

import concurrent.futures
import queue
import signal
import threading
from collections.abc import Callable, Coroutine
from contextlib import suppress
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    import asyncio

    import aiohttp

T = TypeVar("T")

#: Seconds an answer may take to unwind once it is cancelled (it closes a connection).
UNWIND = 10.0
#: Seconds the waiting thread sleeps at most at a time. A signal sent to the process
#: reaches the main thread and wakes it at once; one that landed on another thread is
#: only handled once the main thread runs again: this bounds how long that takes.
WAKE = 0.1


class Job(Generic[T]):
    """An answer (any coroutine) running on the runner's loop: its outcome, and its stop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._loop = loop
        self._task: asyncio.Task[T] | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """Stop it (from any thread): it is cancelled on its loop, and unwinds there."""
        self._cancelled = True
        with suppress(RuntimeError):  # (the loop closed: it is over already)
            self._loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:  # (on the loop)
        if self._task is not None:
            self._task.cancel()

    def _start(self, coroutine: Coroutine[Any, Any, T], context: Any) -> None:  # (on the loop)
        if self._cancelled:
            coroutine.close()
            self.future.cancel()
            return
        self._task = self._loop.create_task(coroutine, context=context)
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[T]) -> None:  # (on the loop)
        if task.cancelled():
            self.future.cancel()
        elif (error := task.exception()) is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(task.result())

    @property
    def done(self) -> bool:
        return self.future.done()


class Runner:
    """The thread, loop and HTTP session that every answer of one shell runs on; made on
    the first answer (loading the extension starts nothing), ended by ``close``."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._jobs: set[Job[Any]] = set()
        self._lock = threading.Lock()
        #: What answers ask the waiting thread to run (a function call of the notebook's),
        #: and what wakes that thread: set when a job ends, or something is asked.
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Any, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Job[T]:
        """Start ``coroutine`` on the runner's loop, in a copy of the caller's context."""
        import contextvars

        loop = self._started()
        job: Job[T] = Job(loop)
        self._jobs.add(job)
        job.future.add_done_callback(lambda _: self._jobs.discard(job))
        loop.call_soon_threadsafe(job._start, coroutine, contextvars.copy_context())
        return job

    def wait(self, job: Job[T]) -> T:
        """The job's result, once it has one; SIGINT meanwhile (the stop button, Ctrl-C)
        cancels it, and once it has unwound, ``KeyboardInterrupt`` is raised."""
        interrupted, wake = threading.Event(), self._wake
        job.future.add_done_callback(lambda _: wake.set())
        with _sigint_cancels(job, interrupted) as sigint:
            try:
                while not job.done:
                    wake.wait(WAKE)
                    wake.clear()
                    self._run_calls(sigint)
                return job.future.result()
            except concurrent.futures.CancelledError:
                if interrupted.is_set():
                    raise KeyboardInterrupt from None
                raise
            except KeyboardInterrupt:  # (a second SIGINT: stop waiting, but stop it still)
                job.cancel()
                with suppress(BaseException):
                    job.future.result(timeout=UNWIND)
                raise

    async def on_waiting_thread(self, function: Callable[[], T]) -> T:
        """``function``'s value, run on the thread that waits for the answer: the cell's,
        where the notebook's code runs. The stop button stops it there (KeyboardInterrupt)
        and the answer with it. (Not for a background answer: nothing waits for it.)"""
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((function, future, loop))
        self._wake.set()
        return await future

    def _run_calls(self, sigint: _sigint_cancels) -> None:
        while True:
            try:
                function, future, loop = self._calls.get_nowait()
            except queue.Empty:
                return
            sigint.in_call = True
            try:
                value = function()
            except KeyboardInterrupt:
                continue  # (the answer is cancelled: its future goes with it)
            except BaseException as error:
                loop.call_soon_threadsafe(_settle, future, None, error)
            else:
                loop.call_soon_threadsafe(_settle, future, value, None)
            finally:
                sigint.in_call = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine``'s result, run on the runner's loop (the stop button stops it)."""
        return self.wait(self.submit(coroutine))

    def session(self) -> aiohttp.ClientSession:
        """The HTTP session every answer shares (connections are reused between cells)."""
        if self._session is None or self._session.closed:

            async def made() -> aiohttp.ClientSession:
                import aiohttp

                return aiohttp.ClientSession()

            self._session = self.run(made())
        return self._session

    @property
    def jobs(self) -> list[Job[Any]]:
        """The jobs that have not ended."""
        return list(self._jobs)

    def close(self) -> None:
        """Stop every job, close the session, end the thread (on extension unload)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        for job in list(self._jobs):
            job.cancel()
        for job in list(self._jobs):
            with suppress(BaseException):
                job.future.result(timeout=UNWIND)
        session, self._session = self._session, None

        async def wound_up() -> None:
            if session is not None:
                await session.close()
            await loop.shutdown_asyncgens()

        import asyncio

        with suppress(BaseException):
            asyncio.run_coroutine_threadsafe(wound_up(), loop).result(timeout=UNWIND)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=UNWIND)
        if not thread.is_alive():
            loop.close()

    def _started(self) -> asyncio.AbstractEventLoop:
        import asyncio

        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="flowgpt-answers", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop


def _settle(future: Any, value: Any, error: BaseException | None) -> None:  # (on the loop)
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class _sigint_cancels:
    """While a job is waited for on the main thread, SIGINT cancels it."""

    def __init__(self, job: Job[Any], interrupted: threading.Event) -> None:
        self._job, self._interrupted = job, interrupted
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None
        self._set = threading.current_thread() is threading.main_thread()
        #: A function of the notebook runs on this thread: SIGINT stops it too.
        self.in_call = False

    def __enter__(self) -> _sigint_cancels:
        if self._set:  # (signal handlers can only be set from the main thread)
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._set:  # (None: a handler not set from Python; the default, then)
            signal.signal(signal.SIGINT, self._previous or signal.SIG_DFL)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._interrupted.is_set() or self._job.done:
            raise KeyboardInterrupt
        self._interrupted.set()
        self._job.cancel()
        if self.in_call:
            raise KeyboardInterrupt
