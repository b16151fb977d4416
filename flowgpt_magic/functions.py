"""The notebook's own functions as tools a model may call (``--tools f,g``): each described
as OpenAI's API takes a function (a JSON schema of its parameters, made from its signature,
type hints and docstring), and each call run, once the person approves it, with the
arguments the model wrote; what it returns goes back to the model.

Nothing here runs code the person did not write or approve: a call is run by ``run_call``,
which asks first (unless told the person chose not to be asked). Two tools are built in,
for a person to add by name: ``variables`` (the names, types and shapes of the notebook's
variables, never their values) and ``describe`` (a compact summary of one value, as
``{df}`` puts in a prompt). No IPython here: what asks is given (``input``, in a shell).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .exceptions import InvalidRequestError
from .providers.events import ToolCall

#: What the model is told of a call the person declined.
DECLINED = "The user declined to run this function call."
BUILT_IN = ("variables", "describe")


class Tool(NamedTuple):
    """A function the model may call: its name, what it is, and its OpenAI description."""

    name: str
    function: Callable[..., Any]
    spec: dict[str, Any]  # {"type": "function", "function": {name, description, parameters}}


class ToolRun(NamedTuple):
    """One call the model asked for, and what came of it."""

    id: str
    name: str
    arguments: str  # as the model wrote them (JSON text)
    result: str  # what went back to the model
    outcome: str = "ran"  # "ran", "declined", "failed" (it raised, or its arguments did not fit)
    seconds: float = 0.0

    def line(self) -> str:
        """The call in one line, for a person: add(a=2, b=3) → 5 (0.01 s)."""
        shown = _shown(self.result)
        if self.outcome == "declined":
            return f"{self.name}({_arguments(self.arguments)}): declined"
        return f"{self.name}({_arguments(self.arguments)}) → {shown} ({self.seconds:.2f} s)"

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, data: Any) -> ToolRun:
        if not (
            isinstance(data, dict) and all(isinstance(data.get(f), str) for f in cls._fields[:5])
        ):
            raise ValueError("has a tool run that is not one")
        return cls(**{f: data[f] for f in cls._fields if f in data})


def tools_named(names: list[str], namespace: Mapping[str, Any]) -> tuple[Tool, ...]:
    """The tools ``names`` name (functions of the notebook, or the built-in ones); an error
    in one line for a name that is not one, or a function that cannot be described."""
    tools = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if name in BUILT_IN and name not in namespace:
            tools.append(_built_in(name, namespace))
            continue
        if name not in namespace:
            raise InvalidRequestError(
                f"--tools {name}: there is no {name} in the notebook. Name functions the "
                f"notebook defines (--tools f,g), or the built-in {' and '.join(BUILT_IN)}."
            )
        function = namespace[name]
        if not (inspect.isfunction(function) or inspect.ismethod(function)):
            raise InvalidRequestError(
                f"--tools {name}: {name} is {type(function).__name__}, not a function the "
                "notebook defines (def ...); a model can call only those."
            )
        tools.append(Tool(name, function, describe_function(name, function)))
    return tuple(tools)


def describe_function(name: str, function: Callable[..., Any]) -> dict[str, Any]:
    """``function`` as OpenAI's API takes a tool: its docstring's first paragraph, and a
    JSON schema of its parameters from their type hints (a parameter with a default is
    optional)."""
    from .schema import type_schema

    defs: dict[str, Any] = {}
    try:
        hints = _hints(function)
        signature = inspect.signature(function)
    except (TypeError, ValueError, NameError) as error:
        raise InvalidRequestError(f"--tools {name}: it cannot be described ({error}).") from None
    properties: dict[str, Any] = {}
    required = []
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise InvalidRequestError(
                f"--tools {name}: its *{parameter.name} cannot be described to a model; give "
                "it named parameters."
            )
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise InvalidRequestError(
                f"--tools {name}: its parameter {parameter.name} is positional-only; a model "
                "calls with names."
            )
        hint = hints.get(parameter.name, Any)
        try:
            properties[parameter.name] = type_schema(hint, defs)
        except InvalidRequestError as error:
            raise InvalidRequestError(
                f"--tools {name}: its parameter {parameter.name} cannot be described. {error}"
            ) from None
        if parameter.default is parameter.empty:
            required.append(parameter.name)
    doc = inspect.getdoc(function) or ""
    described = {
        "name": name,
        "description": doc.split("\n\n")[0].replace("\n", " ").strip(),
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": required,
            **({"$defs": defs} if defs else {}),
        },
    }
    if not described["description"]:
        del described["description"]
    return {"type": "function", "function": described}


def _hints(function: Callable[..., Any]) -> dict[str, Any]:
    import typing

    hints = typing.get_type_hints(function)
    hints.pop("return", None)
    return hints


def run_call(
    tools: tuple[Tool, ...],
    call: ToolCall,
    approve: bool,
    ask: Callable[[str], str],
    value_chars: int,
) -> ToolRun:
    """Run ``call`` (on the thread that runs the notebook's code), once the person says
    yes (``ask`` gets the question; ``approve``: not asked). Its result, or its error in
    one line, or that it was declined, is what goes back."""
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        offered = ", ".join(t.name for t in tools)
        return ToolRun(*call, f"There is no function {call.name}; there are {offered}.", "failed")
    try:
        arguments = json.loads(call.arguments or "{}")
        if not isinstance(arguments, dict):
            raise ValueError("they are not a JSON object")
    except ValueError as error:
        return ToolRun(*call, f"The arguments are not a JSON object ({error}).", "failed")
    if not approve:
        try:
            said = ask(f"Run {call_line(call)}? [y/N] ")
        except Exception as error:  # (a frontend that takes no input: nbclient, nbconvert)
            why = (
                f"{DECLINED} (The user could not be asked, {type(error).__name__}: "
                "--approve runs calls unasked.)"
            )
            return ToolRun(*call, why, "declined")
        if said.strip().lower() not in ("y", "yes"):
            return ToolRun(*call, DECLINED, "declined")
    try:
        arguments = _fitted(tool.function, arguments)
    except (TypeError, ValueError) as error:
        return ToolRun(*call, f"The arguments do not fit {call.name}: {error}.", "failed")
    started = time.monotonic()
    try:
        value = tool.function(**arguments)
    except Exception as error:
        text = f"{type(error).__name__}: {error}".splitlines()[0]
        return ToolRun(*call, text, "failed", time.monotonic() - started)
    return ToolRun(*call, _result(value, value_chars), "ran", time.monotonic() - started)


def _fitted(function: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as the function's hints want them (dataclasses, pydantic models made);
    ``TypeError`` or ``ValueError`` for ones that do not fit its signature or hints."""
    from .schema import value_as

    inspect.signature(function).bind(**arguments)  # (a missing or unknown one: TypeError)
    hints = _hints(function)
    return {
        name: value_as(hints[name], value, name) if name in hints else value
        for name, value in arguments.items()
    }


def _result(value: Any, cap: int) -> str:
    """What a call's value is sent as: a string as it is, else its repr (a data value as a
    summary); at most ``cap`` characters."""
    from .attachments import summary_of

    if isinstance(value, str):
        text = value
    elif (summary := summary_of(value, cap)) is not None:
        text = summary[1]
    else:
        text = repr(value)
    return text if len(text) <= cap else text[: cap - 1] + "…"


def call_line(call: ToolCall) -> str:
    """A call as it reads: add(a=2, b='x')."""
    return f"{call.name}({_arguments(call.arguments)})"


def _arguments(arguments: str) -> str:
    """The arguments as a call reads: a=2, b='x' (the text itself, if it is not JSON)."""
    try:
        values = json.loads(arguments or "{}")
    except ValueError:
        return arguments
    if not isinstance(values, dict):
        return arguments
    return ", ".join(f"{name}={value!r}" for name, value in values.items())


def _shown(text: str, most: int = 80) -> str:
    one = " ".join(text.split())
    return one if len(one) <= most else one[: most - 1] + "…"


def tools_block(runs: tuple[ToolRun, ...]) -> str:
    """The calls and their results, folded (HTML, so that Markdown leaves their text alone)."""
    import html

    if not runs:
        return ""
    items = "".join(
        f"<li><code>{html.escape(run.line())}</code>"
        + (f"<pre>{html.escape(run.result)}</pre>" if len(run.result) > 80 else "")
        + "</li>"
        for run in runs
    )
    calls = f"{len(runs)} function call{'s' if len(runs) != 1 else ''}"
    return f"<details><summary>{calls}</summary>\n<ul>{items}</ul>\n</details>"


# -- the built-in tools --------------------------------------------------------------------


def _built_in(name: str, namespace: Mapping[str, Any]) -> Tool:
    def variables() -> str:
        """The names of the notebook's variables, with their types and shapes (never their
        values)."""
        lines = []
        for key, value in namespace.items():
            if key.startswith("_") or key in ("In", "Out", "exit", "quit", "get_ipython"):
                continue
            if inspect.ismodule(value):
                continue
            shape = getattr(value, "shape", None)
            size = (
                f", shape {tuple(shape)}"
                if shape is not None
                else (
                    f", {len(value)} items" if isinstance(value, (list, tuple, dict, set)) else ""
                )
            )
            lines.append(f"{key}: {type(value).__name__}{size}")
        return "\n".join(lines) or "(no variables)"

    def describe(name: str) -> str:
        """A compact summary of the notebook's variable ``name``: its kind, shape and first
        rows for data; for other values, their repr, cut short."""
        from .attachments import summary_of

        if name.startswith("_") or name not in namespace:
            return f"There is no variable {name}."
        value = namespace[name]
        summary = summary_of(value, 2_000)
        return summary[1] if summary is not None else _result(value, 2_000)

    function = variables if name == "variables" else describe
    return Tool(name, function, describe_function(name, function))
