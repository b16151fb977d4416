"""Prompts that use the notebook ({name}, {In[3]}, {Out[3]}, {Err}), dry runs, and capture."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.prompt import expand
from flowgpt_magic.server import LocalServer, offline_answer


def cell(shell: InteractiveShell, source: str) -> object:
    """Run a cell as a notebook does: numbered, with In and Out kept."""
    return shell.run_cell(source, store_history=True).error_in_exec


def question(server: LocalServer) -> str:
    return str(server.state.requests[-1].body["question"])


def test_names_attributes_and_indexes_are_filled_in(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    cell(shell, "import types\ntopic = 'tides'\nconfig = types.SimpleNamespace(depth=42)")
    cell(shell, "items = ['zero', 'one']")
    assert cell(shell, "%%flowgpt\nAbout {topic} at {config.depth} m, item {items[1]}.") is None
    assert question(flowgpt_server) == "About tides at 42 m, item one."


def test_in_and_out_of_earlier_cells_are_filled_in(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    count = shell.execution_count
    cell(shell, "6 * 7")
    assert cell(shell, f"%%flowgpt\nCell {{In[{count}]}} gave {{Out[{count}]}}.") is None
    assert question(flowgpt_server) == "Cell 6 * 7 gave 42."


def test_the_last_error_and_a_cell_s_error_come_with_their_tracebacks(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    failing = shell.execution_count
    cell(shell, "def broken():\n    return 1 / 0\nbroken()")
    cell(shell, "[][1]")
    assert cell(shell, "%%flowgpt\nExplain this error:\n{Err}") is None
    assert "IndexError: list index out of range" in question(flowgpt_server)
    assert cell(shell, f"%%flowgpt\nAnd this one: {{Err[{failing}]}}") is None
    asked = question(flowgpt_server)
    assert "ZeroDivisionError: division by zero" in asked and "return 1 / 0" in asked


def test_other_braces_stay_as_written() -> None:
    pasted = 'json {"a": {"b": 1}}, f"{x + 1}", set() or {}, {1: 2}, {{literal}}'
    assert (
        expand(pasted, {}).text
        == 'json {"a": {"b": 1}}, f"{x + 1}", set() or {}, {1: 2}, {literal}'
    )


def test_an_unknown_name_is_a_clear_error_and_nothing_is_sent(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    error = cell(shell, "%%flowgpt\nWhat about {nowhere_defined}?")
    assert isinstance(error, UsageError)
    assert "'nowhere_defined', which is not defined" in said(error) and "--raw" in said(error)
    assert flowgpt_server.state.requests == []


def test_raw_sends_the_cell_as_written(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    assert cell(shell, "%%flowgpt --raw\nKeep {nowhere_defined} and {Err} as they are") is None
    assert question(flowgpt_server) == "Keep {nowhere_defined} and {Err} as they are"


def test_errors_are_heard_through_events_and_the_exception_hook_is_left_alone(
    shell: InteractiveShell, magics: FlowGptMagics
) -> None:
    # set_custom_exc (what other chat magics use) would fill custom_exceptions.
    assert shell.custom_exceptions == ()
    assert magics._remember_error in shell.events.callbacks["post_run_cell"]
    shell.run_line_magic("unload_ext", "flowgpt_magic")
    try:
        assert magics._remember_error not in shell.events.callbacks["post_run_cell"]
    finally:
        shell.run_line_magic("load_ext", "flowgpt_magic")


def test_a_dry_run_shows_everything_and_sends_nothing(
    shell: InteractiveShell, flowgpt_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cell(shell, "%%flowgpt\nFirst")
    capsys.readouterr()
    cell(shell, "topic = 'moons'")
    assert cell(shell, '%%flowgpt --dry-run -m gemini -t 0.3 -s "Be brief."\nAbout {topic}') is None
    out = capsys.readouterr().out
    assert len(flowgpt_server.state.requests) == 1
    assert out.startswith("Dry run: nothing was sent.")
    for line in (
        "model:          google-gemini",
        "temperature:    0.3",
        "system message: Be brief.",
        "context:        2 messages",
        "prompt (11 characters):",
        "    About moons",
    ):
        assert line in out


def test_the_answer_is_kept_in_a_variable(
    shell: InteractiveShell, magics: FlowGptMagics, flowgpt_server: LocalServer
) -> None:
    assert cell(shell, "%%flowgpt -o summary\nSummarise") is None
    expected = offline_answer(flowgpt_server.state.requests[0].body)
    assert shell.user_ns["summary"] == expected
    assert shell.user_ns["_flowgpt"] == expected
    error = cell(shell, "%%flowgpt -o class\nx")
    assert isinstance(error, UsageError) and "-o needs a variable name" in said(error)


# -- what a prompt may carry ---------------------------------------------------------------


def test_code_keeps_its_braces_and_an_undefined_name_there_is_no_error(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    cell(shell, "name = 'Ada'")
    source = (
        'Why does `print(f"Hi {who}")` fail, when {name} wrote:\n'
        '```python\nprint(f"Hello {name}")\nx = {undefined}\n```\n'
        "and ``{also}`` in a double-tick span, and `unclosed {name}?"
    )
    assert cell(shell, f"%%flowgpt\n{source}") is None
    assert question(flowgpt_server) == source.replace("when {name}", "when Ada").replace(
        "unclosed {name}", "unclosed Ada"
    )


def test_an_unclosed_code_block_runs_to_the_end() -> None:
    text = "Look {x}:\n~~~\nprint(f'{y}')\n"
    assert expand(text, {"x": 1}).text == "Look 1:\n~~~\nprint(f'{y}')\n"


def test_names_and_attributes_that_start_with_an_underscore_are_not_filled_in(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    cell(shell, "import types\nthing = types.SimpleNamespace(_hidden='x', shown='y')\n_private = 1")
    assert cell(shell, "%%flowgpt\n{_private} {thing._hidden} {thing.shown}") is None
    assert question(flowgpt_server) == "{_private} {thing._hidden} y"


def test_a_prompt_never_carries_a_secret_the_package_knows_of(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    magics: FlowGptMagics,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-0123")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret_token_456789")
    monkeypatch.setenv("SHORT_PASSWORD", "1")  # (too short to be taken for one)
    shell.run_line_magic("config", "OpenAI.api_key = 'sk-configured-key-abcdef'")
    cell(shell, "import os")
    assert cell(shell, "%%flowgpt\nWhat is in {os.environ}? And sk-configured-key-abcdef?") is None
    asked = question(flowgpt_server)
    assert "environ({" in asked and "SHORT_PASSWORD': '1'" in asked
    for secret in ("sk-from-the-environment-0123", "ghp_secret_token_456789", "sk-configured"):
        assert secret not in asked
    assert "'OPENAI_API_KEY': '***'" in asked and "And ***?" in asked
    out = capsys.readouterr().out
    assert out.count("(Sent as *** instead: the values of ") == 1
    assert "$OPENAI_API_KEY" in out and "$GITHUB_TOKEN" in out and "the openai API key" in out
    # Nor does what is kept of it: the conversation, a saved file, the dry run.
    saved = tmp_path / "chat.json"  # type: ignore[operator]
    shell.run_line_magic("flowgpt_history", f"--save {saved}")
    assert "sk-from-the-environment" not in saved.read_text()
    assert all("sk-" not in record.prompt for record in magics.conversation)
    assert cell(shell, "%%flowgpt --dry-run\n{os.environ}") is None
    dry = capsys.readouterr().out
    assert "(Sent as *** instead:" in dry and "sk-from-the-environment" not in dry
