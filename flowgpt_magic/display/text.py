"""An answer as plain text: pieces written to a stream as they arrive (terminal IPython,
or ``display_mode = "text"``). A reasoning model's thinking comes first, labelled, and dim
where the stream is a terminal."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..providers.events import RetryNotice
    from ..record import Record

#: ANSI: dim text, then plain again.
DIM, PLAIN = "\x1b[2m", "\x1b[0m"


class TextView:
    """Pieces go straight to a text stream as they arrive: terminal IPython, plain mode."""

    def __init__(self, footer: bool = True, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._footer = footer
        self._styled = _is_terminal(self._stream)
        self._thinking = False  # reasoning is being written, and no answer yet
        self._thought = ""  # the last piece of it
        self._told = False  # the progress line has been printed
        self.pieces: list[str] = []

    def begin(self) -> None:
        pass

    def reasoning(self, text: str) -> None:
        if not self._thinking:
            self._thinking = True
            self._stream.write(f"{DIM if self._styled else ''}Reasoning: ")
        self._stream.write(text)
        self._stream.flush()
        self._thought = text

    def extend(self, pieces: list[str]) -> None:
        if self._thinking:
            self._end_reasoning()
        self.pieces += pieces
        self._stream.write("".join(pieces))
        self._stream.flush()

    def started(self) -> None:
        pass

    def retrying(self, notice: RetryNotice) -> None:
        print(f"({retry_line(notice)})", file=sys.stderr, flush=True)

    def again(self, line: str) -> None:
        if self._thinking:
            self._end_reasoning()
        if self.pieces and not self.pieces[-1].endswith("\n"):
            self._stream.write("\n")
        self._stream.flush()  # (what came stays above: a terminal line is not redrawn)
        print(f"({line})", file=sys.stderr, flush=True)
        self.pieces.clear()

    def progress(self, text: str) -> None:
        if not self._told:  # (once: a terminal line is not redrawn)
            self._told = True
            print(f"({text})", file=sys.stderr, flush=True)

    def finish(self, record: Record) -> None:
        if self._thinking:
            self._end_reasoning()
        if self.pieces and not self.pieces[-1].endswith("\n"):
            self._stream.write("\n")
        if self._footer and record.answer:
            self._stream.write(f"({record.footer()})\n")
        if (notice := record.notice()) is not None:
            self._stream.write(f"■ {notice}\n")
        self._stream.flush()

    def _end_reasoning(self) -> None:
        """Close the reasoning with a blank line, before the answer."""
        self._thinking = False
        gap = "\n" if self._thought.endswith("\n") else "\n\n"
        self._stream.write(f"{PLAIN if self._styled else ''}{gap}")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # (a closed or a stand-in stream)
        return False


def retry_line(notice: RetryNotice) -> str:
    return (
        f"{notice.reason} Trying again in {notice.delay:.1f} s "
        f"({notice.attempt} of {notice.retries})."
    )
