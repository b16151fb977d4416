"""The IPython magics: settings, and options parsed into a request that the chat asks;
the answer is kept in variables. Everything else is the chat's (``chat.py``)."""

from __future__ import annotations

import contextlib
import keyword
import sys
from collections import ChainMap
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import observe

from .chat import Chat
from .command import KEY_IN_CELL, KEY_LITERAL, build_request, check_each_once, secrets_line
from .conversation import Conversation
from .display import code_of, open_background, open_columns, open_view
from .options import cell_options, say_cache_problems
from .prompt import ErrorLog, ShownImages
from .providers import PROVIDERS
from .record import FORMATS
from .reports import dry_run
from .settings import FlowGptSettings
from .usage import parse, usage_errors


@magics_class
class FlowGptMagics(Magics, FlowGptSettings):
    """``%%flowgpt``, ``%flowgpt_model``, ``%flowgpt_history`` and ``%flowgpt_key``.

    Settings are traitlets (``settings.py``): ``%config FlowGptMagics.temperature = 0.2``
    in a notebook, or ``c.FlowGptMagics.temperature = 0.2`` in ``ipython_config.py``.
    """

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.chat = Chat()
        self.chat.settings = self.settings  # (what a function call's result may hold)
        self.errors = ErrorLog()  # for {Err} and {Err[3]} in prompts
        self.shown = ShownImages()  # for the images of {Out[3]}
        self._cell_id: str | None = None  # the running cell's id, when the frontend says
        self._numbered = False  # the running cell has a number ([18]: its history is kept)
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
            # What cells display goes to the frontend as messages; ipykernel lets us see
            # them (a terminal shows no images inline: nothing to see there).
            if hasattr(shell.display_pub, "register_hook"):
                shell.display_pub.register_hook(self._note_display)

    @observe("cache")
    def _close_cache(self, change: Any) -> None:
        self.chat.use_cache(None)  # (the file is let go at once; the next cell opens its own)

    def _note_cell(self, info: Any) -> None:
        self._cell_id = getattr(info, "cell_id", None)
        self._numbered = bool(getattr(info, "store_history", False))
        if KEY_LITERAL.search(getattr(info, "raw_cell", "") or ""):
            print(KEY_IN_CELL, file=sys.stderr)

    def _note_display(self, message: dict[str, Any]) -> dict[str, Any]:
        """Note the images a cell shows (an inline plot); pass the message on as it is."""
        if self.shell is not None:
            # (The cell that runs: its plots are shown as it ends, and count as its own.)
            # Nothing here may break what the notebook displays.
            with contextlib.suppress(Exception):
                kind = message["msg_type"]
                self.shown.record(self.shell.execution_count - 1, kind, message["content"])
        return message

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
            if hasattr(self.shell.display_pub, "unregister_hook"):
                self.shell.display_pub.unregister_hook(self._note_display)
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
        "-i",
        "--image",
        metavar="PATH",
        action="append",
        default=[],
        help="Send an image file (PNG, JPEG, GIF) with the prompt. Repeatable.",
    )
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
        help="Show the answer as markdown (rendered as it streams), text, code (its code "
        "blocks, highlighted; -o and _flowgpt then hold the code), or json (asked for as a "
        "JSON object; -o and _flowgpt hold its value). Default: FlowGptMagics.answer_format.",
    )
    @argument(
        "--schema",
        metavar="NAME",
        help="Ask for JSON that follows NAME (a pydantic model, a dataclass, a TypedDict or a "
        "JSON-schema dict; or list[NAME]); -o and _flowgpt hold the checked value, an "
        "instance of NAME. An answer that does not follow it is asked again once.",
    )
    @argument(
        "--refresh",
        action="store_true",
        help="Ask again, though the answer cache (FlowGptMagics.cache) holds the answer; "
        "keep the new one there.",
    )
    @argument("--no-cache", action="store_true", help="Neither take from the cache nor keep.")
    @argument(
        "--tools",
        metavar="F,G",
        help="Let the model call the notebook's functions F and G (and the built-in "
        "variables, describe); each call is shown and asked about before it runs. "
        "Default: FlowGptMagics.tools.",
    )
    @argument("--approve", action="store_true", help="Run the calls without asking.")
    @argument(
        "--insert",
        action="store_true",
        help="Put the answer's code (its code blocks; with -f code, its code) into a new cell "
        "below, ready to read and run.",
    )
    @argument(
        "--background",
        action="store_true",
        help="Return at once, and let the answer stream in while other cells run (a notebook "
        "only; its box has a Stop button). Default: FlowGptMagics.background.",
    )
    @argument(
        "--foreground", action="store_true", help="Not in the background, whatever the default."
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
    @argument(
        "--each",
        metavar="NAME",
        help="Ask the cell of every row of NAME (a DataFrame, a Series, a list): {row} and "
        "{row.COLUMN} are the row's; no conversation. _flowgpt (and -o) get the answers as a "
        "Series with the rows' index (a DataFrame for several models; a list for a list).",
    )
    @argument(
        "-j",
        "--jobs",
        metavar="N",
        type=int,
        help="With --each: at most N requests at once (fewer while the server says too "
        "many). Default: FlowGptMagics.concurrency.",
    )
    @argument(
        "--into",
        metavar="COLUMN",
        help="With --each over a DataFrame: also write the answers into its COLUMN.",
    )
    @cell_magic
    def flowgpt(self, line: str, cell: str) -> None:
        """Ask a chat model: the cell body is the prompt; the answer streams in below.

        Each answered cell joins the notebook's conversation, and later cells send the
        conversation as context. A failed or interrupted answer is not recorded. In the
        prompt, {name}, {name.attr}, {In[3]}, {Out[3]}, {Err} (the last error, with its
        traceback) and {Err[3]} are filled in; other braces stay as written, and {{name}}
        is the literal text {name}. An image ({fig}, a PIL image, the plot cell 3 showed
        in {Out[3]}, or -i PATH) goes with the prompt as an image; a DataFrame, an array
        or a long value as a compact summary. The last answer is in _flowgpt. See
        %flowgpt_model and %flowgpt_history.
        """
        args = parse(self.flowgpt, line)
        if args.output is not None and (
            not args.output.isidentifier() or keyword.iskeyword(args.output)
        ):
            raise UsageError(
                f"-o needs a variable name to store the answer in, not {args.output!r}."
            )
        if args.each is not None or args.into is not None or args.jobs is not None:
            with usage_errors():
                self._each(args, cell)
            return
        with usage_errors():
            settings = self.settings()
            namespace = None if args.raw else ChainMap({"Err": self.errors}, self._namespace)
            options = cell_options(self, args)
            schema = options.schema
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
                    cell_number=self._cell_number(),
                    max_cost=args.max_cost,
                    image_files=args.image,
                    shown=self.shown,
                    schema=schema,
                    cache=options.cache,
                    tools=options.tools,
                    approve=options.approve,
                    tool_rounds=self.tool_rounds,
                )
                for model in args.model or [None]
            ]
            check_each_once(args.model, requests)
            if requests[0].redacted:
                print(secrets_line(requests[0].redacted))
            for request in requests:
                if left := self.chat.images_left_out(request):
                    print(
                        f"(The conversation's {left} image{'s' if left > 1 else ''} "
                        f"{'are' if left > 1 else 'is'} left out for {request.model}, which "
                        "takes none; their text goes.)"
                    )
            if args.dry_run:
                print("\n\n".join(dry_run(self.chat, request) for request in requests))
                return
            answer_format, widget = requests[0].format, self._use_widget()
            background = (args.background or self.background) and not args.foreground
            if background and self._checked_background(args, requests, widget):
                return
            if self.chat.background:
                print(
                    f"(The answer of {', '.join(self.chat.background)} still streams in the "
                    "background: this cell's context leaves it out.)"
                )
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
        say_cache_problems(self.chat)
        from .schema import answer_value

        kept = {r.model: answer_value(r.answer, answer_format, schema) for r in records if r.answer}
        if answer_format == "json" and any(kept[r.model] is r.answer for r in records if r.answer):
            print("(The answer is not valid JSON: _flowgpt holds its text.)")
        value = kept if len(requests) > 1 else kept[records[0].model]
        self._namespace["_flowgpt"] = value
        if args.output:
            self._namespace[args.output] = value
        if args.insert:
            self._insert(records[0].answer, answer_format)

    def _each(self, args: Any, cell: str) -> None:
        """The cell asked of every row of ``--each NAME`` (see ``rows.py``)."""
        from .rows import answer_each

        try:
            value = answer_each(self, args, cell)
        finally:
            say_cache_problems(self.chat)
        self._namespace["_flowgpt"] = value
        if args.output:
            self._namespace[args.output] = value

    def _checked_background(self, args: Any, requests: list[Any], widget: bool) -> bool:
        """Send the cell's one request in the background, if it can be; True once sent."""
        if not widget:
            if not args.background:
                return False  # (the default: a terminal answers in the foreground)
            raise UsageError(
                "--background needs a notebook: in terminal IPython nothing can show an "
                "answer once its cell has ended. Run the cell without it."
            )
        if len(requests) > 1 or args.insert:
            what = "several models" if len(requests) > 1 else "--insert"
            raise UsageError(
                f"--background and {what} do not go together: a background answer comes "
                "after its cell has ended. Run the cell in the foreground (--foreground)."
            )
        request = requests[0]
        box = open_background(request.model, request.format, self.footer)
        number = self._cell_number()
        label = "a cell" if number is None else f"cell [{number}]"
        box.stop = self.chat.ask_in_background(request, box.columns[0], label)
        return True

    def _insert(self, answer: str, answer_format: str) -> None:
        """The answer's code into a new cell below (or the next prompt, in a terminal)."""
        code, _ = code_of(answer, whole=answer_format == "code")
        if not code:
            print("(The answer has no code block: no cell was added.)")
            return
        assert self.shell is not None
        self.shell.set_next_input(code, replace=False)

    def _cell_number(self) -> int | None:
        """The running cell's number, as the person sees it ([18]), if it has one."""
        # (While a cell runs, the shell counts the next one already.)
        return self.shell.execution_count - 1 if self.shell and self._numbered else None

    def _use_widget(self) -> bool:
        if self.display_mode != "auto":
            return self.display_mode == "widget"
        return getattr(self.shell, "kernel", None) is not None
