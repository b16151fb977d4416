"""What a person reads: errors wrapped between words, the dry run and the cost limit, the
usage table, the history's labels, the model listing, a frame's rows, a failed model's
error kept, images left out for a model that takes none. In a shell and real kernels,
against the bundled server (its OpenAI dialect too)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said
from real_servers import smollm2_gguf

from flowgpt_magic.attachments import summary_of
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.record import record_in
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer
from flowgpt_magic.usage import ERROR_WIDTH, wrapped


@pytest.fixture
def served(flowgpt_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return flowgpt_server


def test_an_error_is_wrapped_between_words_to_fit_the_output_area() -> None:
    message = (
        "Could not connect to the-very-long-host-name.example.com:8443: connection refused. "
        "Check that the server is running and that the endpoint URL (OPENAI_BASE_URL or "
        "OpenAI.base_url) is right, then run the cell again."
    )
    lines = wrapped(message).split("\n")
    assert len(lines) == 3 and " ".join(lines) == message  # (no word cut: only spaces go)
    assert len("UsageError: " + lines[0]) <= ERROR_WIDTH
    assert all(len(line) <= ERROR_WIDTH for line in lines)


def test_a_dry_run_shows_everything_even_what_the_cost_limit_would_refuse(
    shell: InteractiveShell, served: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.prices = {'openai:gpt-4o-mini': [0.15, 0.6]}")
    cell = "%%flowgpt -m openai:gpt-4o-mini --dry-run --max-cost 0.0000001\n" + "word " * 50
    assert shell.run_cell(cell).error_in_exec is None
    dry = capsys.readouterr().out
    assert dry.startswith("Dry run: nothing was sent.") and "word word" in dry
    assert "price:          $0.15 and $0.60 a million tokens in and out" in dry
    assert "cost limit:     $0.00000010: the cell would not be sent: The prompt alone" in dry
    # A generous limit: the answer may have as many tokens as the model writes, no more.
    assert (
        shell.run_cell("%%flowgpt -m openai:gpt-4o-mini --dry-run --max-cost 1\nHi").error_in_exec
        is None
    )
    assert "the answer may have up to 16,384 tokens" in capsys.readouterr().out
    # No price: the dry run says so too, and suggests no one else's prices.
    assert (
        shell.run_cell("%%flowgpt -m openai:llama3.2 --dry-run --max-cost 1\nHi").error_in_exec
        is None
    )
    dry = capsys.readouterr().out
    assert "A cost limit needs the price of openai:llama3.2, which is not known." in dry
    assert "{'openai:llama3.2': [0, 0]}" in dry  # (its server is on this computer)
    assert served.state.requests == []


def test_a_cost_limit_without_a_price_suggests_none_to_copy(
    shell: InteractiveShell, served: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    error = shell.run_cell("%%flowgpt -m openai:llama3.2 --max-cost 1\nHi").error_in_exec
    assert isinstance(error, UsageError)
    assert said(error).endswith(
        "(as its provider lists them): %config FlowGptMagics.prices = {'openai:llama3.2': "
        "[IN, OUT]}."
    )


def test_the_usage_table_has_no_row_for_what_never_answered(
    shell: InteractiveShell, served: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_cell("%%flowgpt -m openai:gpt-4o\nHi")
    served.state.options.fault = "status-400"
    shell.run_cell("%%flowgpt\nThis one fails")
    served.state.options.fault = None
    capsys.readouterr()
    shell.run_line_magic("flowgpt_usage", "")
    table = capsys.readouterr().out
    assert "gpt-3.5-turbo" not in table and "openai:gpt-4o" in table
    assert "1 request failed before any answer came, and used nothing." in table
    assert "1 request had no known cost" in table and "(s)" not in table
    assert "((" not in table and "(no price" not in table


def test_a_frame_that_fits_goes_whole() -> None:
    frame = pd.DataFrame({"x": range(30), "y": [f"row {n}" for n in range(30)]})
    _kind, text = summary_of(frame, 4_000)  # type: ignore[misc]
    assert "| 29 | 29 | row 29 |" in text and "First 5 rows" not in text
    assert all(f"| row {n} |" in text for n in range(30))
    _kind, edges = summary_of(frame, 500)  # type: ignore[misc]
    assert "First 5 rows" in edges and "| row 15 |" not in edges


def test_the_history_names_each_exchange_by_the_number_its_cell_showed(
    shell: InteractiveShell, flowgpt_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    number = shell.execution_count
    shell.run_cell("%%flowgpt\nFirst", store_history=True)
    shell.run_cell("%%flowgpt\nSecond", store_history=True)
    capsys.readouterr()
    shell.run_line_magic("flowgpt_history", "")
    transcript = capsys.readouterr().out
    assert f"You [{number}]:\n    First" in transcript
    assert f"You [{number + 1}]:\n    Second" in transcript


def test_the_model_listing_leads_with_what_works(
    shell: InteractiveShell,
    served: LocalServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("FLOWGPT_API_URL")  # (FlowGPT's own endpoint: gone)
    monkeypatch.setenv("FLOWGPT_LOCAL_MODEL", str(smollm2_gguf()))
    shell.run_line_magic("flowgpt_model", "")
    listing = capsys.readouterr().out
    blocks = listing.split("\n\n")
    assert blocks[0] == "Default model: gpt-3.5-turbo"
    assert [block.split(":")[0] for block in blocks[1:]] == ["openai", "local", "flowgpt"]
    (flowgpt,) = blocks[3].splitlines()  # (one line: it does not answer)
    assert "its public endpoint has not worked since 2024" in flowgpt
    assert "*gpt-3.5-turbo" in flowgpt and "google-gemini (gemini, gemini-pro)" in flowgpt
    local = blocks[2]
    assert "llama.cpp for SmolLM2-135M-Instruct.Q4_1.gguf, started on first use" in local
    assert str(Path(smollm2_gguf()).parent) not in local  # (the file's name, not its path)


def test_a_failed_model_keeps_its_error_in_the_saved_output(
    flowgpt_server: LocalServer, served: LocalServer
) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext flowgpt_magic"),
        nbformat.v4.new_code_cell("%%flowgpt -m openai:gpt-4o -m openai:SmolLM2\nCompare."),
    ]
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    (output,) = nb.cells[1].outputs
    markdown = output["data"]["text/markdown"]
    # Its column: its title, and under it its error, as it was while the other streamed.
    failed = markdown.split("**openai:SmolLM2**")[1]
    assert "■ 127.0.0.1:" in failed and "answered 404 Not Found" in failed
    assert "answered 404" in output["data"]["text/plain"].split("── openai:SmolLM2 ──")[1]
    answers = output["metadata"]["answers"]
    assert answers[1]["outcome"] == "failed" and "answered 404" in answers[1]["error"]
    assert record_in(output).model == "openai:gpt-4o"


def test_the_conversation_s_images_are_left_out_for_a_model_that_takes_none(
    shell: InteractiveShell,
    served: LocalServer,
    magics: FlowGptMagics,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32), "blue").save(tmp_path / "blue.png")
    assert (
        shell.run_cell(f"%%flowgpt -m openai:gpt-4o-mini -i {tmp_path}/blue.png\nIt?").error_in_exec
        is None
    )
    capsys.readouterr()
    # FlowGPT's protocol carries text: the image stays out, the text goes.
    assert shell.run_cell("%%flowgpt\nAnd now?").error_in_exec is None
    assert (
        "(The conversation's 1 image is left out for gpt-3.5-turbo, which takes none; "
        "their text goes.)" in capsys.readouterr().out
    )
    history = served.state.requests[-1].body["history"]
    assert history[1]["content"] == "It?"  # (text, not content parts)
    first, _second = magics.conversation
    assert len(first.images) == 1  # (kept, for a model that sees them)
