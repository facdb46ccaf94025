"""The life of a run directory on the training side: its name, identity, claim and record.

A run directory is named from its config (never a timestamp), so the same config always lands in
the same folder, and a run is identified by its config less the keys that do not change what it
computes (:data:`lora_repro.config.NON_IDENTITY`), in canonical form (weight types in q, k, v, o
order, layers sorted, each once). :func:`claim` decides what to do with the folder:

* a live process on this host is training it → :class:`RunConflict`;
* it holds a finished run with the same identity → skipped (its summary is returned);
* it holds a finished run with another identity → :class:`RunConflict`;
* anything else (empty, failed, killed, damaged files) → stale files cleared, ``status.json``
  set to ``running`` (with this pid) and the config written.

:func:`recording` then wraps the training: ``success`` is written last, when everything else is
on disk; any exception, Ctrl-C, or SIGTERM / SIGUSR2 (what Slurm and submitit send before a time
limit) writes ``failed`` with the reason. The signal is then handed on to the handler that was
installed before (submitit's requeue keeps working), or the process exits with 128 + N. SIGKILL
cannot be caught: such a run keeps ``running`` with a pid that is gone, and is redone.

This module depends on the config and the on-disk format only (no torch), so its behaviour is
tested without training a model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lora_repro import runs
from lora_repro.config import NON_IDENTITY, canonical_layers
from lora_repro.errors import LoraReproError
from lora_repro.runs import canonical_targets

log = logging.getLogger("lora_repro")

# Signals that mean "stop now, you may clean up": scancel / a time limit / kill (SIGTERM), and
# submitit's warning before a Slurm time limit (SIGUSR2).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

# Files of an earlier attempt that a fresh start removes (config.yaml and meta.json are rewritten).
STALE_FILES = (
    runs.SUMMARY_FILE,
    runs.ADAPTER_FILE,
    runs.ADAPTER_INIT_FILE,
    runs.DELTA_FILE,
    runs.METRICS_FILE,
    runs.STATUS_FILE,
)


class RunConflict(LoraReproError, RuntimeError):
    """The run directory holds a finished run with other settings, or a live process trains it."""


class Interrupted(BaseException):
    """A stop signal arrived during a run (a ``BaseException``, like ``KeyboardInterrupt``: it
    ends a multirun too, instead of being recorded as one failed job)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by signal {signum} ({signal.Signals(signum).name})")


def seeds_of(cfg: Any) -> tuple[int, int]:
    """``(seed_init, seed_data)``: each defaults to ``seed``."""
    s_init = cfg["seed"] if cfg.get("seed_init") is None else cfg["seed_init"]
    s_data = cfg["seed"] if cfg.get("seed_data") is None else cfg["seed_data"]
    return int(s_init), int(s_data)


def _fmt_alpha(alpha: float) -> str:
    return str(int(alpha)) if float(alpha).is_integer() else f"{alpha:g}"


def run_dir_for(cfg: Any, r: int | None) -> Path:
    """``<paths.results>/<group>/<task>/<model>/<targets>-r<r>-a<alpha>[-L<layers>]/seed<k>``;
    ``<targets>-full[-L<layers>]`` for full fine-tuning (``adapter.method=full``: no r, no α).

    From the canonical forms: ``[v,q]`` and ``[q,v,q]`` name ``q_v``, layers ``[5,0,0]`` name
    ``-L0_5``. ``seed<k>-i<init>-d<data>`` when the two seeds are set apart.
    """
    s_init, s_data = seeds_of(cfg)
    seed_part = f"seed{cfg['seed']}"
    if (s_init, s_data) != (cfg["seed"], cfg["seed"]):
        seed_part += f"-i{s_init}-d{s_data}"
    a = cfg["adapter"]
    targets = "_".join(canonical_targets(a["targets"]))
    layers = canonical_layers(a.get("layers"))
    layer_part = "" if layers is None else "-L" + "_".join(str(i) for i in layers)
    if a.get("method", "lora") == "full":
        name = f"{targets}-full{layer_part}"
    else:
        name = f"{targets}-r{r}-a{_fmt_alpha(a['alpha'])}{layer_part}"
    return (
        Path(cfg["paths"]["results"])
        / cfg["group"]
        / cfg["task"]["name"]
        / cfg["model"]["name"]
        / name
        / seed_part
    )


