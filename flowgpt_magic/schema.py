"""Answers as Python objects: a schema in, a validated object out.

A schema is what the notebook has: a pydantic model, a dataclass, a TypedDict, a JSON-schema
dict, or a list of one of them (``list[Item]``). It is asked for as OpenAI's API takes it
(``response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict":
true}}``, the schema made strict as the official ``openai`` client makes it: every object
closed, every property required), and the answer is parsed and validated into an instance
of the model (a dict for a JSON-schema dict, a list for a list of them). OpenAI's API takes
an object at the top only: a list goes wrapped (``{"items": [...]}``) and comes back
unwrapped.

pydantic is used only for a pydantic model (it is then installed); dataclasses and
TypedDicts are described and checked here, from their type hints. No IPython here.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .exceptions import InvalidRequestError

#: The key a list is wrapped in, for APIs that take an object at the top only.
ITEMS = "items"


class Schema(NamedTuple):
    """What an answer must be: its name and strict JSON schema (as sent), and what makes a
    checked value of its JSON (raising ``ValueError`` that says what is wrong)."""

    name: str
    json_schema: dict[str, Any]
    parse: Callable[[Any], Any]
    #: Whether the value is a list, wrapped in {"items": [...]} on the wire.
    wrapped: bool = False
    #: The fields an object has, and their Python types (for --each's columns).
    fields: dict[str, Any] | None = None

    def response_format(self) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.json_schema, "strict": True},
        }

    def value_of(self, text: str) -> Any:
        """The answer's value: parsed, unwrapped and checked; ``ValueError`` if it is not."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"it is not JSON ({error})") from None
        if self.wrapped:
            if not (isinstance(data, dict) and isinstance(data.get(ITEMS), list)):
                raise ValueError(f'it is not an object with a list "{ITEMS}"')
            data = data[ITEMS]
        return self.parse(data)


def answer_value(answer: str, answer_format: str, schema: Schema | None = None) -> Any:
    """What is kept of an answer (in ``_flowgpt``, ``-o``, a row's value): the value it is
    (``schema``'s, checked when it came), its code (``-f code``), the value its JSON is
    (``-f json``; its very text, if it is not JSON), else its text."""
    if schema is not None:
        return schema.value_of(answer)
    if answer_format == "code":
        from .display import code_of

        return code_of(answer)[0]
    if answer_format == "json":
        try:
            return json.loads(answer)
        except ValueError:
            pass
    return answer


def schema_named(text: str, namespace: Mapping[str, Any]) -> Schema:
    """The schema ``--schema TEXT`` names: a value of the notebook (``Review``,
    ``models.Review``), or a list of one (``list[Review]``)."""
    from .prompt import resolve

    text = text.strip()
    inner = text[5:-1].strip() if text.startswith("list[") and text.endswith("]") else None
    value = resolve(
        inner or text,
        namespace,
        what="--schema",
        takes="a class or a JSON-schema dict of the notebook (Review, or list[Review])",
        instead="define it in a cell first",
    )
    return schema_of(list[value] if inner else value, text)  # type: ignore[valid-type]


def schema_of(value: Any, named: str) -> Schema:
    """The schema ``value`` (named ``named`` in the notebook) describes."""
    if typing.get_origin(value) is list and len(typing.get_args(value)) == 1:
        (item,) = typing.get_args(value)
        inner = schema_of(item, getattr(item, "__name__", named))
        schema = {
            "type": "object",
            "properties": {ITEMS: {"type": "array", "items": _inline(inner.json_schema)}},
            "required": [ITEMS],
            "additionalProperties": False,
        }
        if "$defs" in inner.json_schema:
            schema["$defs"] = inner.json_schema["$defs"]

        def items(data: Any) -> list[Any]:
            if not isinstance(data, list):
                raise ValueError(f"it is {type(data).__name__}, not a list")
            return [inner.parse(item) for item in data]

        return Schema(f"{inner.name}List", schema, items, wrapped=True, fields=inner.fields)
    if isinstance(value, Mapping):
        return _dict_schema(dict(value), named)
    if _is_pydantic(value):
        return _pydantic_schema(value)
    if isinstance(value, type) and dataclasses.is_dataclass(value):
        return _hinted_schema(value, lambda data: value(**data))
    if isinstance(value, type) and typing.is_typeddict(value):
        return _hinted_schema(value, lambda data: data)
    raise InvalidRequestError(
        f"--schema {named} needs a pydantic model, a dataclass, a TypedDict or a JSON-schema "
        f"dict (or list[...] of one); {named} is a {type(value).__name__}."
    )


