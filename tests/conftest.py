"""Shared fixtures. ``flowgpt_server`` (the local server on a free loopback port, with
FLOWGPT_API_URL pointing at it) comes from the package's own pytest plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from flowgpt_magic.magics import FlowGptMagics
from flowgpt_magic.server import LocalServer


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
def magics(shell: InteractiveShell) -> FlowGptMagics:
    instance = shell.magics_manager.registry["FlowGptMagics"]
    assert isinstance(instance, FlowGptMagics)
    return instance
