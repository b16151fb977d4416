"""FlowGPT's dialect: ``POST /v3/chat-anonymous``, checked as strictly as the protocol
document describes (signature headers, every body field), answered in NDJSON."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..providers.flowgpt import GREETING, FlowGpt
from .answers import answer_pieces
from .faults import choose_fault, early_fault, stream_answer
from .state import STATE, ReceivedRequest

MAX_CLOCK_SKEW = 300  # seconds a request's x-timestamp may be off
_HEX32 = re.compile(r"[0-9a-f]{32}")
_DEVICE_ID = re.compile(r"f-[a-z0-9]{19}")


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    problems = header_problems(request.headers)
    try:
        body = await request.json()
    except ValueError:
        body = None
        problems.append("the body is not JSON")
    else:
        problems += body_problems(body)
    if problems:
        reason = "; ".join(problems)
        if state.options.record:
            state.note(lambda s: s.rejected.append(reason))
        return web.json_response({"error": f"Bad request: {reason}."}, status=400)

    if state.options.record:
        received = ReceivedRequest(dict(request.headers), body)
        state.note(lambda s: s.requests.append(received))
    fault = choose_fault(request, body["question"])
    early = await early_fault(request, fault)
    if early is not None:
        return early
    return await stream_answer(
        request,
        "application/x-ndjson; charset=utf-8",
        first=_line({"event": "start", "data": {"model": body["model"]}}),
        pieces=[
            _line({"event": "text", "data": piece})
            for piece in answer_pieces(body, state.options.min_pieces)
        ],
        last=_line({"event": "done"}),
        fault=fault,
    )


def _line(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode() + b"\n"


def header_problems(headers: Mapping[str, str]) -> list[str]:
    problems = []
    authorization = headers.get("Authorization", "")
    timestamp = headers.get("x-timestamp", "")
    nonce = headers.get("x-nonce", "")
    if not authorization.startswith("Bearer "):
        problems.append("the Authorization header must be 'Bearer <token>' ('Bearer null')")
    if not timestamp.isdigit():
        problems.append("x-timestamp must be Unix time in whole seconds")
    elif abs(time.time() - int(timestamp)) > MAX_CLOCK_SKEW:
        problems.append(f"x-timestamp is more than {MAX_CLOCK_SKEW} s away from the server clock")
    if not _HEX32.fullmatch(nonce):
        problems.append("x-nonce must be 32 characters of 0-9a-f")
    expected = hashlib.md5(
        f"{timestamp}-{nonce}-{authorization}".encode(), usedforsecurity=False
    ).hexdigest()
    if headers.get("x-signature") != expected:
        problems.append("x-signature is not md5('{x-timestamp}-{x-nonce}-{Authorization}')")
    if not _DEVICE_ID.fullmatch(headers.get("x-flow-device-id", "")):
        problems.append("x-flow-device-id must be 'f-' and 19 characters of a-z0-9")
    if not headers.get("Content-Type", "").startswith("application/json"):
        problems.append("Content-Type must be application/json")
    return problems


_EXACT_FIELDS: dict[str, Any] = {
    "nsfw": False,
    "documentIds": [],
    "chatFileDocumentIds": [],
    "generateImage": False,
    "generateAudio": False,
}
_FIELDS = {"model", "question", "history", "system", "temperature", "promptId", *_EXACT_FIELDS}


def body_problems(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = []
    missing = sorted(_FIELDS - body.keys())
    unexpected = sorted(body.keys() - _FIELDS)
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected field(s) {', '.join(unexpected)}")
    model = body.get("model")
    if "model" in body and model not in FlowGpt.models:
        problems.append(f"model {model!r} is not a FlowGPT model name (aliases are resolved)")
    if "promptId" in body and body["promptId"] != f"model-{model}":
        problems.append("promptId must be 'model-' followed by the model")
    if "question" in body and not (isinstance(body["question"], str) and body["question"]):
        problems.append("question must be a non-empty string")
    if "system" in body and not (isinstance(body["system"], str) and body["system"]):
        problems.append("system must be a non-empty string")
    temperature = body.get("temperature")
    if "temperature" in body and not (
        isinstance(temperature, (int, float))
        and not isinstance(temperature, bool)
        and 0 <= temperature <= 2
    ):
        problems.append("temperature must be a number from 0 to 2")
    if "history" in body:
        problems += _history_problems(body["history"])
    problems += [
        f"{name} must be {json.dumps(value)}"
        for name, value in _EXACT_FIELDS.items()
        if name in body and body[name] != value
    ]
    return problems


def _history_problems(history: Any) -> list[str]:
    if not isinstance(history, list) or not history or history[0] != GREETING:
        return ["history must be a list that starts with the assistant's greeting"]
    for index, message in enumerate(history):
        if not (
            isinstance(message, dict)
            and set(message) == {"role", "content"}
            and message["role"] in ("user", "assistant")
            and isinstance(message["content"], str)
        ):
            return [f"history[{index}] must be {{'role': 'user'|'assistant', 'content': str}}"]
    return []
