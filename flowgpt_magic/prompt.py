"""Prompts that use the notebook: ``{name}``, ``{obj.attr}``, ``{In[3]}``, ``{Out[3]}``,
``{Err}`` and ``{Err[3]}`` in a cell are replaced by those values.

Only these forms are interpolated: a name followed by attributes and integer indexes. Any
other brace stays as written, so code, JSON and f-strings pasted into a prompt go through
untouched (``{"a": {"b": 1}}``, ``{x + 1}``, ``{}``). ``{{name}}`` is the literal text
``{name}``. Nothing is evaluated beyond names, attributes and integer indexes: no calls, no
operators.

An image (a matplotlib Figure, a PIL image, an IPython Image) goes with the prompt as an
image, labelled ``[image 1]``... in its text; ``{Out[3]}`` is what cell 3 showed: its
result, and the images it displayed (an inline plot). Data (a DataFrame, an array, a long
list or string) goes as a compact summary, cut at a size (``attachments.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from .attachments import Picture, fit, picture_of, picture_of_bytes, summary_of
from .exceptions import InvalidRequestError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = rf"{_NAME}(?:\.{_NAME}|\[-?\d+\])*"
_FORMS = re.compile(rf"\{{\{{({_PATH})\}}\}}|\{{({_PATH})\}}")
_STEP = re.compile(rf"\.({_NAME})|\[(-?\d+)\]")


_OUT = re.compile(r"Out\[(\d+)\]")


class Prompt(NamedTuple):
    """A cell's prompt, filled in: its text, its images, and what was put in it that a
    person may want to check (for ``--dry-run``)."""

    text: str
    images: tuple[Picture, ...] = ()
    inserted: tuple[str, ...] = ()


def expand(
    template: str,
    namespace: Mapping[str, Any],
    shown: Mapping[int, Sequence[Picture]] | None = None,
    value_chars: int = 4_000,
) -> Prompt:
    """``template`` with every interpolation form replaced by its value: an image's label
    (the image goes with the prompt), a data value's summary (at most ``value_chars``
    characters), or ``str()`` of it. ``shown``: the images each cell displayed."""
    images: list[Picture] = []
    inserted: list[str] = []

    def label(picture: Picture, path: str) -> str:
        picture = fit(picture)  # (a plot shown large: scaled down, or refused, here)
        images.append(picture)
        inserted.append(f"{{{path}}}: image {len(images)}, {picture.describe()}")
        return f"[image {len(images)}]"

    def replace(match: re.Match[str]) -> str:
        escaped, path = match.groups()
        if escaped is not None:
            return "{" + escaped + "}"
        out = _OUT.fullmatch(path)
        cell = int(out.group(1)) if out else None
        displayed = (shown or {}).get(cell, ()) if cell is not None else ()
        if displayed and cell not in namespace.get("Out", {}):
            # (A cell that showed a plot, and had no result.)
            return " ".join(label(p, path) for p in displayed)
        value = _resolve(path, namespace)
        words = [label(p, path) for p in displayed]
        if displayed and _drawn(value):  # (plt.plot's lines, or the figure it showed)
            return " ".join(words)
        if (picture := picture_of(value, path)) is not None:
            return " ".join([*words, label(picture, path)])
        if (summary := summary_of(value, value_chars)) is not None:
            kind, text = summary
            inserted.append(f"{{{path}}}: {kind} summary, {len(text):,} characters")
            return " ".join([text, *words])
        return " ".join([str(value), *words])

    text = _FORMS.sub(replace, template)
    return Prompt(text, tuple(images), tuple(inserted))


def _drawn(value: Any) -> bool:
    """Whether ``value`` is what a plotting call returns (matplotlib artists, a figure),
    not data."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(type(v).__module__.startswith("matplotlib.") for v in items)


class ShownImages(Mapping[int, Sequence[Picture]]):
    """The images the notebook's recent cells displayed (an inline plot, ``display(Image)``),
    by cell number, for ``{Out[3]}``. Filled from the kernel's display messages."""

    def __init__(self, keep: int = 20) -> None:
        self._by_cell: dict[int, list[Picture]] = {}
        self._keep = keep

    def __getitem__(self, cell: int) -> list[Picture]:
        return self._by_cell[cell]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_cell)

    def __len__(self) -> int:
        return len(self._by_cell)

    def record(self, cell: int, bundle: Mapping[str, Any]) -> None:
        """Keep the image a display message's ``bundle`` holds, if any (as an output keeps
        it, so a saved record can refer to it there)."""
        import base64

        for mime in ("image/png", "image/jpeg", "image/gif"):
            if isinstance(bundle.get(mime), str):
                data = base64.b64decode(bundle[mime])
                picture = picture_of_bytes(data, f"cell [{cell}]", in_output=True, scale=False)
                self._by_cell.setdefault(cell, []).append(picture)
                while len(self._by_cell) > self._keep:
                    del self._by_cell[min(self._by_cell)]
                return


def _resolve(path: str, namespace: Mapping[str, Any]) -> Any:
    name = re.match(_NAME, path)
    assert name is not None  # the pattern only matches paths that start with a name
    if name.group() not in namespace:
        raise InvalidRequestError(
            f"{{{path}}} names {name.group()!r}, which is not defined in this notebook. "
            f"Define it, write {{{{{path}}}}} for the literal text, or use --raw."
        )
    value = namespace[name.group()]
    for attribute, index in _STEP.findall(path[name.end() :]):
        try:
            value = getattr(value, attribute) if attribute else value[int(index)]
        except (AttributeError, LookupError, TypeError) as error:
            step = f".{attribute}" if attribute else f"[{index}]"
            raise InvalidRequestError(
                f"{{{path}}} cannot be filled in: {step} failed ({type(error).__name__}: "
                f"{error}). Fix the reference, write {{{{{path}}}}} for the literal text, "
                "or use --raw."
            ) from None
    return value


class ErrorLog:
    """The notebook's recent errors with their tracebacks, for ``{Err}`` and ``{Err[3]}``.

    Filled from IPython's ``post_run_cell`` event, so IPython's own exception handling (and
    any custom exception hook) is left alone.
    """

    def __init__(self, keep: int = 50) -> None:
        self._by_cell: dict[int, str] = {}
        self._last = ""
        self._keep = keep

    def __str__(self) -> str:
        return self._last

    def __getitem__(self, cell: int) -> str:
        if cell not in self._by_cell:
            raise KeyError(f"cell {cell} raised no error that is remembered")
        return self._by_cell[cell]

    def record(self, cell: int | None, text: str) -> None:
        self._last = text
        if cell is not None:
            self._by_cell[cell] = text
            while len(self._by_cell) > self._keep:
                del self._by_cell[min(self._by_cell)]
