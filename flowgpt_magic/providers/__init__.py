"""The providers the magics can use, and model ids that name one: ``openai:gpt-4o-mini``.

A bare model name keeps its FlowGPT meaning (``gemini``); ``flowgpt:gemini`` says the same.
Adding a provider is one new module (a subclass of ``base.Provider`` that says how its
requests are written and its streams read) plus one line in ``PROVIDERS``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from traitlets.config import Configurable

from ..exceptions import InvalidRequestError
from .base import AsyncResult, Provider
from .events import Event, Finish, Progress, Reasoning, RetryNotice, ServedBy, ToolCall, Usage
from .flowgpt import FlowGpt
from .local import Local, LocalLlama
from .openai import OpenAI, OpenAICompatible

__all__ = [
    "PROVIDERS",
    "AsyncResult",
    "Event",
    "Finish",
    "FlowGpt",
    "Local",
    "LocalLlama",
    "ModelRef",
    "OpenAI",
    "OpenAICompatible",
    "Progress",
    "Provider",
    "ProviderEntry",
    "Reasoning",
    "RetryNotice",
    "ServedBy",
    "ToolCall",
    "Usage",
    "resolve_model",
]


class ProviderSettings(Protocol):
    def request_options(self) -> dict[str, Any]:
        """Keyword arguments for the provider's ``create_async_generator``."""


class ProviderEntry(NamedTuple):
    name: str
    provider: type[Provider]
    description: str
    #: Its own settings for %config (a Configurable with ``request_options()``), or None
    #: when the magics' own settings serve (FlowGPT's endpoint is FlowGptMagics.api_url).
    settings: type[Configurable] | None = None


PROVIDERS = {
    entry.name: entry
    for entry in (
        ProviderEntry("flowgpt", FlowGpt, "FlowGPT's anonymous chat (upstream: not working)"),
        ProviderEntry(
            "openai",
            OpenAICompatible,
            "OpenAI-compatible chat completions: OpenAI, Ollama, vLLM, llama.cpp, LM Studio",
            OpenAI,
        ),
        ProviderEntry(
            "local",
            LocalLlama,
            "a GGUF model on this computer, run by llama.cpp in a process of its own",
            Local,
        ),
    )
}
DEFAULT_PROVIDER = "flowgpt"


class ModelRef(NamedTuple):
    entry: ProviderEntry
    model: str

    @property
    def id(self) -> str:
        """The canonical id: bare for FlowGPT (as before providers existed), else prefixed;
        a provider's name alone for its one model (``local``)."""
        if self.entry.name == DEFAULT_PROVIDER:
            return self.model
        return f"{self.entry.name}:{self.model}" if self.model else self.entry.name


def resolve_model(model_id: str) -> ModelRef:
    """Resolve ``provider:model``, a provider's name alone (its default model: ``local``),
    or a bare FlowGPT name (aliases too) to a provider's model."""
    name, sep, model = model_id.partition(":")
    if not sep:
        name, model = (
            (model_id, "") if model_id.lower() in PROVIDERS else (DEFAULT_PROVIDER, model_id)
        )
    entry = PROVIDERS.get(name.lower())
    if entry is None:
        raise InvalidRequestError(
            f"Unknown provider {name!r} in model {model_id!r}. Providers: "
            f"{', '.join(PROVIDERS)}; write the model as PROVIDER:MODEL, e.g. "
            f"openai:{model or 'gpt-4o-mini'}."
        )
    return ModelRef(entry, entry.provider.get_model(model))
