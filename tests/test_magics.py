"""The magics in an IPython shell, talking to the local server over loopback."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from messages import said

from flowgpt_magic import AnswerInterrupted
from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.providers.flowgpt import GREETING
from flowgpt_magic.server import LocalServer, answer_pieces, offline_answer


def ask(shell: InteractiveShell, cell: str, line: str = "") -> object:
    """Run a %%flowgpt cell; return the exception it ended with, if any."""
    result = shell.run_cell(f"%%flowgpt {line}\n{cell}")
    return result.error_in_exec


def history_sent(server: LocalServer, index: int = -1) -> list[dict[str, str]]:
    return server.state.requests[index].body["history"][1:]


def closed_port_url() -> str:
    with LocalServer() as server:
        return server.url


def test_answer_streams_to_stdout_and_the_next_cell_continues(
    shell: InteractiveShell, flowgpt_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask(shell, "  What is 2+2?  \n") is None
    assert ask(shell, "And 3+3?") is None

    first, second = flowgpt_server.state.requests
    out = capsys.readouterr().out
    assert offline_answer(first.body) + "\n" in out
    assert offline_answer(second.body) + "\n" in out
    assert first.body["question"] == "What is 2+2?"
    assert history_sent(flowgpt_server) == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": offline_answer(first.body)},
    ]


def test_cell_options_apply_to_that_cell_only(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    assert ask(shell, "Hi", '-m gemini -t 0.3 -s "Answer in French."') is None
    assert ask(shell, "Hi again") is None

    special, plain = (request.body for request in flowgpt_server.state.requests)
    assert (special["model"], special["temperature"], special["system"]) == (
        "google-gemini",
        0.3,
        "Answer in French.",
    )
    assert (plain["model"], plain["temperature"]) == ("gpt-3.5-turbo", 0.7)
    assert plain["system"].startswith("You are helpful assistant.")


def test_no_history_sends_no_context_and_records_nothing(
    shell: InteractiveShell, flowgpt_server: LocalServer, magics: FlowGptMagics
) -> None:
    ask(shell, "Remember me")
    ask(shell, "Aside", "--no-history")
    assert flowgpt_server.state.requests[1].body["history"] == [GREETING]
    assert [record.prompt for record in magics.conversation] == ["Remember me"]


def test_reset_starts_a_new_conversation_with_this_cell(
    shell: InteractiveShell, flowgpt_server: LocalServer, magics: FlowGptMagics
) -> None:
    ask(shell, "One")
    ask(shell, "Two")
    ask(shell, "Fresh start", "--reset")
    ask(shell, "Next")
    assert flowgpt_server.state.requests[2].body["history"] == [GREETING]
    assert [m["content"] for m in history_sent(flowgpt_server) if m["role"] == "user"] == [
        "Fresh start"
    ]


def test_a_failed_request_adds_nothing_and_a_failed_reset_resets_nothing(
    shell: InteractiveShell, magics: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    ask(shell, "Keep this")
    before = list(magics.conversation)
    magics.api_url = closed_port_url()

    error = ask(shell, "This fails", "--reset")

    assert isinstance(error, UsageError)
    assert "Could not connect to 127.0.0.1:" in said(error)
    assert list(magics.conversation) == before
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "aiohttp" not in captured.out + captured.err


@pytest.mark.parametrize(
    ("line", "cell", "words"),
    [
        ("", "   \n  ", "The cell has no prompt"),
        ("-m gpt-5", "Hi", "Unknown model 'gpt-5'"),
        ("-t hot", "Hi", "Temperature must be a number from 0 to 2, not 'hot'"),
        ("-t 2.5", "Hi", "Temperature must be a number from 0 to 2, not 2.5"),
        ("-t -1", "Hi", "Temperature must be a number from 0 to 2, not -1.0"),
        ("--no-history --reset", "Hi", "contradict"),
        ("--bogus", "Hi", "unrecognized arguments: --bogus"),
        ('-s "unclosed', "Hi", "No closing quotation"),
        ("-f html", "Hi", "argument -f/--format: invalid choice: 'html'"),
    ],
)
def test_bad_input_is_one_line_and_sends_nothing(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    capsys: pytest.CaptureFixture[str],
    line: str,
    cell: str,
    words: str,
) -> None:
    error = ask(shell, cell, line)
    assert isinstance(error, UsageError)
    assert words in said(error)
    assert flowgpt_server.state.requests == []
    assert "Traceback" not in capsys.readouterr().err


def test_code_format_keeps_the_code_and_the_history_keeps_the_answer(
    shell: InteractiveShell, magics: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = "Like this:\n\n```python\nx = {'a': 1}\n```\n\nand then\n```\nprint(x)\n```"
    assert ask(shell, f"/echo\n{answer}", "-f code -o snippet") is None
    assert shell.user_ns["snippet"] == shell.user_ns["_flowgpt"] == "x = {'a': 1}\n\nprint(x)"
    assert list(magics.conversation)[-1].answer == answer
    assert answer in capsys.readouterr().out  # a terminal shows the answer as it streams


def test_the_footer_can_be_turned_off(
    shell: InteractiveShell, flowgpt_server: LocalServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ask(shell, "With a footer") is None
    shell.run_line_magic("config", "FlowGptMagics.footer = False")
    assert ask(shell, "Without") is None
    first, second = (offline_answer(r.body) for r in flowgpt_server.state.requests)
    out = capsys.readouterr().out
    assert f"{first}\n(gpt-3.5-turbo · first piece in " in out
    assert out.endswith(f"{second}\n")


def test_help_lists_the_options(shell: InteractiveShell) -> None:
    doc = shell.find_cell_magic("flowgpt").__doc__ or ""
    for option in ("-m MODEL", "-t T", "-s TEXT", "--no-history", "--reset", "-f"):
        assert option in doc


def test_interrupt_keeps_the_partial_answer_and_records_nothing(
    shell: InteractiveShell,
    flowgpt_server: LocalServer,
    magics: FlowGptMagics,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class InterruptOnThirdWrite(io.StringIO):
        """stdout that presses Ctrl-C (a real SIGINT) when the third read is written."""

        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            if self.writes == 3:
                signal.raise_signal(signal.SIGINT)
            return super().write(text)

    flowgpt_server.state.options.min_pieces = 100_000
    flowgpt_server.state.options.delay = 0.001
    screen = InterruptOnThirdWrite()
    monkeypatch.setattr("sys.stdout", screen)

    error = ask(shell, "Tell me a long story")

    assert isinstance(error, AnswerInterrupted)
    shown = screen.getvalue()
    partial, footer, mark = shown.strip().split("\n")
    # What the three reads brought (a read may bring more than one piece).
    whole = "".join(answer_pieces(flowgpt_server.state.requests[0].body, 100_000))
    assert whole.startswith(partial) and len(partial) >= len("[Offline answer from ")
    assert footer.startswith("(gpt-3.5-turbo · first piece in ")
    assert footer.endswith(f" · {len(partial)} characters)")
    assert mark == (
        f"■ Interrupted after {len(partial)} characters; the partial answer above was not "
        "added to the conversation."
    )
    assert len(magics.conversation) == 0
    assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, timeout=10)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    flowgpt_server.state.options.min_pieces = 0
    assert ask(shell, "Short one, please") is None
    assert history_sent(flowgpt_server) == []
    assert len(magics.conversation) == 1


# -- %flowgpt_model -----------------------------------------------------------------------


def test_model_listing_shows_default_models_and_aliases(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("flowgpt_model", "")
    out = capsys.readouterr().out
    assert "Default model: gpt-3.5-turbo" in out
    assert "google-gemini  (aliases: gemini, gemini-pro)" in out
    assert "Dolphin-2.6-8x7B" in out


def test_setting_the_model_resolves_aliases_and_is_used(
    shell: InteractiveShell, flowgpt_server: LocalServer, magics: FlowGptMagics
) -> None:
    shell.run_line_magic("flowgpt_model", "gemini-pro")
    assert magics.default_model == "google-gemini"
    ask(shell, "Hi")
    assert flowgpt_server.state.requests[0].body["model"] == "google-gemini"


def test_a_bad_model_name_leaves_the_default_alone(
    shell: InteractiveShell, magics: FlowGptMagics
) -> None:
    shell.run_line_magic("flowgpt_model", "claude-v2")
    result = shell.run_cell("%flowgpt_model gpt-5")
    assert isinstance(result.error_in_exec, UsageError)
    assert magics.default_model == "claude-v2"


# -- %flowgpt_history ---------------------------------------------------------------------


def test_history_shows_resets_saves_and_loads(
    shell: InteractiveShell,
    magics: FlowGptMagics,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ask(shell, "First question")
    capsys.readouterr()
    shell.run_line_magic("flowgpt_history", "")
    assert "You:\n    First question" in capsys.readouterr().out

    path = tmp_path / "my chat.json"
    shell.run_line_magic("flowgpt_history", f'--save "{path}"')
    assert json.loads(path.read_text())["exchanges"][0]["prompt"] == "First question"

    shell.run_line_magic("flowgpt_history", "--reset")
    assert len(magics.conversation) == 0
    shell.run_line_magic("flowgpt_history", f"--load '{path}'")
    assert next(iter(magics.conversation)).prompt == "First question"
    assert "Loaded 1 exchange from" in capsys.readouterr().out


def test_loading_a_bad_file_says_why_and_keeps_the_conversation(
    shell: InteractiveShell, magics: FlowGptMagics, tmp_path: Path
) -> None:
    ask(shell, "Keep me")
    before = list(magics.conversation)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"role": "user", "content": 3}]')
    result = shell.run_cell(f"%flowgpt_history --load {bad}")
    assert isinstance(result.error_in_exec, UsageError)
    assert "message 0 has no string 'content'" in said(result.error_in_exec)
    assert list(magics.conversation) == before


def test_history_actions_are_one_at_a_time(shell: InteractiveShell, tmp_path: Path) -> None:
    result = shell.run_cell(f"%flowgpt_history --reset --save {tmp_path / 'x.json'}")
    assert isinstance(result.error_in_exec, UsageError)
    assert not (tmp_path / "x.json").exists()


# -- settings -----------------------------------------------------------------------------


def test_config_magic_sets_settings(
    shell: InteractiveShell, flowgpt_server: LocalServer, magics: FlowGptMagics
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.temperature = 0.2")
    shell.run_line_magic("config", "FlowGptMagics.default_model = 'gemini'")
    shell.run_line_magic("config", "FlowGptMagics.system_message = 'Be brief.'")
    ask(shell, "Hi")
    body = flowgpt_server.state.requests[0].body
    assert (body["temperature"], body["model"], body["system"]) == (
        0.2,
        "google-gemini",
        "Be brief.",
    )


def test_settings_from_ipython_config_apply_when_the_extension_loads(
    flowgpt_server: LocalServer,
) -> None:
    # What ipython_config.py's `c.FlowGptMagics.temperature = 1.5` puts into shell.config.
    shell = InteractiveShell.instance()
    shell.config.FlowGptMagics.temperature = 1.5
    shell.config.FlowGptMagics.default_model = "gemini-pro"
    try:
        shell.run_line_magic("load_ext", "flowgpt_magic")
        magics = shell.magics_manager.registry["FlowGptMagics"]
        assert (magics.temperature, magics.default_model) == (1.5, "google-gemini")
    finally:
        shell.run_line_magic("unload_ext", "flowgpt_magic")
        shell.config.pop("FlowGptMagics", None)


def test_a_bad_setting_is_refused(magics: FlowGptMagics) -> None:
    from traitlets import TraitError

    with pytest.raises(TraitError, match="from 0 to 2"):
        magics.temperature = 7
    with pytest.raises(TraitError, match="Unknown model"):
        magics.default_model = "gpt-5"
    assert (magics.temperature, magics.default_model) == (None, "gpt-3.5-turbo")


def test_proxy_credentials_are_not_shown_by_config(
    shell: InteractiveShell, magics: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("config", "FlowGptMagics.proxy = 'http://alice:s3cret@127.0.0.1:3128'")
    shell.run_line_magic("config", "FlowGptMagics")
    out = capsys.readouterr().out
    assert "Current: 'http://***@127.0.0.1:3128'" in out
    assert "s3cret" not in out and "s3cret" not in repr(magics.proxy)
    assert magics.proxy == "http://alice:s3cret@127.0.0.1:3128"  # still the real URL to use


def test_loading_the_extension_is_cheap_and_patches_nothing() -> None:
    code = (
        "import asyncio, sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'flowgpt_magic')\n"
        "roots = {m.split('.')[0] for m in sys.modules}\n"
        "later = {'aiohttp', 'ipywidgets', 'pydantic', 'jsonschema'}\n"
        "print(hasattr(asyncio, '_nest_patched'), sorted(later & roots))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # nest-asyncio2 is applied when a running loop needs it; aiohttp, ipywidgets and what
    # checks a schema load on use.
    assert out.stdout.strip() == "False []"


def test_the_configured_proxy_carries_the_request(
    shell: InteractiveShell, flowgpt_server: LocalServer
) -> None:
    # The local server doubles as the proxy: flowgpt.invalid is reachable only through it.
    proxy = flowgpt_server.url.removesuffix("/v3/chat-anonymous").replace("//", "//user:pw@")
    shell.run_line_magic("config", f"FlowGptMagics.proxy = {proxy!r}")
    shell.run_line_magic(
        "config", "FlowGptMagics.api_url = 'http://flowgpt.invalid/v3/chat-anonymous'"
    )
    assert ask(shell, "Through the proxy?") is None
    assert flowgpt_server.state.requests[0].headers["Host"] == "flowgpt.invalid"


def test_a_saved_history_holds_no_secrets(
    shell: InteractiveShell, flowgpt_server: LocalServer, tmp_path: Path
) -> None:
    proxy = flowgpt_server.url.removesuffix("/v3/chat-anonymous").replace("//", "//al:s3cr3t@")
    shell.run_line_magic("config", f"FlowGptMagics.proxy = {proxy!r}")
    shell.run_line_magic("config", "OpenAI.api_key = 'sk-very-secret'")
    assert ask(shell, "Keep my secrets") is None
    shell.run_line_magic("flowgpt_history", f"--save {tmp_path / 'chat.json'}")
    saved = (tmp_path / "chat.json").read_text()
    assert "Keep my secrets" in saved
    assert "s3cr3t" not in saved and "sk-very-secret" not in saved


# -- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "warned"),
    [
        ('client = dict(api_key="sk-proj-abcdefghijklmnopqrstuv")', True),
        ("%config OpenAI.api_key = 'my-local-secret'", True),
        ('import os; os.environ["OPENAI_API_KEY"] = "abcdefgh12345"', True),
        ("%env OPENAI_API_KEY=abcdefgh12345", True),
        ("%config OpenAI.api_key = None", False),
        ('key = os.environ["OPENAI_API_KEY"]', False),
        ("max_tokens = 200  # a token limit is not a key", False),
    ],
)
def test_a_key_typed_into_a_cell_is_warned_about_in_one_line(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str], cell: str, warned: bool
) -> None:
    shell.run_cell(cell)
    err = capsys.readouterr().err
    assert ("This cell holds an API key, which the notebook keeps" in err) is warned
    assert err.count("\n") <= 1


def test_flowgpt_key_knows_which_providers_take_a_key(shell: InteractiveShell) -> None:
    error = shell.run_cell("%flowgpt_key flowgpt").error_in_exec
    assert isinstance(error, UsageError)
    assert said(error) == "'flowgpt' takes no API key; openai does: %flowgpt_key openai."
