"""How a run over rows shows how it goes: a progress bar and a line of figures in Jupyter,
one line redrawn in place in a terminal, each at most 10 times a second; at the end a
summary line, why rows failed, and the first answers (in Jupyter, one static output that
a saved notebook shows without widgets)."""

from __future__ import annotations

import html
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import asyncio

    from ..batch import Tally

#: Seconds between two updates of a run's progress.
TICK = 0.1
#: The key under which a run's output carries its summary.
METADATA_KEY = "flowgpt_magic_each"
PREVIEW_CHARS = 120


def figures(tally: Tally) -> str:
    """The line of figures: done, failed and total, rows a second, time left, tokens, cost."""
    parts = [f"{tally.done:,} of {tally.total:,} done"]
    if tally.failed:
        parts.append(f"{tally.failed:,} failed")
    parts.append(f"{tally.rate:,.1f} a second")
    if tally.ended is None and (left := tally.left) is not None:
        parts.append(f"{_clock(left)} left")
    if tally.input_tokens or tally.output_tokens:
        parts.append(f"{tally.input_tokens:,} tokens in, {tally.output_tokens:,} out")
    if tally.cost:
        from ..record import dollars

        parts.append(dollars(tally.cost))
    if tally.loading and not tally.done:
        parts.append(tally.loading)
    return " · ".join(parts)


def summary(tally: Tally) -> str:
    """The line a run ends with: what it did, how fast, at what pace it settled."""
    pace = tally.pace
    how = f"at most {pace.most:,} at once"
    if pace.lowest < pace.most:
        how += f"; slowed to {pace.lowest:,} by the server, settled at {pace.limit:,}"
    stopped = f" Stopped by {tally.stopped_by}." if tally.stopped_by else ""
    return (
        f"{tally.done:,} of {tally.total:,} answers in {tally.seconds:,.1f} s "
        f"({tally.rate:,.1f} a second, {how}){stopped}"
        + (f" · {_rest(tally)}" if _rest(tally) else "")
    )


def _rest(tally: Tally) -> str:
    parts = []
    if tally.failed:
        parts.append(f"{tally.failed:,} failed")
    if tally.input_tokens or tally.output_tokens:
        parts.append(f"{tally.input_tokens:,} tokens in, {tally.output_tokens:,} out")
    if tally.cost:
        from ..record import dollars

        parts.append(dollars(tally.cost))
    return " · ".join(parts)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def _cut(answer: str | None) -> str:
    if answer is None:
        return "(none)"
    line = " ".join(answer.split())
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


class ProgressBox:
    """A run's progress in Jupyter: a bar and its figures, then one static output."""

    def __init__(self, title: str) -> None:
        import ipywidgets  # (here: a broken install fails before anything is sent)

        self._widgets, self._title = ipywidgets, title
        self._timer: asyncio.TimerHandle | None = None
        self._handle: Any = None

    def begin(self, tally: Tally) -> None:
        import asyncio

        from IPython.display import display

        from .widget import WIDGET_VIEW

        ipywidgets = self._widgets
        self._bar = ipywidgets.IntProgress(value=0, min=0, max=max(1, tally.total))
        self._line = ipywidgets.HTML(html.escape(figures(tally)))
        self._box = ipywidgets.HBox((self._bar, self._line))
        view = {"version_major": 2, "version_minor": 0, "model_id": self._box.model_id}
        plain = f"{self._title}: {figures(tally)}"
        self._handle = display({WIDGET_VIEW: view, "text/plain": plain}, raw=True, display_id=True)
        self._loop = asyncio.get_running_loop()
        self._tally = tally
        self._timer = self._loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        tally = self._tally
        self._bar.value = tally.done
        if tally.failed:
            self._bar.bar_style = "warning"
        self._line.value = html.escape(figures(tally))
        self._timer = self._loop.call_later(TICK, self._tick)

    def finish(self, tally: Tally, preview: list[tuple[Any, str | None]], failures: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        lines = [summary(tally), *([failures] if failures else [])]
        table = ["| row | answer |", "|---|---|"] + [
            f"| {html.escape(str(label))} | {html.escape(_cut(answer)).replace('|', '&#124;')} |"
            for label, answer in preview
        ]
        markdown = "\n\n".join(
            [f"**{html.escape(self._title)}**", *map(html.escape, lines), "\n".join(table)]
        )
        plain = "\n".join(
            [self._title, *lines, *(f"  {label}: {_cut(answer)}" for label, answer in preview)]
        )
        bundle = {"text/markdown": markdown, "text/plain": plain}
        metadata = {METADATA_KEY: _saved(tally)}
        if self._handle is not None:
            from .widget import let_go

            handle = self._handle
            let_go(
                (self._box, self._bar, self._line),
                lambda: handle.update(bundle, raw=True, metadata=metadata),
            )


class TextProgress:
    """A run's progress in a terminal: one line, redrawn in place, then the summary."""

    def __init__(self, title: str, stream: TextIO | None = None) -> None:
        from .text import _is_terminal

        self._title, self._stream = title, stream or sys.stdout
        self._timer: asyncio.TimerHandle | None = None
        self._shown = ""
        # (A line is redrawn where "\r" goes back: a terminal, a notebook's stream; in a
        # file or a pipe, only the summary is written.)
        self._redraws = _is_terminal(self._stream) or type(self._stream).__name__ == "OutStream"

    def begin(self, tally: Tally) -> None:
        import asyncio

        self._tally, self._loop = tally, asyncio.get_running_loop()
        if self._redraws:
            self._tick()

    def _tick(self) -> None:
        line = f"{self._title}: {figures(self._tally)}"
        if line != self._shown:
            pad = " " * max(0, len(self._shown) - len(line))  # (what the old line had more)
            self._stream.write(f"\r{line}{pad}")
            self._stream.flush()
            self._shown = line
        self._timer = self._loop.call_later(TICK, self._tick)

    def finish(self, tally: Tally, preview: list[tuple[Any, str | None]], failures: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        pad = " " * max(0, len(self._shown) - len(summary(tally)))
        lines = [summary(tally) + pad, *([failures] if failures else [])]
        lines += [f"  {label}: {_cut(answer)}" for label, answer in preview]
        self._stream.write("\r" + "\n".join(lines) + "\n")
        self._stream.flush()


def _saved(tally: Tally) -> dict[str, Any]:
    """A run's summary as its saved output's metadata holds it."""
    return {
        "total": tally.total,
        "done": tally.done,
        "failed": tally.failed,
        "seconds": round(tally.seconds, 3),
        "input_tokens": tally.input_tokens,
        "output_tokens": tally.output_tokens,
        "cost": tally.cost,
        "most_at_once": tally.pace.most,
        "settled_at": tally.pace.limit,
        "stopped_by": tally.stopped_by,
    }
