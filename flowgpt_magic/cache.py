"""Answers kept on disk (``FlowGptMagics.cache``), so that a notebook run again gets the
same answers at once, and pays for none of them.

An answer is kept under the hash of what decides it: the provider, its endpoint (less any
credentials), the model, the messages as sent (the system message, the context, the
prompt and its images), the temperature and the parameters (a schema among them). Never
a key: authorization is not part of the request that is hashed. Only a complete answer
is kept: not one interrupted, failed, cut at its token limit or asking for functions.

The file is SQLite (the standard library's), in WAL mode: several kernels read and write
it at once, each write one statement (atomic), readers never blocked. It is marked as
ours (``PRAGMA application_id``), so that a file of something else is refused, not
written into. No IPython here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .exceptions import ConfigurationError
from .providers.events import Usage

if TYPE_CHECKING:
    from .command import ChatRequest
    from .providers import AsyncResult
    from .record import Record

#: "FGPC" as a big-endian 32-bit integer: what marks a file as this package's cache.
APPLICATION_ID = 0x46475043
VERSION = 1
#: How long a write waits for another kernel's to end, in seconds.
BUSY_SECONDS = 10.0
_TABLE = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    answer TEXT NOT NULL,  -- what was answered, as JSON: see Cached
    cost REAL,             -- what it cost when asked, in US dollars (if known)
    seconds REAL,          -- how long it took when asked
    created REAL NOT NULL, -- when it was asked (Unix time)
    used REAL,             -- when it was last taken from here
    hits INTEGER NOT NULL DEFAULT 0
)"""


class CacheError(ConfigurationError):
    """The cache file cannot be used: not ours, damaged, or not to be opened."""


class Cached(NamedTuple):
    """What the cache keeps of an answer: all that the request does not say."""

    model: str
    answer: str
    served_by: str | None = None
    reasoning: str = ""
    usage: Usage | None = None
    cost: float | None = None
    finish_reason: str | None = None
    time: float | None = None
    first_piece_seconds: float | None = None
    total_seconds: float | None = None
    pieces: int = 0
    asked_again: str | None = None

    @classmethod
    def of(cls, record: Record) -> Cached:
        fields = {name: getattr(record, name) for name in cls._fields}
        return cls(**fields)

    def to_json(self) -> str:
        data = self._asdict()
        data["usage"] = None if self.usage is None else self.usage._asdict()
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Cached:
        data = json.loads(text)
        usage = data.get("usage")
        data["usage"] = None if usage is None else Usage(**usage)
        return cls(**{name: data[name] for name in cls._fields if name in data})


class Stats(NamedTuple):
    """What ``%flowgpt_cache`` says of the cache."""

    path: Path
    entries: int
    size: int  # bytes, the file and its write-ahead log
    hits: int  # answers taken from it
    saved_cost: float  # what those answers cost when asked (US dollars)
    saved_seconds: float  # how long they took when asked
    oldest: float | None
    newest: float | None


def replayed(cached: Cached) -> AsyncResult:
    """The answer stream of a kept answer: its reasoning and its text, at once."""
    from .providers import AsyncResult
    from .providers.events import Reasoning

    async def stream(mode: str) -> AsyncIterator[Any]:
        if cached.reasoning:
            yield Reasoning(cached.reasoning)
        yield [cached.answer] if mode == "batches" else cached.answer

    return AsyncResult(stream)  # type: ignore[arg-type]


def keeps(record: Record) -> bool:
    """Whether an answer is one to keep: complete, whole, text."""
    return (
        record.outcome == "complete"
        and bool(record.answer)
        and record.finish_reason not in ("length", "content_filter")
        and not record.tool_calls
        and not record.tool_runs  # (its functions would not run: an answer of another day)
    )


