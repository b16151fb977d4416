"""One runner for every answer, and the user's kernel left as it was: in a real kernel, and
in terminal IPython driven through a terminal (pexpect), against the bundled server."""

from __future__ import annotations

import json
import os
import sys

import pytest
from kernels import MAGICS, Kernel, finish, run

from flowgpt_magic.server import LocalServer

#: What a kernel's asyncio is: its classes and functions (by identity), its loop's class,
#: whether anything patched the loop, and what ``asyncio.run`` does in a cell.
ASYNCIO = """\
import asyncio, json
_loop = asyncio.get_running_loop()
_coroutine = asyncio.sleep(0)
try:
    asyncio.run(_coroutine)
    _run = "ran"
except RuntimeError as _error:
    _coroutine.close()
    _run = str(_error)
print(json.dumps([id(asyncio.Task), id(asyncio.Future), id(asyncio.run), id(asyncio.gather),
                  type(_loop).__name__, getattr(_loop, "_nest_patched", False), _run,
                  type(asyncio.get_event_loop_policy()).__name__]))
"""


def asyncio_of(kernel: Kernel) -> list[object]:
    _km, kc = kernel
    done = run(kc, ASYNCIO)
    assert done.reply["status"] == "ok", done.reply
    return list(json.loads(done.printed))


def test_answers_of_every_kind_leave_the_kernel_s_asyncio_as_it_was(
    kernel: Kernel, flowgpt_server: LocalServer
) -> None:
    km, kc = kernel
    before = asyncio_of(kernel)
    assert before[6] == "asyncio.run() cannot be called from a running event loop"
    cells = [
        "%%flowgpt\nOne model",
        "%%flowgpt -m openai:gpt-4o -m gemini\nTwo at once",
        "%%flowgpt --background -m openai:llama3.2\nIn the background",
        "%%flowgpt --dry-run\nNot sent",
        "%flowgpt_model",
        f"import time\nwhile {MAGICS}.chat.background:\n    time.sleep(0.01)",
    ]
    for cell in cells:
        assert run(kc, cell).reply["status"] == "ok", cell
    # And one the stop button stopped.
    flowgpt_server.state.options.delay, flowgpt_server.state.options.min_pieces = 0.01, 10_000
    msg_id = kc.execute("%%flowgpt -f text\nA long one")
    while kc.get_iopub_msg(timeout=30)["msg_type"] != "stream":
        pass  # (until it streams)
    km.interrupt_kernel()
    assert finish(kc, msg_id).reply["ename"] == "AnswerInterrupted"
    assert asyncio_of(kernel) == before


def test_a_cell_s_own_asyncio_runs_as_in_a_kernel_that_never_answered(kernel: Kernel) -> None:
    _km, kc = kernel
    assert run(kc, "%%flowgpt\nFirst").reply["status"] == "ok"
    own = (
        "import asyncio\n"
        "async def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
        "print(await asyncio.gather(*(twice(n) for n in range(3))))"
    )
    assert run(kc, own).printed == "[0, 2, 4]\n"  # (top-level await)
    # An event loop of the cell's own, in a thread of its own.
    threaded = (
        "import asyncio, concurrent.futures\n"
        "with concurrent.futures.ThreadPoolExecutor() as pool:\n"
        "    print(pool.submit(asyncio.run, asyncio.sleep(0, 'own loop')).result())"
    )
    assert run(kc, threaded).printed == "own loop\n"
    # %autoawait off: a coroutine is a value again, as in any kernel.
    assert run(kc, "%autoawait off").reply["status"] == "ok"
    off = run(kc, "import asyncio\nprint(type(asyncio.sleep(0)).__name__)")
    assert off.printed.startswith("coroutine")
    assert run(kc, "%autoawait on").reply["status"] == "ok"
    assert run(kc, "%%flowgpt\nStill answering?").reply["status"] == "ok"


def test_every_answer_runs_on_the_one_thread_and_its_session(kernel: Kernel) -> None:
    _km, kc = kernel
    for cell in ("%%flowgpt\nOne", "%%flowgpt -m openai:gpt-4o -m gemini\nTwo"):
        run(kc, cell)
    run(kc, "%%flowgpt --background\nThree")
    seen = run(
        kc,
        "import threading, time\n"
        f"while {MAGICS}.chat.background:\n    time.sleep(0.01)\n"
        "print(sorted(t.name for t in threading.enumerate() if t.name.startswith('flowgpt')),"
        f" {MAGICS}.chat._runner.session().connector.limit)",
    ).printed
    assert seen == "['flowgpt-answers'] 100\n"  # (one thread; one pooled session)


@pytest.mark.skipif(sys.platform == "win32", reason="a terminal of pexpect's")
def test_in_terminal_ipython_ctrl_c_stops_an_answer_and_asyncio_still_runs(
    flowgpt_server: LocalServer,
) -> None:
    import pexpect

    flowgpt_server.state.options.delay = 0.01
    flowgpt_server.state.options.min_pieces = 100_000  # (a quarter of an hour, unless stopped)
    ipython = pexpect.spawn(
        sys.executable,
        ["-m", "IPython", "--no-banner", "--colors=nocolor", "--simple-prompt"],
        env={**os.environ, "TERM": "dumb"},
        encoding="utf-8",
        timeout=30,
    )
    try:
        ipython.expect_exact("In [1]: ")
        ipython.sendline("%load_ext flowgpt_magic")
        ipython.expect_exact("In [2]: ")
        ipython.sendline("get_ipython().run_cell_magic('flowgpt', '', 'Tell me everything')")
        ipython.expect_exact("[Offline answer from the flowgpt-magic local server")
        ipython.sendcontrol("c")  # (Ctrl-C, as a person presses it)
        ipython.expect(r"■ Interrupted after [\d,]+ characters")
        ipython.expect_exact("In [3]: ")
        assert flowgpt_server.state.wait_for(lambda s: s.disconnects == 1, 10)
        flowgpt_server.state.options.min_pieces = 0
        ipython.sendline("get_ipython().run_cell_magic('flowgpt', '', 'Still there?')")
        ipython.expect(r"\(gpt-3\.5-turbo · first piece in ")
        ipython.expect_exact("In [4]: ")
        ipython.sendline("import asyncio; print(asyncio.run(asyncio.sleep(0, 'run ok')))")
        ipython.expect_exact("run ok")
        ipython.sendline("await asyncio.sleep(0, 'await ok')")
        ipython.expect_exact("await ok")
        ipython.sendline("exit")
        ipython.expect(pexpect.EOF)
    finally:
        ipython.close(force=True)
    assert flowgpt_server.state.completed == 1
