"""What an answer stream carries: pieces of text, and the events around them.

A piece of the answer's text is a plain ``str``. An answer is nearly all text, thousands of
pieces a second from a fast model, and an object a piece would cost more than the rest of
reading it; every other event is a small typed record, rare beside the text:

- :class:`Reasoning`: a piece of the model's reasoning ("thinking"), apart from the answer;
- :class:`Usage`: the tokens (and maybe the cost) the server counted;
- :class:`Finish`: why the model stopped ("stop", or "length" for an answer cut short);
- :class:`ServedBy`: the model the server says answered, which may not be the one asked;
- :class:`ToolCall`: a function the model asks to call, with its arguments (whole: the
  pieces a stream carries them in are joined before it is made);
- :class:`RetryNotice`: the request failed before any answer, and is about to be tried
  again; :class:`Progress`: what the request waits for before it can go out (a local
  model loading). Neither comes from the server: they are the delivery's.

Match on them: ``case str(): ...``, ``case Reasoning(text=t): ...``.
"""

from __future__ import annotations

from typing import NamedTuple


class Reasoning(NamedTuple):
    """A piece of the model's reasoning: shown apart from the answer, never sent back."""

    text: str


class Usage(NamedTuple):
    """Tokens the server counted for one answer (None: it did not say)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    #: Of the output tokens, those spent reasoning, when the server says.
    reasoning_tokens: int | None = None
    #: What the answer cost, in US dollars, when the server reports it.
    cost: float | None = None


class Finish(NamedTuple):
    """Why the model stopped: ``stop``, ``length`` (its token limit), ``content_filter``..."""

    reason: str


class ServedBy(NamedTuple):
    """The model the server says answered (a server may answer with another than asked)."""

    model: str


class ToolCall(NamedTuple):
    """A function the model asks to call: its id (to answer it by), its name, and its
    arguments as the model wrote them (JSON text, which may not parse)."""

    id: str
    name: str
    arguments: str


class RetryNotice(NamedTuple):
    """The request failed before any answer came, and is about to be tried again."""

    attempt: int  # the retry about to be made, from 1
    retries: int  # how many retries are allowed
    delay: float  # seconds until it
    reason: str  # the failure, one sentence
    status: int | None = None  # the HTTP status it failed with, if any (429: too many)


class Progress(NamedTuple):
    """What happens before the request can be sent, for a person (a local model loading)."""

    text: str


Event = str | Reasoning | Usage | Finish | ServedBy | ToolCall | RetryNotice | Progress
