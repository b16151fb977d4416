"""An answer in Jupyter, while it streams: output widgets, then one static output.

In Jupyter a live answer is shown as one box of two ``ipywidgets.Output`` widgets. This
cell's output flows into the first, so whatever is sent to it is appended by the frontend:
in Markdown, each finished block (a paragraph, a list, a whole code block), rendered once
and kept; in text, the text itself, as ordinary stream messages. The second, a status line
below it, shows the waiting line, retry notices, and in Markdown the unfinished block, the
only part rendered again as it grows. Updates are coalesced: the chat only adds the
pieces each read of the response brought to a list, which the view sends on, joined: the
first at once, then what arrived since the last update every ``FLUSH_INTERVAL`` seconds.

The box appears ``SHOW_AFTER`` seconds after the request goes out, with what has arrived
by then (or the waiting line). An answer that is complete by then needs no live view: it
is shown once, finished, without widgets.

When the answer ends, the box is replaced, in one update, by a static output (Markdown,
text or a code block, with a footer under it) carrying its record as metadata, so a
saved notebook, an export or a frontend without widgets still shows the answer; the
widgets are closed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..functions import tools_block
from ..record import METADATA_KEY, Format
from .markdown import live_blocks, static_bundle
from .text import retry_line

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable

    from ..providers.events import RetryNotice
    from ..record import Record

#: The MIME type of a widget's view (ipywidgets' protocol version 2).
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: Seconds from the request to the live view. An answer complete by then (a short one from
#: a fast or local model) is shown once, finished, without the widgets, their messages and
#: the updates a live view costs; one still coming shows what has come. So a first piece
#: waits at most this long, well under what a person notices (and under the benchmarks'
#: goal: in the frontend at most 50 ms after it arrived).
SHOW_AFTER = 0.025
#: Seconds between two display updates while an answer streams. A Markdown update may take
#: two messages (finished blocks, and the unfinished one), so 15 a second keep the frontend
#: under 30 messages a second.
FLUSH_INTERVAL = 1 / 15


class WidgetView:
    """The answer (an Output widget capturing this cell's output) and a status line under
    it, in one box, shown ``SHOW_AFTER`` seconds after the request goes out; replaced by
    one static output when the answer ends.

    A reasoning model's thinking goes above the answer, into an Output of its own inside an
    Accordion: open, and capturing the cell's output, while the model thinks; folded once
    the answer starts, when the answer's Output captures instead. An answer without
    reasoning makes none of these widgets.
    """

    def __init__(self, waiting: str, answer_format: Format, footer: bool = True) -> None:
        import ipywidgets  # here, so that a broken install fails before the request

        self._widgets = ipywidgets
        self._waiting = self._status_line = waiting
        self._format = answer_format
        self._footer = footer
        self._blocks = live_blocks(answer_format)
        self.pieces: list[str] = []
        self.extend = self.pieces.extend
        self._shown = 0  # how many pieces have been sent to the frontend
        self._thoughts: list[str] = []  # the reasoning so far
        self._thoughts_shown = 0
        self._reasoning: Any = None  # the Accordion, once there is reasoning to show
        self._timer: asyncio.TimerHandle | None = None
        self._live = False  # the box is on screen
        self._finished = False

    def begin(self) -> None:
        import asyncio

        self._timer = asyncio.get_running_loop().call_later(SHOW_AFTER, self._show)

    def _show(self) -> None:
        """Put the box on screen, with the pieces so far, or else the status line."""
        from IPython.display import display

        ipywidgets = self._widgets
        # The widgets share one Layout: each Layout is a widget of its own, with comm
        # messages to open and close it, and these never change their layout.
        self._layout = layout = ipywidgets.Layout()
        self._answer = ipywidgets.Output(layout=layout)
        status = () if self.pieces else (_note(self._status_line),)
        self._status = ipywidgets.Output(outputs=status, layout=layout)
        # One box, so one display and one update at the end: ipykernel flushes stdout and
        # stderr before each, a round trip to its IO thread every time. Shown as a raw
        # bundle, without a pass through IPython's formatters; its plain text (what a
        # frontend without widgets shows) is the status line, not the box's repr.
        self._box = ipywidgets.VBox((self._answer, self._status), layout=layout)
        view = {"version_major": 2, "version_minor": 0, "model_id": self._box.model_id}
        self._handle: Any = display(
            {WIDGET_VIEW: view, "text/plain": self._status_line}, raw=True, display_id=True
        )
        # From here on this cell's output goes into the answer widget. This is what
        # Output.__enter__ does, less its flush of stdout and stderr: display() has just
        # flushed both, and every flush waits for the kernel's IO thread.
        self._answer.msg_id = _current_msg_id()
        self._live = True
        self._timer = None
        if self._thoughts:
            self._open_reasoning()
        if self.pieces:
            self._begin_updates()

    def reasoning(self, text: str) -> None:
        self._thoughts.append(text)
        if self._live and self._reasoning is None:
            self._open_reasoning()
        # else _show, when due, shows the reasoning that has come by then

    def _open_reasoning(self) -> None:
        """Put the reasoning above the answer: open, and capturing the cell's output until
        the answer starts (folded, if it has)."""
        ipywidgets = self._widgets
        layout = self._layout
        thoughts = "".join(self._thoughts)
        self._thoughts_shown = len(self._thoughts)
        output = ipywidgets.Output(outputs=(_stream(thoughts),), layout=layout)
        self._reasoning = ipywidgets.Accordion((output,), titles=("Reasoning…",), layout=layout)
        self._box.children = (self._reasoning, self._answer, self._status)
        self._status.outputs = ()  # (no more waiting: the model is thinking)
        if self.pieces:
            self._fold_reasoning()
            return
        self._reasoning.selected_index = 0
        output.msg_id, self._answer.msg_id = self._answer.msg_id, ""
        if self._timer is None:
            self._schedule()

    def _fold_reasoning(self) -> None:
        """The answer has started: fold the reasoning, and let the answer capture."""
        reasoning = self._reasoning
        (output,) = reasoning.children
        if output.msg_id:
            self._write_thoughts()
            self._answer.msg_id, output.msg_id = output.msg_id, ""
        reasoning.selected_index = None
        reasoning.set_title(0, f"Reasoning ({sum(map(len, self._thoughts)):,} characters)")

    def _write_thoughts(self) -> None:
        """Send the reasoning that came since the last update (while it is captured)."""
        if len(self._thoughts) > self._thoughts_shown:
            sys.stdout.write("".join(self._thoughts[self._thoughts_shown :]))
            sys.stdout.flush()  # (before the capture moves on, if it does)
            self._thoughts_shown = len(self._thoughts)

    def started(self) -> None:
        if self._live:
            self._begin_updates()
        # else _show, when due, shows the pieces that have come by then

    def _begin_updates(self) -> None:
        """Show the pieces so far in place of the status line; the rest on the clock."""
        if self._reasoning is not None:
            self._fold_reasoning()
        if self._blocks is None:
            self._status.outputs = ()  # (in Markdown, the unfinished block replaces it)
        self._flush()
        if self._timer is None:
            self._schedule()

    def _tick(self) -> None:
        """Send what arrived since the last update; come back in FLUSH_INTERVAL seconds."""
        if len(self.pieces) > self._shown:
            self._flush()
        elif self._reasoning is not None and not self.pieces:
            self._write_thoughts()
        self._schedule()

    def _schedule(self) -> None:
        import asyncio

        self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._tick)

    def retrying(self, notice: RetryNotice) -> None:
        self._say(f"{self._waiting} {retry_line(notice)}")

    def progress(self, text: str) -> None:
        self._say(text)

    def again(self, line: str) -> None:
        self.pieces.clear()
        self._shown = 0
        self._blocks = live_blocks(self._format)
        self._status_line = line
        if self._live:
            if self._answer.msg_id:  # (it captures: the clearing goes to it)
                from IPython.display import clear_output

                clear_output()
            self._status.outputs = (_note(line),)
        else:  # (now: what comes next may take long, as a question to the person does)
            self._say(line)

    def _say(self, line: str) -> None:
        """Show ``line`` as the status line, now (a retry, a model loading, take seconds)."""
        if self.pieces or self._thoughts:
            return
        self._status_line = line
        if not self._live:
            self._cancel_timer()
            self._show()
        else:
            self._status.outputs = (_note(line),)

    def finish(self, record: Record) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_timer()
        text = record.answer
        footer = record.footer() if self._footer and text else None
        bundle = static_bundle(
            text,
            self._format,
            footer,
            reasoning=record.reasoning,
            notice=record.notice(),
            calls=tools_block(record.tool_runs),
        )
        metadata = {METADATA_KEY: record.to_json()}
        if not self._live:
            # The answer came and went before the view was due: show it once, finished
            # (nothing, if nothing came: the error says why).
            if text or record.reasoning:
                from IPython.display import display

                display(bundle, raw=True, metadata=metadata)
            return
        # Stop capturing before anything else is shown: an error line after the answer
        # (an interrupt, a failed request) must land in the cell, not in a closed widget.
        # What is still pending need not be sent: the static output replaces it all.
        self._answer.msg_id = ""
        reasoning = () if self._reasoning is None else (self._reasoning, *self._reasoning.children)
        for output in reasoning[1:]:
            output.msg_id = ""  # (it captures still, if no answer came)
        let_go(
            (self._box, self._answer, self._status, *reasoning),
            lambda: self._handle.update(bundle, raw=True, metadata=metadata),
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        text = "".join(self.pieces[self._shown :])
        self._shown = len(self.pieces)
        if self._blocks is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        finished = self._blocks.feed(text)
        if finished:
            from IPython.display import publish_display_data

            block = "".join(finished)
            publish_display_data({"text/markdown": block, "text/plain": block})
        if text:
            shown = self._blocks.shown_tail
            self._status.outputs = (_markdown(shown),) if shown else ()


def _grey(text: str) -> str:
    import html

    return (
        '<span style="color: var(--jp-ui-font-color2, #757575); font-style: italic">'
        f"{html.escape(text)}</span>"
    )


def _note(text: str) -> dict[str, Any]:
    """An output holding a grey, italic line (the waiting line)."""
    return {
        "output_type": "display_data",
        "data": {"text/html": _grey(text), "text/plain": text},
        "metadata": {},
    }


def _stream(text: str) -> dict[str, Any]:
    """An output of text, as the cell's stdout would make it."""
    return {"output_type": "stream", "name": "stdout", "text": text}


def _markdown(text: str) -> dict[str, Any]:
    """An output of Markdown for a widget's state: only frontends with widgets show it, so
    without the plain-text copy (half of every update's bytes)."""
    return {"output_type": "display_data", "data": {"text/markdown": text}, "metadata": {}}


def let_go(
    widgets: Iterable[Any], replace: Callable[[], None] | None = None, layouts: bool = True
) -> None:
    """Empty the Outputs among ``widgets``, ``replace`` their view on the page (by the
    static output), then close them all: so that the frontend lets go of what they showed.

    In ipywidgets 8's JupyterLab manager (seen in heap snapshots, JupyterLab 4.6 and
    Notebook 7) a closed Output's model stays reachable (its handler on the session's
    kernelChanged signal is never disconnected), and so does each of its views, with the
    rendered answer inside; an Output emptied while its view is still on the page leaves an
    empty view behind, one emptied after keeps it all. A widget's Layout and Style are
    widgets of their own that its close leaves open, each holding a view per widget view,
    and that view's element: so they are closed with it (not with ``layouts`` false: a
    Layout other widgets still on the page use).
    """
    widgets = list(widgets)
    for widget in widgets:
        if hasattr(widget, "msg_id") and widget.comm is not None:  # (an Output)
            if widget.outputs:
                widget.outputs = ()
            else:  # (what it captured, which the kernel's side never held)
                widget.send_state("outputs")
    if replace is not None:
        replace()
    closed: set[int] = set()
    for widget in widgets:
        parts = (widget, getattr(widget, "layout", None), getattr(widget, "style", None))
        for part in parts if layouts else (widget,):
            if part is not None and id(part) not in closed:
                closed.add(id(part))
                part.close()


def _current_msg_id() -> str:
    """The id of the execute request this cell runs for (as ipywidgets finds it)."""
    from IPython import get_ipython

    shell = get_ipython()
    parent = shell.get_parent() if hasattr(shell, "get_parent") else shell.kernel.get_parent()
    return str(parent["header"]["msg_id"])
