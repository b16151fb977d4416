"""OpenAI's dialect: ``/v1/chat/completions`` (streamed or not) and ``/v1/models``, with
OpenAI's error shapes."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..attachments import IMAGE_TOKENS, picture_kind
from .answers import answer_pieces, images_of, reasoning_pieces, text_of, tool_call
from .faults import choose_fault, early_fault, stream_answer
from .state import STATE, ReceivedRequest

OPENAI_PATH = "/v1"
#: The models the OpenAI-compatible side serves; others get OpenAI's 404.
OPENAI_MODELS = ["gpt-4o-mini", "gpt-4o", "llama3.2"]


def _openai_error(status: int, message: str, code: str | None = None) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


def _openai_key_refused(request: web.Request) -> web.Response | None:
    key = request.app[STATE].options.api_key
    if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
        return _openai_error(401, "Incorrect API key provided.", "invalid_api_key")
    return None


async def models(request: web.Request) -> web.Response:
    refused = _openai_key_refused(request)
    if refused is not None:
        return refused
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "flowgpt-magic-local"}
        for model in OPENAI_MODELS
    ]
    return web.json_response({"object": "list", "data": data})


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    refused = _openai_key_refused(request)
    if refused is not None:
        return refused
    try:
        body = await request.json()
    except ValueError:
        return _openai_error(400, "The body is not JSON.")
    problems = openai_body_problems(body)
    if problems:
        reason = "; ".join(problems)
        if state.options.record:
            state.note(lambda s: s.rejected.append(reason))
        return _openai_error(400, f"Bad request: {reason}.")
    if body["model"] not in OPENAI_MODELS:
        return _openai_error(
            404,
            f"The model `{body['model']}` does not exist or you do not have access to it.",
            "model_not_found",
        )
    if state.options.record:
        received = ReceivedRequest(dict(request.headers), body, f"{OPENAI_PATH}/chat/completions")
        state.note(lambda s: s.requests.append(received))
    asked = next((m for m in reversed(body["messages"]) if m["role"] == "user"), None)
    fault = choose_fault(request, text_of(asked["content"]) if asked else "")
    early = await early_fault(request, fault)
    if early is not None:
        return early
    # Words stand for tokens: max_tokens cuts the reasoning and the answer after so many.
    thinking = reasoning_pieces(body)
    call = tool_call(body)
    pieces = [] if call else answer_pieces(body, state.options.min_pieces)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    finish = "tool_calls" if call else "stop"
    if isinstance(limit, int) and limit < len(thinking) + len(pieces):
        thinking, pieces = thinking[:limit], pieces[: max(0, limit - len(thinking))]
        finish = "length"
    usage = {
        "prompt_tokens": sum(
            len(text_of(m["content"] or "").split())
            + IMAGE_TOKENS * len(images_of(m["content"] or ""))
            for m in body["messages"]
        ),
        "completion_tokens": len(thinking) + len(pieces) + (len(call[1].split()) if call else 0),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    calls = [_call(*call)] if call else []
    if not body.get("stream") or fault == "whole":
        state.note(lambda s: setattr(s, "completed", s.completed + 1))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces) or None}
        if thinking:
            message["reasoning_content"] = "".join(thinking)
        if calls:
            message["tool_calls"] = calls
        whole = _completion(body, "chat.completion", {"message": message, "finish_reason": finish})
        return web.json_response({**whole, "usage": usage})

    def event(choice: dict[str, Any] | None, **fields: Any) -> bytes:
        chunk = _completion(body, "chat.completion.chunk", choice) | fields
        return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"

    def delta(**fields: Any) -> bytes:
        return event({"delta": fields, "finish_reason": None})

    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    return await stream_answer(
        request,
        "text/event-stream; charset=utf-8",
        first=delta(role="assistant", content=""),
        pieces=[
            *(delta(reasoning_content=p) for p in thinking),
            *(delta(content=p) for p in pieces),
            *(delta(tool_calls=[piece]) for piece in _call_pieces(calls)),
        ],
        last=event({"delta": {}, "finish_reason": finish})
        + (event(None, usage=usage) if with_usage else b"")
        + b"data: [DONE]\n\n",
        fault=fault,
    )


def _call(name: str, arguments: str) -> dict[str, Any]:
    """A function call, as a whole completion's message holds it (a deterministic id)."""
    import hashlib

    digest = hashlib.sha1(f"{name}{arguments}".encode()).hexdigest()[:24]
    return {
        "id": f"call_{digest}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _call_pieces(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls as a stream carries them (as llama.cpp does): the first piece with the id,
    the name and no arguments, then the arguments in two pieces."""
    pieces = []
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        name = {"name": call["function"]["name"], "arguments": ""}
        pieces.append({"index": index, "id": call["id"], "type": "function", "function": name})
        pieces += [
            {"index": index, "function": {"arguments": a}}
            for a in (arguments[:half], arguments[half:])
        ]
    return pieces


def _completion(
    body: Mapping[str, Any], kind: str, choice: dict[str, Any] | None
) -> dict[str, Any]:
    """A completion (or a chunk of one) with ``choice``, or with no choices (usage's)."""
    return {
        "id": "chatcmpl-flowgpt-magic-local",
        "object": kind,
        "created": int(time.time()),
        "model": body["model"],
        "choices": [] if choice is None else [{"index": 0, **choice}],
    }


_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")


def _parts_problems(parts: list[Any], index: int) -> list[str]:
    """What is wrong with a message's content parts, as OpenAI would refuse them: text
    parts, and image parts whose URL is an image's ``data:`` URL (or a web address)."""
    import base64
    import binascii

    for number, part in enumerate(parts):
        where = f"messages[{index}].content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind != "image_url":
            return [f"{where} must be a text or image_url part"]
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str):
            return [f"{where}.image_url must be an object with a string url"]
        if url.startswith(("https://", "http://")):
            continue
        head, comma, data = url.partition(",")
        if not (head.startswith("data:image/") and head.endswith(";base64") and comma):
            return [f"{where}: invalid image URL (a data:image/...;base64, URL or a web one)"]
        try:
            decoded = base64.b64decode(data, validate=True)
        except binascii.Error:
            decoded = b""
        if picture_kind(decoded) is None:
            return [f"{where}: the image's data is not a PNG, JPEG or GIF in base64"]
    return []


def openai_body_problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = []
    if not (isinstance(body.get("model"), str) and body["model"]):
        problems.append("model must be a non-empty string")
    messages = body.get("messages")
    if not (isinstance(messages, list) and messages):
        problems.append("messages must be a non-empty list")
    else:
        for index, message in enumerate(messages):
            # (An assistant's message that calls functions may have no content.)
            calls = (
                isinstance(message, dict)
                and message.get("role") == "assistant"
                and bool(message.get("tool_calls"))
            )
            if not (
                isinstance(message, dict)
                and message.get("role") in _OPENAI_ROLES
                and (
                    isinstance(message.get("content"), (str, list))
                    or (calls and message.get("content") is None)
                )
            ):
                problems.append(f"messages[{index}] must have a role and string content")
                break
            if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
                problems.append(f"messages[{index}] is a tool's answer without its tool_call_id")
                break
            if isinstance(message["content"], list):
                problems += _parts_problems(message["content"], index)
    temperature = body.get("temperature", 1)
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and 0 <= temperature <= 2
    ):
        problems.append("temperature must be a number from 0 to 2")
    if not isinstance(body.get("stream", False), bool):
        problems.append("stream must be true or false")
    wanted = body.get("response_format")
    if wanted is not None and not _response_format_ok(wanted):
        problems.append(
            'response_format must be {"type": "text"}, {"type": "json_object"} or {"type": '
            '"json_schema", "json_schema": {"name": ..., "schema": {...}}}'
        )
    return problems


def _response_format_ok(wanted: Any) -> bool:
    if not isinstance(wanted, dict) or wanted.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        return False
    if wanted["type"] != "json_schema":
        return True
    inner = wanted.get("json_schema")
    return (
        isinstance(inner, dict)
        and isinstance(inner.get("name"), str)
        and isinstance(inner.get("schema"), dict)
    )
