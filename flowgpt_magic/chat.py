"""A notebook's chat with the models: its conversation, what its requests cost, and the
runner its answers run on. ``ask`` sends a request, streams the answer into a view, and
records it; ``ask_all`` does so for several models at once; ``ask_in_background`` returns
at once and lets the answer stream while other cells run. All three are the same: answers
started on the runner (``runner.py``), each ending by handing its exchange over to the
cells' thread; a cell that asks in the foreground waits for them, nothing else differs.
No IPython here: the magics parse a cell, call this, and store what comes back.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .conversation import Conversation
from .exceptions import (
    AnswerInterrupted,
    FlowGptError,
    ImagesRefusedError,
    InvalidRequestError,
    RequestFailedError,
)
from .ledger import Ledger, budget_tokens, estimate_tokens, no_price
from .record import Record
from .reply import Reply, View, show_answer, why_no_answer
from .runner import Job, Runner

if TYPE_CHECKING:
    from .batch import EachResult, EachView
    from .cache import AnswerCache
    from .command import ChatRequest, Settings
    from .functions import ToolRun
    from .providers import AsyncResult
    from .providers.events import ToolCall


class Chat:
    """The conversation and the runner of one notebook (IPython shell)."""

    def __init__(self) -> None:
        self._conversation = Conversation()
        self._ledger = Ledger()  # what the requests used, by model
        self._runner = Runner()
        self._asked = 0  # requests asked so far
        #: The answers streaming in the background, and their labels.
        self._background: dict[Job[Any], str] = {}
        #: Answers that ended, for the cells' thread to take in (appended on the runner's
        #: thread; a deque's append and popleft are atomic).
        self._ended: deque[Callable[[], None]] = deque()
        self._no_images: set[str] = set()  # models that refused images here
        self._cache: AnswerCache | None = None  # (FlowGptMagics.cache, opened when set)
        #: Why answers could not be kept in the cache, for the cell to say (then cleared).
        self.cache_problems: list[str] = []
        #: The notebook's settings as they are: the secrets a function call's result may
        #: not hold, the most characters it may have.
        self.settings: Callable[[], Settings] | None = None

    def use_cache(self, path: str | None) -> AnswerCache | None:
        """Take answers from the cache file at ``path`` and keep them there (None: none);
        it is opened (checked, or made) the first time. Raises :class:`CacheError`."""
        if self._cache is not None and path is not None and self._cache.path == _path(path):
            return self._cache
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if path is not None:
            from .cache import AnswerCache

            self._cache = AnswerCache(path)
        return self._cache

    @property
    def conversation(self) -> Conversation:
        self._settle()
        return self._conversation

    @property
    def ledger(self) -> Ledger:
        self._settle()
        return self._ledger

    def _settle(self) -> None:
        """Take in the answers that have ended. Done on each read, not left to a callback:
        once a box shows its answer finished, the very next cell finds it in the
        conversation."""
        while self._ended:
            self._ended.popleft()()

    def ask(self, request: ChatRequest, view: View) -> Record:
        """Send ``request``, stream the answer into ``view``, and record it.

        A complete answer joins the conversation (unless the request says not to); one
        that fails or is interrupted (KeyboardInterrupt: the stop button) does not, and
        what had arrived stays in the view. Raises our own errors only: the request's,
        :class:`AnswerInterrupted`, or a :class:`RequestFailedError` for no text at all.
        """
        (record,) = self.ask_all([request], [view])
        return record

    def ask_all(self, requests: list[ChatRequest], views: list[View]) -> list[Record]:
        """Send every request at once, each streaming into its view; a model that fails
        says so in its own view while the others go on. The conversation goes on with
        the first's answer. Raises :class:`AnswerInterrupted` (for all of them), or the
        first error if none answered (the only one's, asked alone)."""
        job, replies = self._start(requests, views)
        try:
            results = self._runner.wait(job)
        except KeyboardInterrupt:
            raise AnswerInterrupted(sum(len(p) for r in replies for p in r.pieces)) from None
        finally:
            self._settle()
        records = [reply.final for reply in replies]
        if len(records) == 1 and isinstance(results[0], FlowGptError):
            raise results[0]
        if not any(record.answer for record in records):
            first = results[0]
            if isinstance(first, FlowGptError):
                raise first
            raise RequestFailedError(records[0].error or why_no_answer(records[0]))
        return records

    def ask_in_background(self, request: ChatRequest, view: View, label: str) -> Callable[[], None]:
        """Send ``request`` and return at once; the answer streams into ``view`` while
        other cells run, even cells that keep the kernel busy. It joins the conversation
        when it completes, after the exchanges asked before it. Its failure is the view's
        to show. Returns what stops it. ``label`` names it while it streams
        (``background``)."""
        job, _ = self._start([request], [view])
        self._background[job] = label
        return job.cancel

    def ask_each(
        self,
        plans: list[list[ChatRequest | FlowGptError]],
        labels: list[Any],
        view: EachView,
        concurrency: int,
        max_cost: float | None = None,
    ) -> EachResult:
        """Ask each row's requests (one a model: ``plans``, in row order; an error for a
        row whose prompt could not be made), at most ``concurrency`` at once, the whole
        run within ``max_cost`` US dollars; nothing joins the conversation. The stop
        button raises :class:`RowsInterrupted`, which holds what had come."""
        from .batch import Pace, Tally, Unit, answer_rows, run_budget
        from .exceptions import RowsInterrupted

        models = [r.model if not isinstance(r, FlowGptError) else "" for r in plans[0]]
        budget = run_budget(plans, max_cost, self.ledger.prompt_tokens)
        units, failed = [], []
        session = self._runner.session()
        for row, requests in enumerate(budget.plans):
            for model, request in enumerate(requests):
                if isinstance(request, FlowGptError):
                    failed.append((model, labels[row], str(request)))
                else:
                    answer_to(request, request.messages([]), session)  # (checked now)
                    make = functools.partial(
                        answer_to, request, request.messages([]), session, self._cache
                    )
                    units.append(Unit(row, model, request, make))
        pace = Pace(max(1, concurrency))
        tally = Tally(len(units) + len(failed), pace)
        tally.done = tally.failed = len(failed)

        def ended(reply: Reply) -> None:  # (on the runner's thread)
            self._keep(reply)
            self._ended.append(lambda: self._learn(reply))

        rows = answer_rows(units, labels, models, pace, tally, view, budget.allows, ended)
        try:
            result = self._runner.wait(self._runner.submit(rows))
        except RowsInterrupted as stopped:
            for model, label, error in failed:
                stopped.result.errors[model][label] = error
            raise
        finally:
            self._settle()
        for model, label, error in failed:
            result.errors[model][label] = error
        return result

    @property
    def background(self) -> list[str]:
        """The labels of the answers still streaming in the background."""
        self._settle()
        return list(self._background.values())

    def _start(
        self, requests: list[ChatRequest], views: list[View]
    ) -> tuple[Job[Any], list[Reply]]:
        """Start the answers to ``requests`` on the runner (checked here first: nothing
        goes out for a request that cannot be sent); each hands its exchange over when it
        ends, before its view shows it finished."""
        import asyncio

        pairs = list(zip(requests, views, strict=True))
        answers, replies = map(list, zip(*(self._send(r) for r, _ in pairs), strict=True))
        for reply in replies:
            if reply.request.tools:
                reply.run_tool = functools.partial(self._run_tool, reply.request)
        asked = self._ask_next()
        job: Job[Any] | None = None

        def ended(reply: Reply) -> Callable[[], None]:
            def take() -> None:  # (on the cells' thread)
                self._learn(reply)
                if reply is replies[0] and reply.final.outcome == "complete":
                    self._remember(reply.request, reply.final, asked)
                if job is not None and all(r.ended for r in replies):
                    self._background.pop(job, None)

            def end() -> None:  # (on the runner's thread, as the answer ends)
                self._keep(reply)
                self._ended.append(take)

            return end

        async def everyone() -> list[Any]:
            streams = (
                show_answer(a, v, r, ended(r))
                for a, v, r in zip(answers, views, replies, strict=True)
            )
            return await asyncio.gather(*streams, return_exceptions=True)

        job = self._runner.submit(everyone())
        return job, replies

    async def _run_tool(self, request: ChatRequest, call: ToolCall) -> ToolRun:
        """Run a function call the model asked for, on the cell's thread (where the
        notebook's code runs), once the person says so; what it gives, its secrets hidden."""
        import builtins

        from .functions import run_call
        from .prompt import redact

        def run() -> ToolRun:
            settings = self.settings() if self.settings is not None else None
            most = settings.value_chars if settings is not None else 4_000
            # (builtins.input as it is then: ipykernel's, which asks in the frontend.)
            run = run_call(request.tools, call, request.approve, builtins.input, most)
            secrets = settings.secrets() if settings is not None else {}
            return run._replace(result=redact(run.result, secrets)[0])

        return await self._runner.on_waiting_thread(run)

    def _keep(self, reply: Reply) -> None:
        """Keep a whole answer in the cache, as it ends (a run stopped later keeps it)."""
        from .cache import CacheError, keeps

        if self._cache is not None and reply.cache_key is not None and keeps(reply.final):
            try:
                self._cache.put(reply.cache_key, reply.final)
            except CacheError as error:  # (the answer is shown all the same)
                self.cache_problems.append(str(error))

    def _learn(self, reply: Reply) -> None:
        """What an answer that ended teaches: what it cost, whether its model takes images."""
        self._ledger.add(reply.final, reply.estimated)
        if isinstance(reply.failure, ImagesRefusedError):
            self._no_images.add(reply.request.model)

    def _ask_next(self) -> int:
        """When a request is asked, in this chat's count (the conversation's order)."""
        self._asked += 1
        return self._asked

    def _remember(self, request: ChatRequest, record: Record, asked: int) -> None:
        if request.records:
            if request.reset:
                self._conversation.reset()
            self._conversation.add(record, asked)

    def _send(self, request: ChatRequest) -> tuple[AsyncResult, Reply]:
        """The answer stream (checked now, sent when it is read, on the runner's session),
        and the reply it makes, with the request as it is sent (within its cost limit)."""
        messages = request.messages(self.context(request) if request.sends_history else [])
        request = self._within_cost(request, messages)
        return answer_to(request, messages, self._runner.session(), self._cache)

    def _within_cost(self, request: ChatRequest, messages: list[dict[str, Any]]) -> ChatRequest:
        """``request``, its answer's max_tokens what its cost limit leaves for it; an error
        if its prompt alone could cost more, or its price is not known."""
        if request.max_cost is None:
            return request
        most, _ = self.answer_budget(request, messages)
        given = request.params.get("max_tokens")
        if isinstance(given, int) and given <= most:
            return request
        return request._replace(params={**request.params, "max_tokens": most})

    def answer_budget(
        self, request: ChatRequest, messages: list[dict[str, Any]]
    ) -> tuple[int, str]:
        """The most tokens the answer may have within the cost limit (and the model's own
        limit, where known), and how the prompt's tokens were reckoned."""
        assert request.max_cost is not None
        entry = request.ref.entry
        if request.price is None:
            raise InvalidRequestError(
                no_price(request.model, entry.provider.on_this_computer(**request.options))
            )
        prompt, how = self.ledger.prompt_tokens(request.model, messages)
        most = budget_tokens(prompt, request.price, request.max_cost)
        limit = entry.provider.max_output_tokens(request.ref.model, **request.options)
        return (most if limit is None else min(most, limit)), f"{prompt:,} tokens ({how})"

    def context(self, request: ChatRequest) -> list[dict[str, Any]]:
        """The conversation's messages ``request`` sends as context."""
        return self.conversation.wire_messages(
            request.context_turns,
            request.context_chars,
            excluding_cell=request.cell_id,
            images=self._sends_images(request),
            tools="tool" in request.ref.entry.provider.roles,
        )

    def _sends_images(self, request: ChatRequest) -> bool:
        """Whether ``request``'s model is sent images: it takes them, as far as is known
        (its provider says it may; it has not refused them here)."""
        provider = request.ref.entry.provider
        return provider.takes_images(**request.options) and request.model not in self._no_images

    def images_left_out(self, request: ChatRequest) -> int:
        """How many of the context's images ``request`` leaves out (its model takes none)."""
        if not request.sends_history or self._sends_images(request):
            return 0
        sent = self.conversation.sent(
            request.context_turns, request.context_chars, excluding_cell=request.cell_id
        )
        return sum(len(record.images) for record in sent)

    def run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` to its end on the loop the answers run on (the stop button
        stops it)."""
        return self._runner.run(coroutine)

    def close(self) -> None:
        """Stop the answers still streaming, close the session, end the runner's thread."""
        self._runner.close()
        self._settle()
        self.use_cache(None)


def _path(path: str) -> Any:
    from pathlib import Path

    return Path(path).expanduser()


def answer_to(
    request: ChatRequest,
    messages: list[dict[str, Any]],
    session: Any,
    cache: AnswerCache | None = None,
) -> tuple[AsyncResult, Reply]:
    """The answer stream to ``messages`` as ``request`` says (checked now, sent when it is
    read, on ``session``), and the reply it makes (which can ask again, with more
    messages); taken from ``cache`` if it holds it, unless the request says not to. Any
    thread may make one."""
    delivery, provider = request.delivery, request.ref.entry.provider
    key = None
    if cache is not None and request.cache != "off":
        from .cache import replayed, request_key

        key = request_key(request, messages)
        if request.cache == "use" and (cached := cache.get(key)) is not None:
            reply = Reply(request, None)
            reply.cached = cached
            return replayed(cached), reply

    def stream(more: Sequence[dict[str, Any]] = ()) -> AsyncResult:
        return provider.create_async_generator(
            request.ref.model,
            [*messages, *more],
            temperature=request.temperature,
            params=request.params,
            timeout=delivery.timeout,
            first_piece_timeout=delivery.first_piece_timeout,
            connect_timeout=delivery.connect_timeout,
            retries=delivery.retries,
            session=session,
            **request.options,
        )

    reply = Reply(request, estimate_tokens(messages))
    reply.again, reply.cache_key = stream, key
    return stream(), reply
