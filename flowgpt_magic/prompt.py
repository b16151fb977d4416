"""Prompts that use the notebook: ``{name}``, ``{obj.attr}``, ``{In[3]}``, ``{Out[3]}``,
``{Err}`` and ``{Err[3]}`` in a cell are replaced by those values.

Only these forms are interpolated: a name followed by attributes and integer indexes. Any
other brace stays as written, so code, JSON and f-strings pasted into a prompt go through
untouched (``{"a": {"b": 1}}``, ``{x + 1}``, ``{}``). ``{{name}}`` is the literal text
``{name}``. Nothing is evaluated beyond names, attributes and integer indexes: no calls, no
operators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .exceptions import InvalidRequestError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH = rf"{_NAME}(?:\.{_NAME}|\[-?\d+\])*"
_FORMS = re.compile(rf"\{{\{{({_PATH})\}}\}}|\{{({_PATH})\}}")
_STEP = re.compile(rf"\.({_NAME})|\[(-?\d+)\]")


def expand(template: str, namespace: Mapping[str, Any]) -> str:
    """``template`` with every interpolation form replaced by its value (``str()`` of it)."""

    def replace(match: re.Match[str]) -> str:
        escaped, path = match.groups()
        if escaped is not None:
            return "{" + escaped + "}"
        return str(_resolve(path, namespace))

    return _FORMS.sub(replace, template)


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
