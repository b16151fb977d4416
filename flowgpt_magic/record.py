"""One exchange, typed: what was asked, what came back and how; its footer; its saved form.

A :class:`Record` is made when an answer ends (complete, interrupted or failed). It goes
into the conversation when it is complete, and with the answer's output into the notebook,
as metadata under ``flowgpt_magic``, so that a saved notebook carries its conversation
(``%flowgpt_history --from-notebook``). This module is the one writer of that metadata
(``to_json``) and its one reader (``from_json``, ``record_in``): version 2, and version 1,
written before records were typed, still read.

No IPython and no display here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NamedTuple

from .attachments import Picture
from .functions import ToolRun
from .providers.events import ToolCall, Usage

#: Seconds of writing, at least, for the footer to say how many tokens a second it wrote.
MEASURED = 0.2
#: The key under which an answer's output carries its record.
METADATA_KEY = "flowgpt_magic"
VERSION = 2
Outcome = Literal["complete", "interrupted", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("complete", "interrupted", "failed")
#: How an answer is shown: rendered as Markdown, as written, its code blocks alone, or as
#: JSON (asked for as JSON, and kept as the value it parses to).
Format = Literal["markdown", "text", "code", "json"]
FORMATS: tuple[Format, ...] = ("markdown", "text", "code", "json")


class Record(NamedTuple):
    """One exchange. (A NamedTuple: see ``providers/http.py`` on small records.)"""

    prompt: str
    #: Everything that arrived of the answer's text (part of it, if it did not complete).
    answer: str
    #: The model asked, as an id (``openai:gpt-4o-mini``; FlowGPT's bare).
    model: str
    #: The model the server says answered, when it says.
    served_by: str | None = None
    #: None: the provider's own.
    temperature: float | None = None
    #: The model's other parameters sent (max_tokens...), if any.
    params: dict[str, Any] | None = None
    system: str | None = None
    #: What the model said while reasoning, apart from the answer; never sent as context.
    reasoning: str = ""
    usage: Usage | None = None
    #: What the answer cost, in US dollars: the server's word, else the notebook's prices.
    cost: float | None = None
    #: Why the model stopped (``stop``, ``length``...), when the server says.
    finish_reason: str | None = None
    #: The notebook cell it came from, when the frontend says (JupyterLab does).
    cell_id: str | None = None
    #: The number the cell had when it ran (its execution count: ``[18]``), if it had one.
    cell_number: int | None = None
    #: Whether a complete answer joins the conversation (not with --no-history).
    recorded: bool = True
    outcome: Outcome = "complete"
    #: Why it failed, in one line (a failed outcome).
    error: str | None = None
    format: Format = "markdown"
    #: When the answer ended (Unix time).
    time: float | None = None
    first_piece_seconds: float | None = None
    total_seconds: float | None = None
    pieces: int = 0
    #: The images the prompt carried (labelled ``[image 1]``... in its text).
    images: tuple[Picture, ...] = ()
    #: The functions the model asked to call.
    tool_calls: tuple[ToolCall, ...] = ()
    #: The most the answer was allowed to cost, in US dollars (--max-cost), if anything.
    max_cost: float | None = None
    #: What was wrong with the first answer, when the model was asked again (it did not
    #: follow the schema asked for); this answer is then the second, and the usage both's.
    asked_again: str | None = None
    #: Taken from the answer cache (FlowGptMagics.cache): the times, usage and cost are
    #: those of when it was asked (at ``time``); it cost nothing now.
    cached: bool = False
    #: The function calls the model asked for and what came of each (--tools), before
    #: this answer.
    tool_runs: tuple[ToolRun, ...] = ()

    @property
    def in_conversation(self) -> bool:
        """Whether this exchange belongs in the conversation: complete, and recorded."""
        return self.outcome == "complete" and self.recorded

    def wire_messages(self, images: bool = True, tools: bool = True) -> list[dict[str, Any]]:
        """The exchange as context: the prompt (with its images, unless not ``images``:
        their labels stay in its text), the function calls and their results (unless not
        ``tools``), and the answer (never the reasoning)."""
        content = prompt_content(self.prompt, self.images if images else ())
        calls = tool_messages(self.tool_runs) if tools else []
        return [
            {"role": "user", "content": content},
            *calls,
            {"role": "assistant", "content": self.answer},
        ]

    def footer(self) -> str:
        """The line under an answer: the model (and the one that answered, if another),
        time to the first piece, total time, the tokens (or pieces) and characters."""
        first = self.first_piece_seconds
        model = self.model
        if self.served_by and not _same_model(self.model, self.served_by):
            model += f" (answered by {self.served_by})"
        if self.cached:
            when = "" if self.time is None else f" {_short_time(self.time)}"
            timing = [f"cached: answered{when} in {self.total_seconds or 0.0:.2f} s"]
        else:
            timing = [
                f"first piece in {first:.2f} s" if first is not None else "no piece",
                f"{self.total_seconds or 0.0:.2f} s in all",
            ]
        parts = [
            model,
            *timing,
            self._tokens() or _count(self.pieces, "piece"),
            *([dollars(self.cost)] if self.cost is not None else []),
            f"{len(self.answer):,} characters",
        ]
        return " · ".join(parts)  # (an interrupted or failed answer has its own line below)

    def _tokens(self) -> str:
        """The tokens the server counted, and how fast it wrote them; "" if it did not say."""
        usage = self.usage
        if usage is None or usage.output_tokens is None:
            return ""
        text = _count(usage.output_tokens, "token")
        if usage.input_tokens is not None:
            text = f"{_count(usage.input_tokens, 'token')} in, {usage.output_tokens:,} out"
        writing = (self.total_seconds or 0.0) - (self.first_piece_seconds or 0.0)
        # (Not for an answer at once, nor one from the cache: that was another time.)
        if usage.output_tokens > 1 and writing >= MEASURED and not self.cached:
            text += f" ({usage.output_tokens / writing:,.0f} a second)"
        return text

    def notice(self) -> str | None:
        """A line that says why an answer may not be whole (it was cut short), or that it
        cost more than it was allowed to."""
        said = []
        if self.finish_reason == "length" and self.max_cost is not None:
            said.append(
                f"Cut short at the {(self.params or {}).get('max_tokens', 0):,} tokens that the "
                f"cost limit ({dollars(self.max_cost)}) leaves for the answer "
                '(finish reason "length"). For a longer one, raise --max-cost.'
            )
        elif self.finish_reason == "length":
            said.append(
                'Cut short: the model reached its token limit (finish reason "length"). '
                "For a longer answer, raise it: -p max_tokens=4096."
            )
        elif self.finish_reason == "content_filter":
            said.append(
                'Cut short by the server\'s content filter (finish reason "content_filter").'
            )
        if self.cost is not None and self.max_cost is not None and self.cost > self.max_cost:
            said.append(
                f"It cost {dollars(self.cost)}, more than the {dollars(self.max_cost)} allowed: "
                "the prompt took more tokens than estimated. Later cells of this model "
                "count with what it took."
            )
        if self.asked_again is not None and self.outcome == "complete":
            said.append(
                f"The first answer did not follow the schema ({self.asked_again}): the model "
                "was asked again, and this is its second answer (the tokens count both)."
            )
        return " ".join(said) or None

    def to_json(self, inline_images: bool = False) -> dict[str, Any]:
        """The record as JSON: what an output's metadata and a saved conversation hold.
        An image a notebook output holds is referred to, not copied (unless
        ``inline_images``: a conversation file holds them all)."""
        data: dict[str, Any] = {"version": VERSION, **self._asdict()}
        data["usage"] = None if self.usage is None else self.usage._asdict()
        data["time"] = None if self.time is None else iso_time(self.time)
        data["images"] = [image.to_json(inline_images) for image in self.images]
        data["tool_calls"] = [call._asdict() for call in self.tool_calls]
        data["tool_runs"] = [run.to_json() for run in self.tool_runs]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Record:
        """A record from its JSON (version 1 or 2); ``ValueError`` says what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"is {type(data).__name__}, not an object")
        if data.get("version", 1) not in (1, VERSION):
            raise ValueError(
                f"has version {data.get('version')!r}; this flowgpt-magic reads versions 1 "
                f"and {VERSION}. Upgrade flowgpt-magic to read it"
            )
        fields: dict[str, Any] = {}
        for name, kinds in _KINDS.items():
            value = data.get(name)
            if value is not None and not isinstance(value, kinds):
                raise ValueError(f"has a {name!r} that is {type(value).__name__}")
            if value is not None:
                fields[name] = value
        for name in ("prompt", "answer", "model"):
            if name not in fields:
                raise ValueError(f"has no string {name!r}")
        if fields.get("outcome", "complete") not in OUTCOMES:
            raise ValueError(f"has the outcome {fields['outcome']!r}")
        if fields.get("format", "markdown") not in FORMATS:
            raise ValueError(f"has the format {fields['format']!r}")
        if isinstance(fields.get("time"), str):
            try:
                fields["time"] = datetime.fromisoformat(fields["time"]).timestamp()
            except ValueError:
                raise ValueError("has a 'time' that is not an ISO 8601 time") from None
        if "usage" in fields:
            fields["usage"] = _usage(fields["usage"])
        if "images" in fields:
            fields["images"] = tuple(map(Picture.from_json, fields["images"]))
        if "tool_calls" in fields:
            fields["tool_calls"] = tuple(map(_tool_call, fields["tool_calls"]))
        if "tool_runs" in fields:
            fields["tool_runs"] = tuple(map(ToolRun.from_json, fields["tool_runs"]))
        return cls(**fields)