def request_key(request: ChatRequest, messages: list[dict[str, Any]]) -> str:
    """The hash of what decides the answer to ``messages`` asked as ``request`` says."""
    entry = request.ref.entry
    decided = {
        "version": VERSION,
        "provider": entry.name,
        "endpoint": _identity(entry.provider, request.options),
        "model": request.ref.model,
        "messages": messages,
        "temperature": request.temperature,
        "params": dict(request.params),
    }
    text = json.dumps(decided, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _identity(provider: Any, options: Any) -> str:
    """Where the provider asks, without credentials (a local model: its file's name)."""
    server = options.get("server")
    if server is not None:
        try:
            return f"llama.cpp:{server.name}"  # (not its port: another each kernel)
        except ConfigurationError:
            return "llama.cpp"
    try:
        url = str(provider.endpoint(**options))
    except Exception:  # (a request that cannot be sent fails on its own, later)
        return ""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


class AnswerCache:
    """The answers in one SQLite file; any thread may use it (one statement at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            # (Autocommit: every statement its own transaction, a write never half done.)
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise self._error(error) from None
        try:
            self._prepare()
        except sqlite3.Error as error:
            self._db.close()
            raise self._error(error) from None
        except CacheError:
            self._db.close()
            raise

    def _prepare(self) -> None:
        """Check that the file is ours (or new), and make it so."""
        db = self._db
        (marked,) = db.execute("PRAGMA application_id").fetchone()
        if marked not in (0, APPLICATION_ID):
            raise self._foreign(f"another program's SQLite database (id {marked:#x})")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if marked == APPLICATION_ID and version > VERSION:
            raise CacheError(
                f"The cache {self.path} was written by a newer flowgpt-magic (its version "
                f"{version}; this one reads {VERSION}). Upgrade flowgpt-magic, or point "
                "FlowGptMagics.cache at another file."
            )
        if marked == 0:
            # (Two kernels making it at once: one does, and the other, once it may write,
            # finds it made. So it is looked at again inside the transaction.)
            db.execute("BEGIN IMMEDIATE")
            try:
                (marked,) = db.execute("PRAGMA application_id").fetchone()
                if marked == 0:
                    tables = db.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'"
                    ).fetchall()
                    if tables:
                        raise self._foreign(f"an SQLite database with the tables {_names(tables)}")
                    db.execute(_TABLE)
                    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version = {VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # (in WAL mode: durable but for power loss)

    def get(self, key: str) -> Cached | None:
        """The answer kept under ``key``, if any (counted as taken)."""
        with self._lock, self._errors():
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE answers SET hits = hits + 1, used = ? WHERE key = ?", (time.time(), key)
            )
        try:
            return Cached.from_json(row[0])
        except (ValueError, TypeError, KeyError):
            return None  # (not readable: asked again, and kept anew)

    def put(self, key: str, record: Record) -> None:
        """Keep ``record``'s answer under ``key`` (replacing what was there)."""
        cached = Cached.of(record)
        row = (key, cached.model, cached.to_json(), cached.cost, cached.total_seconds)
        with self._lock, self._errors():
            self._db.execute(
                "INSERT OR REPLACE INTO answers (key, model, answer, cost, seconds, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*row, record.time or time.time()),
            )

    def stats(self) -> Stats:
        with self._lock, self._errors():
            entries, hits, cost, seconds, oldest, newest = self._db.execute(
                "SELECT count(*), total(hits), total(hits * coalesce(cost, 0)), "
                "total(hits * coalesce(seconds, 0)), min(created), max(created) FROM answers"
            ).fetchone()
        size = sum(p.stat().st_size for p in (self.path, _wal(self.path)) if p.exists())
        return Stats(self.path, entries, size, int(hits), cost, seconds, oldest, newest)

    def clear(self) -> int:
        """Remove every answer; how many there were."""
        return self._remove("DELETE FROM answers", ())

    def prune(self, days: float) -> int:
        """Remove the answers not asked nor used in ``days`` days; how many."""
        since = time.time() - days * 86400
        return self._remove(
            "DELETE FROM answers WHERE max(created, coalesce(used, 0)) < ?", (since,)
        )

    def _remove(self, statement: str, values: tuple[Any, ...]) -> int:
        with self._lock, self._errors():
            removed = self._db.execute(statement, values).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
        return int(removed)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors, as the cache's own (what was wrong, what to do)."""
        try:
            yield
        except sqlite3.Error as error:
            raise self._error(error) from None

    def _error(self, error: sqlite3.Error) -> CacheError:
        text = str(error)
        if "not a database" in text:
            return self._foreign(f"not an SQLite database ({text})")
        if "malformed" in text or "corrupt" in text:
            return CacheError(
                f"The cache {self.path} is damaged ({text}). Delete it (its answers are "
                "lost; the notebook asks again), or point FlowGptMagics.cache at another file."
            )
        return CacheError(
            f"The cache {self.path} cannot be used ({text}). Check that its folder exists and "
            "is writable, or point FlowGptMagics.cache at another file."
        )

    def _foreign(self, what: str) -> CacheError:
        return CacheError(
            f"{self.path} is not a flowgpt-magic cache: it is {what}. It was left as it is; "
            "point FlowGptMagics.cache at a new file (it is made on first use)."
        )


def _names(rows: list[tuple[str]]) -> str:
    names = [repr(name) for (name,) in rows[:3]]
    return ", ".join(names) + (", ..." if len(rows) > 3 else "")


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")
