"""What a person reads before anything is sent: the dry run of a cell (what would go out,
and how it was reckoned) and the listing of the models (what works first). Views of the
chat's state; they send nothing (the listing asks servers for their models)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .exceptions import FlowGptError, redact_url
from .providers import PROVIDERS, ProviderEntry, resolve_model
from .record import content_size, dollars

if TYPE_CHECKING:
    from .cache import Stats
    from .chat import Chat
    from .command import ChatRequest, Settings


def dry_run(chat: Chat, request: ChatRequest) -> str:
    """What ``chat.ask(request)`` would send, for a person to read; nothing is sent."""
    endpoint = request.ref.entry.provider.endpoint(**request.options)
    messages = request.messages(chat.context(request))
    context = messages[:-1]
    system = "\n".join(m["content"] for m in context if m["role"] == "system")
    history = [m for m in context if m["role"] != "system"]
    own = "(the provider's own)"
    temperature = own if request.temperature is None else f"{request.temperature:g}"
    cost = []
    if request.price is not None:
        price = f"{dollars(request.price[0])} and {dollars(request.price[1])}"
        cost.append(f"price:          {price} a million tokens in and out")
    if request.max_cost is not None:
        try:
            tokens, prompt = chat.answer_budget(request, messages)
            said = f"the prompt takes up to {prompt}; the answer may have up to {tokens:,} tokens"
        except FlowGptError as refused:
            said = f"the cell would not be sent: {refused}"
        cost.append(f"cost limit:     {dollars(request.max_cost)}: {said}")
    sizes = [content_size(m["content"]) for m in history]
    chars, images = sum(c for c, _ in sizes), sum(i for _, i in sizes)
    left_out = chat.images_left_out(request)
    params = dict(request.params)
    if request.schema is not None:
        params.pop("response_format")  # (shown below, readably)
    return "\n".join(
        [
            "Dry run: nothing was sent.",
            f"model:          {request.model}",
            f"endpoint:       {redact_url(endpoint)}",
            f"temperature:    {temperature}",
            *([f"parameters:     {json.dumps(params)}"] if params else []),
            *_schema_lines(request),
            f"system message: {system or own}",
            *cost,
            f"context:        {len(history)} messages, {chars:,} "
            f"characters{f', {images} images' if images else ''}"
            f"{f' ({left_out} left out: the model takes none)' if left_out else ''}",
            f"prompt ({len(request.prompt):,} characters):",
            *("    " + line for line in request.prompt.splitlines()),
            *(["filled in:"] if request.inserted else []),
            *(f"    {line}" for line in request.inserted),
        ]
    )


def _schema_lines(request: ChatRequest) -> list[str]:
    schema = request.schema
    if schema is None:
        return []
    text = json.dumps(schema.json_schema, indent=2, ensure_ascii=False)
    return [
        f"schema:         {schema.name}, as response_format json_schema (strict):",
        *("    " + line for line in text.splitlines()),
    ]


def each_dry_run(
    chat: Chat,
    plans: list[list[ChatRequest | FlowGptError]],
    labels: list[Any],
    max_cost: float | None,
) -> str:
    """What ``--each`` would send: the first row's request in full, then the run: how many
    rows and answers, the tokens its prompts and answers may take, what it may cost."""
    from .batch import run_budget

    first = [request for request in plans[0] if not isinstance(request, FlowGptError)]
    answers = sum(1 for row in plans for r in row if not isinstance(r, FlowGptError))
    unmade = sum(1 for row in plans for r in row if isinstance(r, FlowGptError))
    try:
        budget = run_budget(plans, max_cost, chat.ledger.prompt_tokens)
    except FlowGptError as refused:
        reckoned = f"the run would not be sent: {refused}"
    else:
        each_answer = (
            f"answers up to {budget.answer_tokens:,} tokens in all"
            if budget.answer_tokens is not None
            else "answers as long as the models make them (no max_tokens)"
        )
        cost = (
            f"; it costs at most {dollars(budget.worst_cost)}"
            if budget.worst_cost is not None
            else "; what it costs is not known (no prices, or no max_tokens)"
        )
        reckoned = f"prompts up to {budget.prompt_tokens:,} tokens in all, {each_answer}{cost}"
    models = ", ".join(r.model for r in first)
    lines = [
        f"The first row ({labels[0]}), of {len(labels):,}:",
        *(dry_run(chat, request) for request in first),
        "",
        f"The run: {len(labels):,} rows, {answers:,} answers ({models}); {reckoned}.",
    ]
    if unmade:
        lines.append(f"{unmade:,} rows' prompts could not be made: they would fail.")
    return "\n".join(lines)


def cache_report(stats: Stats) -> str:
    """What ``%flowgpt_cache`` says of the answer cache."""
    size = stats.size / 2**20
    lines = [
        f"Answer cache: {stats.path}",
        f"{stats.entries:,} answer{'s' if stats.entries != 1 else ''}, {size:,.1f} MiB"
        + _span(stats.oldest, stats.newest),
        f"Taken from it {stats.hits:,} time{'s' if stats.hits != 1 else ''}, which saved "
        f"{dollars(stats.saved_cost)} (what those answers cost when asked; known prices "
        f"only) and {stats.saved_seconds:,.1f} s of waiting.",
    ]
    return "\n".join(lines)


def _span(oldest: float | None, newest: float | None) -> str:
    from .record import iso_time

    if oldest is None or newest is None:
        return ""
    if iso_time(oldest) == iso_time(newest):
        return f", asked at {iso_time(oldest)}"
    return f", asked from {iso_time(oldest)} to {iso_time(newest)}"


def model_listing(chat: Chat, settings: Settings) -> str:
    """The default model, then the providers that work here, each with its endpoint and
    its models (its server asked, where it lists them); one that does not work, last and
    in a line, for a person to read."""
    lines = [f"Default model: {settings.model}"]
    entries = sorted(PROVIDERS.values(), key=lambda e: not _works(e, settings))
    for entry in entries:
        if not _works(entry, settings):
            lines += ["", _in_a_line(entry, settings)]
            continue
        options = settings.options_for(entry)
        lines += ["", f"{entry.name}: {entry.description}"]
        try:
            lines.append(f"  endpoint: {redact_url(entry.provider.endpoint(**options))}")
            models = chat.run(entry.provider.list_models(timeout=5.0, **options))
        except FlowGptError as error:
            lines.append(f"  (could not list the server's models: {error})")
            models = entry.provider.models
        for model in models:
            ref = resolve_model(f"{entry.name}:{model}")
            aliases = entry.provider.aliases_of(model)
            note = f"  (aliases: {', '.join(aliases)})" if aliases else ""
            mark = "*" if ref.id == settings.model else " "
            lines.append(f" {mark} {ref.id}{note}")
    return "\n".join(lines)


def _works(entry: ProviderEntry, settings: Settings) -> bool:
    return entry.provider.available(**settings.options_for(entry))


def _in_a_line(entry: ProviderEntry, settings: Settings) -> str:
    """A provider that does not work here: what it is, why not, its models in a line."""
    provider = entry.provider
    named = []
    for model in provider.models:
        aliases = provider.aliases_of(model)
        mark = "*" if resolve_model(f"{entry.name}:{model}").id == settings.model else ""
        named.append(f"{mark}{model}" + (f" ({', '.join(aliases)})" if aliases else ""))
    return (
        f"{entry.name}: {entry.description}; {provider.unavailable(**settings.options_for(entry))}"
        f". Models: {', '.join(named)}."
    )
