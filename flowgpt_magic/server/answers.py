"""The local server's answers: deterministic, labelled as offline, streamed word by word."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_PIECE = re.compile(r"\s*\S+\s*")  # word by word, keeping every space and line break
#: A prompt whose first line is this gets the rest of itself back, word by word: a way to
#: see how any text (Markdown, code) streams and renders.
ECHO = "/echo"
#: A prompt whose first line is this is thought over first (OpenAI's dialect): its answer
#: comes after a few words of reasoning, as a reasoning model's does.
THINK = "/think"


def text_of(content: str | list[dict[str, Any]]) -> str:
    """A message's text: its content, or its text parts (OpenAI's, beside images)."""
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


def images_of(content: str | list[dict[str, Any]]) -> list[str]:
    """What each image of a message is (``PNG 640x480, 23 kB``); a checked body's."""
    import base64

    from ..attachments import picture_of_bytes

    if isinstance(content, str):
        return []
    urls = [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
    return [
        picture_of_bytes(base64.b64decode(url.partition(",")[2]), "", scale=False).kind()
        if url.startswith("data:")
        else f"an image at {url}"
        for url in urls
    ]


def reasoning_pieces(body: Mapping[str, Any]) -> list[str]:
    """The reasoning an OpenAI-dialect request gets before its answer: none, unless its
    prompt starts with /think."""
    question = text_of(body["messages"][-1]["content"])
    if not question.startswith(THINK + "\n"):
        return []
    about = _excerpt(question[len(THINK) + 1 :], 60)
    return _PIECE.findall(
        f"(Offline reasoning.) The question is «{about}». No model runs here, so the answer "
        "can only describe the request.\n"
    )


def offline_answer(body: Mapping[str, Any]) -> str:
    """The deterministic answer to a valid request body, FlowGPT's or OpenAI's."""
    images: list[str] = []
    said: list[str] = []  # what tools answered, after the question
    if "messages" in body:  # OpenAI's: the messages as they are
        messages = body["messages"]
        asked = max(i for i, m in enumerate(messages) if m["role"] == "user")
        question = text_of(messages[asked]["content"])
        images = images_of(messages[asked]["content"])
        said = [text_of(m["content"] or "") for m in messages[asked:] if m["role"] == "tool"]
        context = sum(1 for m in messages[:asked] if m["role"] not in ("system", "developer"))
        system = "\n".join(
            text_of(m["content"]) for m in messages if m["role"] in ("system", "developer")
        )
        temperature = body.get("temperature")
    else:  # FlowGPT's: folded, with a greeting that is not context
        question, system, temperature = body["question"], body["system"], body["temperature"]
        context = len(body["history"]) - 1
    question = question.removeprefix(THINK + "\n")
    if question.startswith(ECHO + "\n"):
        return str(question[len(ECHO) + 1 :])
    wanted = body.get("response_format")
    if isinstance(wanted, dict) and wanted.get("type") == "json_schema":
        schema = wanted["json_schema"]["schema"]
        return json.dumps(example_of(schema, schema), ensure_ascii=False)
    heat = "no temperature" if temperature is None else f"temperature {temperature:g}"
    return (
        f"[Offline answer from the flowgpt-magic local server; model {body['model']}, "
        f"{heat}.] You asked: «{_excerpt(question)}». "
        f"Context: {context} earlier message{'s' if context != 1 else ''}; system message: "
        f"«{_excerpt(system or '(none)')}». "
        + (f"Images: {len(images)} ({'; '.join(images)}). " if images else "")
        + (f"The tools said: «{_excerpt(' | '.join(said))}». " if said else "")
        + "No model runs here: this text streams word by word so that you can try "
        "flowgpt-magic without a network."
    )


def example_of(schema: Any, root: dict[str, Any]) -> Any:
    """A value that has the shape ``schema`` describes (as a grammar makes a model keep
    to it): its types, enums, required properties and references, not its other bounds
    (minimum, pattern...), which a grammar may not hold either."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        found: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            found = found.get(key, {}) if isinstance(found, dict) else {}
        return example_of(found, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_of(schema[key][0], root)
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: example_of(properties[name], root) for name in properties}
    if kind == "array":
        return [example_of(schema.get("items"), root)]
    return {"string": "offline", "integer": 1, "number": 1.5, "boolean": True}.get(str(kind))


def answer_pieces(body: Mapping[str, Any], min_pieces: int = 0) -> list[str]:
    pieces = _PIECE.findall(offline_answer(body))
    if len(pieces) < min_pieces:
        pieces[-1] += " Counting on: "
        pieces += [f"{n} " for n in range(1, min_pieces - len(pieces) + 1)]
    return pieces


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: A prompt whose first line is ``/call NAME {"arg": ...}`` gets that function call back
#: (OpenAI's dialect, when the request offers tools); ``/call-again ...`` gets it again
#: after every result, as a model that never stops calling.
CALL, CALL_AGAIN = "/call", "/call-again"


def tool_call(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The function call an OpenAI-dialect request gets instead of text, if it offers tools
    and has not had their answers yet: ``/call NAME ARGUMENTS`` in its prompt, else its
    first tool, with an example of each argument its schema requires."""
    tools = body.get("tools")
    messages = body["messages"]
    asked = next((m for m in reversed(messages) if m["role"] == "user"), messages[-1])
    question = text_of(asked["content"] or "")
    again = question.startswith(CALL_AGAIN + " ")
    if not tools or body.get("tool_choice") == "none":
        return None
    if messages[-1]["role"] == "tool" and not again:
        return None
    for command in (CALL_AGAIN, CALL):
        if question.startswith(command + " "):
            name, _, arguments = question[len(command) + 1 :].partition(" ")
            return name.strip(), arguments.strip() or "{}"
    function = tools[0]["function"]
    schema = function.get("parameters") or {}
    examples: dict[str, object] = {
        "string": "example",
        "integer": 1,
        "number": 1.5,
        "boolean": True,
    }
    example = {
        name: examples.get(schema.get("properties", {}).get(name, {}).get("type"))
        for name in schema.get("required", [])
    }
    return function["name"], json.dumps(example)
