"""Every fault gives a clear answer, nothing is lost: retries, limits, and one test per row of
docs/errors.md, against the local server's injected faults."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic import (
    ConnectionFailedError,
    ConnectionLostError,
    FlowGpt,
    FlowGptError,
    HTTPStatusError,
    ResponseTimeoutError,
)
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.providers import AsyncResult, RetryNotice
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer

USER = [{"role": "user", "content": "Hello"}]
ERRORS_DOC = Path(__file__).parent.parent / "docs" / "errors.md"


async def collect(
    result: AsyncIterator[str], pieces: list[str], notices: list[RetryNotice] | None = None
) -> None:
    """The answer's text into ``pieces``; with ``notices``, its retry notices there too."""
    if notices is None:
        async for piece in result:
            pieces.append(piece)
        return
    assert isinstance(result, AsyncResult)
    async for event in result.events():
        if isinstance(event, RetryNotice):
            notices.append(event)
        elif isinstance(event, str):
            pieces.append(event)


# -- retries ------------------------------------------------------------------------------


async def test_a_503_is_retried_after_its_retry_after_and_then_answers(
    flowgpt_server: LocalServer,
) -> None:
    options = flowgpt_server.state.options
    options.fault, options.fault_times, options.retry_after = "status-503", 2, 0.05
    notices: list[RetryNotice] = []
    pieces: list[str] = []
    await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER), pieces, notices)
    assert "".join(pieces).startswith("[Offline answer")
    assert [(n.attempt, n.retries, n.delay) for n in notices] == [(1, 2, 0.05), (2, 2, 0.05)]
    assert "answered 503 Service Unavailable" in notices[0].reason
    assert len(flowgpt_server.state.requests) == 3


async def test_retry_after_is_capped(
    flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flowgpt_magic.providers.http.MAX_RETRY_WAIT", 0.1)
    options = flowgpt_server.state.options
    options.fault, options.fault_times, options.retry_after = "status-429", 1, 3600
    notices: list[RetryNotice] = []
    await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER), [], notices)
    assert [n.delay for n in notices] == [0.1]


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried(flowgpt_server: LocalServer, status: int) -> None:
    flowgpt_server.state.options.fault = f"status-{status}"
    notices: list[RetryNotice] = []
    with pytest.raises(HTTPStatusError):
        await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER), [], notices)
    assert notices == [] and len(flowgpt_server.state.requests) == 1


async def test_refused_connections_are_retried_after_growing_jittered_pauses() -> None:
    with LocalServer() as gone:
        url = gone.url
    notices: list[RetryNotice] = []
    with pytest.raises(ConnectionFailedError, match="connection refused"):
        await collect(
            FlowGpt.create_async_generator("gpt-3.5-turbo", USER, api_url=url),
            [],
            notices,
        )
    first, second = (n.delay for n in notices)
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0


async def test_nothing_is_retried_once_text_has_arrived(flowgpt_server: LocalServer) -> None:
    flowgpt_server.state.options.fault = "reset"
    notices: list[RetryNotice] = []
    pieces: list[str] = []
    with pytest.raises(ConnectionLostError, match="broke while the answer was streaming"):
        await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER), pieces, notices)
    assert len(pieces) == 3 and notices == [] and len(flowgpt_server.state.requests) == 1


async def test_waiting_for_the_first_piece_and_between_pieces_are_separate_limits(
    flowgpt_server: LocalServer,
) -> None:
    flowgpt_server.state.options.fault = "hang"
    with pytest.raises(ResponseTimeoutError, match=r"no text for 0\.3 s before the first piece"):
        await collect(
            FlowGpt.create_async_generator(
                "gpt-3.5-turbo", USER, first_piece_timeout=0.3, timeout=30
            ),
            [],
        )
    flowgpt_server.state.options.fault = "stall"
    pieces: list[str] = []
    with pytest.raises(ResponseTimeoutError, match=r"no text for 0\.3 s in the middle"):
        await collect(
            FlowGpt.create_async_generator(
                "gpt-3.5-turbo", USER, first_piece_timeout=30, timeout=0.3
            ),
            pieces,
        )
    assert len(pieces) == 3


# -- docs/errors.md: one test a row -------------------------------------------------------

