"""The IPython magics: parse the options, build a request, stream the answer, record it."""

from __future__ import annotations

import keyword
import shlex
import time
from collections import ChainMap
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Enum, Float, Int, TraitError, Unicode, validate

from .command import ChatRequest, Defaults, build_request
from .conversation import Conversation, exchanges
from .display import FORMATS, Format, StreamView, code_of, open_view
from .exceptions import AnswerInterrupted, FlowGptError, SecretURL, redact_url
from .loop import LoopRunner
from .prompt import ErrorLog, expand
from .providers import (
    PROVIDERS,
    AsyncResult,
    FlowGpt,
    ProviderEntry,
    ProviderSettings,
    resolve_model,
)
from .providers.base import check_temperature
from .providers.http import CONNECT_TIMEOUT, RETRIES, TIMEOUT, RetryNotice
from .record import Outcome, Record


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Show our own errors as IPython's one-line UsageError, never as a traceback."""
    try:
        yield
    except FlowGptError as error:
        raise UsageError(str(error)) from None


def _parse(magic: Any, line: str) -> Any:
    """Parse a magic's options like a shell would, so that -s "two words" loses its quotes.

    (``magic_arguments.parse_argstring`` splits non-POSIX style and keeps the quotes.)
    """
    try:
        argv = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"Cannot read the options {line!r}: {error}.") from None
    return magic.parser.parse_args(argv)


