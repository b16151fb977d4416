"""The conversation on its own: exchanges, transcript, atomic save and validated load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowgpt_magic import HistoryFileError
from flowgpt_magic.conversation import Conversation
from flowgpt_magic.providers import Usage
from flowgpt_magic.record import Record


def two_exchanges() -> Conversation:
    return Conversation(
        [
            Record("Hi", "Hello!", "gpt-3.5-turbo"),
            Record(
                "And you?",
                "Fine.\nThanks.",
                "openai:qwen3",
                served_by="qwen3-8b",
                reasoning="Be polite.",
                usage=Usage(9, 4, 2),
                finish_reason="stop",
                cell_id="c2",
                time=1_700_000_000.0,
            ),
        ]
    )


def test_exchanges_become_wire_messages_in_order() -> None:
    assert two_exchanges().wire_messages() == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And you?"},
        {"role": "assistant", "content": "Fine.\nThanks."},
    ]
    assert len(two_exchanges()) == 2


def test_a_cell_s_exchange_replaces_its_earlier_one_in_place() -> None:
    conversation = two_exchanges()
    conversation.add(Record("Hi", "Hello!", "m", cell_id="c1"))
    conversation.add(Record("Again?", "Yes.", "m", cell_id="c2"))
    assert [r.prompt for r in conversation] == ["Hi", "Again?", "Hi"]


def test_transcript_names_speakers_and_models() -> None:
    text = two_exchanges().transcript()
    assert text.startswith("Conversation: 2 exchanges")
    assert "You:\n    Hi" in text
    assert "You (cell c2):\n    And you?" in text
    assert "Assistant (openai:qwen3, " in text and "):\n    Fine.\n    Thanks." in text
    assert Conversation().transcript() == "The conversation is empty."


def test_save_and_load_round_trip_whole_records(tmp_path: Path) -> None:
    path = two_exchanges().save(tmp_path / "chat.json")
    loaded = Conversation.load(path)
    assert list(loaded) == list(two_exchanges())
    saved = json.loads(path.read_text())
    assert (saved["format"], saved["version"]) == ("flowgpt-magic.conversation", 2)
    assert saved["exchanges"][1]["time"].startswith("2023-11-1")  # ISO 8601


def test_a_version_1_file_of_messages_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    messages = [
        {"role": "user", "content": "Hi", "cell_id": "c1"},
        {
            "role": "assistant",
            "content": "Hello!",
            "model": "gemini",
            "cell_id": "c1",
            "time": "2026-11-20T10:00:00+00:00",
        },
    ]
    path.write_text(
        json.dumps({"format": "flowgpt-magic.conversation", "version": 1, "messages": messages})
    )
    (record,) = Conversation.load(path)
    assert record[:3] == ("Hi", "Hello!", "gemini")
    assert record.cell_id == "c1" and record.time == 1_795_168_800.0


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text("old contents")
    two_exchanges().save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]
    assert len(Conversation.load(path)) == 2


def test_save_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryFileError, match="Could not save the conversation to"):
        two_exchanges().save(tmp_path / "missing" / "chat.json")


def test_a_bare_list_of_messages_loads_too(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(
        json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    )
    assert list(Conversation.load(path)) == [Record("a", "b", "")]


@pytest.mark.parametrize(
    ("contents", "words"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": "something-else"}', "is not a flowgpt-magic conversation"),
        ('{"format": "flowgpt-magic.conversation", "version": 99, "messages": []}', "version 99"),
        ('{"format": "flowgpt-magic.conversation", "version": 1, "messages": {}}', "list"),
        ('{"format": "flowgpt-magic.conversation", "version": 2, "exchanges": [{}]}', "no str"),
        ('[{"role": "system", "content": "x"}]', "message 0 is a system message"),
        ('[{"role": "assistant", "content": "x"}]', "is an assistant message, where a user"),
        ('[{"role": "user", "content": "x"}]', "ends with a question that has no answer"),
        ('[{"role": "robot", "content": "x"}]', "message 0 has role 'robot'"),
        ('[{"role": "user"}]', "message 0 has no string 'content'"),
        ('["hello"]', "message 0 must be an object"),
    ],
)
def test_bad_files_are_named_and_explained(tmp_path: Path, contents: str, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(contents)
    with pytest.raises(HistoryFileError, match=words) as caught:
        Conversation.load(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryFileError, match="No such file"):
        Conversation.load(tmp_path / "nope.json")


def test_an_answer_asked_before_its_cell_ran_again_does_not_overwrite_the_newer() -> None:
    # A background answer (asked 1) ends after its cell was run again and answered (2).
    conversation = Conversation()
    conversation.add(Record("Second run", "Newer.", "m", cell_id="c1"), asked=2)
    conversation.add(Record("First run", "Older.", "m", cell_id="c1"), asked=1)
    assert [r.answer for r in conversation] == ["Newer."]
    conversation.add(Record("Third run", "Newest.", "m", cell_id="c1"), asked=3)
    assert [r.answer for r in conversation] == ["Newest."]
