"""How an OpenAI-compatible answer is read: server-sent events carrying chat-completion
chunks (``data: {...}`` lines, ending with ``data: [DONE]``), or one whole completion from a
server that did not stream. What a chunk may carry: text, reasoning (as a field of its own
or a ``<think>`` block), function calls in pieces, why it finished, the usage."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..exceptions import (
    ConnectionLostError,
    FlowGptError,
    RequestFailedError,
    ResponseFormatError,
)
from .events import Event, Finish, Reasoning, ServedBy, ToolCall, Usage
from .lines import decode_json_line


class SseParser:
    """Server-sent events carrying chat-completion chunks; ``data: [DONE]`` ends them.

    A chunk's ``choices[0].delta`` carries the answer (``content``) and, from servers that
    parse it out, the reasoning (``reasoning_content``: llama.cpp, vLLM, DeepSeek;
    ``reasoning``: OpenRouter and others); ``finish_reason`` says why it ended; ``usage``
    comes in the last chunk, or one of its own with no choices; ``model`` in every chunk.
    A server without a reasoning parser leaves a ``<think>`` block at the start of the
    content; it is taken out as reasoning too. After reasoning, the blank lines a model
    writes before its answer are dropped; otherwise the content is as it came.

    Only the choice of index 0 is read (a request asks for one: see ``chat_body``). A
    function call comes in pieces (``delta.tool_calls``, by index): they are joined, and
    each call is one :class:`ToolCall` once the choice finishes. A stream that ends with
    neither a finish reason nor ``[DONE]`` was cut (the server died, a proxy gave up): an
    error once what came is delivered, never an answer taken for complete.
    """

    text_only: ClassVar[bool] = False

    def __init__(self) -> None:
        self.done = False
        self.error: FlowGptError | None = None
        self._data: list[bytes] = []
        self._model: str | None = None
        self._inline: InlineReasoning | None = InlineReasoning()  # until the answer shows
        self._answered = False  # some of the answer's text has come
        self._reasoned = False  # some reasoning has
        self._finished = False  # the choice said why it finished
        #: The function calls coming in pieces, by index: id, name, argument pieces.
        self._calls: dict[int, tuple[list[str], list[str], list[str]]] = {}

    def parse(self, block: bytes) -> list[Event]:
        events: list[Event] = []
        for line in block.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line:  # a blank line ends an event
                try:
                    self._dispatch(events)
                except FlowGptError as error:
                    self.error = error  # raised after the events before it
                    break
                if self.done:
                    break
            elif line.startswith(b"data:"):
                self._data.append(line[5:].removeprefix(b" "))
            # Comments (":"), "event:", "id:" and "retry:" lines carry nothing.
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        self._dispatch(events)
        if not self.done:
            self._end_of_content(events)
            if not self._finished and self.error is None:
                self.error = ConnectionLostError(
                    "The stream ended without saying the answer was complete (no finish "
                    "reason, no [DONE]): the server, or a proxy before it, cut it short. What "
                    "had arrived is kept, and was not added to the conversation. Try again."
                )
        return events

    def whole(self, data: Any) -> list[Event]:
        """The events of a whole completion, as a server that does not stream sends it (a
        ``chat.completion`` object, not chunks)."""
        if isinstance(data, dict) and isinstance(data.get("choices"), list):
            chunk = {
                **data,
                "choices": [
                    {**c, "delta": c.get("message") or {}}
                    for c in data["choices"]
                    if isinstance(c, dict)
                ],
            }
            events: list[Event] = []
            self._read_chunk(chunk, events)
            self._end_of_content(events)
            self.done = True
            return events
        if isinstance(data, dict) and "error" in data:
            self._read_chunk(data, [])  # (raises the server's error)
        raise ResponseFormatError(
            "The server answered with JSON that is not a chat completion "
            f"({json.dumps(data, ensure_ascii=False)[:80]!r})."
        )

    def _end_of_content(self, events: list[Event]) -> None:
        """The answer is over: what was held back of its start is all there is, and the
        function calls are whole."""
        if self._inline is not None:
            self._answer(self._inline.finish(), events)
        self._end_of_calls(events)

    def _dispatch(self, events: list[Event]) -> None:
        data, self._data = b"\n".join(self._data), []
        if not data:
            return
        if data.strip() == b"[DONE]":
            self.done = True
            self._end_of_content(events)
            return
        self._read_chunk(decode_json_line(data), events)

    def _read_chunk(self, chunk: Any, events: list[Event]) -> None:
        if not isinstance(chunk, dict) or not ("choices" in chunk or "usage" in chunk):
            if isinstance(chunk, dict) and "error" in chunk:
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                message = str(message).strip().rstrip(".")
                raise RequestFailedError(
                    f"The server stopped the answer with an error: {message}. What had "
                    "arrived is kept. Try again."
                )
            raise ResponseFormatError(
                f"The server sent an event that is not a chat-completion chunk "
                f"({json.dumps(chunk)[:80]!r})."
            )
        model = chunk.get("model")
        if isinstance(model, str) and model and model != self._model:
            self._model = model
            events.append(ServedBy(model))
        choices = chunk.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise ResponseFormatError("The server sent a chunk whose choice is not an object.")
        # (Index 0's alone: other choices' pieces would be mixed into its text.)
        choice: dict[str, Any] = next((c for c in choices if c.get("index", 0) == 0), {})
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise ResponseFormatError("The server sent a delta that is not an object.")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            events.append(Reasoning(_string(reasoning, "reasoning")))
            self._reasoned = True
        content = delta.get("content")
        if content:
            content = _string(content, "content")
            if self._inline is None and self._answered:
                events.append(content)  # (the answer's middle: as it comes)
            else:
                self._answer(
                    [content] if self._inline is None else self._inline.feed(content), events
                )
        if delta.get("tool_calls"):
            self._take_calls(delta["tool_calls"])
        if choice.get("finish_reason"):
            self._finished = True
            self._end_of_calls(events)
            events.append(Finish(str(choice["finish_reason"])))
        if isinstance(usage := chunk.get("usage"), dict):
            events.append(usage_of(usage))

    def _take_calls(self, calls: Any) -> None:
        """Pieces of function calls: each names its call by index; the first brings its id
        and name, later ones more of its arguments."""
        if not isinstance(calls, list):
            raise ResponseFormatError("The server sent tool_calls that are not a list.")
        for position, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise ResponseFormatError("The server sent a tool call without its function.")
            index = call.get("index", position)
            ids, names, arguments = self._calls.setdefault(index, ([], [], []))
            for pieces, value in (
                (ids, call.get("id")),
                (names, function.get("name")),
                (arguments, function.get("arguments")),
            ):
                if isinstance(value, str):
                    pieces.append(value)
                elif isinstance(value, (dict, list)):  # (arguments sent as an object)
                    pieces.append(json.dumps(value, ensure_ascii=False))

    def _end_of_calls(self, events: list[Event]) -> None:
        for ids, names, arguments in self._calls.values():
            events.append(ToolCall("".join(ids), "".join(names), "".join(arguments)))
        self._calls.clear()

    def _answer(self, found: list[Event], events: list[Event]) -> None:
        """Add what the content held: reasoning, or text; after reasoning, less the blank
        lines a model writes before its answer (otherwise the content is as it came)."""
        if self._inline is not None and self._inline.opened:
            self._reasoned = True  # (even by an empty <think></think>)
        for event in found:
            if isinstance(event, Reasoning):
                self._reasoned = True
            elif isinstance(event, str) and not self._answered:
                event = event.lstrip("\r\n") if self._reasoned else event
                self._answered = bool(event)
            if event:
                events.append(event)
        if self._inline is not None and self._inline.decided:
            self._inline = None


class InlineReasoning:
    """A ``<think>`` block at the start of an answer's content, taken out as reasoning.

    Until the content shows whether it opens with the tag, it is held back (a few
    characters); inside the block, only what could be the start of the closing tag is.
    """

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self._held = ""
        self.opened = False  # the content opened with the tag
        self.decided = False  # the block is over, or there is none: content is all answer

    def feed(self, text: str) -> list[Event]:
        held = self._held + text
        if not self.opened:
            start = held.lstrip()
            if start.startswith(self.OPEN):
                self.opened, held = True, start[len(self.OPEN) :]
            elif self.OPEN.startswith(start):  # ("", "<", "<thi": too soon to say)
                self._held = held
                return []
            else:
                self._held, self.decided = "", True
                return [held]
        end = held.find(self.CLOSE)
        if end >= 0:
            self._held, self.decided = "", True
            thought, rest = held[:end], held[end + len(self.CLOSE) :]
            return [event for event in (Reasoning(thought) if thought else "", rest) if event]
        keep = _partial_suffix(held, self.CLOSE)
        self._held = held[len(held) - keep :]
        thought = held[: len(held) - keep]
        return [Reasoning(thought)] if thought else []

    def finish(self) -> list[Event]:
        """What was held back when the content ended."""
        held, self._held = self._held, ""
        self.decided = True
        if not held:
            return []
        return [Reasoning(held) if self.opened else held]


def _partial_suffix(text: str, tag: str) -> int:
    """How long the longest end of ``text`` is that could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ResponseFormatError(f"The server sent a delta whose {name} is not a string.")
    return value


def usage_of(usage: dict[str, Any]) -> Usage:
    """OpenAI's usage object (``prompt_tokens``, ``completion_tokens``, and details)."""

    def count(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    details = usage.get("completion_tokens_details")
    cost = usage.get("cost")
    return Usage(
        input_tokens=count(usage.get("prompt_tokens")),
        output_tokens=count(usage.get("completion_tokens")),
        reasoning_tokens=count(details.get("reasoning_tokens"))
        if isinstance(details, dict)
        else None,
        cost=float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
    )
