"""pytest fixtures for flowgpt-magic, loaded automatically when the package is installed.

``flowgpt_server`` is the bundled local server running on a free loopback port, with
``FLOWGPT_API_URL`` pointing at it for the test (kernels started by the test inherit it)::

    def test_my_notebook(flowgpt_server):
        ...  # run code that uses %%flowgpt or FlowGpt
        assert flowgpt_server.state.requests[0].body["question"] == "Hello"

Set ``flowgpt_server.state.options.delay`` to make streaming slow enough to watch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from .providers.flowgpt import API_URL_ENV

if TYPE_CHECKING:
    from .server import LocalServer


@pytest.fixture
def flowgpt_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    from .server import LocalServer

    with LocalServer() as server:
        monkeypatch.setenv(API_URL_ENV, server.url)
        yield server