# fault: (what the user reads, pieces left on screen, how many requests were made)
ROWS: dict[str, tuple[str, int, int]] = {
    "status-400": (
        "answered 400 Bad Request: Injected fault: status 400. The server rejected",
        0,
        1,
    ),
    "status-401": ("answered 401 Unauthorized", 0, 1),
    "status-403": ("answered 403 Forbidden", 0, 1),
    "status-404": ("answered 404 Not Found: Injected fault: status 404. Check the endpoint", 0, 1),
    "status-429": ("answered 429 Too Many Requests", 0, 3),
    "status-500": ("answered 500 Internal Server Error", 0, 3),
    "status-502": ("answered 502 Bad Gateway", 0, 3),
    "status-503": ("answered 503 Service Unavailable", 0, 3),
    "html-502": ("answered 502 Bad Gateway: an HTML page titled '502 Error'", 0, 3),
    # (sent again at once on a new connection, as a kept-alive one the server had closed
    # would be; then retried twice)
    "close": ("closed the connection before answering", 0, 4),
    "reset": ("broke while the answer was streaming; what had arrived is kept", 3, 1),
    "hang": ("sent no text for 0.5 s before the first piece", 0, 1),
    "stall": ("sent no text for 0.5 s in the middle of the answer", 3, 1),
    "malformed": ("sent a line that is not UTF-8 JSON ('{not json}')", 3, 1),
    "long-line": ("", -1, 1),  # accepted: lines up to 16 MiB are fine
    "bad-utf8": ("sent a line that is not UTF-8 JSON", 3, 1),
    "data-not-string": ("text event whose data is int, not a string", 3, 1),
    "empty": ("ended the answer without any text; nothing was added", 0, 1),
    "trickle": ("", -1, 1),  # one byte at a time: the whole answer arrives
    # OpenAI's dialect only (FlowGPT's stream has no end to leave out, nor a whole answer):
    "cut": ("ended without saying the answer was complete", 3, 1),
    "whole": ("", -1, 1),  # one JSON body, read as the answer
}
OPENAI_ONLY = ("cut", "whole")


@pytest.fixture
def quick(
    magics: FlowGptMagics, flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> FlowGptMagics:
    """Short limits and retry pauses, so that every row runs in well under a second."""
    magics.timeout = magics.first_piece_timeout = 0.5
    flowgpt_server.state.options.retry_after = 0.01
    monkeypatch.setattr("flowgpt_magic.providers.http.RETRY_BACKOFF", 0.01)
    return magics


@pytest.mark.parametrize("fault", ROWS)
def test_each_fault_row(
    shell: InteractiveShell,
    quick: FlowGptMagics,
    flowgpt_server: LocalServer,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    words, pieces_kept, requests = ROWS[fault]
    if fault in OPENAI_ONLY:
        base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
        shell.run_line_magic("config", f"OpenAI.base_url = {base!r}")
        shell.run_line_magic("flowgpt_model", "openai:gpt-4o")
    shell.run_cell("%%flowgpt\nFirst, a good exchange")
    before = list(quick.conversation)
    flowgpt_server.state.options.fault = fault
    capsys.readouterr()

    error = shell.run_cell("%%flowgpt\nThis one meets the fault").error_in_exec

    out, err = capsys.readouterr()
    assert len(flowgpt_server.state.requests) == 1 + requests
    if pieces_kept < 0:  # the fault is survived: a normal answer
        assert error is None and len(quick.conversation) == len(before) + 1
        return
    assert isinstance(error, UsageError)
    assert words in said(error)
    assert "Traceback" not in out + err and "aiohttp" not in said(error)
    assert list(quick.conversation) == before  # a failed exchange adds nothing
    shown = out.split("\n")[0] if pieces_kept else ""
    assert len(re.findall(r"\S+\s*", shown)) == pieces_kept  # what arrived stays on screen


def test_the_magic_shows_that_it_is_retrying(
    shell: InteractiveShell,
    quick: FlowGptMagics,
    flowgpt_server: LocalServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = flowgpt_server.state.options
    options.fault, options.fault_times = "status-503", 1
    assert shell.run_cell("%%flowgpt\nAfter one retry").error_in_exec is None
    err = capsys.readouterr().err
    assert "answered 503 Service Unavailable" in err
    assert "Trying again in 0.0 s (1 of 2)." in err  # Retry-After 0.01 s


def test_unreachable_hosts_and_bad_proxies_are_rows_too(
    shell: InteractiveShell, quick: FlowGptMagics
) -> None:
    with LocalServer() as gone:
        closed = gone.url
    quick.retries = 0
    quick.api_url = closed
    assert "connection refused" in said(shell.run_cell("%%flowgpt\nx").error_in_exec)
    quick.api_url = f"http://flowgpt.invalid{PATH}"
    assert "could not be resolved" in said(shell.run_cell("%%flowgpt\nx").error_in_exec)
    quick.proxy = closed.removesuffix(PATH).replace("//", "//user:secret@")
    error = said(shell.run_cell("%%flowgpt\nx").error_in_exec)
    assert "through the proxy http://***@127.0.0.1:" in error and "secret" not in error
    assert len(quick.conversation) == 0


def test_the_errors_table_documents_exactly_the_tested_faults() -> None:
    documented = re.findall(r"^\| `([a-z0-9-]+)`", ERRORS_DOC.read_text(), re.MULTILINE)
    extra = {"connection refused", "unresolvable host", "bad proxy", "interrupt"}
    assert set(documented) == set(ROWS) | {name.replace(" ", "-") for name in extra}


def test_unknown_faults_are_refused_by_the_server(flowgpt_server: LocalServer) -> None:
    flowgpt_server.state.options.fault = "gremlins"
    import asyncio

    async def go() -> None:
        await collect(FlowGpt.create_async_generator("gpt-3.5-turbo", USER), [])

    with pytest.raises(FlowGptError, match="Unknown fault 'gremlins'"):
        asyncio.run(go())
