"""Talk to chat models from IPython and Jupyter: ``%load_ext flowgpt_magic``, then ``%%flowgpt``."""

from __future__ import annotations

from typing import Any

from .exceptions import (
    AnswerInterrupted,
    ConfigurationError,
    ConnectionFailedError,
    ConnectionLostError,
    FlowGptError,
    HistoryFileError,
    HTTPStatusError,
    InvalidRequestError,
    ModelNotFoundError,
    RequestFailedError,
    ResponseFormatError,
    ResponseTimeoutError,
)
from .providers import FlowGpt, OpenAICompatible

__version__ = "0.1.0"

__all__ = [
    "AnswerInterrupted",
    "ConfigurationError",
    "ConnectionFailedError",
    "ConnectionLostError",
    "FlowGpt",
    "FlowGptError",
    "HTTPStatusError",
    "HistoryFileError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "OpenAICompatible",
    "RequestFailedError",
    "ResponseFormatError",
    "ResponseTimeoutError",
    "__version__",
]


def load_ipython_extension(ipython: Any) -> None:
    from .line_magics import LineMagics
    from .magics import FlowGptMagics

    magics = FlowGptMagics(ipython)
    ipython.register_magics(magics, LineMagics(ipython, magics))


def unload_ipython_extension(ipython: Any) -> None:
    from .line_magics import LineMagics
    from .magics import FlowGptMagics

    magics = ipython.magics_manager.registry.pop(FlowGptMagics.__name__, None)
    lines = ipython.magics_manager.registry.pop(LineMagics.__name__, None)
    if magics is None:
        return
    for registered in (magics, lines):
        for kind, names in registered.magics.items() if registered else ():
            for name in names:
                ipython.magics_manager.magics[kind].pop(name, None)
    for configurable in (magics, *magics.provider_settings.values()):
        if configurable in ipython.configurables:
            ipython.configurables.remove(configurable)
    magics.close()