@magics_class
class FlowGptMagics(Magics):
    """``%%flowgpt``, ``%flowgpt_model`` and ``%flowgpt_history``.

    Settings are traitlets: ``%config FlowGptMagics.temperature = 0.2`` in a notebook, or
    ``c.FlowGptMagics.temperature = 0.2`` in ``ipython_config.py``.
    """

    default_model = Unicode(
        FlowGpt.default_model,
        help="Model used when a cell gives no -m: a FlowGPT name or alias, or PROVIDER:MODEL "
        "such as openai:gpt-4o-mini (resolved when set).",
    ).tag(config=True)
    temperature = Float(0.7, help="Sampling temperature, from 0 to 2.").tag(config=True)
    system_message = Unicode(
        None,
        allow_none=True,
        help="System message sent with every cell that gives no -s. None: the provider's own.",
    ).tag(config=True)
    api_url = Unicode(
        None,
        allow_none=True,
        help="Full URL of FlowGPT's chat endpoint. None: $FLOWGPT_API_URL if set, else "
        "FlowGPT's own. (Other providers have their own settings, e.g. OpenAI.base_url.)",
    ).tag(config=True)
    proxy = Unicode(
        None, allow_none=True, help="HTTP(S) proxy URL, e.g. http://user:password@host:3128."
    ).tag(config=True)
    timeout = Float(
        TIMEOUT,
        allow_none=True,
        help="Seconds the server may stay silent between pieces (None: no limit). There is "
        "no limit on a whole answer.",
    ).tag(config=True)
    first_piece_timeout = Float(
        None,
        allow_none=True,
        help="Seconds the server may take to send the first piece (None: as timeout).",
    ).tag(config=True)
    history_turns = Int(
        None,
        allow_none=True,
        help="Send at most this many recent exchanges as context (None: all). The "
        "conversation keeps everything; %flowgpt_history shows it all.",
    ).tag(config=True)
    history_chars = Int(
        None,
        allow_none=True,
        help="Send at most this many characters of context, dropping the oldest whole "
        "exchanges first (None: no limit).",
    ).tag(config=True)
    retries = Int(
        RETRIES,
        help="How often a request that failed before any text arrived (no connection, 429, "
        "5xx) is tried again, after a growing pause or the server's Retry-After.",
    ).tag(config=True)
    connect_timeout = Float(
        CONNECT_TIMEOUT, allow_none=True, help="Seconds allowed for connecting (None: no limit)."
    ).tag(config=True)
    display_mode = Enum(
        ["auto", "widget", "text"],
        "auto",
        help="How answers stream: 'widget' (an output widget, in Jupyter), 'text' (plain "
        "stdout), or 'auto' (widget in a kernel, text in a terminal).",
    ).tag(config=True)
    answer_format = Enum(
        list(FORMATS),
        "markdown",
        help="How answers show in a notebook: 'markdown' (rendered as it streams), 'text', "
        "or 'code' (the answer's code blocks, highlighted). A cell's -f overrides it.",
    ).tag(config=True)
    footer = Bool(
        True,
        help="Show a line under each answer: model, time to the first piece, total time, "
        "pieces and characters.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.conversation = Conversation()
        self.errors = ErrorLog()  # for {Err} and {Err[3]} in prompts
        self._cell_id: str | None = None  # the running cell's id, when the frontend says
        self._runner = LoopRunner()
        self._session: Any = None  # aiohttp.ClientSession, made on first use
        self._session_loop: Any = None
        # Each provider's own settings, configurable like ours: %config OpenAI.base_url = ...
        self.provider_settings: dict[str, Any] = {
            entry.name: entry.settings(parent=shell)
            for entry in PROVIDERS.values()
            if entry.settings is not None
        }
        if shell is not None:
            shell.configurables.extend(self.provider_settings.values())
            # IPython's events, not its exception hook: that stays the user's (or IPython's).
            shell.events.register("post_run_cell", self._remember_error)
            shell.events.register("pre_run_cell", self._note_cell)

    @validate("default_model")
    def _resolve_default_model(self, proposal: Any) -> str:
        try:
            return resolve_model(proposal.value).id
        except FlowGptError as error:
            raise TraitError(str(error)) from None

    @validate("proxy")
    def _hide_proxy_credentials(self, proposal: Any) -> str | None:
        return None if proposal.value is None else SecretURL(proposal.value)

    @validate("temperature")
    def _check_temperature(self, proposal: Any) -> float:
        try:
            return check_temperature(proposal.value)
        except FlowGptError as error:
            raise TraitError(str(error)) from None

    def _note_cell(self, info: Any) -> None:
        self._cell_id = getattr(info, "cell_id", None)

    def _remember_error(self, result: Any) -> None:
        error = result.error_in_exec or result.error_before_exec
        if error is not None:
            import traceback

            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            self.errors.record(result.execution_count, text)

    def close(self) -> None:
        if self.shell is not None:
            self.shell.events.unregister("post_run_cell", self._remember_error)
            self.shell.events.unregister("pre_run_cell", self._note_cell)
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

    @property
    def _namespace(self) -> dict[str, Any]:
        """The notebook's variables (a magic only ever runs inside a shell)."""
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    def request_options(self) -> dict[str, Any]:
        """FlowGPT's options: its settings are ours (the magics are named after it)."""
        return {"api_url": self.api_url}

    def _settings_of(self, entry: ProviderEntry) -> ProviderSettings:
        settings: ProviderSettings = self.provider_settings.get(entry.name, self)
        return settings

    # -- %%flowgpt ---------------------------------------------------------------------

    @magic_arguments()
    @argument("-m", "--model", metavar="MODEL", help="Model or alias, for this cell only.")
    @argument(
        "-t", "--temperature", metavar="T", help="Temperature from 0 to 2, for this cell only."
    )
    @argument("-s", "--system", metavar="TEXT", help="System message, for this cell only.")
    @argument(
        "--no-history",
        action="store_true",
        help="Send the prompt without the conversation, and do not record the exchange.",
    )
    @argument("--reset", action="store_true", help="Start a new conversation with this cell.")
    @argument(
        "--raw",
        action="store_true",
        help="Send the cell as written: no {name}, {In[3]}, {Out[3]} or {Err} filled in.",
    )
    @argument(
        "--dry-run",
        action="store_true",
        help="Show what would be sent (model, temperature, system message, context, prompt), "
        "and send nothing.",
    )
    @argument(
        "-f",
        "--format",
        choices=FORMATS,
        help="Show the answer as markdown (rendered as it streams), text, or code (its code "
        "blocks, highlighted; -o and _flowgpt then hold the code). Default: "
        "FlowGptMagics.answer_format.",
    )
    @argument("-o", "--output", metavar="NAME", help="Store the answer in the variable NAME.")
    @cell_magic
    def flowgpt(self, line: str, cell: str) -> None:
        """Ask a chat model: the cell body is the prompt; the answer streams in below.

        Each answered cell joins the notebook's conversation, and later cells send the
        conversation as context. A failed or interrupted answer is not recorded. In the
        prompt, {name}, {name.attr}, {In[3]}, {Out[3]}, {Err} (the last error, with its
        traceback) and {Err[3]} are filled in; other braces stay as written, and {{name}}
        is the literal text {name}. The last answer is in _flowgpt. See %flowgpt_model and
        %flowgpt_history.
        """
        args = _parse(self.flowgpt, line)
        if args.output is not None and (
            not args.output.isidentifier() or keyword.iskeyword(args.output)
        ):
            raise UsageError(
                f"-o needs a variable name to store the answer in, not {args.output!r}."
            )
        view: StreamView | None = None

        def retrying(notice: RetryNotice) -> None:
            if view is not None:
                view.retrying(notice)

        with _usage_errors():
            if not args.raw:
                cell = expand(cell, ChainMap({"Err": self.errors}, self._namespace))
            request = build_request(
                cell,
                Defaults(self.default_model, self.temperature, self.system_message),
                model=args.model,
                temperature=args.temperature,
                system=args.system,
                no_history=args.no_history,
                reset=args.reset,
            )
            ref = resolve_model(request.model)
            messages = request.messages(
                self.conversation.wire_messages(
                    self.history_turns, self.history_chars, excluding_cell=self._cell_id
                )
            )
            if args.dry_run:
                print(self._dry_run(request, ref, messages))
                return
            answer = ref.entry.provider.create_async_generator(
                ref.model,
                messages,
                proxy=self.proxy,
                temperature=request.temperature,
                timeout=self.timeout,
                first_piece_timeout=self.first_piece_timeout,
                connect_timeout=self.connect_timeout,
                retries=self.retries,
                on_retry=retrying,
                session=self._http_session(),
                **self._settings_of(ref.entry).request_options(),
            )
        answer_format: Format = args.format or self.answer_format
        view = open_view(self._use_widget(), f"Waiting for {request.model}…", answer_format)
        record = self._stream(answer, view, request, answer_format)
        self._record(request, record)
        text = record.answer
        kept = code_of(text)[0] if answer_format == "code" else text
        self._namespace["_flowgpt"] = kept
        if args.output:
            self._namespace[args.output] = kept

    def _dry_run(self, request: ChatRequest, ref: Any, messages: list[dict[str, str]]) -> str:
        options = self._settings_of(ref.entry).request_options()
        context = messages[:-1]
        system = [m for m in context if m["role"] == "system"]
        history = [m for m in context if m["role"] != "system"]
        system_text = "\n".join(m["content"] for m in system) or "(the provider's own)"
        return "\n".join(
            [
                "Dry run: nothing was sent.",
                f"model:          {request.model}",
                f"endpoint:       {redact_url(ref.entry.provider.endpoint(**options))}",
                f"temperature:    {request.temperature:g}",
                f"system message: {system_text}",
                f"context:        {len(history)} messages, "
                f"{sum(len(m['content']) for m in history):,} characters",
                f"prompt ({len(request.prompt):,} characters):",
                *("    " + line for line in request.prompt.splitlines()),
            ]
        )

    def _stream(
        self, answer: AsyncResult, view: StreamView, request: ChatRequest, answer_format: Format
    ) -> Record:
        pieces = view.pieces
        started = time.monotonic()
        first_piece: float | None = None

        async def receive() -> None:
            nonlocal first_piece
            extend = view.extend
            view.begin()
            async with aclosing(answer):
                batches = answer.batches()  # a list of pieces a read: no step per piece
                async for batch in batches:
                    if batch.__class__ is list:
                        first_piece = time.monotonic() - started
                        extend(batch)
                        view.started()
                        break
                # The hot loop: the view shows the pieces on its own clock.
                async for batch in batches:
                    if batch.__class__ is list:
                        extend(batch)

        outcome: Outcome = "failed"
        try:
            self._runner.run(receive())
            outcome = "complete"
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise AnswerInterrupted(sum(map(len, pieces))) from None
        except FlowGptError as error:
            raise UsageError(str(error)) from None
        finally:
            record = Record(
                prompt=request.prompt,
                answer="".join(pieces),
                model=request.model,
                temperature=request.temperature,
                system=request.system,
                cell_id=self._cell_id,
                recorded=request.records,
                outcome=outcome,
                format=answer_format,
                time=float(int(time.time())),  # (whole seconds, as it is saved)
                first_piece_seconds=first_piece,
                total_seconds=time.monotonic() - started,
                pieces=len(pieces),
            )
            view.finish(record, self.footer)
        return record

    def _record(self, request: ChatRequest, record: Record) -> None:
        if not record.answer:
            raise UsageError(
                "The server ended the answer without any text; nothing was added to the "
                "conversation. Try again, or another model."
            )
        if not request.records:
            return
        if request.reset:
            self.conversation.reset()
        self.conversation.add(record)

    def _use_widget(self) -> bool:
        if self.display_mode != "auto":
            return self.display_mode == "widget"
        return getattr(self.shell, "kernel", None) is not None

    # -- %flowgpt_model ----------------------------------------------------------------

    @magic_arguments()
    @argument("name", nargs="?", help="Model name or alias to make the notebook's default.")
    @line_magic
    def flowgpt_model(self, line: str) -> None:
        """Show the default model and every model with its aliases, or set the default."""
        args = _parse(self.flowgpt_model, line)
        if args.name is None:
            print(self._model_listing())
            return
        with _usage_errors():
            model = resolve_model(args.name).id
        self.default_model = model
        via = f" (alias {args.name!r})" if args.name != model else ""
        print(f"Default model is now {model}{via}.")

    def _model_listing(self) -> str:
        lines = [f"Default model: {self.default_model}"]
        for entry in PROVIDERS.values():
            options = self._settings_of(entry).request_options()
            lines += ["", f"{entry.name}: {entry.description}"]
            try:
                lines.append(f"  endpoint: {redact_url(entry.provider.endpoint(**options))}")
                models = self._runner.run(
                    entry.provider.list_models(proxy=self.proxy, timeout=5.0, **options)
                )
            except FlowGptError as error:
                lines.append(f"  (could not list the server's models: {error})")
                models = entry.provider.models
            for model in models:
                ref = resolve_model(f"{entry.name}:{model}")
                aliases = entry.provider.aliases_of(model)
                note = f"  (aliases: {', '.join(aliases)})" if aliases else ""
                mark = "*" if ref.id == self.default_model else " "
                lines.append(f" {mark} {ref.id}{note}")
        return "\n".join(lines)

    # -- %flowgpt_history --------------------------------------------------------------

    @magic_arguments()
    @argument("--reset", action="store_true", help="Empty the conversation.")
    @argument("--save", metavar="PATH", help="Write the conversation to PATH as JSON.")
    @argument("--load", metavar="PATH", help="Replace the conversation with the one in PATH.")
    @argument("--pop", action="store_true", help="Remove the last exchange.")
    @argument("--json", action="store_true", help="Print the conversation as JSON.")
    @argument(
        "--from-notebook",
        nargs="?",
        const="",
        metavar="PATH",
        help="Rebuild the conversation from the answers saved in a notebook (default: this "
        "one), e.g. after a kernel restart.",
    )
    @line_magic
    def flowgpt_history(self, line: str) -> None:
        """Show the notebook's conversation (which cell each exchange came from, models and
        times), or reset, save, load, pop or print it as JSON."""
        args = _parse(self.flowgpt_history, line)
        flags = ("reset", "save", "load", "pop", "json", "from_notebook")
        chosen = [flag for flag in flags if getattr(args, flag) not in (None, False)]
        if len(chosen) > 1:
            raise UsageError(
                "Give one of --reset, --save, --load, --pop, --json and --from-notebook at a "
                f"time, not {' and '.join('--' + flag.replace('_', '-') for flag in chosen)}."
            )
        conversation = self.conversation
        with _usage_errors():
            if args.reset:
                removed = len(conversation)
                conversation.reset()
                print(f"The conversation is empty now ({exchanges(removed)} removed).")
            elif args.save:
                path = conversation.save(args.save)
                print(f"Saved {exchanges(len(conversation))} to {path}.")
            elif args.load:
                loaded = Conversation.load(args.load)
                conversation.replace_with(loaded)
                print(f"Loaded {exchanges(len(conversation))} from {args.load}.")
            elif args.pop:
                removed = conversation.pop()
                left = exchanges(len(conversation))
                print(
                    f"Removed the last exchange; {left} left." if removed else "Nothing to remove."
                )
            elif args.json:
                import json

                print(json.dumps(conversation.to_json(), ensure_ascii=False, indent=1))
            elif args.from_notebook is not None:
                notebook = args.from_notebook or self._namespace.get("__session__")
                if not notebook:
                    raise UsageError(
                        "This kernel was not told which notebook it runs; give its path: "
                        "%flowgpt_history --from-notebook PATH."
                    )
                conversation.replace_with(Conversation.from_notebook(notebook))
                print(f"Rebuilt {exchanges(len(conversation))} from {notebook}.")
            else:
                print(conversation.transcript())
