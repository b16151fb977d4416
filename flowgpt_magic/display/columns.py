"""Several answers side by side: one column each (several models asked at once); and one
answer in a column of its own with a Stop button (an answer in the background, which
streams after its cell has ended, from another thread, where nothing may be captured).

In Jupyter, one box holds a column a model: its name, its answer, its status line. Answers
stream into their columns on one clock; no column captures the cell's output (several
could not), so each column's finished Markdown blocks and unfinished block are set as
its widgets' outputs. Setting an Output widget's outputs sends them all again and the
frontend renders them all again, so the finished blocks go into chunks of at most about
``CHUNK_CHARS`` characters, each an Output of its own: an update sends and renders one
chunk, however long the answer, and the cost of an answer grows with its length, not
with its square. A column that ends shows its footer (or its one-line error) at
once; when all have, the box is replaced, in one update, by one static output with every
answer, columns where the frontend keeps them (side by side in JupyterLab, one after the
other elsewhere), and every record in its metadata.

In a terminal the first answer streams as it comes, under its model's name; each other is
written whole, under its name, once it is complete: answers never garble one another.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from ..functions import tools_block
from ..record import METADATA_KEY, Format, Record
from .markdown import MarkdownBlocks, bold, live_blocks, nested_markdown, static_bundle
from .text import TextView, retry_line

if TYPE_CHECKING:
    import asyncio

    from ..providers.events import RetryNotice

#: Seconds between two updates of the columns while answers stream.
FLUSH_INTERVAL = 1 / 10
#: Characters of finished blocks one chunk of a column holds before the next begins.
CHUNK_CHARS = 2_000


class ColumnsView:
    """The box of columns; ``columns`` are the views the answers stream into."""

    def __init__(
        self,
        models: list[str],
        answer_format: Format,
        footer: bool = True,
        stop: Callable[[], None] | None = None,
    ) -> None:
        """``stop``: a Stop button under the box calls it (an answer in the background,
        which the kernel's own stop button does not reach)."""
        import ipywidgets

        self._widgets = ipywidgets
        self._format = answer_format
        self._footer = footer
        self.columns = [_Column(self, model) for model in models]
        self.stop = stop
        self._timer: asyncio.TimerHandle | None = None
        self._handle: Any = None

    def begin(self) -> None:
        """Show the box (if it is not yet), and update its columns on the clock of the loop
        that streams them (a background answer's own)."""
        self.show()
        if self._timer is None:
            self._schedule()

    def show(self) -> None:
        """Put the box on screen (in the cell that asks)."""
        if self._handle is not None:
            return
        from IPython.display import display

        from .widget import WIDGET_VIEW, _markdown

        ipywidgets = self._widgets
        self._layout = layout = ipywidgets.Layout()  # (one for the widgets that keep theirs)
        # (One Layout for the columns, one for the box: each Layout is a widget of its own.)
        self._layouts = (
            ipywidgets.Layout(flex="1 1 0", min_width="0", margin="0 1.5em 0 0"),
            ipywidgets.Layout(align_items="flex-start"),
        )
        boxes = []
        for column in self.columns:
            column.answer = ipywidgets.VBox(layout=layout)  # (of chunks)
            column.status = ipywidgets.Output(outputs=(_line(column.waiting),), layout=layout)
            # (The title as the saved output has it: Markdown, rendered the same way.)
            title = ipywidgets.Output(outputs=(_markdown(bold(column.model)),), layout=layout)
            parts = (title, column.answer, column.status)
            boxes.append(ipywidgets.VBox(parts, layout=self._layouts[0]))
        self._parts = [*boxes, *(w for box in boxes for w in box.children)]
        if self.stop is not None:
            # The Stop button in the title's row: when it goes, nothing below it moves.
            button = ipywidgets.Button(description="Stop", icon="stop", layout=layout)
            button.on_click(lambda _: self.stop() if self.stop is not None else None)
            across = ipywidgets.Layout(justify_content="space-between", align_items="center")
            row = ipywidgets.HBox((boxes[0].children[0], button), layout=across)
            boxes[0].children = (row, *boxes[0].children[1:])
            self._parts += [row, button, across]
        self._box = shown = ipywidgets.HBox(boxes, layout=self._layouts[1])
        self._parts.append(shown)
        view = {"version_major": 2, "version_minor": 0, "model_id": shown.model_id}
        plain = "Asking " + ", ".join(column.model for column in self.columns) + "…"
        self._handle = display({WIDGET_VIEW: view, "text/plain": plain}, raw=True, display_id=True)

    def _schedule(self) -> None:
        import asyncio

        self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self._tick)

    def _tick(self) -> None:
        for column in self.columns:
            if column.record is None:
                column.flush()
        self._schedule()

    def column_finished(self) -> None:
        if any(column.record is None for column in self.columns):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records = [column.record for column in self.columns if column.record is not None]
        if len(records) == 1:  # (one answer, in the background: saved as any other is)
            (record,) = records
            footer = record.footer() if self._footer and record.answer else None
            notice = record.notice() or record.error or _stopped(record)
            calls = tools_block(record.tool_runs)
            bundle = static_bundle(
                record.answer,
                self._format,
                footer,
                reasoning=record.reasoning,
                notice=notice,
                calls=calls,
            )
            if "text/markdown" in bundle:  # (its title stays, as it was while it streamed)
                bundle["text/markdown"] = f"{bold(record.model)}\n\n{bundle['text/markdown']}"
            metadata: dict[str, Any] = {METADATA_KEY: record.to_json()}
        else:
            bundle = several_bundle(records, self._format, self._footer)
            answers = [r.to_json() for r in records]
            metadata = {METADATA_KEY: answers[0], "answers": answers}
        from .widget import let_go

        chunks = [chunk for column in self.columns for chunk in column.answer.children]
        let_go(
            (*self._parts, *chunks, *self._layouts),
            lambda: self._handle.update(bundle, raw=True, metadata=metadata),
        )


