"""The IPython magics: settings, and options parsed into a request that the chat asks;
the answer is kept in variables. Everything else is the chat's (``chat.py``)."""

from __future__ import annotations

import keyword
import re
import shlex
import sys
from collections import ChainMap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .chat import Chat
from .command import build_request
from .conversation import Conversation, exchanges
from .display import code_of, open_columns, open_view
from .exceptions import AnswerInterrupted, FlowGptError
from .prompt import ErrorLog
from .providers import PROVIDERS, resolve_model
from .record import FORMATS
from .settings import FlowGptSettings

#: A key typed into a cell: api_key="...", os.environ["..._API_KEY"] = "...", %env, sk-...
_KEY_LITERAL = re.compile(
    r"""api_key\s*=\s*[rub]?["'][^"'\s]{8,}["']"""
    r"""|API_KEY["']\s*\]\s*=\s*[rub]?["'][^"'\s]{8,}"""
    r"""|%env\s+\w*API_KEY[=\s]\s*\S{8,}"""
    r"""|\bsk-[A-Za-z0-9_-]{20,}"""
)
KEY_IN_CELL = (
    "■ This cell holds an API key, which the notebook keeps when it is saved. Enter keys "
    "with %flowgpt_key instead (asked for as a password, kept in this kernel only), or "
    "set OPENAI_API_KEY before starting Jupyter."
)


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
class FlowGptMagics(Magics, FlowGptSettings):
    """``%%flowgpt``, ``%flowgpt_model``, ``%flowgpt_history`` and ``%flowgpt_key``.

    Settings are traitlets (``settings.py``): ``%config FlowGptMagics.temperature = 0.2``
    in a notebook, or ``c.FlowGptMagics.temperature = 0.2`` in ``ipython_config.py``.
    """

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

    def _note_cell(self, info: Any) -> None:
        self._cell_id = getattr(info, "cell_id", None)
        if _KEY_LITERAL.search(getattr(info, "raw_cell", "") or ""):
            print(KEY_IN_CELL, file=sys.stderr)

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
        for settings in self.provider_settings.values():
            if hasattr(settings, "close"):
                settings.close()  # (the local model's server)

    @property
    def _namespace(self) -> dict[str, Any]:
        """The notebook's variables (a magic only ever runs inside a shell)."""
        assert self.shell is not None
        namespace: dict[str, Any] = self.shell.user_ns
        return namespace

    # -- %%flowgpt ---------------------------------------------------------------------

    @magic_arguments()
    @argument(
        "-m",
        "--model",
        metavar="MODEL",
        action="append",
        help="Model or alias, for this cell only. Given more than once, every model is asked "
        "at once, the answers side by side; the conversation goes on with the first's.",
    )
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
    @argument(
        "--max-cost",
        metavar="USD",
        help="The most this cell may spend, in US dollars: a prompt that would cost more "
        "alone is not sent; the answer's max_tokens is what the rest pays for. Needs the "
        "model's price (FlowGptMagics.prices). Default: FlowGptMagics.max_cost.",
    )
    @argument(
        "-o",
        "--output",
        metavar="NAME",
        help="Store the answer in the variable NAME (several models: a dict, model to answer).",
    )
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
            settings = self.settings()
            namespace = None if args.raw else ChainMap({"Err": self.errors}, self._namespace)
            requests = [
                build_request(
                    cell,
                    settings,
                    namespace=namespace,
                    model=model,
                    temperature=args.temperature,
                    system=args.system,
                    params=args.param,
                    no_history=args.no_history,
                    reset=args.reset,
                    answer_format=args.format,
                    cell_id=self._cell_id,
                    max_cost=args.max_cost,
                )
                for model in dict.fromkeys(args.model or [None])  # (each model once)
            ]
            if args.dry_run:
                print("\n\n".join(self.chat.dry_run(request) for request in requests))
                return
            answer_format, widget = requests[0].format, self._use_widget()
            if len(requests) == 1:
                view = open_view(
                    widget, f"Waiting for {requests[0].model}…", answer_format, self.footer
                )
                records = [self.chat.ask(requests[0], view)]
            else:
                views = open_columns(
                    widget, [r.model for r in requests], answer_format, self.footer
                )
                records = self.chat.ask_all(requests, views)
        kept = {
            record.model: code_of(record.answer)[0] if answer_format == "code" else record.answer
            for record in records
            if record.answer
        }
        value = kept if len(requests) > 1 else kept[records[0].model]
        self._namespace["_flowgpt"] = value
        if args.output:
            self._namespace[args.output] = value

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

    # -- %flowgpt_usage -----------------------------------------------------------------

    @magic_arguments()
    @argument("--reset", action="store_true", help="Start counting again.")
    @line_magic
    def flowgpt_usage(self, line: str) -> None:
        """This notebook's requests, tokens in and out, and their cost, by model, and in
        all (since the extension loaded, or --reset)."""
        args = _parse(self.flowgpt_usage, line)
        if args.reset:
            self.chat.ledger.reset()
            print("Usage is counted from zero again.")
            return
        print(self.chat.ledger.table())

    # -- %flowgpt_key -------------------------------------------------------------------

    @magic_arguments()
    @argument("provider", nargs="?", default="openai", help="Whose key (default: openai).")
    @argument("--forget", action="store_true", help="Forget the key entered here.")
    @line_magic
    def flowgpt_key(self, line: str) -> None:
        """Enter a provider's API key without typing it into a cell: it is asked for as a
        password and kept in this kernel only, never in the notebook, its outputs or the
        saved history. --forget forgets it (the environment's key is used again)."""
        args = _parse(self.flowgpt_key, line)
        keyed = {n: s for n, s in self.provider_settings.items() if s.has_trait("api_key")}
        settings = keyed.get(args.provider)
        if settings is None:
            raise UsageError(
                f"{args.provider!r} takes no API key; {', '.join(keyed)} does: "
                f"%flowgpt_key {next(iter(keyed))}."
            )
        if args.forget:
            settings.api_key = None
            print(f"Forgot the {args.provider} API key entered here.")
            return
        import getpass

        from IPython.core.error import StdinNotImplementedError

        try:
            key = getpass.getpass(f"{args.provider} API key (not shown, not saved): ").strip()
        except StdinNotImplementedError:
            raise UsageError(
                "This frontend cannot ask for a password. Set OPENAI_API_KEY in the "
                "environment before starting Jupyter instead."
            ) from None
        if not key:
            raise UsageError("No key was entered; nothing changed.")
        settings.api_key = key
        print(f"The {args.provider} API key is set for this kernel; it is not saved anywhere.")

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
