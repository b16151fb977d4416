"""Showing an answer while it streams: an output widget in Jupyter, stdout in a terminal.

The widget view shows a waiting line, then captures this cell's stdout into an
``ipywidgets.Output``: the text travels as ordinary stream messages, which the frontend
appends, so each update carries only the new text instead of the whole answer. Flushes are
coalesced: the first piece at once, later ones at most ``1 / FLUSH_INTERVAL`` times a second.
When the answer ends, the widget is replaced by a static text output, so a saved notebook,
an export or a frontend without widgets still shows the answer, and the widget is closed.
"""

from __future__ import annotations

import asyncio
import html
import sys
import time
from typing import Any, Protocol, TextIO

#: Seconds between two display updates while an answer streams (at most 20 a second).
FLUSH_INTERVAL = 0.05


class StreamView(Protocol):
    def write(self, piece: str) -> None: ...

    def finish(self, text: str) -> None:
        """End the live view; ``text`` is everything that arrived (maybe a partial answer)."""


class TextView:
    """Pieces go straight to a text stream as they arrive: terminal IPython, plain mode."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._last_piece = ""

    def write(self, piece: str) -> None:
        self._stream.write(piece)
        self._stream.flush()
        self._last_piece = piece

    def finish(self, text: str) -> None:
        if self._last_piece and not self._last_piece.endswith("\n"):
            self._stream.write("\n")
        self._stream.flush()


class WidgetView:
    """An Output widget with a waiting line; replaced by static text when the answer ends."""

    def __init__(self, waiting: str) -> None:
        import ipywidgets
        from IPython.display import display

        self._waiting = ipywidgets.HTML(
            f'<span style="color: var(--jp-ui-font-color2, #757575); font-style: italic">'
            f"{html.escape(waiting)}</span>"
        )
        self._output = ipywidgets.Output()
        self._box = ipywidgets.VBox([self._waiting, self._output])
        self._handle: Any = display(self._box, display_id=True)
        self._output.__enter__()  # from here on, this cell's stdout goes into the widget
        self._capturing = True
        self._started = False
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, piece: str) -> None:
        sys.stdout.write(piece)
        if not self._started:
            self._started = True
            self._waiting.layout.display = "none"
            self._flush()
            return
        wait = self._last_flush + FLUSH_INTERVAL - time.monotonic()
        if wait <= 0:
            self._flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(wait, self._flush)
            except RuntimeError:  # written to from outside a loop: no timer to wait for
                self._flush()

    def finish(self, text: str) -> None:
        if not self._capturing:
            return
        self._flush()
        self._capturing = False
        self._output.__exit__(None, None, None)
        self._handle.update({"text/plain": text}, raw=True)
        self._box.close()
        self._waiting.close()
        self._output.close()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_flush = time.monotonic()
        sys.stdout.flush()


def open_view(use_widget: bool, waiting: str) -> StreamView:
    return WidgetView(waiting) if use_widget else TextView()