class _Column:
    """One model's answer in the box (the view the chat streams it into)."""

    def __init__(self, box: ColumnsView, model: str) -> None:
        self.box, self.model = box, model
        self.waiting = f"Waiting for {model}…"
        self.pieces: list[str] = []
        self.extend = self.pieces.extend
        self.record: Record | None = None
        self.answer: Any = None  # an ipywidgets.VBox of chunks, once the box is shown
        self.status: Any = None
        self._chunk = ""  # the finished text in the last chunk
        self._blocks = live_blocks(box._format) or MarkdownBlocks()
        self._shown = 0
        self._thoughts = 0  # characters of reasoning

    def begin(self) -> None:
        self.box.begin()

    def started(self) -> None:
        self.flush()

    def reasoning(self, text: str) -> None:
        self._thoughts += len(text)
        if not self.pieces:
            self.status.outputs = (_line(f"Reasoning… ({self._thoughts:,} characters)"),)

    def retrying(self, notice: RetryNotice) -> None:
        if not self.pieces:
            self.status.outputs = (_line(f"{self.waiting} {retry_line(notice)}"),)

    def progress(self, text: str) -> None:
        if not self.pieces:
            self.status.outputs = (_line(text),)

    def again(self, line: str) -> None:
        self.pieces.clear()
        self._blocks = live_blocks(self.box._format) or MarkdownBlocks()
        self._shown = 0
        if self.answer is not None:
            self._set_chunks(())
            self.status.outputs = (_line(line),)

    def flush(self) -> None:
        """Show what came since the last update: finished blocks, and the unfinished one."""
        if len(self.pieces) == self._shown:
            return
        text = "".join(self.pieces[self._shown :])
        self._shown = len(self.pieces)
        finished = self._blocks.feed(text)
        if finished:
            self._append("".join(finished))
        tail = self._blocks.shown_tail
        self.status.outputs = (_rendered(tail, self.box),) if tail else ()

    def finish(self, record: Record) -> None:
        """This model is done: its answer, its footer or its error, in its column."""
        self.record = record
        lines = []  # (as Markdown, as the saved output has them)
        if self.box._footer and record.answer:
            lines.append(f"<small><i>{html.escape(record.footer())}</i></small>")
        if (notice := record.notice() or record.error) is not None:
            lines.append(html.escape(f"■ {notice}"))
        if (stopped := _stopped(record)) is not None:
            lines.append(html.escape(f"■ {stopped}"))
        if self.answer is not None:
            from .widget import _markdown

            self._set_chunks((_finished(record.answer, self.box),) if record.answer else ())
            self.status.outputs = (_markdown("\n\n".join(lines)),) if lines else ()
        self.box.column_finished()

    def _append(self, text: str) -> None:
        """Add finished blocks to the last chunk, or to a new one once it is full."""
        chunks = self.answer.children
        if chunks and len(self._chunk) < CHUNK_CHARS:
            self._chunk += text
            chunks[-1].outputs = (_rendered(self._chunk, self.box),)
        else:
            self._chunk = text
            self.answer.children = (*chunks, self._output((_rendered(text, self.box),)))

    def _set_chunks(self, outputs: tuple[dict[str, Any], ...]) -> None:
        """The column's answer as one chunk holding ``outputs``, or none."""
        from .widget import let_go

        def replace() -> None:
            self.answer.children = (self._output(outputs),) if outputs else ()

        self._chunk = ""
        let_go(self.answer.children, replace, layouts=False)  # (theirs is the box's)

    def _output(self, outputs: tuple[dict[str, Any], ...]) -> Any:
        return self.box._widgets.Output(outputs=outputs, layout=self.box._layout)


