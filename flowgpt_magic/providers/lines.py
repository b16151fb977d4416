"""Framing a streamed body into whole lines, and decoding lines of JSON in bulk.

Both protocols stream lines (NDJSON, server-sent events). The body arrives in reads of any
size; it is cut into blocks of whole lines, and a block is decoded at once where that gives
exactly what decoding line by line would: for a long answer, most of the work of reading it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..exceptions import ResponseFormatError

#: A streamed line longer than this is an error rather than a reason to buffer forever.
MAX_LINE_BYTES = 16 * 1024 * 1024


class LineBuffer:
    """Cuts network reads into blocks of whole lines, however the bytes were split.

    Blocks are cut after a ``\\n`` byte before anything is decoded, so a multi-byte UTF-8
    character split across reads is reassembled: ``\\n`` never occurs inside one.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = b""
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> bytes | None:
        """The whole lines received so far (without the last newline), or None if none.

        Not b"" for none: b"" is one empty line, which ends an event in server-sent events.
        """
        buffer = self._buffer + data if self._buffer else data
        end = buffer.rfind(b"\n")
        if end < 0:
            if len(buffer) > self._max_line_bytes:
                raise ResponseFormatError(
                    f"The server sent a line longer than {self._max_line_bytes} bytes; this is "
                    "not a chat answer stream. Check the endpoint URL."
                )
            self._buffer = buffer
            return None
        self._buffer = buffer[end + 1 :]
        return buffer[:end]

    def close(self) -> bytes:
        """What is left after the last newline (a final line need not end with one)."""
        rest, self._buffer = self._buffer, b""
        return rest


# A "}" followed by "," within a line: see decode_json_lines.
_OBJECT_THEN_COMMA = re.compile(rb"\}[ \t\r]*,")


def decode_json_lines(block: bytes) -> list[Any]:
    """Every non-blank line of ``block`` as JSON, exactly as decoding line by line would.

    One ``json.loads`` of the lines joined into an array is several times faster than one
    call a line, but could accept what line by line would not: a value spanning two lines,
    made up for by a line holding two values. So the fast path is taken only when that
    cannot happen: the lines are joined with ",\\n" (a string cannot span the newline),
    every line starts with "{" (so every top-level value is an object), no "}" is followed
    by "," within a line (so no line holds a second value), and the array has exactly one
    value a line (so no value spans lines). Otherwise, and on any error, line by line,
    which also names the bad line.
    """
    breaks = block.count(b"\n")
    every_line_an_object = block[:1] == b"{" and block.count(b"\n{") == breaks
    if every_line_an_object and not _OBJECT_THEN_COMMA.search(block):
        try:
            # replace, not split and join: no bytes object a line.
            values = json.loads((b"[" + block.replace(b"\n", b",\n") + b"]").decode("utf-8"))
        except ValueError:
            pass
        else:
            if len(values) == breaks + 1:
                return values  # type: ignore[no-any-return]
    values = []
    for line in block.split(b"\n"):
        if line.strip():
            try:
                values.append(decode_json_line(line))
            except ResponseFormatError as error:
                raise PartialBlockError(values, error) from None
    return values


class PartialBlockError(ResponseFormatError):
    """A block's bad line: ``values`` holds what came before it, ``error`` what to raise."""

    def __init__(self, values: list[Any], error: ResponseFormatError) -> None:
        super().__init__(str(error))
        self.values, self.error = values, error


def decode_json_line(line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        excerpt = line[:80].decode("utf-8", "replace")
        raise ResponseFormatError(
            f"The server sent a line that is not UTF-8 JSON ({excerpt!r}); this is not a chat "
            "answer stream. Check the endpoint URL."
        ) from None
