"""A notebook's chat with the models: its conversation, what its requests cost, the loop
its answers run on and their HTTP session. ``ask`` sends a request, streams the answer into
a view, and records it; ``ask_all`` does so for several models at once, ``ask_in_background``
from a thread of its own while other cells run. No IPython here: the magics parse a cell,
call this, and store what comes back.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
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
from .loop import LoopRunner
from .record import Record
from .reply import Reply, View, show_answer, why_no_answer

if TYPE_CHECKING:
    from .command import ChatRequest
    from .providers import AsyncResult


class Chat:
    """The conversation, the loop and the HTTP session of one notebook (IPython shell)."""

    def __init__(self) -> None:
        self._conversation = Conversation()
        self._ledger = Ledger()  # what the requests used, by model
        self._runner = LoopRunner()
        self._asked = 0  # requests asked so far
        # The answers streaming in the background: their label, thread, and stop.
        self._background: dict[Any, tuple[str, Any, Callable[[], None]]] = {}
        # Background answers that ended, for the cells' thread to take in (appended by
        # their threads; a deque's append and popleft are atomic).
        self._ended: deque[Callable[[], None]] = deque()
        self._no_images: set[str] = set()  # models that refused images here
        self._session: Any = None  # aiohttp.ClientSession, made on first use
        self._session_loop: Any = None

    @property
    def conversation(self) -> Conversation:
        self._settle()
        return self._conversation

    @property
    def ledger(self) -> Ledger:
        self._settle()
        return self._ledger

    def _settle(self) -> None:
        """Take in the background answers that have ended. Done on each read, not left to
        a callback on the cells' loop: once a box shows its answer finished, the very
        next cell finds it in the conversation."""
        while self._ended:
            self._ended.popleft()()

    def ask(self, request: ChatRequest, view: View) -> Record:
        """Send ``request``, stream the answer into ``view``, and record it.

        A complete answer joins the conversation (unless the request says not to); one
        that fails or is interrupted (KeyboardInterrupt: the stop button) does not, and
        what had arrived stays in the view. Raises our own errors only: the request's,
        :class:`AnswerInterrupted`, or a :class:`RequestFailedError` for no text at all.
        """
        answer, reply = self._send(request, view)
        asked = self._ask_next()
        try:
            self._runner.run(show_answer(answer, view, reply))
        except KeyboardInterrupt:
            raise AnswerInterrupted(sum(map(len, view.pieces))) from None
        finally:
            self._learn(reply)
        record = reply.final
        if not record.answer:
            raise RequestFailedError(record.error or why_no_answer(record))
        self._remember(request, record, asked)
        return record

    def ask_all(self, requests: list[ChatRequest], views: list[View]) -> list[Record]:
        """Send every request at once, each streaming into its view; a model that fails
        says so in its own view while the others go on. The conversation goes on with
        the first's answer. Raises :class:`AnswerInterrupted` (for all of them), or the
        first error if none answered."""
        import asyncio

        pairs = list(zip(requests, views, strict=True))
        streams, replies = map(list, zip(*(self._send(r, v) for r, v in pairs), strict=True))
        asked = self._ask_next()

        async def everyone() -> list[Any]:
            answers = zip(streams, views, replies, strict=True)
            return await asyncio.gather(*(show_answer(*a) for a in answers), return_exceptions=True)

        try:
            results = self._runner.run(everyone())
        except KeyboardInterrupt:
            raise AnswerInterrupted(sum(len(p) for view in views for p in view.pieces)) from None
        finally:
            for reply in replies:
                self._learn(reply)
        records = [reply.final for reply in replies]
        if not any(record.answer for record in records):
            first = results[0]
            if isinstance(first, FlowGptError):
                raise first
            raise RequestFailedError(records[0].error or why_no_answer(records[0]))
        if records[0].outcome == "complete":
            self._remember(replies[0].request, records[0], asked)
        return records

    def ask_in_background(self, request: ChatRequest, view: View, label: str) -> Callable[[], None]:
        """Send ``request`` and return at once; the answer streams into ``view`` from a
        thread of its own (with its own loop and connection), so that it goes on while
        other cells run, even cells that keep the kernel busy. It joins the conversation
        when it completes, after the exchanges asked before it (on the loop that runs the
        cells, between them). Its failure is the view's to show. Returns what stops it.
        ``label`` names it while it streams (``background``)."""
        import asyncio
        import threading

        main = self._runner.loop()
        answer, reply = self._send(request, view, session=None)  # (a session is one loop's)
        asked = self._ask_next()
        loop = asyncio.new_event_loop()

        def over() -> None:  # (on the cells' thread)
            self._background.pop(task, None)
            self._learn(reply)
            if reply.final.outcome == "complete":
                self._remember(reply.request, reply.final, asked)

        task = loop.create_task(
            show_answer(answer, view, reply, ended=lambda: self._ended.append(over))
        )

        def stream() -> None:  # (the thread)
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(task)
            except (FlowGptError, asyncio.CancelledError):
                pass  # (the view says so; there is no cell to raise it in)
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                main.call_soon_threadsafe(self._settle)  # (if no cell reads it first)

        def stop() -> None:
            # (The loop may close between a check and the call: ask, and let it be.)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

        thread = threading.Thread(target=stream, name=f"flowgpt-{label}", daemon=True)
        self._background[task] = (label, thread, stop)
        thread.start()
        return stop

    @property
    def background(self) -> list[str]:
        """The labels of the answers still streaming in the background."""
        self._settle()
        return [label for label, _, _ in self._background.values()]

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

    def _send(
        self, request: ChatRequest, view: View, session: Any = True
    ) -> tuple[AsyncResult, Reply]:
        """The answer stream (checked now, sent when it is read; on the notebook's pooled
        session, unless ``session`` is None: the stream's own, another loop's), and the
        reply it makes, with the request as it is sent (within its cost limit)."""
        delivery = request.delivery
        messages = request.messages(self.context(request))
        request = self._within_cost(request, messages)
        answer = request.ref.entry.provider.create_async_generator(
            request.ref.model,
            messages,
            temperature=request.temperature,
            params=request.params,
            timeout=delivery.timeout,
            first_piece_timeout=delivery.first_piece_timeout,
            connect_timeout=delivery.connect_timeout,
            retries=delivery.retries,
            on_retry=view.retrying,
            on_progress=view.progress,
            session=self._http_session() if session is True else session,
            **request.options,
        )
        return answer, Reply(request, estimate_tokens(messages))

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
        """Stop the answers still streaming in the background, then close the session."""
        background = list(self._background.values())
        for _, _, stop in background:
            stop()
        for _, thread, _ in background:
            thread.join(timeout=10)
        if self._session is not None and not self._session.closed:
            self._runner.run(self._session.close())
        self._runner.close()

    def _http_session(self) -> Any:
        """One aiohttp session for every cell, so connections are reused between cells.

        It belongs to the loop that runs the cells, and is made anew if that changes.
        """
        loop = self._runner.loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:

            async def new_session() -> Any:
                import aiohttp

                return aiohttp.ClientSession()

            self._session, self._session_loop = self._runner.run(new_session()), loop
        return self._session
