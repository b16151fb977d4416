"""An answer as plain text: pieces written to a stream as they arrive (terminal IPython,
or ``display_mode = "text"``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from ..providers.http import RetryNotice
    from ..record import Record


class TextView:
    """Pieces go straight to a text stream as they arrive: terminal IPython, plain mode."""

    def __init__(self, footer: bool = True, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._footer = footer
        self.pieces: list[str] = []

    def begin(self) -> None:
        pass

    def extend(self, pieces: list[str]) -> None:
        self.pieces += pieces
        self._stream.write("".join(pieces))
        self._stream.flush()

    def started(self) -> None:
        pass

    def retrying(self, notice: RetryNotice) -> None:
        print(f"({retry_line(notice)})", file=sys.stderr, flush=True)

    def finish(self, record: Record) -> None:
        if self.pieces and not self.pieces[-1].endswith("\n"):
            self._stream.write("\n")
        if self._footer and record.answer:
            self._stream.write(f"({record.footer()})\n")
        self._stream.flush()


def retry_line(notice: RetryNotice) -> str:
    return (
        f"{notice.reason} Trying again in {notice.delay:.1f} s "
        f"({notice.attempt} of {notice.retries})."
    )
