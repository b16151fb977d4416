"""History that follows the cells: re-running a cell replaces its exchange."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from flowgpt_magic.conversation import Conversation
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.server import LocalServer


def run(shell: InteractiveShell, prompt: str, cell_id: str | None) -> None:
    result = shell.run_cell(f"%%flowgpt\n{prompt}", cell_id=cell_id)
    assert result.error_in_exec is None


def prompts(magics: FlowGptMagics) -> list[str]:
    return [record.prompt for record in magics.conversation]


def test_running_a_cell_again_replaces_its_exchange_in_place(
    shell: InteractiveShell, magics: FlowGptMagics, flowgpt_server: LocalServer
) -> None:
    run(shell, "A, first try", "cell-a")
    run(shell, "B", "cell-b")
    run(shell, "A, second try", "cell-a")
    assert prompts(magics) == ["A, second try", "B"]
    # The re-run cell did not send its own earlier exchange as context.
    sent = flowgpt_server.state.requests[-1].body["history"][1:]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["B"]


def test_without_a_cell_id_exchanges_are_appended(
    shell: InteractiveShell, magics: FlowGptMagics
) -> None:
    run(shell, "Same", None)
    run(shell, "Same", None)
    assert prompts(magics) == ["Same", "Same"]


def test_the_transcript_names_cells_models_and_times(
    shell: InteractiveShell, magics: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    run(shell, "Where from?", "0123456789abcdef")
    capsys.readouterr()
    shell.run_line_magic("flowgpt_history", "")
    out = capsys.readouterr().out
    assert "You (cell 01234567):" in out
    assert "Assistant (gpt-3.5-turbo, " in out  # then the time, hh:mm:ss


def test_json_pop_and_files_keep_cells_and_times(
    shell: InteractiveShell,
    magics: FlowGptMagics,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(shell, "One", "c1")
    run(shell, "Two", "c2")
    capsys.readouterr()
    shell.run_line_magic("flowgpt_history", "--json")
    data = json.loads(capsys.readouterr().out)
    assert [exchange["cell_id"] for exchange in data["exchanges"]] == ["c1", "c2"]
    assert "T" in data["exchanges"][1]["time"]  # ISO 8601
    saved = magics.conversation.save(tmp_path / "chat.json")
    assert list(Conversation.load(saved)) == list(magics.conversation)
    shell.run_line_magic("flowgpt_history", "--pop")
    assert prompts(magics) == ["One"]
    assert "Removed the last exchange; 1 exchange left." in capsys.readouterr().out


def test_only_complete_recorded_answers_come_back_from_a_notebook(
    shell: InteractiveShell,
    magics: FlowGptMagics,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def answer(prompt: str, outcome: str, recorded: bool = True) -> dict[str, object]:
        record = {
            "prompt": prompt,
            "answer": f"re: {prompt}\nin two lines",
            "model": "m",
            "outcome": outcome,
            "recorded": recorded,
            "cell_id": None,
            "time": 1.0,
        }
        return {
            "output_type": "display_data",
            "data": {"text/plain": [f"re: {prompt}\n", "in two lines\n", "\n", "(m · 1 piece)"]},
            "metadata": {"flowgpt_magic": record},
        }

    cells = [
        {"cell_type": "code", "id": "a", "source": "", "outputs": [answer("kept", "complete")]},
        {"cell_type": "code", "id": "b", "source": "", "outputs": [answer("cut", "interrupted")]},
        {"cell_type": "code", "id": "c", "source": "", "outputs": [answer("broke", "failed")]},
        {
            "cell_type": "code",
            "id": "d",
            "source": "",
            "outputs": [answer("aside", "complete", recorded=False)],
        },
        {"cell_type": "markdown", "id": "e", "source": "text"},
    ]
    for cell in cells:  # (what every notebook's cells have)
        cell["metadata"] = {}
        if cell["cell_type"] == "code":
            cell["execution_count"] = None
    path = tmp_path / "this notebook.ipynb"
    path.write_text(
        json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    shell.user_ns["__session__"] = str(path)  # what Jupyter tells the kernel
    try:
        shell.run_line_magic("flowgpt_history", "--from-notebook")
    finally:
        del shell.user_ns["__session__"]
    assert prompts(magics) == ["kept"]
    (kept,) = magics.conversation
    assert kept.answer == "re: kept\nin two lines"
    assert kept.cell_id == "a"
    assert "Rebuilt 1 exchange from" in capsys.readouterr().out
