"""The line magics: ``%flowgpt_model`` (the default model, and the models there are),
``%flowgpt_history`` (the conversation), ``%flowgpt_usage`` (what it used and cost),
``%flowgpt_cache`` (the answers kept) and ``%flowgpt_key`` (keys that never touch a cell).
(``%%flowgpt`` and the settings are in ``magics.py``; what both read lines and show errors
with, in ``usage.py``.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .conversation import Conversation, exchanges
from .providers import resolve_model
from .reports import cache_report, model_listing
from .usage import parse, usage_errors

if TYPE_CHECKING:
    from .magics import FlowGptMagics


@magics_class
class LineMagics(Magics):
    """``%flowgpt_model``, ``%flowgpt_history``, ``%flowgpt_usage`` and ``%flowgpt_key``,
    for ``main`` (the cell magic's instance: the settings, the chat)."""

    def __init__(self, shell: Any, main: FlowGptMagics) -> None:
        super().__init__(shell=shell)
        self.main = main

    # -- %flowgpt_model ----------------------------------------------------------------

    @magic_arguments()
    @argument("name", nargs="?", help="Model name or alias to make the notebook's default.")
    @line_magic
    def flowgpt_model(self, line: str) -> None:
        """Show the default model and every model with its aliases, or set the default."""
        args = parse(self.flowgpt_model, line)
        if args.name is None:
            print(model_listing(self.main.chat, self.main.settings()))
            return
        with usage_errors():
            model = resolve_model(args.name).id
        self.main.default_model = model
        via = f" (alias {args.name!r})" if args.name != model else ""
        print(f"Default model is now {model}{via}.")

    # -- %flowgpt_cache -----------------------------------------------------------------

    @magic_arguments()
    @argument("--clear", action="store_true", help="Remove every answer kept.")
    @argument(
        "--prune", metavar="DAYS", type=float, help="Remove the answers unused for DAYS days."
    )
    @line_magic
    def flowgpt_cache(self, line: str) -> None:
        """The answer cache (FlowGptMagics.cache): its file, its answers, its size and what
        it saved; --clear, or --prune DAYS."""
        args = parse(self.flowgpt_cache, line)
        if args.prune is not None and not args.prune >= 0:
            raise UsageError(f"--prune needs a number of days, 0 or more, not {args.prune}.")
        with usage_errors():
            cache = self.main.chat.use_cache(self.main.cache)
            if cache is None:
                print(
                    "The answer cache is off. %config FlowGptMagics.cache = 'answers.sqlite' "
                    "keeps answers in that file (made on first use), for every kernel that "
                    "sets it: a cell asked again the same way is answered from it, for nothing."
                )
                return
            if args.clear or args.prune is not None:
                removed = cache.clear() if args.clear else cache.prune(args.prune)
                print(f"Removed {removed:,} answer{'s' if removed != 1 else ''} from {cache.path}.")
            print(cache_report(cache.stats()))

    # -- %flowgpt_usage -----------------------------------------------------------------

    @magic_arguments()
    @argument("--reset", action="store_true", help="Start counting again.")
    @line_magic
    def flowgpt_usage(self, line: str) -> None:
        """This notebook's requests, tokens in and out, and their cost, by model, and in
        all (since the extension loaded, or --reset)."""
        args = parse(self.flowgpt_usage, line)
        if args.reset:
            self.main.chat.ledger.reset()
            print("Usage is counted from zero again.")
            return
        print(self.main.chat.ledger.table())

    # -- %flowgpt_key -------------------------------------------------------------------

    @magic_arguments()
    @argument("provider", nargs="?", default="openai", help="Whose key (default: openai).")
    @argument("--forget", action="store_true", help="Forget the key entered here.")
    @line_magic
    def flowgpt_key(self, line: str) -> None:
        """Enter a provider's API key without typing it into a cell: it is asked for as a
        password and kept in this kernel only, never in the notebook, its outputs or the
        saved history. --forget forgets it (the environment's key is used again)."""
        args = parse(self.flowgpt_key, line)
        keyed = {n: s for n, s in self.main.provider_settings.items() if s.has_trait("api_key")}
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
        args = parse(self.flowgpt_history, line)
        flags = ("reset", "save", "load", "pop", "json", "from_notebook")
        chosen = [flag for flag in flags if getattr(args, flag) not in (None, False)]
        if len(chosen) > 1:
            raise UsageError(
                "Give one of --reset, --save, --load, --pop, --json and --from-notebook at a "
                f"time, not {' and '.join('--' + flag.replace('_', '-') for flag in chosen)}."
            )
        conversation = self.main.conversation
        with usage_errors():
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

                print(json.dumps(conversation.to_json(False), ensure_ascii=False, indent=1))
            elif args.from_notebook is not None:
                notebook = args.from_notebook or self.main._namespace.get("__session__")
                if not notebook:
                    raise UsageError(
                        "This kernel was not told which notebook it runs; give its path: "
                        "%flowgpt_history --from-notebook PATH."
                    )
                conversation.replace_with(Conversation.from_notebook(notebook))
                print(f"Rebuilt {exchanges(len(conversation))} from {notebook}.")
                lost = [i for record in conversation for i in record.images if i.missing]
                if lost:
                    print(
                        f"({len(lost)} of their images, from {', '.join(i.source for i in lost)}"
                        ", are no longer in the notebook's outputs: those exchanges go on "
                        "without them.)"
                    )
            else:
                print(conversation.transcript())