def _is_pydantic(value: Any) -> bool:
    return isinstance(value, type) and any(
        base.__module__.startswith("pydantic") and base.__name__ == "BaseModel"
        for base in value.__mro__
    )


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema without its ``$defs`` (they go to the top, where the refs point)."""
    return {k: v for k, v in schema.items() if k != "$defs"}


def _pydantic_schema(model: Any) -> Schema:
    import copy

    schema = copy.deepcopy(model.model_json_schema())
    strict = strict_schema(schema, root=schema)

    def parse(data: Any) -> Any:
        import pydantic

        try:
            return model.model_validate(data)
        except pydantic.ValidationError as error:
            raise ValueError(_pydantic_errors(error)) from None

    fields = {name: info.annotation for name, info in model.model_fields.items()}
    return Schema(model.__name__, strict, parse, fields=fields)


def _pydantic_errors(error: Any) -> str:
    said = []
    for item in error.errors()[:3]:
        where = ".".join(map(str, item["loc"])) or "the answer"
        said.append(f"{where}: {item['msg']}")
    return "; ".join(said)


def _dict_schema(schema: dict[str, Any], named: str) -> Schema:
    import copy

    strict = strict_schema(copy.deepcopy(schema), root=schema)

    def parse(data: Any) -> Any:
        import jsonschema  # (nbformat's own dependency: here already)

        try:
            jsonschema.validate(data, schema)
        except jsonschema.ValidationError as error:
            where = ".".join(map(str, error.absolute_path)) or "the answer"
            raise ValueError(f"{where}: {error.message}") from None
        return data

    fields = None
    if isinstance(schema.get("properties"), dict):
        fields = {name: _json_type(sub) for name, sub in schema["properties"].items()}
    name = str(schema.get("title") or named)
    return Schema(_api_name(name), strict, parse, fields=fields)


def _api_name(name: str) -> str:
    """A name OpenAI's API takes (letters, digits, _ and -)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name) or "schema"


def _json_type(schema: Any) -> Any:
    kinds = {"string": str, "integer": int, "number": float, "boolean": bool}
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kinds.get(kind, object) if isinstance(kind, str) else object


# -- dataclasses and TypedDicts, from their type hints -------------------------------------


def _hinted_schema(kind: type, make: Callable[[dict[str, Any]], Any]) -> Schema:
    defs: dict[str, Any] = {}
    schema = _object_schema(kind, defs)
    if defs:
        schema = {**schema, "$defs": defs}
    hints = typing.get_type_hints(kind)

    def parse(data: Any) -> Any:
        return _checked(kind, data, "the answer")

    return Schema(kind.__name__, schema, parse, fields=hints)


