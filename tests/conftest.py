"""Shared fixtures. ``flowgpt_server`` (the local server on a free loopback port, with
FLOWGPT_API_URL pointing at it) comes from the package's own pytest plugin; the real
servers (llama.cpp's, LiteLLM's proxy) from real_servers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from kernels import Kernel, started
from real_servers import RunningServer, free_port, start_litellm, start_llama

from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer


@pytest.fixture
def shell(flowgpt_server: LocalServer) -> Iterator[InteractiveShell]:
    """An IPython shell with the extension freshly loaded (a new conversation per test)."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "flowgpt_magic")
    yield ip
    ip.run_line_magic("unload_ext", "flowgpt_magic")
    # %config also writes into the shell's config (so settings survive %reload_ext); start
    # the next test from a clean one.
    for section in ("FlowGptMagics", "OpenAI"):
        ip.config.pop(section, None)


@pytest.fixture
def kernel_setup() -> str:
    """Cells a module's kernels run after loading the extension (override it)."""
    return ""


@pytest.fixture
def kernel(
    flowgpt_server: LocalServer, kernel_setup: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Kernel]:
    """A real kernel with the extension loaded, its servers the bundled one's (FlowGPT's,
    and OpenAI's dialect), as a notebook's are."""
    base = flowgpt_server.url.removesuffix(PATH) + OPENAI_PATH
    monkeypatch.setenv("OPENAI_BASE_URL", base)  # (a kernel has the environment it starts in)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield from started(kernel_setup)


@pytest.fixture
def magics(shell: InteractiveShell) -> FlowGptMagics:
    instance = shell.magics_manager.registry["FlowGptMagics"]
    assert isinstance(instance, FlowGptMagics)
    return instance


# -- real servers that no one here wrote (see real_servers.py) ------------------------------


@pytest.fixture(scope="session")
def llama() -> Iterator[RunningServer]:
    """llama.cpp's own server with SmolLM2, sending its ':' keep-alive line every second."""
    server = start_llama(ping=1)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tools_llama() -> Iterator[RunningServer]:
    """The same, with a chat template that offers tools: it answers with real tool_calls."""
    server = start_llama(mode="tools")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def thinking_llama() -> Iterator[RunningServer]:
    """The same, made to reason first: it streams reasoning_content, then the answer."""
    server = start_llama(mode="thinking")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def inline_llama() -> Iterator[RunningServer]:
    """The same reasoning, left in the content as a <think> block (no reasoning parser)."""
    server = start_llama(mode="inline")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def litellm(llama: RunningServer) -> Iterator[RunningServer]:
    """LiteLLM's proxy: a mock model, SmolLM2 through llama.cpp, and "doomed", a SmolLM2 on
    a port of its own (``doomed_llama``) that a test may kill in the middle of an answer."""
    doomed = free_port()
    upstream = {"model": "openai/SmolLM2", "api_key": "sk-unused"}
    server = start_litellm(
        {
            "mock-gpt": {"model": "openai/mock-gpt", "api_key": "x", "mock_response": "Hi there!"},
            "priced-mock": {
                "model": "openai/priced-mock",
                "api_key": "x",
                "mock_response": "A priced answer.",
                "input_cost_per_token": 0.000001,
                "output_cost_per_token": 0.000002,
            },
            "smollm2": {**upstream, "api_base": llama.base_url},
            "doomed": {**upstream, "api_base": f"http://127.0.0.1:{doomed}/v1"},
        }
    )
    server.extra["doomed_port"] = doomed
    yield server
    server.stop()


@pytest.fixture
def doomed_llama(litellm: RunningServer) -> Iterator[RunningServer]:
    server = start_llama(port=litellm.extra["doomed_port"])
    yield server
    server.stop()
