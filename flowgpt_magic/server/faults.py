"""Faults the local server commits on purpose, so that clients' failures can be tested,
and the streaming of an answer they interrupt (both dialects stream through it)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from aiohttp import web

from .state import STATE, ServerState

#: Faults the server commits on request, so that clients' failures can be tested. The
#: content faults (malformed and after) are FlowGPT's; the others apply to both protocols.
FAULTS = {
    "status-NNN": "answer with HTTP status NNN (a 429 or 503 with Retry-After)",
    "html-NNN": "answer with status NNN and an HTML error page",
    "close": "close the connection before sending any headers",
    "hang": "send nothing at all, until the client gives up",
    "empty": "answer 200 with an empty body",
    "reset": "send three pieces, then reset the connection",
    "stall": "send three pieces, then nothing, until the client gives up",
    "malformed": "send three pieces, then a line that is not JSON",
    "long-line": "send three pieces, then a line longer than 1 MiB",
    "bad-utf8": "send three pieces, then a text event that is not UTF-8",
    "data-not-string": "send three pieces, then a text event whose data is a number",
    "trickle": "send the whole answer one byte at a time",
    "cut": "send three pieces, then end the body without saying the answer is complete",
    "whole": "answer a streamed request with the whole answer as one JSON body (OpenAI's)",
}
FAULT_LINES = {
    "malformed": b"{not json}\n",
    "long-line": b'{"event": "text", "data": "' + b"x" * (1536 * 1024) + b'"}\n',
    "bad-utf8": b'{"event": "text", "data": "\xff\xfe"}\n',
    "data-not-string": b'{"event": "text", "data": 42}\n',
}
_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>{status} Error</title></head>"
    "<body><h1>{status} Error</h1><p>The upstream server failed.</p></body></html>"
)


#: A prompt whose first line is ``/fail NNN`` is answered with HTTP status NNN.
FAIL = "/fail "


def choose_fault(request: web.Request, question: str = "") -> str | None:
    """The fault to commit on this request (counted; call once a request): the one its
    header, its prompt (``/fail NNN``) or the server's options ask for; a 429 when more
    answers than the server's ``capacity`` are streaming already."""
    state = request.app[STATE]
    fault = request.headers.get("x-flowgpt-fault") or request.query.get("fault")
    if fault is None and question.startswith(FAIL):
        fault = f"status-{question[len(FAIL) :].split()[0]}"
    capacity = state.options.capacity
    if fault is None and capacity is not None and state.answering >= capacity:
        fault = "status-429"
    if fault is None and state.options.fault is not None:
        times = state.options.fault_times
        if not times or state.faults_committed < times:
            fault = state.options.fault
    if fault is not None:
        state.note(lambda s: setattr(s, "faults_committed", s.faults_committed + 1))
    return fault


async def early_fault(request: web.Request, fault: str | None) -> web.StreamResponse | None:
    """Commit a fault that comes before the answer starts, if one is asked for."""
    if fault is None:
        return None
    kind, _, number = fault.partition("-")
    if kind in ("status", "html") and number.isdigit():
        status = int(number)
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = f"{request.app[STATE].options.retry_after:g}"
        if kind == "html":
            page = _HTML_PAGE.format(status=status)
            return web.Response(status=status, text=page, content_type="text/html", headers=headers)
        error = {"error": f"Injected fault: status {status}."}
        return web.json_response(error, status=status, headers=headers)
    if fault == "close":
        assert request.transport is not None
        request.transport.close()
        return web.Response()
    if fault == "hang":
        await until_client_leaves(request)
        return web.Response()
    if fault == "empty":
        return web.Response(body=b"", content_type="application/x-ndjson")
    if fault in FAULTS:
        return None  # committed while streaming
    return web.json_response({"error": f"Unknown fault {fault!r}; see FAULTS."}, status=400)


async def until_client_leaves(request: web.Request, cap: float = 300.0) -> None:
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.05)


def reset_connection(request: web.Request) -> None:
    """Close the connection with a TCP reset, as a crashed server or a proxy does."""
    assert request.transport is not None
    sock = request.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.abort()


async def stream_answer(
    request: web.Request,
    content_type: str,
    *,
    first: bytes,
    pieces: list[bytes],
    last: bytes,
    fault: str | None,
) -> web.StreamResponse:
    """Send ``first``, each piece after the configured delay, then ``last``; note the outcome.

    A fault asked for (see FAULTS) interrupts this after the third piece.
    """
    state = request.app[STATE]
    hold = state.options.hold  # (as it was when the answer began)
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    state.note(_one_more)
    try:
        if fault == "trickle":
            for byte in b"".join([first, *pieces, last]):
                await response.write(bytes([byte]))
            pieces, first, last = [], b"", b""
        await response.write(first)
        if state.options.first_delay:
            await asyncio.sleep(state.options.first_delay)
        for index, piece in enumerate(pieces):
            if state.options.delay:
                await asyncio.sleep(state.options.delay)
            if index == 3 and hold is not None:
                while not hold.is_set():  # (the client may leave meanwhile)
                    if request.transport is None or request.transport.is_closing():
                        raise ConnectionResetError
                    await asyncio.sleep(0.01)
            if index == 3 and fault in ("reset", "stall", "cut", *FAULT_LINES):
                if fault == "cut":
                    last = b""
                    break
                if fault == "reset":
                    reset_connection(request)
                    raise ConnectionResetError
                if fault == "stall":
                    await until_client_leaves(request)
                    raise ConnectionResetError
                await response.write(FAULT_LINES[fault])
            await response.write(piece)
        await response.write(last)
        await response.write_eof()
    except ConnectionError:  # the client went away (stop button, break): normal, no traceback
        state.note(lambda s: setattr(s, "disconnects", s.disconnects + 1))
        return response
    except asyncio.CancelledError:
        state.note(lambda s: setattr(s, "disconnects", s.disconnects + 1))
        raise
    finally:
        state.note(lambda s: setattr(s, "answering", s.answering - 1))
    state.note(lambda s: setattr(s, "completed", s.completed + 1))
    return response


def _one_more(state: ServerState) -> None:
    state.answering += 1
    state.most_at_once = max(state.most_at_once, state.answering)
