"""Showing an answer while it streams: an output widget in Jupyter, stdout in a terminal.

The widget view shows a waiting line, then captures this cell's stdout into an
``ipywidgets.Output``: the text travels as ordinary stream messages, which the frontend
appends, so each update carries only the new text instead of the whole answer. Updates are
coalesced: pieces collect in a list, and are written to stdout, joined, the first at once
and later ones at most ``1 / FLUSH_INTERVAL`` times a second: one stream message each, and
no per-piece cost in the kernel's stdout.
When the answer ends, the widget is replaced by a static text output, so a saved notebook,
an export or a frontend without widgets still shows the answer, and the widget is closed.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    import asyncio

    from .provider import RetryNotice

#: The key under which an answer's output carries its exchange (see --from-notebook).
METADATA_KEY = "flowgpt_magic"
#: Seconds between two display updates while an answer streams (at most 20 a second).
FLUSH_INTERVAL = 0.05


class StreamView(Protocol):
    def write(self, piece: str) -> None: ...

    def retrying(self, notice: RetryNotice) -> None:
        """Say that the request failed and is about to be tried again."""

    def finish(self, text: str, exchange: dict[str, Any] | None = None) -> None:
        """End the live view; ``text`` is everything that arrived (maybe a partial answer),
        ``exchange`` what the static output carries as metadata."""


class TextView:
    """Pieces go straight to a text stream as they arrive: terminal IPython, plain mode."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._last_piece = ""

    def write(self, piece: str) -> None:
        self._stream.write(piece)
        self._stream.flush()
        self._last_piece = piece

    def retrying(self, notice: RetryNotice) -> None:
        print(f"({retry_line(notice)})", file=sys.stderr, flush=True)

    def finish(self, text: str, exchange: dict[str, Any] | None = None) -> None:
        if self._last_piece and not self._last_piece.endswith("\n"):
            self._stream.write("\n")
        self._stream.flush()


class WidgetView:
    """An Output widget that shows a waiting line until the first piece, then the answer;
    replaced by static text when the answer ends.

    One widget, not a box of two: every widget costs comm messages to open and close.
    """

    def __init__(self, waiting: str) -> None:
        import ipywidgets
        from IPython.display import display

        self._waiting = waiting
        self._output = ipywidgets.Output(outputs=(_note(waiting),))
        self._handle: Any = display(self._output, display_id=True)
        # From here on this cell's output goes into the widget. This is what
        # Output.__enter__ does, less its flush of stdout and stderr: display() has just
        # flushed both, and every flush waits for the kernel's IO thread.
        self._output.msg_id = _current_msg_id()
        self._capturing = True
        self._pending: list[str] = []
        self._started = False
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, piece: str) -> None:
        self._pending.append(piece)
        if self._timer is not None:
            return  # a flush is due soon; it takes this piece along
        if not self._started:
            self._started = True
            self._output.outputs = ()  # the waiting line goes; the text follows
            self._flush()
            return
        wait = self._last_flush + FLUSH_INTERVAL - time.monotonic()
        if wait <= 0:
            self._flush()
            return
        import asyncio

        try:
            self._timer = asyncio.get_running_loop().call_later(wait, self._flush)
        except RuntimeError:  # written to from outside a loop: no timer to wait for
            self._flush()

    def retrying(self, notice: RetryNotice) -> None:
        if not self._started:
            self._output.outputs = (_note(f"{self._waiting} {retry_line(notice)}"),)

    def finish(self, text: str, exchange: dict[str, Any] | None = None) -> None:
        if not self._capturing:
            return
        self._flush()
        self._capturing = False
        # Stop capturing before anything else is shown: an error line after the answer
        # (an interrupt, a failed request) must land in the cell, not in a closed widget.
        self._output.msg_id = ""
        metadata = {METADATA_KEY: exchange} if exchange is not None else None
        self._handle.update({"text/plain": text}, raw=True, metadata=metadata)
        self._output.layout.close()
        self._output.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_flush = time.monotonic()
        if self._pending:
            sys.stdout.write("".join(self._pending))
            self._pending.clear()
        sys.stdout.flush()


def retry_line(notice: RetryNotice) -> str:
    return (
        f"{notice.reason} Trying again in {notice.delay:.1f} s "
        f"({notice.attempt} of {notice.retries})."
    )


def _note(text: str) -> dict[str, Any]:
    """An output holding a grey, italic line (the waiting line)."""
    import html

    return {
        "output_type": "display_data",
        "data": {
            "text/html": '<span style="color: var(--jp-ui-font-color2, #757575); '
            f'font-style: italic">{html.escape(text)}</span>',
            "text/plain": text,
        },
        "metadata": {},
    }


def _current_msg_id() -> str:
    """The id of the execute request this cell runs for (as ipywidgets finds it)."""
    from IPython import get_ipython

    shell = get_ipython()
    parent = shell.get_parent() if hasattr(shell, "get_parent") else shell.kernel.get_parent()
    return str(parent["header"]["msg_id"])


def open_view(use_widget: bool, waiting: str) -> StreamView:
    return WidgetView(waiting) if use_widget else TextView()