def several_bundle(records: list[Record], answer_format: Format, footer: bool) -> dict[str, str]:
    """What several answers are saved as: a column each, each with its footer (Markdown in
    flex boxes: side by side where the frontend keeps their style, one after the other
    where it does not), and the same as plain text."""
    markdown, plain = ['<div style="display: flex; gap: 2em; align-items: flex-start">'], []
    for record in records:
        bundle = static_bundle(
            record.answer,
            answer_format,
            record.footer() if footer and record.answer else None,
            reasoning=record.reasoning,
            notice=record.notice() or record.error,
            calls=tools_block(record.tool_runs),
        )
        text = bundle.get("text/markdown") or f"<pre>{html.escape(bundle['text/plain'])}</pre>"
        # (The blank lines end the HTML blocks, so that the Markdown between is rendered.)
        markdown.append(
            f'<div style="flex: 1; min-width: 0">\n\n{bold(record.model)}\n\n'
            f"{nested_markdown(text)}\n\n</div>"
        )
        plain.append(f"── {record.model} ──\n{bundle['text/plain']}")
    markdown.append("</div>")
    return {"text/markdown": "\n".join(markdown), "text/plain": "\n\n".join(plain)}


def _stopped(record: Record) -> str | None:
    if record.outcome != "interrupted":
        return None
    return (
        f"Stopped after {len(record.answer):,} characters; the partial answer was not added "
        "to the conversation."
    )


def _line(text: str) -> dict[str, Any]:
    from .widget import _note

    return _note(text)


def _finished(text: str, box: ColumnsView) -> dict[str, Any]:
    """A whole answer, as the frontend is to show it in its column."""
    if box._format == "text":
        return _rendered(text, box)
    return _rendered(static_bundle(text, box._format)["text/markdown"], box)


def _rendered(text: str, box: ColumnsView) -> dict[str, Any]:
    if box._format == "text":
        return {"output_type": "stream", "name": "stdout", "text": text}
    from .widget import _markdown

    return _markdown(text)


class TextColumns:
    """Several answers in a terminal: the first as it comes, the others whole, each under
    its model's name."""

    def __init__(
        self, models: list[str], footer: bool = True, stream: TextIO | None = None
    ) -> None:
        self._stream = stream or sys.stdout
        self.columns: list[Any] = [_First(self, footer, self._stream)]
        self.columns += [_Held(self, footer) for _ in models[1:]]
        self._models = models
        self._finished = [False] * len(models)
        self._written = 1  # (the first is written as it comes)
        self._stream.write(f"── {models[0]} ──\n")

    def column_finished(self, column: TextView) -> None:
        """Write every whole answer whose turn it is: in the order the models were given,
        whichever finished first."""
        self._finished[self.columns.index(column)] = True
        if not self._finished[0]:
            return
        while self._written < len(self.columns) and self._finished[self._written]:
            self.columns[self._written].write(self._models[self._written])
            self._written += 1


class _First(TextView):
    """The first answer, written as it comes; its error under it, as the others' are."""

    def __init__(self, columns: TextColumns, footer: bool, stream: TextIO) -> None:
        super().__init__(footer, stream)
        self._columns = columns

    def finish(self, record: Record) -> None:
        super().finish(record)
        if record.error is not None:
            self._stream.write(f"■ {record.error}\n")
        self._columns.column_finished(self)


class _Held(TextView):
    """An answer kept until it is whole (and those before it are written), then written."""

    def __init__(self, columns: TextColumns, footer: bool) -> None:
        import io

        self._columns, self._out = columns, columns._stream
        self._held = io.StringIO()
        super().__init__(footer, self._held)

    def progress(self, text: str) -> None:
        pass  # (the first answer's line says it)

    def finish(self, record: Record) -> None:
        super().finish(record)
        if record.error is not None:
            self._stream.write(f"■ {record.error}\n")
        self._columns.column_finished(self)

    def write(self, model: str) -> None:
        self._out.write(f"\n── {model} ──\n{self._held.getvalue()}")
        self._out.flush()
