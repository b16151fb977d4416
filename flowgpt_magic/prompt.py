"""Prompts that use the notebook: ``{name}``, ``{obj.attr}``, ``{In[3]}``, ``{Out[3]}``,
``{Err}`` and ``{Err[3]}`` in a cell are replaced by those values.

Only these forms are interpolated: a name followed by attributes and integer indexes. Any
other brace stays as written, so JSON and the like pasted into a prompt go through
untouched (``{"a": {"b": 1}}``, ``{x + 1}``, ``{}``), and so does everything in code: a
fenced code block or an inline code span keeps its braces (``print(f"Hello {name}")``), and
an undefined name there is no error. ``{{name}}`` is the literal text ``{name}``. Nothing is
evaluated beyond names, attributes and integer indexes: no calls, no operators; and names
and attributes that start with ``_`` are not filled in (private by convention).

Before a prompt is sent, every secret the package knows of (see ``redact``) is replaced by
``***``: ``{os.environ}`` does not send the API key in it.

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

_NAME = r"[A-Za-z][A-Za-z0-9_]*"  # (not "_x": see the docstring)
_PATH = rf"{_NAME}(?:\.{_NAME}|\[-?\d+\])*"
_FORMS = re.compile(rf"\{{\{{({_PATH})\}}\}}|\{{({_PATH})\}}")
_STEP = re.compile(rf"\.({_NAME})|\[(-?\d+)\]")
_TICKS = re.compile(r"`+")


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

    parts, at = [], 0
    for start, end in code_spans(template):  # (code keeps its braces)
        parts += [_FORMS.sub(replace, template[at:start]), template[start:end]]
        at = end
    parts.append(_FORMS.sub(replace, template[at:]))
    return Prompt("".join(parts), tuple(images), tuple(inserted))


def code_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` holds code, as Markdown reads it: its fenced code blocks (an unclosed
    one runs to the end) and, between them, its inline code spans (a run of backticks to
    the next run of as many)."""
    from .display.markdown import fence_closes, fence_opened

    spans: list[tuple[int, int]] = []
    prose, fence, at = 0, "", 0  # (where the prose began; the open fence; the line's start)
    for line in text.splitlines(keepends=True):
        if fence:
            if fence_closes(line.rstrip("\r\n"), fence):
                spans.append((prose, at + len(line)))
                prose, fence = at + len(line), ""
        elif fence := fence_opened(line.rstrip("\r\n")):
            spans += _inline_code(text, prose, at)
            prose = at
        at += len(line)
    if fence:
        spans.append((prose, len(text)))
    else:
        spans += _inline_code(text, prose, len(text))
    return spans


