"""One answer as it streams: its events shown in a view, and the record they make.

No IPython here: a view (``display``) is whatever follows the ``View`` protocol.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol

from .exceptions import FlowGptError, RequestFailedError
from .functions import call_line
from .ledger import cost_of
from .providers.events import (
    Event,
    Finish,
    Progress,
    Reasoning,
    RetryNotice,
    ServedBy,
    ToolCall,
    Usage,
)
from .record import Outcome, Record, tool_messages

if TYPE_CHECKING:
    from .cache import Cached
    from .command import ChatRequest
    from .functions import ToolRun
    from .providers import AsyncResult


class View(Protocol):
    """Where an answer is shown while it streams (see ``display``)."""

    def begin(self) -> None:
        """The request is going out (called in the loop that runs it)."""

    def extend(self, pieces: list[str]) -> None:
        """Append pieces (and maybe show them at once, as a terminal does)."""

    def started(self) -> None:
        """The first piece has been added: show it now, and the rest as it comes."""

    def reasoning(self, text: str) -> None:
        """Show a piece of the model's reasoning, apart from the answer."""

    def retrying(self, notice: RetryNotice) -> None:
        """Say that the request failed and is about to be tried again."""

    def progress(self, text: str) -> None:
        """Say what happens before the request can go out (a local model loading)."""

    def again(self, line: str) -> None:
        """What came is set aside and the model asked again (``line`` says why): show the
        new answer from its start."""

    def finish(self, record: Record) -> None:
        """End the live view with the answer's record (its answer maybe partial)."""


async def show_answer(
    answer: AsyncResult, view: View, reply: Reply, ended: Callable[[], None] | None = None
) -> None:
    """Stream one answer into its view; its record, whatever happens, into ``reply.final``
    and the view's ``finish`` (after ``ended``, if given, is called)."""
    import asyncio

    outcome: Outcome = "failed"
    error: str | None = None
    try:
        view.begin()
        await _receive(answer, view, reply)
        if reply.tool_calls and reply.run_tool is not None:
            await _use_tools(view, reply)
        if reply.tool_calls:
            raise RequestFailedError(tools_asked(reply.tool_calls))
        if reply.request.schema is not None:
            await _follows_schema(view, reply)
        outcome = "complete"
    except asyncio.CancelledError:
        outcome = "interrupted"
        raise
    except FlowGptError as failure:
        error, reply.failure = str(failure), failure
        raise
    finally:
        record = reply.record(outcome, error)
        if outcome == "complete" and not record.answer:  # (nothing to keep: it failed)
            record = record._replace(outcome="failed", error=why_no_answer(record))
        reply.final, reply.ended = record, True
        if ended is not None:
            ended()
        view.finish(record)


async def _receive(answer: AsyncResult, view: View, reply: Reply) -> None:
    keep, show = reply.pieces.extend, view.extend
    async with aclosing(answer):
        items = answer.batches()  # text a list a read: no step per piece
        async for item in items:
            if item.__class__ is list:
                if reply.first_piece is None:  # (unless reasoning came first)
                    reply.first_piece = time.monotonic() - reply.started
                keep(item)
                show(item)
                view.started()
                break
            reply.take(item, view)  # type: ignore[arg-type]
        # The hot loop: the view shows the pieces on its own clock.
        async for item in items:
            if item.__class__ is list:
                keep(item)
                show(item)
            else:
                reply.take(item, view)  # type: ignore[arg-type]


async def _follows_schema(view: View, reply: Reply) -> None:
    """Check the answer against the request's schema. One that does not follow it is
    set aside and the model asked again, told what was wrong; a second that does not is a
    :class:`RequestFailedError` saying what came and what was wrong."""
    schema = reply.request.schema
    assert schema is not None
    for again in (True, False):
        text = "".join(reply.pieces)
        try:
            schema.value_of(text)
            return
        except ValueError as error:
            wrong = str(error)
        cut = reply.finish_reason == "length"
        if cut:  # (asked again, it would be cut again: the same limit)
            wrong += " (it was cut at its token limit: raise it, -p max_tokens=4096)"
        if cut or not again or reply.again is None:
            came = " ".join(text.split())
            came = came if len(came) <= 120 else came[:119] + "…"
            twice = " twice" if reply.asked_again else ""
            raise RequestFailedError(
                f"The answer did not follow {schema.name}{twice}: {wrong}. What came: "
                f"{came or '(nothing)'}. Nothing was added to the conversation; ask again, "
                "or describe the values in the prompt."
            )
        reply.asked_again = wrong
        view.again(f"The answer did not follow {schema.name} ({wrong}): asked again.")
        follow_up = [
            {"role": "assistant", "content": text},
            {
                "role": "user",
                "content": f"That answer does not follow the schema {schema.name}: {wrong}. "
                "Answer again, with JSON that follows it and nothing else.",
            },
        ]
        reply.set_aside()
        await _receive(reply.again(follow_up), view, reply)