_NUMBER = (int, float)
#: What each field of a record's JSON may hold (besides null). Version 1 wrote a time as a
#: number, version 2 as an ISO 8601 string.
_KINDS: dict[str, type | tuple[type, ...]] = {
    "prompt": str,
    "answer": str,
    "model": str,
    "served_by": str,
    "temperature": _NUMBER,
    "params": dict,
    "system": str,
    "reasoning": str,
    "usage": dict,
    "cost": _NUMBER,
    "finish_reason": str,
    "cell_id": str,
    "cell_number": int,
    "recorded": bool,
    "outcome": str,
    "error": str,
    "format": str,
    "time": (*_NUMBER, str),
    "first_piece_seconds": _NUMBER,
    "total_seconds": _NUMBER,
    "pieces": int,
    "images": list,
    "tool_calls": list,
    "max_cost": _NUMBER,
    "asked_again": str,
    "cached": bool,
    "tool_runs": list,
}


def _tool_call(data: Any) -> ToolCall:
    if not (isinstance(data, dict) and all(isinstance(data.get(f), str) for f in ToolCall._fields)):
        raise ValueError("has a tool call that is not an object of strings id, name, arguments")
    return ToolCall(data["id"], data["name"], data["arguments"])


def _usage(data: dict[str, Any]) -> Usage:
    def number(name: str, kind: type | tuple[type, ...]) -> Any:
        value = data.get(name)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return Usage(
        number("input_tokens", int),
        number("output_tokens", int),
        number("reasoning_tokens", int),
        number("cost", _NUMBER),
    )


