"""The examples and terminal IPython, run as separate processes against the local server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_servers import smollm2_gguf

from flowgpt_magic.record import record_in
from flowgpt_magic.server import LocalServer, answer_pieces

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as on a terminal, where UsageError lines go to stderr
        text=True,
        timeout=120,
        env=os.environ.copy(),
        check=False,
    )
    assert completed.returncode == 0, completed.stdout
    assert "Traceback" not in completed.stdout
    return completed.stdout


def test_the_seed_examples_run_as_written(flowgpt_server: LocalServer) -> None:
    out = run_example("provider_api.py")
    first, second, third = (request.body for request in flowgpt_server.state.requests)
    assert first["question"] == second["question"] == "Привет!"
    assert second["system"] == "Ты - полезный ассистент."
    assert third["model"] == "google-gemini"
    assert out.count("Message: [Offline ") == 2
    assert "You asked: «What can you do offline?»" in out


def test_the_demo_runs_on_a_real_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGPT_LOCAL_MODEL", str(smollm2_gguf()))
    out = run_example("demo.py")
    assert out.startswith("A real model on this computer: SmolLM2-135M-Instruct.Q4_1.gguf")
    assert out.count("(Loading the local model SmolLM2-135M-Instruct.Q4_1 (98 MB)") == 1
    assert out.count("(local (answered by SmolLM2-135M-Instruct.Q4_1) · first piece in ") == 4
    assert "Loaded 3 exchanges from" in out and "UsageError: Unknown model 'gpt-5'" in out
    assert "Traceback" not in out


def test_the_demo_runs_every_cell_offline() -> None:
    out = run_example("demo.py", "--offline", "--fast")
    assert "Context: 4 earlier messages; system message: «Answer like a pirate.»" in out
    assert "Loaded 3 exchanges from" in out
    assert "UsageError: Unknown model 'gpt-5'" in out
    assert "model llama3.2, no temperature.] You asked: «And now from an OpenAI" in out
    assert "Reasoning: (Offline reasoning.) The question is «Why is the sky blue?»." in out
    assert " 30 out · " in out and "■ Cut short: the model reached its token limit" in out
    assert out.rstrip().endswith("The server answered 6 requests and rejected 0.")


def test_terminal_ipython_streams_pieces_as_they_arrive(flowgpt_server: LocalServer) -> None:
    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 500  # about five seconds of answer
    code = 'get_ipython().run_line_magic("load_ext", "flowgpt_magic")\n' + (
        'get_ipython().run_cell_magic("flowgpt", "", "Stream to a terminal")'
    )
    with subprocess.Popen(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    ) as ipython:
        assert ipython.stdout is not None
        first_pieces = ipython.stdout.read(len(b"[Offline answer "))
        # The first words are on the terminal while the server is still sending the rest.
        assert first_pieces == b"[Offline answer "
        assert flowgpt_server.state.completed == 0
        rest, errors = ipython.communicate(timeout=120)
    assert ipython.returncode == 0, errors
    answer = "".join(answer_pieces(flowgpt_server.state.requests[0].body, 500))
    shown, footer = (first_pieces + rest).decode().rsplit("\n", 2)[:2]
    assert shown == answer
    assert footer.startswith("(gpt-3.5-turbo · first piece in ")
    assert footer.endswith(" · 500 pieces · 2,049 characters)")
    assert flowgpt_server.state.completed == 1


def test_the_quickstart_notebook_runs_top_to_bottom(flowgpt_server: LocalServer) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    # Any cell error raises CellExecutionError here and fails the test.
    NotebookClient(
        nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()

    bodies = [request.body for request in flowgpt_server.state.requests]
    answers = {
        cell.source.split("\n", 1)[1]: record_in(cell.outputs[0]).answer
        for cell in nb.cells
        if cell.cell_type == "code" and cell.source.startswith("%%flowgpt")
    }
    assert len(answers) == len(bodies) == 8
    for body in bodies:
        assert answers[body["question"]] == "".join(answer_pieces(body))
    assert [len(body["history"]) - 1 for body in bodies] == [0, 2, 4, 6, 8, 0, 0, 0]
    # The code format kept only the code, and the next cell ran it.
    ran = next(c for c in nb.cells if c.source == "exec(snippet)")
    # (print may reach the frontend as two stream messages: the text, then the newline)
    assert "".join(o.text for o in ran.outputs) == "hello from the answer\n"
    by_question = {body["question"]: body for body in bodies}
    assert by_question["Now say it differently."]["model"] == "claude-v2"
    assert by_question["What is a kernel?"]["system"] == "Answer in one short sentence."
    history = [c for c in nb.cells if c.source == "%flowgpt_history"]
    assert all(c.outputs[0].text.startswith("Conversation: 5 exchanges") for c in history)


def test_the_committed_quickstart_has_no_outputs() -> None:
    import nbformat

    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata
