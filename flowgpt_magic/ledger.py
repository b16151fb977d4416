"""What a notebook's requests used: by model, the requests, the tokens in and out and what
they cost; and the sums. No UI here: ``%flowgpt_usage`` prints ``table()``."""

from __future__ import annotations

from typing import Any

from .record import Record, content_size, dollars


class Account:
    """One model's requests. (A plain class: a dataclass would cost its exec() at load.)"""

    __slots__ = (
        "cached",
        "cost",
        "input_tokens",
        "output_tokens",
        "requests",
        "saved",
        "uncounted",
        "unpriced",
    )

    def __init__(self) -> None:
        self.requests = self.input_tokens = self.output_tokens = 0
        self.cost = 0.0
        # Answers taken from the cache: not requests, and what they cost when asked.
        self.cached = 0
        self.saved = 0.0
        # Requests whose tokens the server did not count (an interrupted answer), or whose
        # cost is not known (no price): the sums leave them out.
        self.uncounted = self.unpriced = 0

    def add(self, record: Record) -> None:
        if record.cached:
            self.cached += 1
            self.saved += record.cost or 0.0
            return
        self.requests += 1
        usage = record.usage
        if usage is None or usage.output_tokens is None:
            self.uncounted += 1
        else:
            self.input_tokens += usage.input_tokens or 0
            self.output_tokens += usage.output_tokens
        if record.cost is None:
            self.unpriced += 1
        else:
            self.cost += record.cost


#: Until a model has said how many tokens a prompt took, it is taken to take this many times
#: the estimate, and this many more (a chat template's system prompt and markers).
FIRST_RATIO, FIRST_EXTRA = 1.5, 64
#: Once it has, the estimate and what its template added at most, and this much more.
MARGIN = 1.15


