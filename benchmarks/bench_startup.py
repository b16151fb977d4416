"""Start-up: ``%load_ext flowgpt_magic`` in a fresh IPython process, against the same
process without it (and ``%load_ext jupyter_ai_magics`` side by side, when installed).

Each figure is the median of ``runs`` fresh processes: the time ``%load_ext`` itself takes
inside the process, and the whole process's wall time with and without it.
"""

from __future__ import annotations

import compileall
import importlib.util
import statistics
import subprocess
import sys
import time
from typing import Any

from common import goal_lines

SCRIPT = """\
import time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
start = time.perf_counter()
{load}
print(time.perf_counter() - start)
"""


def one_process(extension: str | None) -> tuple[float, float]:
    load = f"shell.run_line_magic('load_ext', {extension!r})" if extension else "pass"
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(load=load)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1]), time.perf_counter() - start


def compile_bytecode(packages: list[str]) -> None:
    """Compile the packages to bytecode, as pip does when it installs them. An editable
    install under PYTHONDONTWRITEBYTECODE (set on these machines) would otherwise compile
    flowgpt_magic from source in every process, some 40 ms no user pays."""
    for package in packages:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations
        for folder in spec.submodule_search_locations:
            compileall.compile_dir(folder, quiet=1)


def run(runs: int = 15) -> dict[str, Any]:
    extensions: list[str | None] = [None, "flowgpt_magic"]
    if importlib.util.find_spec("jupyter_ai_magics"):
        extensions.append("jupyter_ai_magics")
    compile_bytecode([e for e in extensions if e])
    samples: dict[str, list[tuple[float, float]]] = {str(e): [] for e in extensions}
    for _ in range(runs):
        for extension in extensions:  # interleaved: drift hits all alike
            samples[str(extension)].append(one_process(extension))
    medians = {
        name: {
            "load_ext_ms": 1000 * statistics.median(s[0] for s in values),
            "process_ms": 1000 * statistics.median(s[1] for s in values),
        }
        for name, values in samples.items()
    }
    baseline = medians["None"]["process_ms"]
    for figures in medians.values():
        figures["extra_process_ms"] = figures["process_ms"] - baseline
        figures["process_vs_baseline"] = figures["process_ms"] / baseline
    return {
        "runs": runs,
        "medians": medians,
        "summary": {"load_ext_ms": medians["flowgpt_magic"]["load_ext_ms"]},
        "goals": {"load_ext_ms": ("<=", 30.0)},
    }


def report(result: dict[str, Any]) -> str:
    lines = [f"3. Start-up, median of {result['runs']} fresh processes each"]
    for name, figures in result["medians"].items():
        label = "IPython alone" if name == "None" else f"%load_ext {name}"
        lines.append(
            f"   {label:28} load_ext {figures['load_ext_ms']:7.1f} ms; process "
            f"{figures['process_ms']:7.1f} ms ({figures['process_vs_baseline']:.2f}x, "
            f"{figures['extra_process_ms']:+.1f} ms)"
        )
    return "\n".join(lines + goal_lines(result["summary"], result["goals"]))


if __name__ == "__main__":
    print(report(run()))
