"""A notebook's conversation: its exchanges (records), with caps, save, load and rebuild.

No UI here. Only complete exchanges are ever added, so a failed or interrupted request
cannot leave half an exchange behind; a cell's exchange replaces the one it made before.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .attachments import IMAGE_TOKENS
from .exceptions import HistoryFileError
from .record import Record, iso_time, record_in

FILE_FORMAT = "flowgpt-magic.conversation"
#: What an image counts for in a cap on the context's characters: its tokens, four each.
IMAGE_CHARS = 4 * IMAGE_TOKENS
#: Version 2 holds whole records; version 1 (and a bare list) held messages.
FILE_VERSION = 2
ROLES = ("system", "user", "assistant")


class Conversation:
    """The exchanges so far, in the order they were asked."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._records = list(records)
        #: When each was asked, in the chat's count: an answer that took longer (one in
        #: the background) still goes before those asked after it.
        self._asked = list(range(len(self._records)))
        #: When the exchange a cell has now was asked (it may stand where an earlier one
        #: of the cell stood).
        self._cell_asked: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"<Conversation of {exchanges(len(self._records))}>"

    def add(self, record: Record, asked: int | None = None) -> None:
        """Add an exchange, after those asked before it (``asked``: when, in the chat's
        count; None: now). One from a cell that already has one replaces it, in place,
        unless it was asked before that one (an answer in the background that ended after
        its cell was run again): then the newer stays, and this one is dropped."""
        if asked is None:
            asked = max([self._asked[-1] if self._asked else -1, *self._cell_asked.values()]) + 1
        cell = record.cell_id
        if cell is not None:
            for index, earlier in enumerate(self._records):
                if earlier.cell_id == cell:
                    if asked > self._cell_asked.get(cell, -1):
                        self._records[index] = record
                        self._cell_asked[cell] = asked
                    return
            self._cell_asked[cell] = asked
        at = bisect.bisect_right(self._asked, asked)
        self._records.insert(at, record)
        self._asked.insert(at, asked)

    def pop(self) -> bool:
        """Remove the last exchange; False if there is none."""
        if not self._records:
            return False
        del self._records[-1], self._asked[-1]
        return True

    def reset(self) -> None:
        self._records.clear()
        self._asked.clear()
        self._cell_asked.clear()

    def replace_with(self, other: Conversation) -> None:
        self._records, self._asked = list(other._records), list(other._asked)
        self._cell_asked = dict(other._cell_asked)

    def sent(
        self,
        max_turns: int | None = None,
        max_chars: int | None = None,
        excluding_cell: str | None = None,
    ) -> list[Record]:
        """The exchanges to send as context: all, or the most recent that fit the limits.

        Limits drop whole exchanges, oldest first: at most ``max_turns`` exchanges, and at
        most ``max_chars`` characters of content. A cell run again does not send its own
        earlier exchange (``excluding_cell``). The conversation itself keeps everything.
        """
        records = self._records
        if excluding_cell is not None:
            records = [r for r in records if r.cell_id != excluding_cell]
        if max_turns is not None or max_chars is not None:
            records = _most_recent(records, max_turns, max_chars)
        return records

    def wire_messages(
        self,
        max_turns: int | None = None,
        max_chars: int | None = None,
        excluding_cell: str | None = None,
        images: bool = True,
        tools: bool = True,
    ) -> list[dict[str, Any]]:
        """The messages of the exchanges ``sent`` gives (with their images, unless not
        ``images``; with their function calls, unless not ``tools``)."""
        records = self.sent(max_turns, max_chars, excluding_cell)
        return [m for record in records for m in record.wire_messages(images, tools)]

    def transcript(self) -> str:
        """A readable rendering: who said what, in order, from which cell, when."""
        if not self._records:
            return "The conversation is empty."
        lines = [f"Conversation: {exchanges(len(self._records))}"]
        for record in self._records:
            if record.cell_number is not None:  # (the number the person saw, [18])
                you = f"You [{record.cell_number}]"
            else:
                you = "You" + (f" (cell {record.cell_id[:8]})" if record.cell_id else "")
            when = iso_time(record.time)[11:19] if record.time is not None else ""
            details = ", ".join(part for part in (record.model, when) if part)
            assistant = f"Assistant ({details})" if details else "Assistant"
            for speaker, text in ((you, record.prompt), (assistant, record.answer)):
                if speaker is assistant and record.tool_runs:  # (what it called, first)
                    lines.append("\n" + "\n".join(f"Called {r.line()}" for r in record.tool_runs))
                lines.append(f"\n{speaker}:\n    " + text.replace("\n", "\n    "))
        return "\n".join(lines)

    # -- files -------------------------------------------------------------------------

    def to_json(self, inline_images: bool = True) -> dict[str, Any]:
        """The conversation as a file holds it: with its images (unless not
        ``inline_images``: then those a notebook output holds are referred to)."""
        return {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "exchanges": [record.to_json(inline_images) for record in self._records],
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "the data") -> Conversation:
        """Validate ``data`` and load it: our file format (version 2, or 1), or a bare list
        of ``{"role", "content"}`` messages."""
        if not isinstance(data, dict):
            return cls(_records_of_messages(data, source))
        if data.get("format") != FILE_FORMAT:
            raise HistoryFileError(
                f"{source} is not a flowgpt-magic conversation: its 'format' is "
                f"{data.get('format')!r}, expected {FILE_FORMAT!r}."
            )
        if data.get("version") == 1:
            return cls(_records_of_messages(data.get("messages"), source))
        if data.get("version") != FILE_VERSION:
            raise HistoryFileError(
                f"{source} has version {data.get('version')!r}; this flowgpt-magic reads "
                f"versions 1 and {FILE_VERSION}. Upgrade flowgpt-magic to read it."
            )
        exchanges = data.get("exchanges")
        if not isinstance(exchanges, list):
            raise HistoryFileError(f"{source} must hold a list of exchanges.")
        records = []
        for index, item in enumerate(exchanges):
            try:
                records.append(Record.from_json(item))
            except ValueError as error:
                raise HistoryFileError(f"{source}, exchange {index} {error}.") from None
        return cls(records)

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

    @classmethod
    def from_notebook(cls, path: str | os.PathLike[str]) -> Conversation:
        """The exchanges a saved notebook's answers carry, in cell order.

        Only complete answers that were part of the conversation count: not interrupted or
        failed ones, nor --no-history ones. A cell's last answer wins.
        """
        import nbformat  # (only here: reading a notebook is rare, and nbformat slow to load)

        source = Path(path).expanduser()
        if not source.exists() and Path(source.name).exists():
            source = Path(source.name)  # the server's path is from its root; we run beside it
        try:
            cells = nbformat.read(source, as_version=4).cells  # type: ignore[no-untyped-call]
        except (OSError, ValueError, nbformat.ValidationError, AttributeError) as error:
            reason = getattr(error, "strerror", None) or error
            raise HistoryFileError(f"Could not read the notebook {source}: {reason}.") from None
        conversation = cls()
        outputs = [
            output
            for cell in cells
            if isinstance(cell, dict)
            for output in cell.get("outputs", [])
            if isinstance(output, dict)
        ]
        shown = _images_in(outputs)
        for cell in cells:
            for output in cell.get("outputs", []) if isinstance(cell, dict) else []:
                record = record_in(output)
                if record is not None and record.in_conversation:
                    # A record saved without its cell's id (nbclient sends none) takes the
                    # id of the cell it is saved in. Its images saved by reference are
                    # found again in the outputs that hold them.
                    images = tuple(
                        i._replace(data=shown.get(i.sha1, b"")) if i.missing else i
                        for i in record.images
                    )
                    cell_id = record.cell_id or cell.get("id")
                    conversation.add(record._replace(cell_id=cell_id, images=images))
        return conversation