async def _use_tools(view: View, reply: Reply) -> None:
    """Run the calls the model asked for (each once the person says so), send it what they
    gave, and read its answer on; at most ``FlowGptMagics.tool_rounds`` rounds."""
    assert reply.run_tool is not None and reply.again is not None
    more: list[dict[str, Any]] = []
    for _ in range(reply.request.tool_rounds):
        runs = []
        for call in reply.tool_calls:
            if not reply.request.approve:  # (not "Waiting for the model" while it waits for you)
                view.again(f"{reply.request.model} asks to run {call_line(call)}.")
            paused = time.monotonic()
            run = await reply.run_tool(call)
            reply.started += time.monotonic() - paused  # (the footer's times: the model's)
            runs.append(run)
            view.again(run.line())
        reply.tool_runs.extend(runs)
        more += tool_messages(tuple(runs))
        if text := "".join(reply.pieces):  # (what it said before calling: its message's)
            more[-len(runs) - 1]["content"] = text
        reply.set_aside()
        await _receive(reply.again(more), view, reply)
        if not reply.tool_calls:
            return
    raise RequestFailedError(
        f"The model still asked for function calls after {reply.request.tool_rounds} rounds "
        f"of them ({len(reply.tool_runs)} calls); nothing was added to the conversation. Raise "
        "FlowGptMagics.tool_rounds, or ask for less."
    )


def tools_asked(calls: list[ToolCall]) -> str:
    """What to say of an answer that asked for function calls, which the magic does not run."""
    asked = " and ".join(f"{call.name}({call.arguments})" for call in calls)
    return (
        f"The model asked to call {asked}, and this magic does not run functions; nothing "
        "was added to the conversation. Ask again without tools."
    )


def why_no_answer(record: Record) -> str:
    if record.reasoning and record.finish_reason == "length":
        return (
            'The model spent its whole token limit reasoning (finish reason "length") and '
            "wrote no answer; nothing was added to the conversation. Raise the limit, e.g. "
            "-p max_tokens=4096, or ask for less reasoning (-p reasoning_effort=low)."
        )
    if record.reasoning:
        return (
            "The model reasoned but wrote no answer; nothing was added to the conversation. "
            "Try again, or another model."
        )
    return (
        "The server ended the answer without any text; nothing was added to the "
        "conversation. Try again, or another model."
    )


class Reply:
    """What an answer's events said besides its text, and when it came; its record."""

    def __init__(self, request: ChatRequest, estimated: int | None = None) -> None:
        """``request`` as it is sent; ``estimated``: the tokens its messages were
        estimated at (to learn from what the server counts)."""
        self.request = request
        self.estimated = estimated
        #: The answer's text, every piece of it so far.
        self.pieces: list[str] = []
        #: The record is final (the answer has ended, however).
        self.ended = False
        self.final = Record(request.prompt, "", request.model, outcome="failed")
        self.started = time.monotonic()
        self.first_piece: float | None = None
        self.reasoning: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.served_by: str | None = None
        self.tool_calls: list[ToolCall] = []
        self.failure: FlowGptError | None = None
        #: What makes the answer stream to the messages with more after them (to ask the
        #: model again), and what was wrong with the first answer, if it was asked again.
        self.again: Callable[[list[dict[str, Any]]], AsyncResult] | None = None
        self.asked_again: str | None = None
        self._spent: Usage | None = None  # what the answers set aside used
        #: The answer cache's entry the answer is (taken from it), or is to be kept under.
        self.cached: Cached | None = None
        self.cache_key: str | None = None
        #: What runs a function call the model asked for (--tools), and what came of each.
        self.run_tool: Callable[[ToolCall], Awaitable[ToolRun]] | None = None
        self.tool_runs: list[ToolRun] = []

    def set_aside(self) -> None:
        """Start over, the answer so far set aside (what it used still counts)."""
        self._spent, self.usage = _plus(self._spent, self.usage), None
        self.pieces.clear()
        self.reasoning.clear()
        self.finish_reason = None
        self.tool_calls = []

    def take(self, event: Event, view: View) -> None:
        match event:
            case Reasoning(text=text):
                if self.first_piece is None:
                    self.first_piece = time.monotonic() - self.started
                self.reasoning.append(text)
                view.reasoning(text)
            case Usage():
                self.usage = event
            case Finish(reason=reason):
                self.finish_reason = reason
            case ServedBy(model=model):
                self.served_by = model
            case ToolCall():
                self.tool_calls.append(event)
            case RetryNotice():
                view.retrying(event)
            case Progress(text=text):
                view.progress(text)

    def record(self, outcome: Outcome, error: str | None = None) -> Record:
        request, pieces = self.request, self.pieces
        record = Record(
            prompt=request.prompt,
            answer="".join(pieces),
            model=request.model,
            served_by=self.served_by,
            temperature=request.temperature,
            params=dict(request.params) or None,
            system=request.system,
            reasoning="".join(self.reasoning),
            usage=_plus(self._spent, self.usage),
            finish_reason=self.finish_reason,
            cell_id=request.cell_id,
            cell_number=request.cell_number,
            recorded=request.records,
            outcome=outcome,
            format=request.format,
            time=float(int(time.time())),  # (whole seconds, as it is saved)
            first_piece_seconds=self.first_piece,
            total_seconds=time.monotonic() - self.started,
            pieces=len(pieces),
            error=error,
            images=request.images,
            tool_calls=tuple(self.tool_calls),
            max_cost=request.max_cost,
            asked_again=self.asked_again,
            tool_runs=tuple(self.tool_runs),
        )
        if self.cached is not None:  # (as it was when asked: it costs nothing now)
            return record._replace(**self.cached._asdict(), cached=True)
        return record._replace(cost=cost_of(record, request.price))


def _plus(one: Usage | None, other: Usage | None) -> Usage | None:
    """What two answers used, together (a count either does not say is not known)."""
    if one is None or other is None:
        return other if one is None else one

    def both(a: float | None, b: float | None) -> Any:
        return None if a is None or b is None else a + b

    return Usage(*(both(a, b) for a, b in zip(one, other, strict=True)))
