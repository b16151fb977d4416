"""The record of an exchange: its footer, and its saved form (versions 1 and 2)."""

from __future__ import annotations

import json

import pytest

from flowgpt_magic.providers import Usage
from flowgpt_magic.record import METADATA_KEY, Record, record_in

FULL = Record(
    prompt="Why?",
    answer="Because.",
    model="openai:qwen3",
    served_by="qwen3-8b-q4",
    temperature=0.2,
    system="Be brief.",
    reasoning="The user asks why.",
    usage=Usage(input_tokens=12, output_tokens=40, reasoning_tokens=30, cost=0.0002),
    cost=0.0002,
    finish_reason="stop",
    cell_id="c1",
    recorded=True,
    outcome="complete",
    format="text",
    time=1_795_168_800.0,
    first_piece_seconds=0.2149,
    total_seconds=3.4,
    pieces=1412,
)


def output_of(data: object) -> dict[str, object]:
    return {"output_type": "display_data", "data": {}, "metadata": {METADATA_KEY: data}}


def test_a_record_comes_back_whole_from_a_notebook_output() -> None:
    saved = json.loads(json.dumps(output_of(FULL.to_json())))  # as a notebook file holds it
    assert saved["metadata"][METADATA_KEY]["version"] == 2
    assert record_in(saved) == FULL


def test_a_version_1_record_still_reads() -> None:
    # What the magic wrote before records were typed.
    version_1 = {
        "version": 1,
        "prompt": "Hi",
        "answer": "Hello",
        "model": "gpt-3.5-turbo",
        "temperature": 0.7,
        "system": None,
        "cell_id": "abc",
        "recorded": True,
        "outcome": "interrupted",
        "time": 1764100000.0,
        "first_piece_seconds": 0.1,
        "total_seconds": 0.5,
        "pieces": 3,
        "characters": 5,
        "format": "markdown",
    }
    record = record_in(output_of(version_1))
    assert record is not None
    assert (record.prompt, record.answer, record.model, record.cell_id) == (
        "Hi",
        "Hello",
        "gpt-3.5-turbo",
        "abc",
    )
    assert (record.outcome, record.time, record.pieces) == ("interrupted", 1764100000.0, 3)
    assert not record.in_conversation


@pytest.mark.parametrize(
    "data",
    [
        {"answer": "no prompt", "model": "m"},
        {"prompt": 3, "answer": "x", "model": "m"},
        {"prompt": "x", "answer": "x", "model": "m", "outcome": "exploded"},
        {"prompt": "x", "answer": "x", "model": "m", "version": 99},
        "not an object",
    ],
)
def test_a_malformed_record_is_no_record(data: object) -> None:
    assert record_in(output_of(data)) is None


def test_outputs_that_are_no_answer_s_carry_no_record() -> None:
    assert record_in({"output_type": "stream", "text": "hi"}) is None
    assert record_in({"data": {}, "metadata": None}) is None


def test_the_footer_names_the_model_the_timings_and_the_tokens() -> None:
    # 40 tokens written in 3.4 - 0.21 s: 13 a second. (qwen3-8b-q4 is the model asked.)
    assert FULL.footer() == (
        "openai:qwen3 · first piece in 0.21 s · 3.40 s in all · 12 tokens in, 40 out "
        "(13 a second) · $0.00020 · 8 characters"
    )
    # Without the server's count of tokens, the pieces that came (and no cost).
    one = FULL._replace(first_piece_seconds=0.0, pieces=1, answer="abc", usage=None, cost=None)
    assert one.footer().endswith("first piece in 0.00 s · 3.40 s in all · 1 piece · 3 characters")


@pytest.mark.parametrize(
    ("asked", "served", "shown"),
    [
        ("openai:gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai:gpt-4o-mini · "),
        ("openai:gpt-5", "SmolLM2", "openai:gpt-5 (answered by SmolLM2) · "),
        ("gemini", None, "gemini · "),
    ],
)
def test_the_footer_names_the_model_that_answered_when_it_is_another(
    asked: str, served: str | None, shown: str
) -> None:
    assert FULL._replace(model=asked, served_by=served).footer().startswith(shown)


def test_an_answer_cut_short_says_so_and_what_to_raise() -> None:
    assert FULL.notice() is None
    cut = FULL._replace(finish_reason="length").notice()
    assert cut is not None and "token limit" in cut and "-p max_tokens=" in cut
    assert "content filter" in str(FULL._replace(finish_reason="content_filter").notice())


def test_context_is_the_prompt_and_the_answer_never_the_reasoning() -> None:
    assert FULL.wire_messages() == [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."},
    ]


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (0, "$0.00"),
        (0.000023, "$0.000023"),
        (0.0004, "$0.00040"),
        (0.5, "$0.50"),
        (1234.5, "$1,234.50"),
    ],
)
def test_small_costs_keep_their_two_significant_digits(amount: float, shown: str) -> None:
    from flowgpt_magic.record import dollars

    assert dollars(amount) == shown
