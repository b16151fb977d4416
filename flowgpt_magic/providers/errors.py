"""aiohttp's failures and error responses, as one clear sentence of the package's own.

Every message says what went wrong and what to do, names the host and never a credential.
aiohttp is imported only inside the functions: they run once a request has been made.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..exceptions import (
    ConnectionFailedError,
    ConnectionLostError,
    HTTPStatusError,
    ImagesRefusedError,
    RequestFailedError,
    ResponseTimeoutError,
    redact_url,
)

if TYPE_CHECKING:
    import aiohttp

#: How much of an error body we read: enough for any error message, bounded for HTML pages.
MAX_ERROR_BODY_BYTES = 64 * 1024


def request_failures() -> tuple[type[Exception], ...]:
    """What a request may raise that :func:`translate_error` turns into our own errors."""
    import aiohttp

    return (aiohttp.ClientError, TimeoutError)


def host_of(url: str) -> str:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.hostname}:{parts.port or default_port}"


def translate_error(
    error: BaseException,
    url: str,
    proxy: str | None,
    hint: str,
    timeout: aiohttp.ClientTimeout,
    *,
    streaming: bool = False,
    silence: float | None = None,
    started: bool = False,
    label: str = "",
) -> RequestFailedError:
    """One clear sentence for an aiohttp or timeout failure, with secrets redacted.

    ``hint`` says how to change the endpoint; ``streaming`` whether the answer had begun
    (the headers had arrived), ``started`` whether text had, and ``silence`` how long the
    server was allowed to stay silent; ``label`` names the server (else its host).
    """
    import aiohttp

    host = label or host_of(url)
    if isinstance(error, aiohttp.ClientProxyConnectionError) or (
        proxy and isinstance(error, aiohttp.ClientHttpProxyError)
    ):
        return ConnectionFailedError(
            f"Could not reach {host} through the proxy {redact_url(proxy or '')}: "
            f"{_reason(error)}. Check the proxy address and credentials."
        )
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return ConnectionFailedError(
            f"Could not connect to {host}: the host name could not be resolved. Check the "
            f"endpoint URL ({hint}) and your network."
        )
    if isinstance(error, aiohttp.ClientConnectorError):
        return ConnectionFailedError(
            f"Could not connect to {host}: {_reason(error)}. Check that the server is running "
            f"and that the endpoint URL ({hint}) is right.",
            retryable=True,
        )
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return ConnectionFailedError(
            f"Connecting to {host} took longer than {timeout.connect:g} s. Check that the "
            "server is reachable, or raise the connect timeout.",
            retryable=True,
        )
    if isinstance(error, TimeoutError):
        when = "in the middle of the answer" if started else "before the first piece"
        setting = "timeout" if started else "first_piece_timeout"
        return ResponseTimeoutError(
            f"{_capital(host)} sent no text for {silence:g} s {when}, so the request was "
            f"abandoned. The server may be overloaded; try again, or raise the {setting}."
        )
    if isinstance(error, aiohttp.InvalidURL):
        return ConnectionFailedError(
            f"The endpoint URL {redact_url(url)!r} is not valid: {_reason(error)}."
        )
    if streaming:
        return ConnectionLostError(
            f"The connection to {host} broke while the answer was streaming; what had "
            "arrived is kept. Try again."
        )
    return ConnectionLostError(
        f"{_capital(host)} closed the connection before answering; the server may have "
        "crashed or restarted. Try again.",
        retryable=True,
    )


def _capital(name: str) -> str:
    """A server's name at the start of a sentence ("The local model X", "127.0.0.1:80")."""
    return name[:1].upper() + name[1:]


def _reason(error: BaseException) -> str:
    os_error = getattr(error, "os_error", None)
    if isinstance(os_error, OSError):
        # asyncio's strerror is "Connect call failed (...)"; the errno says why, plainly.
        if os_error.errno:
            return os.strerror(os_error.errno).lower()
        if os_error.strerror:
            return os_error.strerror.lower()
    text = str(error) or type(error).__name__
    return redact_url(text) if "://" in text else text


async def status_error(
    response: aiohttp.ClientResponse, url: str, advice: Mapping[int, str], label: str = ""
) -> HTTPStatusError:
    """The error for a non-2xx response: its status, the server's own message, what to do."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY_BYTES:
        try:
            chunk = await response.content.read(MAX_ERROR_BODY_BYTES - size)
        except Exception:  # a broken error body must not hide the status itself
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    excerpt = error_excerpt(b"".join(chunks), response.content_type)
    status = response.status
    what_to_do = advice.get(status) or (
        "The server failed; try again later." if status >= 500 else "Check the request."
    )
    # Some servers refuse a key with a 400 or a 500 (LiteLLM's proxy: "No connected db."):
    # what their message says is what counts, and a refused key is not tried again.
    refused = status in (400, 500) and bool(_REFUSED_KEY.search(excerpt))
    if refused:
        what_to_do = advice.get(401, what_to_do)
    elif status in (400, 500) and _REFUSED_IMAGE.search(excerpt):  # (llama.cpp: a 500)
        refused, what_to_do = True, NO_IMAGES
        excerpt = excerpt.split(" - hint:")[0]  # (llama.cpp's hint says what ours says)
    detail = f": {excerpt.rstrip('.')}" if excerpt else ""
    kind = ImagesRefusedError if what_to_do == NO_IMAGES else HTTPStatusError
    return kind(
        f"{_capital(label) or host_of(url)} answered {status} {response.reason or ''}".rstrip()
        + f"{detail}. {what_to_do}",
        status=status,
        body_excerpt=excerpt,
        retry_after=_retry_after(response.headers.get("Retry-After")),
        retryable=False if refused else None,
    )


#: What a server's error message says when it refused the credentials.
_REFUSED_KEY = re.compile(
    r"api[ _-]?key|access token|bearer|\bauth(entication|orization|orized)?\b|credential"
    r"|unauthori[sz]ed|virtual key|no connected db",
    re.IGNORECASE,
)


#: What a server says when the model takes no images; what to do then.
_REFUSED_IMAGE = re.compile(r"image|multimodal|mmproj|vision", re.IGNORECASE)
NO_IMAGES = (
    "This model takes no images: ask one that sees them (a vision model; llama.cpp needs "
    "its --mmproj file too), or leave the image out. Later cells to this model leave the "
    "conversation's images out."
)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # (rarely needed, and slow to import: not at load)

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_excerpt(body: bytes, content_type: str, limit: int = 200) -> str:
    """A short, single-line summary of an error body: its JSON message, or its text."""
    text = body.decode("utf-8", "replace").strip()
    if "json" in content_type or text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            text = json_error_message(data) or text
    if "html" in content_type or text.lstrip().lower().startswith(("<!doctype", "<html")):
        text = "an HTML page" + (f" titled {title!r}" if (title := _html_title(text)) else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_error_message(data: Any) -> str | None:
    """The message of ``{"error": "..."}``, ``{"error": {"message": "..."}}`` and the like."""
    if isinstance(data, dict):
        for key in ("error", "message", "detail"):
            value = data.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict):
                return json_error_message(value)
    return None


def _html_title(html: str) -> str:
    lower = html.lower()
    start, end = lower.find("<title>"), lower.find("</title>")
    return html[start + 7 : end].strip() if 0 <= start < end else ""
