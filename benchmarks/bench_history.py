"""Long conversations: the memory a 1,000-turn history holds against the size of its text,
and how the time to build a request grows with the history it sends.

Turns are of a realistic size (a 200-character question, a 1,200-character answer). Memory
is what tracemalloc sees allocated while the history is built, the strings included, against
the UTF-8 size of its text. Build time is a whole request: the cell's messages, FlowGPT's
folded body, and its JSON, as aiohttp sends it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import tracemalloc
from typing import Any

from common import goal_lines

from flowgpt_magic.command import Settings, build_request
from flowgpt_magic.conversation import Conversation
from flowgpt_magic.providers.flowgpt import build_body
from flowgpt_magic.record import Record

TURNS = 1_000
SIZES = (125, 250, 500, 1_000, 2_000)


def turn(index: int) -> tuple[str, str]:
    question = f"Question {index}: " + "what about this? " * 11
    answer = f"Answer {index}: " + "here is a long and careful answer. " * 34
    return question[:200], answer[:1200]


def history_memory() -> dict[str, float]:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    conversation = Conversation()
    for index in range(TURNS):
        question, answer = turn(index)
        conversation.add(Record(question, answer, "gpt-3.5-turbo", time=1.8e9))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    text = sum(len(r.prompt.encode()) + len(r.answer.encode()) for r in conversation)
    return {"held_bytes": held, "text_bytes": text, "held_vs_text": held / text}


def request_seconds(repeats: int = 15) -> dict[int, float]:
    """Best time to build a request, for each history size, the sizes interleaved."""
    request = build_request(
        "Next?", Settings("gpt-3.5-turbo", 0.7, None, "markdown"), namespace=None
    )
    conversations = {turns: Conversation() for turns in SIZES}
    for turns, conversation in conversations.items():
        for index in range(turns):
            conversation.add(Record(*turn(index), "gpt-3.5-turbo"))
    best = dict.fromkeys(SIZES, math.inf)
    for _ in range(repeats):
        for turns, conversation in conversations.items():
            start = time.perf_counter()
            messages = request.messages(conversation.wire_messages())
            body = build_body(request.ref.model, messages, 0.7)
            json.dumps(body)
            best[turns] = min(best[turns], time.perf_counter() - start)
    return best


def run() -> dict[str, Any]:
    memory = history_memory()
    seconds = request_seconds()
    # Growth exponent: 1.0 is linear in the history; above 1 would be worse than linear.
    exponent = statistics.linear_regression(
        [math.log(n) for n in SIZES], [math.log(seconds[n]) for n in SIZES]
    ).slope
    return {
        "turns": TURNS,
        "memory": memory,
        "request_seconds": seconds,
        "summary": {"held_vs_text": memory["held_vs_text"], "growth_exponent": exponent},
        "goals": {"held_vs_text": ("<=", 2.0), "growth_exponent": ("<=", 1.1)},
    }


def report(result: dict[str, Any]) -> str:
    memory = result["memory"]
    lines = [
        f"4. Long conversations, {result['turns']:,} turns",
        f"   held {memory['held_bytes'] / 1e6:.2f} MB for {memory['text_bytes'] / 1e6:.2f} MB "
        f"of text",
        "   request build: "
        + ", ".join(f"{n} turns {s * 1000:.2f} ms" for n, s in result["request_seconds"].items()),
    ]
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    print(report(run()))