class Ledger:
    """The accounts of a notebook's models, in the order they were first asked; and what
    each model's prompts took beyond their estimate, so that a cost limit holds."""

    def __init__(self) -> None:
        self.accounts: dict[str, Account] = {}
        #: Requests that failed before any answer came: they used nothing, and have no row.
        self.failed = 0
        #: By model: the most tokens a prompt took beyond its estimate (its template's).
        self._extra: dict[str, int] = {}

    def add(self, record: Record, estimated: int | None = None) -> None:
        """Count ``record``; ``estimated``: the tokens its prompt was estimated at."""
        if record.outcome == "failed" and not record.answer and record.usage is None:
            self.failed += 1
            return
        self.accounts.setdefault(record.model, Account()).add(record)
        taken = record.usage.input_tokens if record.usage is not None else None
        if estimated is not None and taken is not None:
            self._extra[record.model] = max(self._extra.get(record.model, 0), taken - estimated)

    def prompt_tokens(self, model: str, messages: list[dict[str, Any]]) -> tuple[int, str]:
        """The most tokens ``messages`` may take for ``model``, and how that was reckoned,
        for a person."""
        estimate = estimate_tokens(messages)
        from .attachments import IMAGE_TOKENS

        how = f"{estimate:,} (its characters ÷ 4, 4 a message, {IMAGE_TOKENS:,} an image)"
        if model not in self._extra:
            most = int(estimate * FIRST_RATIO) + FIRST_EXTRA
            return most, (
                f"{how}, half again and {FIRST_EXTRA} more, until the model has said what a "
                "prompt takes"
            )
        extra = self._extra[model]
        most = int((estimate + extra) * MARGIN)
        return most, f"{how}, the {extra:,} more a prompt took before, and a margin"

    def reset(self) -> None:
        self.accounts.clear()
        self.failed = 0

    def total(self) -> Account:
        total = Account()
        for account in self.accounts.values():
            for name in Account.__slots__:
                setattr(total, name, getattr(total, name) + getattr(account, name))
        return total

    def table(self) -> str:
        """The accounts as a table, for a person to read."""
        if not self.accounts:
            return "No requests yet." + (f" {_failed(self.failed)}" if self.failed else "")
        cached = self.total().cached > 0
        rows = [("model", "requests", "tokens in", "tokens out", "cost", *["cached"][:cached])]
        for model, account in (*self.accounts.items(), ("total", self.total())):
            priced = account.unpriced < account.requests or not account.requests
            cost = dollars(account.cost) if priced else "-"
            if account.unpriced and cost != "-":
                cost += "+"  # (some of its requests had no known cost)
            rows.append(
                (
                    model,
                    f"{account.requests:,}",
                    f"{account.input_tokens:,}",
                    f"{account.output_tokens:,}",
                    cost,
                    *[f"{account.cached:,}"][:cached],
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.insert(-1, "-" * len(lines[0]))
        total = self.total()
        notes = []
        if total.uncounted:
            notes.append(
                f"{_requests(total.uncounted)} stopped or failed before the server counted "
                "tokens: their tokens are not in the sums."
            )
        if total.unpriced:
            notes.append(
                f"{_requests(total.unpriced)} had no known cost (a +, or -): give prices with "
                "%config FlowGptMagics.prices, in US dollars per million tokens in and out."
            )
        if self.failed:
            notes.append(_failed(self.failed))
        if total.cached:
            one = total.cached == 1
            saved = f", and saved {dollars(total.saved)}, what {'it' if one else 'they'} cost"
            notes.append(
                f"{_count(total.cached, 'answer')} came from the cache (FlowGptMagics.cache), "
                f"not in the sums: {'it' if one else 'they'} cost nothing now"
                f"{saved + ' when asked' if total.saved else ''}."
            )
        return "\n".join(lines + notes)


def _requests(count: int) -> str:
    return _count(count, "request")


def _count(count: int, what: str) -> str:
    return f"{count:,} {what}{'s' if count != 1 else ''}"


def _failed(count: int) -> str:
    return f"{_requests(count)} failed before any answer came, and used nothing."


#: USD per million tokens, in and out.
Price = tuple[float, float]


def cost_of(record: Record, price: Price | None) -> float | None:
    """What an answer cost: the server's word (OpenRouter, LiteLLM), else its tokens at
    ``price``; None when neither is known."""
    usage = record.usage
    if usage is None:
        return None
    if usage.cost is not None:
        return usage.cost
    if price is None or usage.output_tokens is None:
        return None
    return ((usage.input_tokens or 0) * price[0] + usage.output_tokens * price[1]) / 1e6


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """About how many tokens ``messages`` are: a token is about four characters of English,
    each message costs a few more (OpenAI counts 3 or 4), and an image ``IMAGE_TOKENS``."""
    from .attachments import IMAGE_TOKENS

    total = 0
    for message in messages:
        chars, images = content_size(message["content"])
        total += -(-chars // 4) + images * IMAGE_TOKENS + 4
    return total


def budget_tokens(prompt: int, price: Price, max_cost: float) -> int:
    """The most tokens an answer may have for a prompt of at most ``prompt`` tokens and
    the answer to cost at most ``max_cost``; an error (nothing is sent) if the prompt alone
    could cost more."""
    from .exceptions import InvalidRequestError

    prompt_cost = prompt * price[0] / 1e6
    if prompt_cost > max_cost:
        raise InvalidRequestError(
            f"The prompt alone could cost {dollars(prompt_cost)}, more than the "
            f"{dollars(max_cost)} allowed: up to {prompt:,} tokens at {dollars(price[0])} a "
            "million. Nothing was sent. Raise --max-cost, or send less context "
            "(--no-history, FlowGptMagics.history_turns)."
        )
    if price[1] <= 0:
        return 2**31  # (an answer that costs nothing: no limit)
    return int((max_cost - prompt_cost) / price[1] * 1e6)


def no_price(model: str, on_this_computer: bool) -> str:
    """What to say of a cost limit for a model whose price is not known."""
    example = "[0, 0]" if on_this_computer else "[IN, OUT]"
    where = (
        "it runs on this computer, so it costs nothing"
        if on_this_computer
        else "as its provider lists them"
    )
    return (
        f"A cost limit needs the price of {model}, which is not known. Give it in US dollars "
        f"per million tokens in and out ({where}): %config FlowGptMagics.prices = "
        f"{{{model!r}: {example}}}."
    )
