"""The conversation on its own: exchanges, transcript, atomic save and validated load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowgpt_magic import HistoryFileError
from flowgpt_magic.conversation import Conversation, Message


def two_exchanges() -> Conversation:
    conversation = Conversation()
    conversation.add_exchange("Hi", "Hello!", "gpt-3.5-turbo")
    conversation.add_exchange("And you?", "Fine.\nThanks.", "google-gemini")
    return conversation


def test_exchanges_become_wire_messages_in_order() -> None:
    assert two_exchanges().wire_messages() == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "And you?"},
        {"role": "assistant", "content": "Fine.\nThanks."},
    ]
    assert two_exchanges().exchange_count == 2


def test_transcript_names_speakers_and_models() -> None:
    text = two_exchanges().transcript()
    assert text.startswith("Conversation: 2 exchanges")
    assert "You:\n    Hi" in text
    assert "Assistant (google-gemini):\n    Fine.\n    Thanks." in text
    assert Conversation().transcript() == "The conversation is empty."


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    path = two_exchanges().save(tmp_path / "chat.json")
    loaded = Conversation.load(path)
    assert list(loaded) == list(two_exchanges())
    assert json.loads(path.read_text())["format"] == "flowgpt-magic.conversation"


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text("old contents")
    two_exchanges().save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]
    assert Conversation.load(path).exchange_count == 2


def test_save_into_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryFileError, match="Could not save the conversation to"):
        two_exchanges().save(tmp_path / "missing" / "chat.json")


def test_a_bare_list_of_messages_loads_too(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(
        json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    )
    assert list(Conversation.load(path)) == [Message("user", "a"), Message("assistant", "b")]


@pytest.mark.parametrize(
    ("contents", "words"),
    [
        ("{not json", "is not valid JSON"),
        ('{"format": "something-else"}', "is not a flowgpt-magic conversation"),
        ('{"format": "flowgpt-magic.conversation", "version": 99, "messages": []}', "version 99"),
        ('{"format": "flowgpt-magic.conversation", "version": 1, "messages": {}}', "list"),
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
