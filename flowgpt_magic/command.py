"""A ``%%flowgpt`` cell (its options and body) and the notebook's settings, made into one
frozen, checked request: everything needed to send it. Nothing is sent before this."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .attachments import Picture, picture_of_file
from .exceptions import InvalidRequestError
from .ledger import Price
from .prompt import Prompt, environment_secrets, expand, redact
from .providers import ModelRef, ProviderEntry, resolve_model
from .providers.checks import check_temperature
from .providers.http import Delivery
from .record import Format, prompt_content

if TYPE_CHECKING:
    from .functions import Tool
    from .schema import Schema

CacheUse = Literal["use", "refresh", "off"]

#: A key typed into a cell: api_key="...", os.environ["..._API_KEY"] = "...", %env, sk-...
KEY_LITERAL = re.compile(
    r"""api_key\s*=\s*[rub]?["'][^"'\s]{8,}["']"""
    r"""|API_KEY["']\s*\]\s*=\s*[rub]?["'][^"'\s]{8,}"""
    r"""|%env\s+\w*API_KEY[=\s]\s*\S{8,}"""
    r"""|\bsk-[A-Za-z0-9_-]{20,}"""
)
KEY_IN_CELL = (
    "■ This cell holds an API key, which the notebook keeps when it is saved. Enter keys "
    "with %flowgpt_key instead (asked for as a password, kept in this kernel only), or "
    "set OPENAI_API_KEY before starting Jupyter."
)


class Settings(NamedTuple):
    """The notebook's settings a cell falls back on."""

    model: str
    temperature: float | None
    system: str | None
    answer_format: Format
    #: The model's parameters every cell sends (max_tokens...), beside its own.
    params: Mapping[str, Any] = {}
    #: Send at most this many recent exchanges, or characters of them (None: no limit).
    context_turns: int | None = None
    context_chars: int | None = None
    #: Timeouts and retries.
    delivery: Delivery = Delivery()
    proxy: str | None = None
    #: Each provider's own options, by provider name (its endpoint, its key).
    provider_options: Mapping[str, Mapping[str, Any]] = {}
    #: USD per million tokens in and out, by model id; and the most a cell may spend.
    prices: Mapping[str, Price] = {}
    max_cost: float | None = None
    #: The most characters a data value's summary in a prompt may have.
    value_chars: int = 4_000

    def options_for(self, entry: ProviderEntry) -> dict[str, Any]:
        """The keyword options ``entry``'s provider is called with (besides delivery)."""
        return {"proxy": self.proxy, **self.provider_options.get(entry.name, {})}

    def secrets(self) -> dict[str, str]:
        """Every secret these settings and the environment hold, by where it is from: the
        environment's keys, tokens and passwords, the providers' keys (%config, or
        %flowgpt_key), and passwords in the proxy's and the endpoints' URLs."""
        from urllib.parse import urlsplit

        found = environment_secrets()
        urls = {"the proxy": self.proxy}
        for provider, options in self.provider_options.items():
            for name, value in options.items():
                if name == "api_key" and isinstance(value, str):
                    found[f"the {provider} API key"] = value
                elif isinstance(value, str) and "@" in value:
                    urls[f"{provider}'s {name}"] = value
        for where, url in urls.items():
            try:
                password = urlsplit(url).password if url else None
            except ValueError:
                password = None
            if password:
                found[f"the password in {where}'s URL"] = password
        return found


