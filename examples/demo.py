"""A tour of flowgpt-magic in IPython, against the bundled local server (no network needed).

    python examples/demo.py            # watch answers stream in, word by word
    python examples/demo.py --fast     # no delay between pieces

It runs the cells below in an IPython shell, showing each as you would type it. In a
notebook the same cells stream into an output widget instead of the terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell

from flowgpt_magic.server import OPENAI_PATH, PATH, LocalServer, ServerOptions

CELLS = [
    "%load_ext flowgpt_magic",
    "%flowgpt_model",
    "%%flowgpt\nWhat is a Jupyter notebook, in one sentence?",
    "%%flowgpt\nAnd who uses them?",
    '%%flowgpt -m gemini -t 0.2 -s "Answer like a pirate."\nSay hello.',
    "%flowgpt_history",
    "%flowgpt_history --save {folder}/conversation.json",
    "%flowgpt_history --reset",
    "%flowgpt_history --load {folder}/conversation.json",
    "%%flowgpt -m gpt-5\nThis model does not exist, so nothing is sent.",
    "%%flowgpt --no-history\nA side question that stays out of the conversation.",
    # The same conversation, continued with an OpenAI-compatible server (here, the same
    # local server's /v1 side; in real use OpenAI, Ollama, vLLM, ...):
    "%config OpenAI.base_url = '{openai}'",
    "%%flowgpt -m openai:llama3.2\nAnd now from an OpenAI-compatible server?",
    # A reasoning model thinks first (shown apart); -p sets any model parameter, and an
    # answer cut at its token limit says so. The footer counts the server's tokens.
    "%%flowgpt -m openai:llama3.2 -p max_tokens=30\n/think\nWhy is the sky blue?",
]


def main() -> None:
    delay = 0.0 if "--fast" in sys.argv else 0.04
    with (
        LocalServer(options=ServerOptions(delay=delay)) as server,
        tempfile.TemporaryDirectory() as folder,
    ):
        os.environ["FLOWGPT_API_URL"] = server.url
        openai_base = server.url.removesuffix(PATH) + OPENAI_PATH
        print(f"Bundled local server: {server.url}\n")
        shell = InteractiveShell.instance()
        for number, cell in enumerate(CELLS, start=1):
            source = cell.format(folder=Path(folder).as_posix(), openai=openai_base)
            prompt = f"In [{number}]: "
            print(prompt + source.replace("\n", "\n" + " " * (len(prompt) - 5) + "...: "))
            shell.run_cell(source, store_history=True)
            print()
        requests = len(server.state.requests)
        print(f"The server answered {requests} requests and rejected {len(server.state.rejected)}.")


if __name__ == "__main__":
    main()
