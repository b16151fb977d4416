"""A local server that speaks FlowGPT's anonymous chat protocol, and OpenAI's chat
completions, for tests, demos and offline work.

    python -m flowgpt_magic.server [--host 127.0.0.1] [--port 0] [--delay 0.03]

FlowGPT's protocol is served at ``/v3/chat-anonymous``: the server checks what a client sends
as strictly as the protocol document describes (signature headers, every body field) and
rejects a bad request with a 400 that says what was wrong. OpenAI's is served under ``/v1``
(``/v1/chat/completions``, streamed or not, and ``/v1/models``), with OpenAI's error shapes.
A good request gets a deterministic answer, clearly labelled as offline, that echoes the
question and the context it came with, streamed one word at a time.

``LocalServer`` runs the same server in a background thread, for tests and notebooks.
The package: ``flowgpt.py`` and ``openai.py`` (the two dialects), ``faults.py`` (the fault
table), ``answers.py`` (the offline answers), ``state.py`` (options and what was seen),
``app.py`` (the application and ``LocalServer``), ``__main__.py`` (the command).
"""

from __future__ import annotations

from .answers import ECHO, answer_pieces, offline_answer
from .app import LocalServer, make_app, start_site
from .faults import FAULTS
from .openai import OPENAI_MODELS, OPENAI_PATH
from .state import PATH, STATE, ReceivedRequest, ServerOptions, ServerState

__all__ = [
    "ECHO",
    "FAULTS",
    "OPENAI_MODELS",
    "OPENAI_PATH",
    "PATH",
    "STATE",
    "LocalServer",
    "ReceivedRequest",
    "ServerOptions",
    "ServerState",
    "answer_pieces",
    "make_app",
    "offline_answer",
    "start_site",
]
