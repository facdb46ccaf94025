"""Helpers shared by the benchmark scripts: result files, machine description, tables, memory.

Imports neither torch nor transformers (the analysis benchmark runs without them).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lora_repro import runs
from lora_repro.runs import atomic_write_json

BENCH_SUBDIR = "bench"
REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


# ------------------------------------------------------------------------------------------------
# Result files
# ------------------------------------------------------------------------------------------------
def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its module docstring's first paragraph and ``--results``."""
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--results", default="results", help="results folder; JSON goes to <results>/bench/"
    )
    return p


def bench_dir(results: str | os.PathLike) -> Path:
    """``<results>/bench``, where every benchmark writes its JSON."""
    return Path(results) / BENCH_SUBDIR


def write_result(results: str | os.PathLike, name: str, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` to ``<results>/bench/<name>.json`` and return the path.

    Non-finite floats are written as ``null`` so that the file is strict JSON.
    """
    return atomic_write_json(bench_dir(results) / f"{name}.json", _finite(payload))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_result(results: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The JSON a benchmark wrote, or ``None`` when it is missing."""
    p = bench_dir(results) / f"{name}.json"
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# The machine
# ------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else platform.machine()


def _mem_total_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemTotal:\s+(\d+) kB", text, re.M)
    return round(int(m.group(1)) / 2**20, 1) if m else None


def git_state() -> dict[str, Any]:
    """``{"git_sha", "git_dirty"}`` of the repository (``None`` outside a git checkout)."""
    return runs.git_state(REPO)


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` when absent) and Python's."""
    return runs.package_versions(*packages)


def machine_info(**extra: Any) -> dict[str, Any]:
    """What a reader needs to judge the timings: CPU, cores, memory, load, versions, git SHA.

    ``load_avg`` (1, 5, 15 min) is read at the call; a load above the core count means other
    work shared the CPU and the timings are noisy.
    """
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "mem_total_gib": _mem_total_gib(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **git_state(),
    }
    info.update(extra)
    return info


def busy_note(info: dict[str, Any]) -> str | None:
    """A warning line when the 1-minute load exceeded half the usable cores at the start."""
    load, cpus = info["load_avg"][0], info.get("usable_cpus") or 1
    if load > 0.5 * cpus:
        return (
            f"note: load average {load:.1f} on {cpus} CPUs when the benchmark started: other "
            "work shared the CPU, so absolute times are noisy (ratios less so)"
        )
    return None


# ------------------------------------------------------------------------------------------------
# Tables and statistics
# ------------------------------------------------------------------------------------------------
def fmt(x: Any, digits: int = 3) -> str:
    """A compact cell: floats to ``digits`` significant digits, ``None`` as a dash."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != x:
            return "–"
        if x == 0 or 1e-3 <= abs(x) < 1e5:
            return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"
        return f"{x:.2e}"
    return str(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pipes aligned) of ``rows`` under ``headers``."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(xs))


def target(value: float | None, limit: float, *, at_most: bool = True) -> dict[str, Any]:
    """``{"value", "target", "met"}``; ``met`` is ``None`` when ``value`` is unknown."""
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, "target": limit, "rule": "<=" if at_most else ">=", "met": met}


# ------------------------------------------------------------------------------------------------
# Memory (Linux)
# ------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def rss_mib() -> float | None:
    """Current resident set size of this process (VmRSS), MiB."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_rss_mib() -> float | None:
    """Peak resident set size since start or the last :func:`reset_peak_rss` (VmHWM), MiB."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/self/clear_refs``); False if impossible.

    Freed heap memory is first handed back to the OS (``malloc_trim``), so the peak measured next
    counts memory the next code needs, not what glibc kept from earlier code.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def ensure_blas_threads(n: int | None, module: str, argv: Sequence[str]) -> None:
    """Re-execute ``python -m module *argv`` with the BLAS thread count ``n`` when it differs.

    numpy's BLAS reads its thread count once, at import; this is the only portable way to set
    it without threadpoolctl. On a busy machine OpenBLAS's spinning workers can make small
    factorizations 100× slower, and one thread gives steadier numbers.
    """
    if not n or all(os.environ.get(v) == str(n) for v in BLAS_ENV):
        return
    env = dict(os.environ, **{v: str(n) for v in BLAS_ENV})
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def blas_threads_choice(value: str) -> int | None:
    """The BLAS thread count ``--blas-threads`` asks for (``None``: leave the environment's).

    ``auto`` gives 1 when the 1-minute load exceeds half the usable cores: measured here, with
    three processes on two cores, OpenBLAS's two spinning threads made the 12288×64 QR of the
    factored SVD 50× slower (2.8 s instead of 58 ms) and the dense SVD 5× slower.

    Raises:
        ValueError: for a value that is not ``auto``, ``default`` or a positive integer.
    """
    if value == "default":
        return None
    if value == "auto":
        return 1 if busy_note(machine_info()) else None
    n = int(value)
    if n < 1:
        raise ValueError(f"--blas-threads must be auto, default or >= 1, got {value!r}")
    return n


def python_cmd(module: str, *args: str) -> list[str]:
    """``[python, -m, module, *args]`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def target_lines(payload: dict[str, Any], keys: Sequence[str], target_fmt: str = "") -> list[str]:
    """One line per measured target: ``key: value (target <rule> <target>: met|MISSED)``."""
    lines = []
    for key in keys:
        t = payload["targets"][key]
        if t["value"] is not None:
            lines.append(
                f"{key}: {t['value']:.4g} (target {t['rule']} {format(t['target'], target_fmt)}: "
                f"{'met' if t['met'] else 'MISSED'})"
            )
    return lines
