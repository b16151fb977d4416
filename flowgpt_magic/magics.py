"""The IPython magics: settings, and options parsed into a request that the chat asks;
the answer is kept in variables. Everything else is the chat's (``chat.py``)."""

from __future__ import annotations

import keyword
import shlex
from collections import ChainMap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Dict, Enum, Float, Int, TraitError, Unicode, validate

from .chat import Chat
from .command import Settings, build_request
from .conversation import Conversation, exchanges
from .display import code_of, open_view
from .exceptions import AnswerInterrupted, FlowGptError, SecretURL
from .prompt import ErrorLog
from .providers import PROVIDERS, FlowGpt, ProviderEntry, ProviderSettings, resolve_model
from .providers.base import check_temperature
from .providers.http import CONNECT_TIMEOUT, RETRIES, TIMEOUT, Delivery
from .record import FORMATS


@contextmanager
def _usage_errors() -> Iterator[None]:
    """Show our own errors as IPython's one-line UsageError, never as a traceback."""
    try:
        yield
    except AnswerInterrupted:
        raise  # (shown as its own one-line mark)
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
    temperature = Float(
        None,
        allow_none=True,
        help="Sampling temperature, from 0 to 2. None: the provider's own (FlowGPT's "
        "protocol needs one and sends 0.7; an OpenAI-compatible server gets none, as some "
        "models refuse any).",
    ).tag(config=True)
    params = Dict(
        help="The model's parameters every cell sends, e.g. {'max_tokens': 1024, 'top_p': "
        "0.9}; a cell's -p NAME=VALUE adds to them or overrides them.",
    ).tag(config=True)
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
        self.chat = Chat()
        self.errors = ErrorLog()  # for {Err} and {Err[3]} in prompts
        self._cell_id: str | None = None  # the running cell's id, when the frontend says
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
    def _check_temperature(self, proposal: Any) -> float | None:
        if proposal.value is None:
            return None
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

    @property
    def conversation(self) -> Conversation:
        return self.chat.conversation

    def close(self) -> None:
        if self.shell is not None:
            self.shell.events.unregister("post_run_cell", self._remember_error)
            self.shell.events.unregister("pre_run_cell", self._note_cell)
        self.chat.close()

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

    def settings(self) -> Settings:
        """What a cell falls back on, as the settings stand now."""
        return Settings(
            model=self.default_model,
            temperature=self.temperature,
            system=self.system_message,
            params=self.params,
            answer_format=self.answer_format,
            context_turns=self.history_turns,
            context_chars=self.history_chars,
            delivery=Delivery(
                self.timeout, self.first_piece_timeout, self.connect_timeout, self.retries
            ),
            proxy=self.proxy,
            provider_options={
                entry.name: self._settings_of(entry).request_options()
                for entry in PROVIDERS.values()
            },
        )

    # -- %%flowgpt ---------------------------------------------------------------------

    @magic_arguments()
    @argument("-m", "--model", metavar="MODEL", help="Model or alias, for this cell only.")
    @argument(
        "-t", "--temperature", metavar="T", help="Temperature from 0 to 2, for this cell only."
    )
    @argument("-s", "--system", metavar="TEXT", help="System message, for this cell only.")
    @argument(
        "-p",
        "--param",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="A model parameter for this cell, such as -p max_tokens=200 or -p "
        "stop='[\"\\n\\n\"]'; VALUE is read as JSON where it can be. Repeatable. Default: "
        "FlowGptMagics.params.",
    )
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
        with _usage_errors():
            request = build_request(
                cell,
                self.settings(),
                namespace=None if args.raw else ChainMap({"Err": self.errors}, self._namespace),
                model=args.model,
                temperature=args.temperature,
                system=args.system,
                params=args.param,
                no_history=args.no_history,
                reset=args.reset,
                answer_format=args.format,
                cell_id=self._cell_id,
            )
            if args.dry_run:
                print(self.chat.dry_run(request))
                return
            view = open_view(
                self._use_widget(), f"Waiting for {request.model}…", request.format, self.footer
            )
            record = self.chat.ask(request, view)
        kept = code_of(record.answer)[0] if request.format == "code" else record.answer
        self._namespace["_flowgpt"] = kept
        if args.output:
            self._namespace[args.output] = kept

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
            print(self.chat.model_listing(self.settings()))
            return
        with _usage_errors():
            model = resolve_model(args.name).id
        self.default_model = model
        via = f" (alias {args.name!r})" if args.name != model else ""
        print(f"Default model is now {model}{via}.")

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