def prompt_content(text: str, images: tuple[Picture, ...]) -> str | list[dict[str, Any]]:
    """A user message's content: the text, or (with images) the text part and an image
    part for each, as the official ``openai`` client sends them. An image saved by
    reference and not found again is left out (its label stays in the text)."""
    parts = [image.part() for image in images if not image.missing]
    return [{"type": "text", "text": text}, *parts] if parts else text


def content_size(content: str | list[dict[str, Any]] | None) -> tuple[int, int]:
    """A message's content measured: the characters of its text, and its images (None:
    an assistant's message that calls functions)."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    text = sum(len(part["text"]) for part in content if part["type"] == "text")
    return text, sum(1 for part in content if part["type"] == "image_url")


def dollars(amount: float) -> str:
    """US dollars, with two significant digits for small amounts ($0.000023, $0.50)."""
    import math

    decimals = 2 if amount <= 0 else max(2, 1 - math.floor(math.log10(amount)))
    return f"${amount:,.{decimals}f}"


def _count(number: int, thing: str) -> str:
    return f"{number:,} {thing}{'' if number == 1 else 's'}"


def _same_model(asked: str, served: str) -> bool:
    """Whether ``served`` is the model asked for, or a dated version of it (OpenAI answers
    gpt-4o-mini with gpt-4o-mini-2024-07-18), whatever the provider prefix."""
    name = asked.partition(":")[2] or asked
    return served == name or served.startswith(name + "-")


def record_in(output: Any) -> Record | None:
    """The record a notebook output carries, or None (not an answer's, or malformed)."""
    metadata = output.get("metadata") if isinstance(output, Mapping) else None
    data = metadata.get(METADATA_KEY) if isinstance(metadata, Mapping) else None
    if data is None:
        return None
    try:
        return Record.from_json(data)
    except ValueError:
        return None


def tool_messages(runs: tuple[ToolRun, ...]) -> list[dict[str, Any]]:
    """Function calls and their results as OpenAI's messages: the assistant's calls, then
    each call's result."""
    if not runs:
        return []
    calls = [
        {"id": r.id, "type": "function", "function": {"name": r.name, "arguments": r.arguments}}
        for r in runs
    ]
    results = [{"role": "tool", "tool_call_id": r.id, "content": r.result} for r in runs]
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *results]


def _short_time(time: float) -> str:
    """When, to the minute, in this computer's time zone: 2026-12-03 14:02."""
    return datetime.fromtimestamp(time).strftime("%Y-%m-%d %H:%M")


def iso_time(time: float) -> str:
    return datetime.fromtimestamp(time).astimezone().isoformat(timespec="seconds")