def _object_schema(kind: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(kind)
    return {
        "type": "object",
        "properties": {name: _type_schema(hint, defs) for name, hint in hints.items()},
        "required": list(hints),
        "additionalProperties": False,
        "title": kind.__name__,
    }


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def type_schema(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a type hint (a function's parameter), the types it refers to put
    in ``defs``; a pydantic model's own. ``InvalidRequestError`` for one that cannot be."""
    if isinstance(hint, type) and hasattr(hint, "model_json_schema"):
        described = dict(hint.model_json_schema())
        defs.update(described.pop("$defs", {}))
        return described
    return _type_schema(hint, defs)


def value_as(hint: Any, data: Any, where: str) -> Any:
    """``data`` (JSON) as ``hint`` wants it: dataclasses made, a pydantic model validated;
    ``ValueError`` saying where it is not."""
    if isinstance(hint, type) and hasattr(hint, "model_validate"):
        try:
            return hint.model_validate(data)
        except Exception as error:  # (pydantic's ValidationError)
            raise ValueError(
                _pydantic_errors(error) if hasattr(error, "errors") else error
            ) from None
    return _checked(hint, data, where)


def _type_schema(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is type(None):
        return {"type": "null"}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(arg, defs) for arg in args]}
    if origin is typing.Literal:
        kinds = {_SCALARS.get(type(arg)) for arg in args}
        return {"enum": list(args), **({"type": kinds.pop()} if len(kinds) == 1 else {})}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        return {"type": "array", "items": _type_schema(args[0] if args else Any, defs)}
    if origin is dict or hint is dict:
        # (As pydantic describes a map. OpenAI's strict mode takes closed objects only, and
        # refuses it; llama.cpp's grammar follows it.)
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": _type_schema(value, defs)}
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or typing.is_typeddict(hint)):
        if hint.__name__ not in defs:
            defs[hint.__name__] = {}  # (a placeholder: a type may refer to itself)
            defs[hint.__name__] = _object_schema(hint, defs)
        return {"$ref": f"#/$defs/{hint.__name__}"}
    raise InvalidRequestError(
        f"A schema's type {hint!r} cannot be described: use str, int, float, bool, Literal, "
        "lists, dicts, optionals and other dataclasses or TypedDicts."
    )


def _checked(hint: Any, data: Any, where: str) -> Any:
    """``data`` as ``hint`` wants it (dataclasses made), or ``ValueError`` saying where it
    is not."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return data
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if hint in _SCALARS:
        if isinstance(data, hint) and not (hint is not bool and isinstance(data, bool)):
            return data
        raise ValueError(f"{where}: {_shown(data)} is not {_describe(hint)}")
    if hint is type(None):
        if data is None:
            return None
        raise ValueError(f"{where}: {_shown(data)} is not null")
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _checked(arg, data, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {_shown(data)} is not {_describe(hint)}")
    if origin is typing.Literal:
        if data in args:
            return data
        raise ValueError(f"{where}: {_shown(data)} is not {_describe(hint)}")
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if not isinstance(data, list):
            raise ValueError(f"{where}: {_shown(data)} is not a list")
        item = args[0] if args else Any
        items = [_checked(item, value, f"{where}[{i}]") for i, value in enumerate(data)]
        return items if origin in (list, None) else (origin or list)(items)
    if origin is dict or hint is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: {_shown(data)} is not an object")
        value = args[1] if len(args) == 2 else Any
        return {key: _checked(value, item, f"{where}.{key}") for key, item in data.items()}
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or typing.is_typeddict(hint)):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: {_shown(data)} is not an object")
        hints = typing.get_type_hints(hint)
        if missing := [name for name in hints if name not in data]:
            raise ValueError(f"{where}: {', '.join(missing)} missing")
        if extra := [name for name in data if name not in hints]:
            raise ValueError(f"{where}: {', '.join(extra)} not in {hint.__name__}")
        fields = {
            name: _checked(sub, data[name], name if where == "the answer" else f"{where}.{name}")
            for name, sub in hints.items()
        }
        return hint(**fields) if dataclasses.is_dataclass(hint) else fields
    raise ValueError(f"{where}: {hint!r} cannot be checked")


def _shown(data: Any) -> str:
    """A value as the answer's JSON has it, cut short."""
    text = json.dumps(data, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _describe(hint: Any) -> str:
    """A type as a person says it: an integer, 'a' or 'b', null."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _SCALARS:
        return ("an " if hint is int else "a ") + _SCALARS[hint]
    if hint is type(None):
        return "null"
    if origin is typing.Literal:
        said = [repr(arg) for arg in args]
    elif origin in (typing.Union, types.UnionType):
        said = [_describe(arg) for arg in args]
    else:
        return getattr(hint, "__name__", repr(hint))
    return ", ".join(said[:-1]) + (" or " if len(said) > 1 else "") + said[-1]


# -- strict, as OpenAI's API takes schemas ----------------------------------------------


def strict_schema(schema: Any, *, root: dict[str, Any]) -> dict[str, Any]:
    """``schema`` made strict in place, as the official ``openai`` client makes it
    (``openai.lib._pydantic``): every object closed and every property required, a
    ``$ref`` with siblings unravelled, a ``None`` default dropped, one ``allOf`` merged."""
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"A schema must be an object, not {schema!r:.60}.")
    for key in ("$defs", "definitions"):
        if isinstance(defs := schema.get(key), dict):
            for sub in defs.values():
                strict_schema(sub, root=root)
    if schema.get("type") == "object" and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    if isinstance(properties := schema.get("properties"), dict):
        schema["required"] = list(properties)
        schema["properties"] = {k: strict_schema(v, root=root) for k, v in properties.items()}
    if isinstance(items := schema.get("items"), dict):
        schema["items"] = strict_schema(items, root=root)
    if isinstance(any_of := schema.get("anyOf"), list):
        schema["anyOf"] = [strict_schema(v, root=root) for v in any_of]
    if isinstance(all_of := schema.get("allOf"), list):
        if len(all_of) == 1:
            schema.update(strict_schema(all_of[0], root=root))
            schema.pop("allOf")
        else:
            schema["allOf"] = [strict_schema(v, root=root) for v in all_of]
    if "default" in schema and schema["default"] is None:
        schema.pop("default")
    ref = schema.get("$ref")
    if isinstance(ref, str) and len(schema) > 1:
        resolved: Any = root
        for key in ref.removeprefix("#/").split("/"):
            resolved = resolved[key]
        schema.update({**resolved, **schema})
        schema.pop("$ref")
        return strict_schema(schema, root=root)
    return schema
