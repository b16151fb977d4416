"""The few error types a user of flowgpt-magic can see.

Every message is one paragraph that says what went wrong and what to do about it.
All of them derive from :class:`FlowGptError`, so ``except FlowGptError`` catches
everything this package raises on purpose; no aiohttp exception escapes the provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class FlowGptError(Exception):
    """Base class of every error flowgpt-magic raises on purpose."""


class InvalidRequestError(FlowGptError, ValueError):
    """The request cannot be sent as given (bad model, temperature, messages or option)."""


class ModelNotFoundError(InvalidRequestError):
    """A model name that is neither a known model nor an alias."""

    def __init__(self, name: str, models: Iterable[str], aliases: Mapping[str, str]) -> None:
        self.name = name
        known = ", ".join(models)
        alias_text = ", ".join(f"{alias} -> {target}" for alias, target in aliases.items())
        hint = f" Aliases: {alias_text}." if alias_text else ""
        super().__init__(f"Unknown model {name!r}. Known models: {known}.{hint}")


class ConfigurationError(FlowGptError, ValueError):
    """A setting (endpoint URL, proxy, timeout) is malformed."""


class RequestFailedError(FlowGptError):
    """The request was sent, or tried, and did not produce a complete answer.

    ``retryable`` says whether trying again may help (a refused connection, a 503), as
    opposed to a failure that will repeat (a 401, an unresolvable host).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def adding(self, advice: str) -> RequestFailedError:
        """The same failure, its message followed by ``advice`` (which may be "")."""
        if not advice:
            return self
        import copy

        failure = copy.copy(self)
        failure.args = (f"{self} {advice}",)
        return failure


class ConnectionFailedError(RequestFailedError):
    """No connection could be made to the endpoint (refused, unresolvable host, proxy)."""


class HTTPStatusError(RequestFailedError):
    """The server answered with a non-2xx status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body_excerpt: str,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        """``retryable`` None: as the status says (429 and 5xx may pass; others will not)."""
        if retryable is None:
            retryable = status == 429 or status >= 500
        super().__init__(message, retryable=retryable)
        self.status = status
        self.body_excerpt = body_excerpt
        #: Seconds the server asked to wait (its Retry-After header), if it said.
        self.retry_after = retry_after


class ImagesRefusedError(HTTPStatusError):
    """The server refused the request because its model takes no images."""


class ResponseTimeoutError(RequestFailedError):
    """The server went silent for longer than the configured limit."""


class ResponseFormatError(RequestFailedError):
    """The server sent something that is not the protocol's NDJSON stream."""


class ConnectionLostError(RequestFailedError):
    """The connection broke while the answer was streaming."""


class HistoryFileError(FlowGptError, ValueError):
    """A conversation file could not be read, parsed or written."""


def redact_url(url: str) -> str:
    """Return ``url`` with any user name and password replaced by ``***``.

    Proxy URLs carry credentials (``http://user:secret@proxy:3128``); nothing we show may
    contain them.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


class Interrupted(FlowGptError):
    """The user stopped what a cell asked (Ctrl-C or the kernel's stop button).

    IPython shows this as one line instead of a traceback: what had come is already on
    screen above it.
    """

    def _render_traceback_(self) -> list[str]:
        # Plain text: JupyterLab already tints error output, and "■" is in common fonts.
        return [f"■ {self}"]


class AnswerInterrupted(Interrupted):
    """The user stopped an answer; its partial text is on screen."""

    def __init__(self, characters: int) -> None:
        super().__init__(
            f"Interrupted after {characters} characters; the partial answer above was not "
            "added to the conversation."
        )
        self.characters = characters


class RowsInterrupted(Interrupted):
    """The user stopped a run over rows (--each): ``result`` holds the answers that came
    (a ``batch.EachResult``)."""

    def __init__(self, result: Any) -> None:
        self.result = result
        tally = result.tally
        super().__init__(
            f"Stopped after {tally.done:,} of {tally.total:,} answers; "
            "_flowgpt holds those that came."
        )


class SecretURL(str):
    """A URL that may carry credentials: usable as the string it is, shown redacted.

    ``%config FlowGptMagics`` and every other repr show ``http://***@host:port``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_url(str.__str__(self)))  # a plain str: redact_url may return it


class Secret(str):
    """A secret (an API key, a token): usable as the string it is, never shown."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"
