"""The notebook's settings: traitlets that ``%config FlowGptMagics.NAME = VALUE`` and
``c.FlowGptMagics.NAME = VALUE`` in ``ipython_config.py`` set. The magics class inherits
them (its name is the settings' section); ``FlowGptMagics.settings()`` reads them into what
a cell falls back on. Each is checked when it is set."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Enum, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from .command import Settings
from .exceptions import FlowGptError, SecretURL
from .providers import PROVIDERS, FlowGpt, resolve_model
from .providers.checks import check_temperature
from .providers.http import CONNECT_TIMEOUT, RETRIES, TIMEOUT, Delivery
from .record import FORMATS


class FlowGptSettings(Configurable):
    """What every cell falls back on; FlowGPT's endpoint (the magics are named after it)."""

    default_model = Unicode(
        FlowGpt.default_model,
        help="Model used when a cell gives no -m: a FlowGPT name or alias, or PROVIDER:MODEL "
        "such as openai:gpt-4o-mini (resolved when set).",
    ).tag(config=True)
    temperature = Float(
        None,
        allow_none=True,
        help="Sampling temperature, from 0 to 2. None: the provider's own (FlowGPT's "
        "protocol needs one and sends 0.7; an OpenAI-compatible server gets none, as some "
        "models refuse any).",
    ).tag(config=True)
    params = Dict(
        help="The model's parameters every cell sends, e.g. {'max_tokens': 1024, 'top_p': "
        "0.9}; a cell's -p NAME=VALUE adds to them or overrides them.",
    ).tag(config=True)
    system_message = Unicode(
        None,
        allow_none=True,
        help="System message sent with every cell that gives no -s. None: the provider's own.",
    ).tag(config=True)
    api_url = Unicode(
        None,
        allow_none=True,
        help="Full URL of FlowGPT's chat endpoint. None: $FLOWGPT_API_URL if set, else "
        "FlowGPT's own. (Other providers have their own settings, e.g. OpenAI.base_url.)",
    ).tag(config=True)
    proxy = Unicode(
        None, allow_none=True, help="HTTP(S) proxy URL, e.g. http://user:password@host:3128."
    ).tag(config=True)
    timeout = Float(
        TIMEOUT,
        allow_none=True,
        help="Seconds the server may stay silent between pieces (None: no limit). There is "
        "no limit on a whole answer.",
    ).tag(config=True)
    first_piece_timeout = Float(
        None,
        allow_none=True,
        help="Seconds the server may take to send the first piece (None: as timeout).",
    ).tag(config=True)
    history_turns = Int(
        None,
        allow_none=True,
        help="Send at most this many recent exchanges as context (None: all). The "
        "conversation keeps everything; %flowgpt_history shows it all.",
    ).tag(config=True)
    history_chars = Int(
        None,
        allow_none=True,
        help="Send at most this many characters of context, dropping the oldest whole "
        "exchanges first (None: no limit).",
    ).tag(config=True)
    retries = Int(
        RETRIES,
        help="How often a request that failed before any text arrived (no connection, 429, "
        "5xx) is tried again, after a growing pause or the server's Retry-After.",
    ).tag(config=True)
    connect_timeout = Float(
        CONNECT_TIMEOUT, allow_none=True, help="Seconds allowed for connecting (None: no limit)."
    ).tag(config=True)
    display_mode = Enum(
        ["auto", "widget", "text"],
        "auto",
        help="How answers stream: 'widget' (an output widget, in Jupyter), 'text' (plain "
        "stdout), or 'auto' (widget in a kernel, text in a terminal).",
    ).tag(config=True)
    answer_format = Enum(
        list(FORMATS),
        "markdown",
        help="How answers show in a notebook: 'markdown' (rendered as it streams), 'text', "
        "'code' (the answer's code blocks, highlighted) or 'json' (asked for as JSON, kept "
        "as its value). A cell's -f overrides it.",
    ).tag(config=True)
    footer = Bool(
        True,
        help="Show a line under each answer: model, time to the first piece, total time, "
        "tokens (or pieces), cost and characters.",
    ).tag(config=True)
    background = Bool(
        False,
        help="Answer cells in the background, as with --background (in a notebook; a "
        "terminal answers in the foreground). A cell's --foreground overrides it.",
    ).tag(config=True)
    prices = Dict(
        help="What models cost, in US dollars per million tokens in and out: "
        "{'openai:gpt-4o-mini': [0.15, 0.60]}. A cost the server reports (OpenRouter, "
        "LiteLLM) comes first.",
    ).tag(config=True)
    max_cost = Float(
        None,
        allow_none=True,
        help="The most a cell may spend, in US dollars (None: no limit); a cell's --max-cost "
        "overrides it. A prompt that would cost more alone is not sent; else the answer's "
        "max_tokens is what the rest pays for. Needs the model's price (prices).",
    ).tag(config=True)
    concurrency = Int(
        8,
        min=1,
        help="With --each: at most this many requests at once (a cell's -j overrides it). "
        "The run sends fewer while the server says too many (429), and more again after.",
    ).tag(config=True)
    value_chars = Int(
        4_000,
        min=100,
        help="The most characters of a data value put in a prompt ({df}, {array}, a long "
        "list or string): a DataFrame, Series or array goes as a summary (shape, dtypes, "
        "first and last rows), a longer value is cut there and says so.",
    ).tag(config=True)

    cache = Unicode(
        None,
        allow_none=True,
        help="A file to keep answers in (SQLite, made on first use), e.g. 'answers.sqlite': "
        "a request asked before, the same in every way that decides its answer, is answered "
        "from it at once, for nothing (--refresh asks again, --no-cache skips it). None or "
        "'off': no cache.",
    ).tag(config=True)

    tools = List(
        Unicode(),
        help="The notebook's functions every cell lets the model call (names, as --tools "
        "gives them; 'variables' and 'describe' are built in). A cell's --tools overrides it.",
    ).tag(config=True)
    approve_tools = Bool(
        False,
        help="Run the function calls a model asks for without asking first (as --approve "
        "does), for the person who chose that.",
    ).tag(config=True)
    tool_rounds = Int(
        5,
        min=1,
        help="The most rounds of function calls an answer may take before the model must "
        "answer; then one line says it did not.",
    ).tag(config=True)

    @validate("cache")
    def _cache_off(self, proposal: Any) -> str | None:
        value = proposal.value
        return None if value is None or value.strip() in ("", "off") else value

    @validate("prices")
    def _check_prices(self, proposal: Any) -> dict[str, tuple[float, float]]:
        checked = {}
        for model, price in proposal.value.items():
            if not (
                isinstance(price, (list, tuple))
                and len(price) == 2
                and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in price)
                and min(price) >= 0
            ):
                raise TraitError(
                    f"The price of {model!r} must be [input, output], two numbers of US dollars "
                    f"per million tokens, like [0.15, 0.60]; not {price!r}."
                )
            try:
                checked[resolve_model(model).id] = (float(price[0]), float(price[1]))
            except FlowGptError as error:
                raise TraitError(str(error)) from None
        return checked

    @validate("max_cost")
    def _check_max_cost(self, proposal: Any) -> float | None:
        if proposal.value is not None and not proposal.value >= 0:
            raise TraitError(f"max_cost must be a number of US dollars, not {proposal.value!r}.")
        return proposal.value  # type: ignore[no-any-return]

    @validate("default_model")
    def _resolve_default_model(self, proposal: Any) -> str:
        try:
            return resolve_model(proposal.value).id
        except FlowGptError as error:
            raise TraitError(str(error)) from None

    @validate("proxy")
    def _hide_proxy_credentials(self, proposal: Any) -> str | None:
        return None if proposal.value is None else SecretURL(proposal.value)

    @validate("temperature")
    def _check_temperature(self, proposal: Any) -> float | None:
        if proposal.value is None:
            return None
        try:
            return check_temperature(proposal.value)
        except FlowGptError as error:
            raise TraitError(str(error)) from None

    #: Each provider's own settings (OpenAI, Local), by provider name; FlowGPT's are these.
    provider_settings: dict[str, Any]

    def settings(self) -> Settings:
        """What a cell falls back on, as the settings stand now."""
        return Settings(
            model=self.default_model,
            temperature=self.temperature,
            system=self.system_message,
            params=self.params,
            answer_format=self.answer_format,
            context_turns=self.history_turns,
            context_chars=self.history_chars,
            delivery=Delivery(
                self.timeout, self.first_piece_timeout, self.connect_timeout, self.retries
            ),
            proxy=self.proxy,
            provider_options={
                name: self.provider_settings.get(name, self).request_options() for name in PROVIDERS
            },
            prices=self.prices,
            max_cost=self.max_cost,
            value_chars=self.value_chars,
        )

    def request_options(self) -> dict[str, Any]:
        """FlowGPT's options: its settings are ours (the magics are named after it)."""
        return {"api_url": self.api_url}