def _inline_code(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    at = start
    while (opening := _TICKS.search(text, at, end)) is not None:
        run = opening.group()
        closing = re.compile(rf"(?<!`){run}(?!`)").search(text, opening.end(), end)
        if closing is None:
            at = opening.end()  # (backticks with no match are text)
            continue
        spans.append((opening.start(), closing.end()))
        at = closing.end()
    return spans


#: What the names of environment variables that hold secrets say.
SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
#: Shorter values are not taken for secrets: "1" or "true" replaced everywhere would
#: garble a prompt, and no key or token is that short.
SECRET_MIN = 8


def redact(text: str, secrets: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with each secret's value (``secrets``: where it is from -> the value)
    replaced by ``***``, and where each one replaced was from."""
    found = []
    for source, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        if len(value) >= SECRET_MIN and value in text:
            text = text.replace(value, "***")
            found.append(source)
    return text, found


def environment_secrets() -> dict[str, str]:
    """The environment's variables whose names say they hold a secret, by name."""
    import os

    return {f"${name}": value for name, value in os.environ.items() if SECRET_NAMES.search(name)}


def _drawn(value: Any) -> bool:
    """Whether ``value`` is what a plotting call returns (matplotlib artists, a figure),
    not data."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(type(v).__module__.startswith("matplotlib.") for v in items)


class ShownImages(Mapping[int, Sequence[Picture]]):
    """The images the notebook's recent cells show now (an inline plot, ``display(Image)``),
    by cell number, for ``{Out[3]}``. Filled from the kernel's display messages: kept as
    the messages carry them (base64 text), decoded only when a prompt asks; a cell's
    ``clear_output`` forgets its images, an update replaces the one it updates, and at most
    the last ``per_cell`` of a cell are kept (a cell that redraws a plot 5,000 times keeps
    one, or a few, not 5,000)."""

    def __init__(self, keep: int = 20, per_cell: int = 4) -> None:
        #: By cell: its images, each as (display id or None, MIME type, base64 text).
        self._by_cell: dict[int, list[tuple[str | None, str, str]]] = {}
        self._cell_of: dict[str, int] = {}  # a display id's cell
        self._keep, self._per_cell = keep, per_cell

    def __getitem__(self, cell: int) -> list[Picture]:
        import base64

        return [
            picture_of_bytes(base64.b64decode(data), f"cell [{cell}]", in_output=True, scale=False)
            for _, _, data in self._by_cell[cell]
        ]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_cell)

    def __len__(self) -> int:
        return len(self._by_cell)

    def record(self, cell: int, kind: str, content: Mapping[str, Any]) -> None:
        """Take in a display message of cell ``cell``: its ``kind`` (``display_data``,
        ``update_display_data``, ``clear_output``) and ``content``."""
        if kind == "clear_output":
            for shown, _, _ in self._by_cell.pop(cell, ()):
                self._cell_of.pop(shown or "", None)
            return
        bundle = content.get("data") or {}
        shown = (content.get("transient") or {}).get("display_id")
        for mime in ("image/png", "image/jpeg", "image/gif"):
            if isinstance(bundle.get(mime), str):
                image = (shown, mime, bundle[mime])
                break
        else:
            return
        if kind == "update_display_data" and shown:
            cell = self._cell_of.get(shown, cell)  # (the cell that shows it, not this one)
            images = self._by_cell.get(cell, [])
            if at := [i for i, (other, _, _) in enumerate(images) if other == shown]:
                images[at[0]] = image
                return
        images = self._by_cell.setdefault(cell, [])
        images.append(image)
        if shown:
            self._cell_of[shown] = cell
        del images[: -self._per_cell]
        while len(self._by_cell) > self._keep:
            del self._by_cell[min(self._by_cell)]


def resolve(
    path: str,
    namespace: Mapping[str, Any],
    what: str,
    takes: str = "a value of the notebook (rows, or df.column)",
    instead: str = "make it a variable first (rows = df.head(100))",
) -> Any:
    """The value ``path`` (a name, its attributes and integer indexes) names, for an
    option (``what``: ``--each``, which ``takes`` the name of such a value; what to do
    ``instead``); nothing else is evaluated."""
    if not re.fullmatch(_PATH, path):
        raise InvalidRequestError(f"{what} takes the name of {takes}, not {path!r}: {instead}.")
    return _resolve(path, namespace, f"{what} {path}", "Define it first.")


def _resolve(path: str, namespace: Mapping[str, Any], where: str = "", advice: str = "") -> Any:
    """The value of a ``{path}`` form (or, ``where`` given, an option's ``path``);
    ``advice``: what to do about one that cannot be had."""
    where = where or f"{{{path}}}"
    advice = advice or f"Define it, write {{{{{path}}}}} for the literal text, or use --raw."
    name = re.match(_NAME, path)
    assert name is not None  # the pattern only matches paths that start with a name
    if name.group() not in namespace:
        raise InvalidRequestError(
            f"{where} names {name.group()!r}, which is not defined in this notebook. {advice}"
        )
    value = namespace[name.group()]
    for attribute, index in _STEP.findall(path[name.end() :]):
        try:
            value = getattr(value, attribute) if attribute else value[int(index)]
        except (AttributeError, LookupError, TypeError) as error:
            step = f".{attribute}" if attribute else f"[{index}]"
            fix = (
                "Fix the reference."
                if where.startswith("-")
                else advice.replace("Define it", "Fix the reference")
            )
            raise InvalidRequestError(
                f"{where} cannot be filled in: {step} failed ({type(error).__name__}: "
                f"{error}). {fix}"
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
