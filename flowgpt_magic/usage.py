"""What every magic shares: a line of options read as a shell would, and our errors shown
as IPython's one-paragraph UsageError, wrapped between words."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError

from .exceptions import FlowGptError, Interrupted

#: Error lines are wrapped at this many characters, between words: JupyterLab's output
#: area breaks a line too long for it anywhere, even in the middle of a word.
ERROR_WIDTH = 88


@contextmanager
def usage_errors() -> Iterator[None]:
    """Show our own errors as IPython's UsageError (one paragraph, never a traceback),
    wrapped between words."""
    try:
        yield
    except Interrupted:
        raise  # (shown as its own one-line mark)
    except (FlowGptError, UsageError) as error:
        raise UsageError(wrapped(str(error))) from None


def wrapped(message: str) -> str:
    """``message`` in lines of at most ERROR_WIDTH characters (the first after IPython's
    "UsageError: "), broken between words only."""
    import textwrap

    lead = " " * len("UsageError: ")
    lines = textwrap.wrap(
        message, ERROR_WIDTH, initial_indent=lead, break_long_words=False, break_on_hyphens=False
    )
    return "\n".join(lines)[len(lead) :] if lines else message


def parse(magic: Any, line: str) -> Any:
    """Parse a magic's options like a shell would, so that -s "two words" loses its quotes.

    (``magic_arguments.parse_argstring`` splits non-POSIX style and keeps the quotes.)
    """
    try:
        argv = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"Cannot read the options {line!r}: {error}.") from None
    return magic.parser.parse_args(argv)
