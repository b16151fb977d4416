"""A notebook's conversation: the exchanges so far, as plain data, with save and load.

No UI here. Only completed exchanges are ever added, so a failed or interrupted request
cannot leave half an exchange behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .display import METADATA_KEY, answer_in
from .exceptions import HistoryFileError

FILE_FORMAT = "flowgpt-magic.conversation"
FILE_VERSION = 1
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)  # slots: a long history costs little beyond its text
class Message:
    role: str
    content: str
    #: The model that wrote an assistant message, when known.
    model: str | None = None
    #: The notebook cell the exchange came from, when the frontend says (JupyterLab does).
    cell_id: str | None = None
    #: When an assistant message was completed (Unix time; a float is smaller than a string).
    time: float | None = None

    def to_wire(self) -> dict[str, str]:
        """The ``{"role", "content"}`` form providers take."""
        return {"role": self.role, "content": self.content}

    def to_json(self) -> dict[str, str]:
        data = self.to_wire()
        if self.model:
            data["model"] = self.model
        if self.cell_id:
            data["cell_id"] = self.cell_id
        if self.time is not None:
            data["time"] = _iso(self.time)
        return data


class Conversation:
    """The messages exchanged so far, oldest first."""

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._messages = list(messages)

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._messages)

    def __repr__(self) -> str:
        return f"<Conversation of {len(self._messages)} messages>"

    @property
    def exchange_count(self) -> int:
        return sum(1 for message in self._messages if message.role == "user")

    def add_exchange(
        self,
        prompt: str,
        answer: str,
        model: str | None = None,
        cell_id: str | None = None,
        time: float | None = None,
    ) -> None:
        """Add an exchange; one from a cell that already has one replaces it, in place."""
        exchange = [
            Message("user", prompt, cell_id=cell_id),
            Message("assistant", answer, model, cell_id, time),
        ]
        start = self._exchange_of(cell_id) if cell_id else None
        if start is None:
            self._messages += exchange
        else:
            end = self._end_of_exchange(start)
            self._messages[start:end] = exchange

    def pop(self) -> bool:
        """Remove the last exchange; False if there is none."""
        starts = [i for i, m in enumerate(self._messages) if m.role == "user"]
        if not starts:
            return False
        del self._messages[starts[-1] :]
        return True

    def _exchange_of(self, cell_id: str) -> int | None:
        for index, message in enumerate(self._messages):
            if message.role == "user" and message.cell_id == cell_id:
                return index
        return None

    def _end_of_exchange(self, start: int) -> int:
        end = start + 1
        while end < len(self._messages) and self._messages[end].role != "user":
            end += 1
        return end

    def reset(self) -> None:
        self._messages.clear()

    def replace_with(self, other: Conversation) -> None:
        self._messages = list(other)

    def wire_messages(
        self,
        max_turns: int | None = None,
        max_chars: int | None = None,
        excluding_cell: str | None = None,
    ) -> list[dict[str, str]]:
        """The messages to send as context: all, or the most recent that fit the limits.

        Limits drop whole exchanges, oldest first: at most ``max_turns`` exchanges, and at
        most ``max_chars`` characters of content. A cell run again does not send its own
        earlier exchange (``excluding_cell``). The conversation itself keeps everything.
        """
        messages = self._messages
        if excluding_cell is not None:
            messages = [m for m in messages if m.cell_id != excluding_cell]
        if max_turns is not None or max_chars is not None:
            messages = _most_recent(messages, max_turns, max_chars)
        return [message.to_wire() for message in messages]

    def transcript(self) -> str:
        """A readable rendering: who said what, in order."""
        if not self._messages:
            return "The conversation is empty."
        count = self.exchange_count
        lines = [f"Conversation: {count} exchange{'s' if count != 1 else ''}"]
        for message in self._messages:
            if message.role == "user":
                speaker = "You" + (f" (cell {message.cell_id[:8]})" if message.cell_id else "")
            elif message.role == "system":
                speaker = "System"
            else:
                when = _iso(message.time)[11:19] if message.time is not None else ""
                about = [message.model or "", when]
                details = ", ".join(part for part in about if part)
                speaker = f"Assistant ({details})" if details else "Assistant"
            body = message.content.replace("\n", "\n    ")
            lines.append(f"\n{speaker}:\n    {body}")
        return "\n".join(lines)

    # -- files -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "messages": [message.to_json() for message in self._messages],
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "the data") -> Conversation:
        """Validate ``data`` (our file format, or a bare list of messages) and load it."""
        if isinstance(data, dict):
            if data.get("format") != FILE_FORMAT:
                raise HistoryFileError(
                    f"{source} is not a flowgpt-magic conversation: its 'format' is "
                    f"{data.get('format')!r}, expected {FILE_FORMAT!r}."
                )
            if data.get("version") != FILE_VERSION:
                raise HistoryFileError(
                    f"{source} has version {data.get('version')!r}; this flowgpt-magic reads "
                    f"version {FILE_VERSION}. Upgrade flowgpt-magic to read it."
                )
            data = data.get("messages")
        if not isinstance(data, list):
            raise HistoryFileError(
                f"{source} must hold a list of messages, not {type(data).__name__}."
            )
        return cls(_message_from_json(item, index, source) for index, item in enumerate(data))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the conversation as JSON, atomically: a crash leaves the old file or the new."""
        import tempfile  # here, not at import time: loading the extension must stay cheap

        target = Path(path).expanduser()
        text = json.dumps(self.to_json(), ensure_ascii=False, indent=1) + "\n"
        try:
            fd, temporary = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
            )
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as stream:
                    stream.write(text)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.replace(temporary, target)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as error:
            raise HistoryFileError(
                f"Could not save the conversation to {target}: {error.strerror or error}."
            ) from None
        return target

    @classmethod
    def from_notebook(cls, path: str | os.PathLike[str]) -> Conversation:
        """The exchanges a saved notebook's answers carry, in cell order.

        Only complete answers that were part of the conversation count: not interrupted or
        failed ones, nor --no-history ones. A cell's last answer wins.
        """
        source = Path(path).expanduser()
        if not source.exists() and Path(source.name).exists():
            source = Path(source.name)  # the server's path is from its root; we run beside it
        try:
            notebook = json.loads(source.read_text(encoding="utf-8"))
            cells = notebook["cells"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise HistoryFileError(f"Could not read the notebook {source}: {error}.") from None
        conversation = cls()
        for cell in cells:
            for output in cell.get("outputs", []) if isinstance(cell, dict) else []:
                answer = answer_in(output) if isinstance(output, dict) else None
                if answer is None:
                    continue  # not an answer's output, or a malformed one
                record = output["metadata"][METADATA_KEY]  # (answer_in found it a dict)
                if (
                    record.get("outcome") == "complete"
                    and record.get("recorded")
                    and isinstance(record.get("prompt"), str)
                ):
                    conversation.add_exchange(
                        record["prompt"],
                        answer,
                        record.get("model"),
                        record.get("cell_id") or cell.get("id"),
                        record.get("time"),
                    )
        return conversation

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Conversation:
        source = Path(path).expanduser()
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
            raise HistoryFileError(f"Could not read {source}: {reason}.") from None
        try:
            data = json.loads(text)
        except ValueError as error:
            raise HistoryFileError(f"{source} is not valid JSON: {error}.") from None
        return cls.from_json(data, str(source))


def _most_recent(
    messages: list[Message], max_turns: int | None, max_chars: int | None
) -> list[Message]:
    kept: list[Message] = []
    turns = chars = 0
    end = len(messages)
    for start in range(len(messages) - 1, -1, -1):
        if messages[start].role != "user" and start > 0:
            continue  # an exchange starts at its user message
        exchange = messages[start:end]
        size = sum(len(m.content) for m in exchange)
        if (max_turns is not None and turns + 1 > max_turns) or (
            max_chars is not None and chars + size > max_chars
        ):
            break
        kept[:0] = exchange
        turns, chars, end = turns + 1, chars + size, start
    return kept


def _message_from_json(item: Any, index: int, source: str) -> Message:
    where = f"{source}, message {index}"
    if not isinstance(item, dict):
        raise HistoryFileError(f"{where} must be an object, not {type(item).__name__}.")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise HistoryFileError(f"{where} has role {role!r}; expected one of {', '.join(ROLES)}.")
    if not isinstance(content, str):
        raise HistoryFileError(f"{where} has no string 'content'.")
    extra = {name: item.get(name) for name in ("model", "cell_id", "time")}
    for name, value in extra.items():
        if value is not None and not isinstance(value, str):
            raise HistoryFileError(f"{where} has a {name!r} that is not a string.")
    time = None
    if extra["time"] is not None:
        try:
            time = datetime.fromisoformat(extra["time"]).timestamp()
        except ValueError:
            raise HistoryFileError(f"{where} has a 'time' that is not an ISO 8601 time.") from None
    return Message(role, content, extra["model"], extra["cell_id"], time)


def _iso(time: float) -> str:
    return datetime.fromtimestamp(time).astimezone().isoformat(timespec="seconds")
