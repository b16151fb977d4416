"""One prompt over many rows: a DataFrame's, a Series', a list's.

Each row's prompt is the cell's template filled in with ``{row}`` (and ``{row.COLUMN}``),
sent as a request of its own: no conversation, nothing recorded in it. The rows go out at
most N at a time (:class:`Pace`): on a 429 the run halves how many it has in flight and
waits as long as the server asks, then adds one back for each N answers that come back
well. A failed row never stops the run: it is retried as a single answer is, then it has
no answer and its error is kept. What the run has done so far (:class:`Tally`) is what
its view shows.

No IPython and no pandas here: rows are told apart by their labels (a DataFrame's index),
and the magic makes a Series of the answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .exceptions import FlowGptError, HTTPStatusError, InvalidRequestError, RowsInterrupted

if TYPE_CHECKING:
    from .command import ChatRequest
    from .providers import AsyncResult
    from .providers.events import RetryNotice
    from .record import Record
    from .reply import Reply


class Pace:
    """How many rows are in flight: never more than ``most``; halved, and paused as long
    as the server asks, when it says too many (429); one more after every ``limit``
    answers that came back well, up to ``most`` again."""

    def __init__(self, most: int) -> None:
        self.most = self.limit = self.lowest = most
        self.in_flight = self.peak = 0
        self._resume_at = 0.0  # (the loop's clock: when a pause the server asked ends)
        self._slowed_at = -1.0
        self._good = 0
        self._freed = asyncio.Event()

    async def enter(self) -> None:
        clock = asyncio.get_running_loop().time
        while True:
            if (wait := self._resume_at - clock()) > 0:
                await asyncio.sleep(wait)
            elif self.in_flight < self.limit:
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                return
            else:
                self._freed.clear()
                await self._freed.wait()

    def leave(self, well: bool) -> None:
        self.in_flight -= 1
        if well:
            self._good += 1
            if self._good >= self.limit and self.limit < self.most:
                self._good, self.limit = 0, self.limit + 1
        self._freed.set()

    def too_many(self, wait: float) -> None:
        """The server said too many (429), and to wait ``wait`` seconds."""
        now = asyncio.get_running_loop().time()
        if now > self._slowed_at + max(wait, 0.5):  # (one halving for a burst of them)
            self.limit = max(1, self.limit // 2)
            self.lowest = min(self.lowest, self.limit)
            self._slowed_at, self._good = now, 0
        self._resume_at = max(self._resume_at, now + wait)
        self._freed.set()


class Tally:
    """What a run has done so far: what its view shows, and its summary."""

    def __init__(self, total: int, pace: Pace) -> None:
        self.total, self.pace = total, pace
        self.done = self.failed = 0  # (done: answered or failed)
        self.input_tokens = self.output_tokens = 0
        self.cost = 0.0
        self.started = time.monotonic()
        self.ended: float | None = None
        self.stopped_by: str | None = None  # why rows were left unasked ("the cost limit")
        self.loading: str | None = None  # what the first requests wait for (a local model)

    def count(self, record: Record) -> None:
        self.done += 1
        self.failed += record.outcome != "complete"
        if record.usage is not None:
            self.input_tokens += record.usage.input_tokens or 0
            self.output_tokens += record.usage.output_tokens or 0
        self.cost += record.cost or 0.0

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Rows a second so far."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def left(self) -> float | None:
        """Seconds left, at the rate so far (None: not known yet)."""
        return (self.total - self.done) / self.rate if self.rate else None


class EachView(Protocol):
    """Where a run shows how it goes (``display.progress``)."""

    def begin(self, tally: Tally) -> None:
        """The run starts (on the loop it runs on): show ``tally`` as it changes."""

    def finish(self, tally: Tally, preview: list[tuple[Any, str | None]], failures: str) -> None:
        """The run has ended: its summary, the first answers, why rows failed ("")."""


class RowView:
    """The view of one row's answer: nothing is shown of it but what the run counts (a
    429 slows the run; a model loading is said once, on the progress line)."""

    def __init__(self, pace: Pace, tally: Tally) -> None:
        self._pace, self._tally = pace, tally

    def begin(self) -> None:
        pass

    def extend(self, pieces: list[str]) -> None:
        pass

    def started(self) -> None:
        pass

    def reasoning(self, text: str) -> None:
        pass

    def retrying(self, notice: RetryNotice) -> None:
        if notice.status == 429:
            self._pace.too_many(notice.delay)

    def progress(self, text: str) -> None:
        self._tally.loading = text

    def again(self, line: str) -> None:
        pass  # (the row's answer is what comes in the end)

    def finish(self, record: Record) -> None:
        self._tally.loading = None


class Unit(NamedTuple):
    """One row's request to one model: where its answer goes, and what makes its answer
    stream (anew for each time it is asked) and its reply."""

    row: int
    model: int
    request: ChatRequest
    make: Callable[[], tuple[AsyncResult, Reply]]


#: How often a row the server refused as one too many (429, after its own retries) is
#: asked again, once the run has slowed down.
TOO_MANY_TIMES = 8


class EachResult(NamedTuple):
    """What a run gave: each model's answers in row order (None: no answer), the errors of
    the rows that have none, by model and label, and the tally."""

    labels: list[Any]
    models: list[str]
    answers: list[list[str | None]]
    errors: list[dict[Any, str]]
    tally: Tally


async def answer_rows(
    units: Sequence[Unit],
    labels: list[Any],
    models: list[str],
    pace: Pace,
    tally: Tally,
    view: EachView,
    allowed: Callable[[Unit, Tally], bool],
    ended: Callable[[Reply], None],
) -> EachResult:
    """Ask every unit, at the pace ``pace`` sets; a unit ``allowed`` refuses is not asked
    (the cost limit), nor any after it. ``ended`` is told of each reply that ended.
    Cancelled (the stop button), what had come is kept in the result the error carries."""
    from .reply import show_answer

    answers: list[list[str | None]] = [[None] * len(labels) for _ in models]
    errors: list[dict[Any, str]] = [{} for _ in models]
    queue = iter(units)
    row_view = RowView(pace, tally)
    view.begin(tally)

    async def worker() -> None:
        for unit in queue:  # (every worker takes the next unit)
            if tally.stopped_by is not None:
                return
            if not allowed(unit, tally):
                tally.stopped_by = "the cost limit"
                return
            for attempt in range(TOO_MANY_TIMES + 1):
                answer, reply = unit.make()
                await pace.enter()
                well = False
                try:
                    await show_answer(answer, row_view, reply, partial(ended, reply))
                    well = True
                except HTTPStatusError as refused:
                    if refused.status == 429 and attempt < TOO_MANY_TIMES:
                        pace.too_many(refused.retry_after or 1.0)
                        continue  # (asked again, once the run has slowed down)
                except FlowGptError:
                    pass  # (the row's record says why)
                finally:
                    pace.leave(well)
                record = reply.final
                if record.outcome == "complete":
                    answers[unit.model][unit.row] = record.answer
                elif record.outcome == "failed":
                    errors[unit.model][labels[unit.row]] = record.error or "it failed"
                if record.outcome != "interrupted":
                    tally.count(record)
                break

    result = EachResult(labels, models, answers, errors, tally)
    try:
        await asyncio.gather(*(worker() for _ in range(pace.most)))
    except asyncio.CancelledError:
        raise RowsInterrupted(result) from None
    finally:
        tally.ended = time.monotonic()
        preview = [(labels[i], answers[0][i]) for i in range(min(5, len(labels)))]
        view.finish(tally, preview, failures_line(errors, models))
    return result


class Budget(NamedTuple):
    """A run's requests within its cost limit, what it lets go out, and what the run's
    prompts and answers take at most (None: not known)."""

    plans: list[list[ChatRequest | FlowGptError]]
    allows: Callable[[Unit, Tally], bool]
    prompt_tokens: int
    answer_tokens: int | None
    worst_cost: float | None


def run_budget(
    plans: list[list[ChatRequest | FlowGptError]],
    max_cost: float | None,
    prompt_tokens: Callable[[str, list[dict[str, Any]]], tuple[int, str]],
) -> Budget:
    """What a run over ``plans`` may send, for its whole cost to stay within ``max_cost``
    (None: no limit): each answer's max_tokens is what an even share of the limit leaves
    after its prompt (or the user's, if less), so that even if every answer wrote all it
    may, the run would cost no more; and a row is not asked once what was spent, and
    what the rows in flight may still spend, leaves too little for it. A run whose
    prompts alone could cost more is refused, before anything is sent.
    ``prompt_tokens(model, messages)``: the most a prompt takes (the ledger's reckoning)."""
    from .ledger import no_price
    from .record import dollars

    units = [request for row in plans for request in row if not isinstance(request, FlowGptError)]
    bounds = [prompt_tokens(r.model, r.messages([]))[0] for r in units]
    given = [t if isinstance(t := r.params.get("max_tokens"), int) else None for r in units]
    if max_cost is None:
        answer_tokens: int | None = None
        worst: float | None = None
        if all(t is not None for t in given):
            answer_tokens = sum(t for t in given if t is not None)
        if answer_tokens is not None and all(r.price is not None for r in units):
            worst = 0.0
            for bound, tokens, request in zip(bounds, given, units, strict=True):
                assert request.price is not None and tokens is not None
                worst += (bound * request.price[0] + tokens * request.price[1]) / 1e6
        return Budget(plans, _always, sum(bounds), answer_tokens, worst)
    if unpriced := next((r for r in units if r.price is None), None):
        raise InvalidRequestError(
            no_price(
                unpriced.model, unpriced.ref.entry.provider.on_this_computer(**unpriced.options)
            )
        )
    share = max_cost / max(1, len(units))
    worst_of: dict[int, float] = {}
    budgeted: dict[int, ChatRequest] = {}
    for request, bound in zip(units, bounds, strict=True):
        assert request.price is not None
        price_in, price_out = request.price
        prompt_cost = bound * price_in / 1e6
        if prompt_cost >= share:
            prompts = (
                sum(b * (r.price[0] if r.price else 0) for b, r in zip(bounds, units, strict=True))
                / 1e6
            )
            raise InvalidRequestError(
                f"The run's {len(units):,} prompts alone could cost {dollars(prompts)}, and "
                f"the {dollars(max_cost)} allowed leaves {dollars(share)} an answer. Nothing "
                "was sent. Raise --max-cost, or ask fewer rows (--each df.head(100))."
            )
        most = 2**31 if price_out <= 0 else int((share - prompt_cost) / price_out * 1e6)
        limit = request.ref.entry.provider.max_output_tokens(request.ref.model, **request.options)
        most = most if limit is None else min(most, limit)
        mine = request.params.get("max_tokens")
        if not (isinstance(mine, int) and mine <= most):
            request = request._replace(params={**request.params, "max_tokens": most}, max_cost=None)
        tokens = request.params["max_tokens"]
        budgeted[id(request)] = request
        worst_of[id(request)] = prompt_cost + tokens * price_out / 1e6
    # (the same objects, in the same places: each request by itself, its budget beside it)
    iterator = iter(budgeted.values())
    new_plans = [
        [request if isinstance(request, FlowGptError) else next(iterator) for request in row]
        for row in plans
    ]
    worst_cost = sum(worst_of.values())
    costliest = max(worst_of.values(), default=0.0)

    def allows(unit: Unit, tally: Tally) -> bool:
        in_flight = tally.pace.in_flight * costliest  # (what the rows out may still spend)
        return tally.cost + in_flight + worst_of.get(id(unit.request), costliest) <= max_cost

    planned_tokens = sum(r.params["max_tokens"] for r in budgeted.values())
    return Budget(new_plans, allows, sum(bounds), planned_tokens, worst_cost)


def _always(unit: Unit, tally: Tally) -> bool:
    return True


def failures_line(errors: list[dict[Any, str]], models: list[str]) -> str:
    """Why rows failed, in one line: which, and each reason with how many it stopped."""
    from collections import Counter

    failed = [
        (model, label, error)
        for model, e in zip(models, errors, strict=True)
        for label, error in e.items()
    ]
    if not failed:
        return ""
    rows = labelled(
        label if len(models) == 1 else f"{label} ({model})" for model, label, _ in failed
    )
    reasons = Counter(error for _, _, error in failed).most_common(3)
    why = "; ".join(f"{_first_sentence(error)} ({count:,})" for error, count in reasons)
    return f"{len(failed):,} failed ({rows}): {why}. _flowgpt.attrs['errors'] has each."


def _first_sentence(error: str) -> str:
    return error.split(". ")[0].rstrip(".")


def labelled(labels: Iterable[Any]) -> str:
    """Row labels for a person: the first few, and how many more."""
    shown = list(labels)
    head = ", ".join(map(str, shown[:8]))
    return head + (f" and {len(shown) - 8:,} more" if len(shown) > 8 else "")
