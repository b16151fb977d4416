"""Turns a ``%%flowgpt`` cell (its options and body) into a frozen, validated request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from .exceptions import InvalidRequestError
from .providers import resolve_model
from .providers.base import check_temperature


class Defaults(NamedTuple):
    """The notebook's settings a cell falls back on."""

    model: str
    temperature: float
    system: str | None


class ChatRequest(NamedTuple):
    prompt: str
    model: str
    temperature: float
    system: str | None
    use_history: bool
    reset: bool

    @property
    def sends_history(self) -> bool:
        return self.use_history and not self.reset

    @property
    def records(self) -> bool:
        """Whether a completed answer goes into the conversation."""
        return self.use_history

    def messages(self, history: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        """What the provider is sent: system message, context (if any), then the prompt."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        if self.sends_history:
            messages += history
        messages.append({"role": "user", "content": self.prompt})
        return messages


def build_request(
    cell: str,
    defaults: Defaults,
    *,
    model: str | None = None,
    temperature: str | None = None,
    system: str | None = None,
    no_history: bool = False,
    reset: bool = False,
) -> ChatRequest:
    """Validate a cell's options against the notebook's defaults; nothing is sent before this."""
    prompt = cell.strip()
    if not prompt:
        raise InvalidRequestError(
            "The cell has no prompt: write your question in the cell body, below %%flowgpt."
        )
    if no_history and reset:
        raise InvalidRequestError(
            "--no-history and --reset contradict each other: --no-history leaves the "
            "conversation alone, --reset starts a new one with this cell. Choose one."
        )
    return ChatRequest(
        prompt=prompt,
        model=resolve_model(model).id if model else defaults.model,
        temperature=(
            parse_temperature(temperature) if temperature is not None else defaults.temperature
        ),
        system=system if system is not None else defaults.system,
        use_history=not no_history,
        reset=reset,
    )


def parse_temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError(
            f"Temperature must be a number from 0 to 2, not {text!r}."
        ) from None
    return check_temperature(value)