def canonical_config(resolved: dict[str, Any]) -> dict[str, Any]:
    """``resolved`` with adapter.targets and adapter.layers in canonical form (a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in resolved.items()}
    adapter = out.get("adapter")
    if isinstance(adapter, dict):
        if adapter.get("targets") is not None:
            adapter["targets"] = canonical_targets(adapter["targets"])
        if adapter.get("layers") is not None:
            adapter["layers"] = canonical_layers(adapter["layers"])
    return out


def identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: the canonical config less :data:`NON_IDENTITY`."""
    out = canonical_config(resolved)
    for path in NON_IDENTITY:
        node = out
        for p in path[:-1]:
            node = node.get(p, {})
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def diff(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Differences between a saved config ``saved`` and the current one ``now``.

    A key the saved config lacks is not compared: it was added to the schema after that run was
    trained, and its default reproduces what the code did then.
    """
    out = []
    for k in sorted(set(saved) | set(now)):
        if k not in saved:
            continue
        va, vb = saved.get(k), now.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} (saved) vs {vb!r} (now)")
    return out


def claim(run_dir: Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """Take ``run_dir`` for a run of config ``resolved`` (canonical), or skip a finished one.

    Returns:
        The saved summary when the same run already finished (nothing is written), else
        ``None`` after clearing stale files and writing ``status: running`` and config.yaml.

    Raises:
        RunConflict: a live process trains the folder, or it holds a finished run with other
            settings (the message says how to keep both or replace it).
        ResultsWriteError: the folder cannot be written.
    """
    pid = runs.live_trainer(run_dir)
    if pid is not None:
        raise RunConflict(
            f"{run_dir} is being trained now by process {pid} on this host; wait for it to "
            "finish (or stop it) and rerun, or set group=<name> to keep both"
        )
    state = runs.run_state(run_dir)
    if state.usable:
        changes = diff(identity(runs.read_config(run_dir)), identity(resolved))
        if changes:
            raise RunConflict(
                f"{run_dir} holds a finished run with other settings ({'; '.join(changes[:3])}); "
                "set group=<name> or paths.results=<dir> to keep both, or delete that "
                "folder to replace it"
            )
        log.info("already finished, skipped: %s", run_dir)
        return runs.read_object(run_dir / runs.SUMMARY_FILE)
    if state.problem is not None:
        log.warning("%s; training the run again", state.problem)
    with runs.writing(run_dir / runs.STATUS_FILE):
        for name in STALE_FILES:
            (run_dir / name).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(
        run_dir / runs.STATUS_FILE,
        {
            "status": "running",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
        },
    )
    runs.atomic_write_yaml(run_dir / runs.CONFIG_FILE, resolved)
    return None


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_raise() -> Iterator[dict[int, Any]]:
    """While inside, SIGTERM / SIGUSR2 raise :class:`Interrupted`; yields the previous handlers.

    Only in the main thread (where Python runs signal handlers); a signal the process ignores
    stays ignored.
    """
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in HANDLED_SIGNALS:
            prev = signal.getsignal(s)
            if prev is signal.SIG_IGN:
                continue
            previous[s] = prev
            signal.signal(s, _raise_interrupted)
    try:
        yield previous
    finally:
        for s, prev in previous.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)


def hand_on(signum: int, previous: Any) -> None:
    """Give a caught signal to the handler installed before ours (e.g. submitit's requeue).

    Returns when that handler returns; where there was none (the default action), the caller
    exits with 128 + signum (:func:`exit_code`).
    """
    if callable(previous) and previous is not _raise_interrupted:
        previous(signum, None)


def exit_code(signum: int) -> int:
    """The shell's conventional exit status of a process stopped by ``signum``."""
    return 128 + signum


def mark_failed(run_dir: Path, reason: str) -> None:
    """Write ``status: failed`` with ``reason``; a folder that cannot be written is logged."""
    try:
        runs.atomic_write_json(
            run_dir / runs.STATUS_FILE, {"status": "failed", "error": reason, "ended": time.time()}
        )
    except OSError as e:
        log.error("could not mark %s failed: %s", run_dir, e)


@contextlib.contextmanager
def recording(run_dir: Path) -> Iterator[None]:
    """Record how the run inside ends: ``success`` last on a normal exit, else ``failed``.

    Raises:
        Interrupted: re-raised after SIGTERM / SIGUSR2 was recorded and handed on.
        Whatever the body raised, after it was recorded.
    """
    with _signals_raise() as previous:
        try:
            yield
        except BaseException as e:
            mark_failed(run_dir, _reason(e))
            if isinstance(e, Interrupted):
                hand_on(e.signum, previous.get(e.signum))
            raise
    runs.atomic_write_json(run_dir / runs.STATUS_FILE, {"status": "success", "ended": time.time()})


def _reason(e: BaseException) -> str:
    if isinstance(e, Interrupted):
        return str(e)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def recording_all(run_dirs: list[Path]) -> Iterator[Callable[[Path, str], None]]:
    """:func:`recording` for several runs trained in one process (:mod:`lora_repro.pack`).

    Yields ``fail(run_dir, reason)``, which marks one run failed while the others go on. On a
    normal exit every run not failed gets ``success`` (last); on any exception or stop signal
    every run not already failed is marked failed with the reason, so a killed pack leaves no run
    reading as finished.

    Raises:
        Interrupted: re-raised after SIGTERM / SIGUSR2 was recorded and handed on.
        Whatever the body raised, after it was recorded.
    """
    failed: set[Path] = set()

    def fail(run_dir: Path, reason: str) -> None:
        mark_failed(run_dir, reason)
        failed.add(run_dir)

    with _signals_raise() as previous:
        try:
            yield fail
        except BaseException as e:
            for d in run_dirs:
                if d not in failed:
                    mark_failed(d, _reason(e))
            if isinstance(e, Interrupted):
                hand_on(e.signum, previous.get(e.signum))
            raise
    for d in run_dirs:
        if d not in failed:
            runs.atomic_write_json(
                d / runs.STATUS_FILE, {"status": "success", "ended": time.time()}
            )


def write_predictions(run_dir: Path, split: str, prompts, refs, preds) -> None:
    """``predictions_<split>.jsonl``: prompt, references and the decoded text of each example."""
    text = "".join(
        json.dumps({"prompt": p, "references": r, "prediction": y}, ensure_ascii=False) + "\n"
        for p, r, y in zip(prompts, refs, preds, strict=True)
    )
    runs.atomic_write_text(run_dir / f"predictions_{split}.jsonl", text)
