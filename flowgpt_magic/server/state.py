"""What the local server is told (its options) and what it saw (its state)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: FlowGPT's chat endpoint, as the server serves it.
PATH = "/v3/chat-anonymous"


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
    #: Keep each request (and each rejection's reason) in the state, for tests to read; the
    #: command-line server keeps none (only counts), however long it runs.
    record: bool = True
    #: Commit ``fault`` on only this many requests, then answer normally (0: on all).
    fault_times: int = 0
    #: The Retry-After (seconds) sent with an injected 429 or 503.
    retry_after: float = 1.0
    #: When set, every answer holds after its third piece until this event is set: tests
    #: decide when answers end, instead of racing a clock.
    hold: threading.Event | None = None
    #: When set, a request that comes while this many answers stream already gets a 429
    #: (with Retry-After): a server with room for so many at once.
    capacity: int | None = None


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
    #: Answers streaming now, and the most that ever streamed at once.
    answering: int = 0
    most_at_once: int = 0
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
