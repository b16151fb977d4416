"""What a cell's options name in the notebook, resolved before anything is sent: the
schema of ``--schema``, the functions of ``--tools``, and how the cell uses the answer
cache. (The magics parse the options; this finds what they name.)"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from .exceptions import InvalidRequestError

if TYPE_CHECKING:
    from .chat import Chat
    from .command import CacheUse
    from .functions import Tool
    from .schema import Schema


class CellOptions(NamedTuple):
    schema: Schema | None
    cache: CacheUse
    tools: tuple[Tool, ...]
    approve: bool


def cell_options(magics: Any, args: Any) -> CellOptions:
    """The cell's schema, cache use and tools (the cache opened now, if one is set)."""
    schema = None
    if args.schema is not None:
        from .schema import schema_named

        schema = schema_named(args.schema, magics._namespace)
    if args.refresh and args.no_cache:
        raise InvalidRequestError(
            "--refresh keeps the new answer in the cache; --no-cache does not."
        )
    magics.chat.use_cache(magics.cache)
    cache: CacheUse = "refresh" if args.refresh else "off" if args.no_cache else "use"
    names = args.tools.split(",") if args.tools is not None else list(magics.tools)
    tools: tuple[Tool, ...] = ()
    if names:
        from .functions import tools_named

        tools = tools_named(names, magics._namespace)
        # A function runs in the cell that asked; a background answer outlives it.
        background = getattr(args, "background", False) or (
            magics.background and not getattr(args, "foreground", False)
        )
        if background and args.tools is not None:
            raise InvalidRequestError(
                "--tools and --background do not go together: a function runs in the cell "
                "that asked, and a background answer comes after it has ended. Run the cell "
                "in the foreground (--foreground)."
            )
        if background:
            tools = ()  # (FlowGptMagics.tools are offered in the foreground only)
    return CellOptions(schema, cache, tools, args.approve or magics.approve_tools)


def say_cache_problems(chat: Chat) -> None:
    """Say why answers could not be kept in the cache, once each."""
    problems, chat.cache_problems[:] = set(chat.cache_problems), []
    for problem in problems:
        print(f"(The answer was not kept in the cache: {problem})", file=sys.stderr)