class ChatRequest(NamedTuple):
    prompt: str
    ref: ModelRef
    temperature: float | None
    system: str | None
    #: The model's parameters: the notebook's, and the cell's over them.
    params: Mapping[str, Any]
    use_history: bool
    reset: bool
    format: Format
    cell_id: str | None
    cell_number: int | None
    context_turns: int | None
    context_chars: int | None
    delivery: Delivery
    #: The provider's keyword options: the proxy, its endpoint and key.
    options: Mapping[str, Any]
    #: The model's price (USD per million tokens in and out), if known; the most it may cost.
    price: Price | None = None
    max_cost: float | None = None
    #: The prompt's images, and what was put in it (for --dry-run).
    images: tuple[Picture, ...] = ()
    inserted: tuple[str, ...] = ()
    #: Where the secrets were from that the prompt held, and go as *** instead.
    redacted: tuple[str, ...] = ()
    #: What the answer must be (--schema): asked for, and checked when it comes.
    schema: Schema | None = None
    #: The answer cache (if one is set): taken from it if there, else asked and kept
    #: ("use"); asked and kept anew (--refresh); neither (--no-cache).
    cache: CacheUse = "use"
    #: The notebook's functions the model may call (--tools), and whether they run unasked.
    tools: tuple[Tool, ...] = ()
    approve: bool = False
    tool_rounds: int = 5

    def __repr__(self) -> str:
        # Not the options (a key, a proxy's password) nor the prompt (it may be long).
        return f"ChatRequest(model={self.model!r}, prompt={len(self.prompt):,} characters)"

    @property
    def model(self) -> str:
        """The model's id, as the conversation and the footer name it."""
        return self.ref.id

    @property
    def sends_history(self) -> bool:
        return self.use_history and not self.reset

    @property
    def records(self) -> bool:
        """Whether a completed answer goes into the conversation."""
        return self.use_history

    def messages(self, history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the provider is sent: system message, context (if any), then the prompt
        (with its images)."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        if self.sends_history:
            messages += history
        messages.append({"role": "user", "content": prompt_content(self.prompt, self.images)})
        return messages


def build_request(
    cell: str,
    settings: Settings,
    *,
    namespace: Mapping[str, Any] | None,
    model: str | None = None,
    temperature: str | None = None,
    system: str | None = None,
    params: Sequence[str] = (),
    no_history: bool = False,
    reset: bool = False,
    answer_format: Format | None = None,
    cell_id: str | None = None,
    cell_number: int | None = None,
    max_cost: str | None = None,
    image_files: Sequence[str] = (),
    shown: Mapping[int, Sequence[Picture]] | None = None,
    schema: Schema | None = None,
    cache: CacheUse = "use",
    tools: tuple[Tool, ...] = (),
    approve: bool = False,
    tool_rounds: int = 5,
) -> ChatRequest:
    """Check a cell's options against the notebook's settings, and fill in the prompt's
    ``{name}`` forms from ``namespace`` (None: the cell as written; ``shown``: the images
    each cell displayed, for ``{Out[3]}``); ``image_files`` go with it (-i PATH)."""
    filled = (
        Prompt(cell)
        if namespace is None
        else expand(cell, namespace, shown, value_chars=settings.value_chars)
    )
    secrets = settings.secrets()
    prompt, redacted = redact(filled.text.strip(), secrets)
    images, inserted = list(filled.images), list(filled.inserted)
    if system is None:
        system = settings.system
    if system:
        system, also = redact(system, secrets)
        redacted += [source for source in also if source not in redacted]
    for path in image_files:
        images.append(picture_of_file(path))
        inserted.append(f"-i {path}: image {len(images)}, {images[-1].describe()}")
    if not prompt:
        raise InvalidRequestError(
            "The cell has no prompt: write your question in the cell body, below %%flowgpt."
        )
    if no_history and reset:
        raise InvalidRequestError(
            "--no-history and --reset contradict each other: --no-history leaves the "
            "conversation alone, --reset starts a new one with this cell. Choose one."
        )
    ref = resolve_model(model or settings.model)
    options = settings.options_for(ref.entry)
    if images and not ref.entry.provider.takes_images(**options):
        raise InvalidRequestError(
            f"{ref.id} takes no images ({inserted[0].partition(':')[0]} is one): "
            f"{ref.entry.provider.no_images}. Nothing was sent. Ask a model that sees "
            "images (-m openai:gpt-4o-mini, say), or leave the image out."
        )
    limit = parse_dollars(max_cost) if max_cost is not None else settings.max_cost
    price = settings.prices.get(ref.id)
    cells_params = parse_params(params)
    params_given = {**settings.params, **cells_params}
    chosen = answer_format or settings.answer_format
    if schema is not None:
        if answer_format not in (None, "json"):
            raise InvalidRequestError(
                f"--schema {schema.name} asks for JSON, and its value is kept: -f "
                f"{answer_format} does not go with it. Leave -f out."
            )
        if "response_format" in cells_params:
            raise InvalidRequestError(
                "--schema sends its own response_format: leave -p response_format out."
            )
        chosen, params_given["response_format"] = "json", schema.response_format()
    elif answer_format is None and _asks_json(params_given):
        chosen = "json"  # (asked for with -p response_format=...: shown as what it is)
    if chosen == "json" and "response_format" not in params_given:
        params_given["response_format"] = {"type": "json_object"}
    if tools:
        if "tools" in cells_params:
            raise InvalidRequestError("--tools sends its own tools: leave -p tools out.")
        params_given["tools"] = [tool.spec for tool in tools]
    return ChatRequest(
        prompt=prompt,
        ref=ref,
        temperature=(
            parse_temperature(temperature) if temperature is not None else settings.temperature
        ),
        system=system,
        params=params_given,
        use_history=not no_history,
        reset=reset,
        format=chosen,
        cell_id=cell_id,
        cell_number=cell_number,
        context_turns=settings.context_turns,
        context_chars=settings.context_chars,
        delivery=settings.delivery,
        options=options,
        price=price,
        max_cost=limit,
        images=tuple(images),
        inserted=tuple(inserted),
        redacted=tuple(redacted),
        schema=schema,
        cache=cache,
        tools=tools,
        approve=approve,
        tool_rounds=tool_rounds,
    )


def check_each_once(given: Sequence[str] | None, requests: Sequence[ChatRequest]) -> None:
    """Refuse a cell that names a model twice (-m gpt-4o -m openai:gpt-4o)."""
    models = [request.model for request in requests]
    if twice := [m for m in dict.fromkeys(models) if models.count(m) > 1]:
        named = " and ".join(
            f"-m {m}" for m, ref in zip(given or (), models, strict=True) if ref == twice[0]
        )
        raise InvalidRequestError(
            f"{named} name the same model, {twice[0]}: a cell asks each model once. To "
            "compare two of its answers, run the cell again."
        )


def secrets_line(redacted: Sequence[str]) -> str:
    """The line that says which secrets a prompt held, sent as *** instead."""
    values = "the value" if len(redacted) == 1 else "the values"
    names = ", ".join(redacted[:-1]) + (" and " if len(redacted) > 1 else "") + redacted[-1]
    return f"(Sent as *** instead: {values} of {names}, which a prompt never carries.)"


def _asks_json(params: Mapping[str, Any]) -> bool:
    """Whether the parameters ask for a JSON answer (OpenAI's ``response_format``)."""
    wanted = params.get("response_format")
    return isinstance(wanted, Mapping) and wanted.get("type") in ("json_object", "json_schema")


def parse_params(assignments: Sequence[str]) -> dict[str, Any]:
    """``-p NAME=VALUE`` options as parameters: each VALUE as JSON where it parses
    (``max_tokens=200``, ``stop=["\\n\\n"]``, ``logprobs=true``), else as the text it is."""
    import json

    params: dict[str, Any] = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        name = name.strip()
        if not equals or not name:
            raise InvalidRequestError(
                f"-p takes NAME=VALUE, such as -p max_tokens=200, not {assignment!r}."
            )
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    return params


def parse_dollars(text: str) -> float:
    try:
        value = float(text.removeprefix("$"))
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidRequestError(
            f"--max-cost takes an amount of US dollars, such as 0.05, not {text!r}."
        )
    return value


def parse_temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequestError(
            f"Temperature must be a number from 0 to 2, not {text!r}."
        ) from None
    return check_temperature(value)