def _images_in(outputs: list[dict[str, Any]]) -> dict[str, bytes]:
    """The images the outputs hold, by their SHA-1."""
    import base64

    from .attachments import sha1

    found = {}
    for output in outputs:
        bundle = output.get("data")
        for mime in ("image/png", "image/jpeg", "image/gif"):
            text = bundle.get(mime) if isinstance(bundle, dict) else None
            if isinstance(text, str):
                try:
                    data = base64.b64decode(text)
                except ValueError:
                    continue
                found[sha1(data)] = data
    return found


def _most_recent(
    records: list[Record], max_turns: int | None, max_chars: int | None
) -> list[Record]:
    kept: list[Record] = []
    chars = 0
    for record in reversed(records):
        # (An image counts as the characters of its tokens: see attachments.IMAGE_TOKENS.)
        size = len(record.prompt) + len(record.answer) + len(record.images) * IMAGE_CHARS
        if (max_turns is not None and len(kept) >= max_turns) or (
            max_chars is not None and chars + size > max_chars
        ):
            break
        kept.append(record)
        chars += size
    return kept[::-1]


def _records_of_messages(messages: Any, source: str) -> list[Record]:
    """Exchanges from a list of messages: each user message and the answer after it."""
    if not isinstance(messages, list):
        raise HistoryFileError(
            f"{source} must hold a list of messages, not {type(messages).__name__}."
        )
    records = []
    question: dict[str, Any] | None = None
    for index, item in enumerate(messages):
        where = f"{source}, message {index}"
        if not isinstance(item, dict):
            raise HistoryFileError(f"{where} must be an object, not {type(item).__name__}.")
        role, content = item.get("role"), item.get("content")
        if role not in ROLES:
            raise HistoryFileError(
                f"{where} has role {role!r}; expected one of {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise HistoryFileError(f"{where} has no string 'content'.")
        if role == "system":
            raise HistoryFileError(
                f"{where} is a system message; a conversation holds exchanges only. Give it "
                "with -s or %config FlowGptMagics.system_message instead."
            )
        if (role == "user") != (question is None):
            expected = "a user message" if question is None else "the answer to the one before"
            article = "an" if role == "assistant" else "a"
            raise HistoryFileError(f"{where} is {article} {role} message, where {expected} is due.")
        if role == "user":
            question = item
            continue
        assert question is not None
        data = {**item, "prompt": question["content"], "answer": content}
        data.setdefault("model", "")
        data.setdefault("cell_id", question.get("cell_id"))
        try:
            records.append(Record.from_json({k: v for k, v in data.items() if k in _KEPT}))
        except ValueError as error:
            raise HistoryFileError(f"{where} {error}.") from None
        question = None
    if question is not None:
        raise HistoryFileError(f"{source} ends with a question that has no answer.")
    return records


#: What a message of a version-1 file may say of its exchange, beside its text.
_KEPT = ("prompt", "answer", "model", "cell_id", "time")


def exchanges(count: int) -> str:
    return f"{count} exchange{'s' if count != 1 else ''}"
