"""The checks of a request's arguments, made before anything is sent: the temperature,
the messages (roles, text, image parts) and the model's parameters. One line each."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..exceptions import InvalidRequestError

#: A message: its role, and its content: text, or (where a provider takes images) a list of
#: OpenAI's content parts, ``{"type": "text", "text": ...}`` and ``{"type": "image_url", ...}``.
Message = Mapping[str, Any]
Messages = Sequence[Message]


def check_temperature(value: object) -> float:
    """Return ``value`` as a float if it is a number in [0, 2]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"Temperature must be a number from 0 to 2, not {value!r}.")
    if not (math.isfinite(value) and 0 <= value <= 2):
        raise InvalidRequestError(f"Temperature must be a number from 0 to 2, not {value!r}.")
    return float(value)


def checked_messages(
    messages: Messages, roles: Sequence[str], images: str | Literal[False] = False
) -> Sequence[Message]:
    """``messages``, if each is a dict with one of ``roles`` and string content (or, where
    ``images`` names the provider that takes them, a list of text and image parts)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequestError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"not {type(messages).__name__}."
        )
    for index, message in enumerate(messages):
        parts = isinstance(message, Mapping) and isinstance(message.get("content"), list)
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and (parts or isinstance(message.get("content"), str) or _calls_only(message))
        ):
            raise InvalidRequestError(
                f"messages[{index}] must be a dict with string 'role' and 'content', "
                f"not {message!r:.80}."
            )
        if message["role"] not in roles:
            raise InvalidRequestError(
                f"messages[{index}] has the role {message['role']!r}; the roles are "
                f"{', '.join(roles)}."
            )
        if parts:
            _check_parts(message["content"], index, images)
    return messages


def _calls_only(message: Mapping[str, Any]) -> bool:
    """An assistant's message that asks for function calls, without text (OpenAI's)."""
    return (
        message.get("role") == "assistant"
        and message.get("content") is None
        and isinstance(message.get("tool_calls"), list)
    )


def _check_parts(parts: list[Any], index: int, images: str | Literal[False]) -> None:
    if not images:
        raise InvalidRequestError(
            f"messages[{index}] holds images (or content parts), and this protocol carries "
            "text only; nothing was sent. Ask a model that sees images on an "
            "OpenAI-compatible server (-m openai:gpt-4o-mini, say), or leave the images out "
            "(--no-history, if they are in the conversation)."
        )
    for part in parts:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if not (
            (kind == "text" and isinstance(part.get("text"), str))
            or (
                kind == "image_url"
                and isinstance(part.get("image_url"), Mapping)
                and isinstance(part["image_url"].get("url"), str)
            )
        ):
            raise InvalidRequestError(
                f"messages[{index}] has a content part that is neither "
                "{'type': 'text', 'text': ...} nor {'type': 'image_url', 'image_url': "
                f"{{'url': ...}}}}: {part!r:.80}."
            )


#: What a parameter's name may look like (OpenAI's all do: max_tokens, top_p...).
_PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``params``, if each name looks like a parameter's and each value is JSON."""
    if not isinstance(params, Mapping):
        raise InvalidRequestError(f"params must be a dict, not {type(params).__name__}.")
    for name, value in params.items():
        if not (isinstance(name, str) and _PARAMETER_NAME.fullmatch(name)):
            raise InvalidRequestError(f"{name!r} is not a parameter name (like max_tokens).")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidRequestError(
                f"The parameter {name} must be a JSON value (a number, a string, a list...), "
                f"not {type(value).__name__}."
            ) from None
    return params


# -- streaming ----------------------------------------------------------------------------
