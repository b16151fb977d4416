"""The local model's child process: llama.cpp's server (the ``xllamacpp`` wheel) for one
model, started by ``llama.LlamaServer``. It reads its settings from the first line of its
standard input, serves the model on 127.0.0.1 at a port of its own choosing to requests
that carry its key, tells that port through the pipe it was given, and serves until its
standard input closes (or its parent dies: it asks the system to tell it). xllamacpp is
imported here only."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _die_with_parent(parent: int) -> None:
    """In the child, on Linux: be sent SIGTERM when the parent dies, however it dies (and
    end now if it died before this was asked)."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)


def serve(config: dict[str, Any]) -> Any:
    """The child's server: the model, served on a port of its own choosing, to requests
    that carry the key; returns it (it serves in threads of this process)."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = config["model"]
    if config.get("mmproj"):
        params.mmproj.path = config["mmproj"]
    params.model_alias = [config["name"]]  # (a list: a bare string would be its letters)
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # (the system's choice, taken at once: no other process can have it)
    params.api_keys = [config["key"]]
    params.endpoint_slots = False
    params.cors_origins = ""  # (no web page may call it: no origin is allowed)
    # Each of the answers it writes at once has the whole context (llama.cpp splits it).
    params.n_parallel = config.get("parallel", 1)
    params.n_ctx = config["context_size"] * params.n_parallel
    params.cpuparams.n_threads = config["threads"]
    params.cpuparams_batch.n_threads = config["threads"]
    params.n_gpu_layers = 0
    params.ui = False
    return xlc.Server(params)


def main(report: int, parent: int) -> None:
    """The child: serve the model until standard input closes."""
    _die_with_parent(parent)
    config = json.loads(sys.stdin.readline())
    server = serve(config)
    port = int(server.listening_address.rsplit(":", 1)[1])
    os.write(report, json.dumps({"port": port}).encode() + b"\n")
    os.close(report)
    sys.stdin.read()
    del server
