"""Real Jupyter kernels for the tests: one fixture (``kernel``, in conftest.py), and what
reads their messages."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

#: What a kernel fixture gives: its manager (to interrupt or stop it) and its client.
Kernel = tuple[KernelManager, BlockingKernelClient]
#: What the magics' instance is, in a kernel's cells.
MAGICS = "get_ipython().magics_manager.registry['FlowGptMagics']"


@dataclass
class Execution:
    reply: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in types]

    @property
    def printed(self) -> str:
        """What the cell printed to its stdout."""
        streams = self.of_type("stream")
        return "".join(m["content"]["text"] for m in streams if m["content"]["name"] == "stdout")


def started(setup: str) -> Iterator[Kernel]:
    """A new kernel with the extension loaded and ``setup`` run; shut down after."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        loaded = finish(kc, kc.execute(f"%load_ext flowgpt_magic\n{setup}"))
        assert loaded.reply["status"] == "ok", loaded.reply
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def finish(kc: BlockingKernelClient, msg_id: str, timeout: float = 60) -> Execution:
    """Collect the iopub messages of one execution until the kernel is idle again."""
    deadline = time.monotonic() + timeout
    execution = Execution(reply={})
    while True:
        message = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        execution.messages.append(message)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            break
    while True:  # its own reply: not one left over from an earlier request
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            execution.reply = reply["content"]
            return execution


def run(kc: BlockingKernelClient, code: str, timeout: float = 60) -> Execution:
    """Run ``code`` in the kernel, to its end."""
    return finish(kc, kc.execute(code), timeout)


def kernel_value(kc: BlockingKernelClient, expression: str) -> Any:
    """The value of ``expression`` in the kernel (as JSON)."""
    done = run(kc, f"print(__import__('json').dumps({expression}))")
    return json.loads(done.printed)


def contents(messages: list[dict[str, Any]], mime: str) -> list[str]:
    """The texts of ``mime`` in display messages and in widgets' new ``outputs``."""
    found = []
    for message in messages:
        content = message["content"]
        if message["msg_type"] == "comm_msg":
            outputs = content["data"].get("state", {}).get("outputs", [])
            found += [o["data"][mime] for o in outputs if mime in o.get("data", {})]
        elif mime in content.get("data", {}):
            found.append(content["data"][mime])
    return found
