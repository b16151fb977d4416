"""Showing an answer: output widgets in Jupyter (``widget.py``), plain text in a terminal
(``text.py``), and the Markdown both make of it (``markdown.py``). The views implement
``chat.View``: the chat streams an answer's pieces into one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .markdown import MarkdownBlocks, code_of, static_bundle
from .text import TextView

if TYPE_CHECKING:
    from ..record import Format
    from ..reply import View

__all__ = [
    "MarkdownBlocks",
    "TextView",
    "code_of",
    "open_background",
    "open_columns",
    "open_view",
    "static_bundle",
]


def open_columns(
    use_widget: bool, models: list[str], answer_format: Format, footer: bool
) -> list[View]:
    """Views for several answers at once, side by side (Jupyter) or one after the other
    (a terminal): one a model."""
    from .columns import ColumnsView, TextColumns

    if use_widget:
        return list(ColumnsView(models, answer_format, footer).columns)
    return list(TextColumns(models, footer).columns)


def open_background(model: str, answer_format: Format, footer: bool) -> Any:
    """The view of an answer in the background: a box with a Stop button, on screen now
    (its cell is about to end), streamed by widget state after. Give it its ``stop``."""
    from .columns import ColumnsView

    box = ColumnsView([model], answer_format, footer, stop=lambda: None)
    box.show()
    return box


def open_view(use_widget: bool, waiting: str, answer_format: Format, footer: bool) -> View:
    """The view for an answer: output widgets (Jupyter), or plain text (a terminal)."""
    if use_widget:
        from .widget import WidgetView  # (ipywidgets is imported when an answer needs it)

        return WidgetView(waiting, answer_format, footer)
    return TextView(footer)
