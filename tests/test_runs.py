"""The run-directory schema (lora_repro.runs): atomic writes, adapters, base weights, discovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lora_repro import runs
from lora_repro.errors import DamagedFile


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _factors(seed=0, r=4, shapes=None):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"enc.layer.0.q": (32, 24), "enc.layer.1.v": (16, 24)}
    A = {k: rng.standard_normal((r, kk)).astype(np.float32) for k, (d, kk) in shapes.items()}
    B = {k: rng.standard_normal((d, r)).astype(np.float32) for k, (d, kk) in shapes.items()}
    return A, B


MODULES = {
    "enc.layer.0.q": runs.ModuleInfo("enc.layer.0.q", "enc.layer.0.q", "q", 0, 32, 24),
    "enc.layer.1.v": runs.ModuleInfo("enc.layer.1.v", "h.1.attn.c_attn", "v", 1, 16, 24, "v"),
}


def _metadata(**kw):
    base = dict(
        r=4,
        alpha=8.0,
        scaling=2.0,
        init="gaussian",
        targets=["q", "v"],
        base_model="org/tiny@abc123",
        modules=MODULES,
        n_layers=2,
    )
    return runs.adapter_metadata(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------
def test_atomic_writes_leave_no_temp_files(tmp_path):
    runs.atomic_write_json(
        tmp_path / "summary.json",
        {"acc": np.float32(0.5), "n": np.int64(3), "v": np.arange(2), "p": Path("a/b")},
    )
    runs.atomic_write_yaml(tmp_path / "config.yaml", {"model": {"name": "x"}, "seed": 0})
    runs.atomic_write_text(tmp_path / "sub" / "note.txt", "héllo")  # creates the folder
    runs.atomic_save_safetensors(
        {"w": np.ones((2, 3), np.float32)}, tmp_path / "w.safetensors", {"k": "v"}
    )
    runs.atomic_write_json(tmp_path / "summary.json", {"acc": 0.75})  # replace
    assert _files(tmp_path) == ["config.yaml", "sub", "summary.json", "w.safetensors"]
    assert _files(tmp_path / "sub") == ["note.txt"]
    assert runs.read_json(tmp_path / "summary.json") == {"acc": 0.75}
    assert (tmp_path / "sub" / "note.txt").read_text(encoding="utf-8") == "héllo"
    assert runs.read_config(tmp_path) == {"model": {"name": "x"}, "seed": 0}


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path):
    f = tmp_path / "w.safetensors"
    runs.atomic_save_safetensors({"w": np.zeros(3, np.float32)}, f)
    before = f.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type
        runs.atomic_save_safetensors({"w": np.array(["not", "numeric"])}, f)
    assert _files(tmp_path) == ["w.safetensors"]
    assert f.read_bytes() == before
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        runs.atomic_write_json(tmp_path / "x.json", {"bad": object()})
    assert _files(tmp_path) == ["w.safetensors"]


def test_jsonl_append_and_torn_last_line(tmp_path):
    f = tmp_path / "metrics.jsonl"
    assert runs.read_jsonl(f) == []  # missing file
    runs.append_jsonl(f, {"step": 1, "loss": np.float32(0.5)})
    runs.append_jsonl(f, {"step": 2, "loss": 0.25})
    with open(f, "a", encoding="utf-8") as fh:
        fh.write('{"step": 3, "lo')  # killed writer
    assert runs.read_jsonl(f) == [{"loss": 0.5, "step": 1}, {"loss": 0.25, "step": 2}]
    with open(f, "a", encoding="utf-8") as fh:
        fh.write("\n\n")  # blank lines are skipped, the torn line still ends the read
    assert [r["step"] for r in runs.read_jsonl(f)] == [1, 2]


# ------------------------------------------------------------------------------------------------
# Run discovery
# ------------------------------------------------------------------------------------------------
def _run(root: Path, rel: str, status: str | None, meta: bool = True) -> Path:
    d = root / rel
    runs.atomic_write_yaml(d / runs.CONFIG_FILE, {"name": rel})
    if meta:
        runs.atomic_write_json(d / runs.META_FILE, {"seed": 0})
    if status == "success":
        runs.atomic_write_json(d / runs.SUMMARY_FILE, {"val_accuracy": 0.5})
    if status is not None:
        runs.atomic_write_json(d / runs.STATUS_FILE, {"status": status})
    return d


def test_find_runs_lists_only_successful_runs(tmp_path):
    ok1 = _run(tmp_path, "s/t/m/qv-r8/seed0", "success")
    ok2 = _run(tmp_path, "s/t/m/q-r8/seed1", "success")
    running = _run(tmp_path, "s/t/m/q-r8/seed2", "running")
    failed = _run(tmp_path, "s/t/m/q-r8/seed3", "failed")
    no_status = _run(tmp_path, "s/t/m/q-r8/seed4", None)
    lost_meta = _run(tmp_path, "s/t/m/q-r8/seed5", "success", meta=False)  # meta.json deleted
    _run(tmp_path, "s/t/m/q-r8/seed7", None, meta=False)  # a config.yaml alone: not a run dir
    _run(tmp_path, "s/t/m/q-r8/seed0/.hydra", "success")  # Hydra's own config folder
    torn = _run(tmp_path, "s/t/m/q-r8/seed6", None)
    (torn / runs.STATUS_FILE).write_text('{"status": "succ', encoding="utf-8")

    assert runs.find_runs(tmp_path) == sorted([ok1, ok2])
    assert runs.find_runs(tmp_path, finished_only=False) == sorted(
        [ok1, ok2, running, failed, no_status, torn, lost_meta]
    )
    assert [runs.run_status(d) for d in (ok1, running, failed, no_status)] == [
        "success",
        "running",
        "failed",
        None,
    ]
    with pytest.raises(DamagedFile, match="status.json: torn or not JSON"):
        runs.run_status(torn)  # reported as damaged, never as "no status"
    damaged = []
    assert runs.find_runs(tmp_path, damaged=damaged) == sorted([ok1, ok2])
    assert sorted(str(d.path) for d in damaged) == sorted(  # named, not silently dropped
        [str(lost_meta / runs.META_FILE), str(torn / runs.STATUS_FILE)]
    )
    assert runs.is_finished(ok1) and not runs.is_finished(running)
    assert [(d, c["name"]) for d, c in runs.iter_finished(tmp_path)] == [
        (ok2, "s/t/m/q-r8/seed1"),
        (ok1, "s/t/m/qv-r8/seed0"),
    ]
    assert runs.find_runs(tmp_path / "missing") == []


# ------------------------------------------------------------------------------------------------
# Adapter files
# ------------------------------------------------------------------------------------------------
def test_save_load_adapter_round_trip(tmp_path):
    A, B = _factors()
    A0, _ = _factors(seed=1)
    md = _metadata(scaling_rule="standard", dropout=0.1)
    f = runs.save_adapter_factors(tmp_path / "run" / runs.ADAPTER_FILE, A, B, md)
    runs.atomic_save_safetensors(
        {f"{k}.lora_A.weight": v for k, v in A0.items()}, tmp_path / "run" / runs.ADAPTER_INIT_FILE
    )
    assert _files(tmp_path / "run") == [runs.ADAPTER_FILE, runs.ADAPTER_INIT_FILE]
    for source in (tmp_path / "run", f):  # a run dir or the file itself
        ad = runs.load_adapter(source)
        assert (ad.r, ad.alpha, ad.scaling, ad.init) == (4, 8.0, 2.0, "gaussian")
        assert ad.targets == ["q", "v"] and ad.base_model == "org/tiny@abc123"
        assert ad.n_layers == 2
        assert ad.modules == MODULES
        assert ad.extra == {"scaling_rule": "standard", "dropout": "0.1"}
        for k in A:
            assert ad.A[k].dtype == np.float32 and ad.B[k].dtype == np.float32
            np.testing.assert_array_equal(ad.A[k], A[k])
            np.testing.assert_array_equal(ad.B[k], B[k])
            np.testing.assert_array_equal(ad.A_init[k], A0[k])
    # peft key names in the file
    from safetensors.numpy import load_file

    assert sorted(load_file(str(f))) == [
        "enc.layer.0.q.lora_A.weight",
        "enc.layer.0.q.lora_B.weight",
        "enc.layer.1.v.lora_A.weight",
        "enc.layer.1.v.lora_B.weight",
    ]


def test_adapter_helpers(tmp_path):
    A, B = _factors()
    ad = runs.load_adapter(runs.save_adapter_factors(tmp_path / "a.safetensors", A, B, _metadata()))
    assert ad.A_init is None
    assert ad.key_for("v", 1) == "enc.layer.1.v"
    assert ad.layers() == [0, 1]
    with pytest.raises(
        KeyError,
        match=r"adapter has no ΔWk at layer 0; it adapts \(type, layer\) = "
        r"\[\('q', 0\), \('v', 1\)\]",
    ):
        ad.key_for("k", 0)
    key = "enc.layer.0.q"
    expected = 2.0 * (B[key].astype(np.float64) @ A[key].astype(np.float64))
    dw = ad.delta_w(key)
    assert dw.dtype == np.float64 and dw.shape == (32, 24)
    np.testing.assert_allclose(dw, expected, rtol=1e-12)
    np.testing.assert_allclose(ad.delta_w(key, scaled=False), expected / 2.0, rtol=1e-12)


def test_save_adapter_factors_rejects_inconsistent_factors(tmp_path):
    A, B = _factors()
    with pytest.raises(ValueError, match="A and B name different modules: \\['extra'\\]"):
        runs.save_adapter_factors(
            tmp_path / "a.safetensors", {**A, "extra": A["enc.layer.0.q"]}, B, _metadata()
        )
    B_bad = {**B, "enc.layer.0.q": np.zeros((32, 5), np.float32)}
    with pytest.raises(
        ValueError,
        match=r"enc.layer.0.q: A is \(4, 24\) but B is \(32, 5\); "
        r"expected A \(r, k\), B \(d, r\)",
    ):
        runs.save_adapter_factors(tmp_path / "a.safetensors", A, B_bad, _metadata())
    assert list(tmp_path.iterdir()) == []


def test_load_adapter_on_a_non_adapter(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match="no adapter file at .*adapter.safetensors; is this a finished run directory",
    ):
        runs.load_adapter(tmp_path)
    peft_like = tmp_path / "adapter_model.safetensors"
    runs.atomic_save_safetensors(
        {"x.lora_A.weight": np.ones((2, 2), np.float32)}, peft_like, {"format": "pt"}
    )
    with pytest.raises(
        ValueError,
        match=r"is not a lora-repro adapter \(header format='pt'\); "
        r"read a peft adapter folder with lora_repro.lora."
        r"import_peft_adapter",
    ):
        runs.load_adapter(peft_like)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello", encoding="utf-8")
    with pytest.raises(
        DamagedFile, match=r"notes.safetensors: not a complete safetensors file"
    ) as e:
        runs.load_adapter(text)
    assert "peft" not in str(e.value)  # a torn file is not a peft adapter


# ------------------------------------------------------------------------------------------------
# Pretrained weights
# ------------------------------------------------------------------------------------------------
def test_base_weights_round_trip(tmp_path):
    path = runs.base_weights_path(tmp_path, "minilm")
    assert path == tmp_path / "base_weights" / "minilm.safetensors"
    with pytest.raises(FileNotFoundError, match="no pretrained weights at .*any finished training"):
        runs.load_base_weights(path)
    W = {"enc.layer.0.q": np.arange(32 * 24, dtype=np.float64).reshape(32, 24)}
    runs.save_base_weights(path, W, {"enc.layer.0.q": MODULES["enc.layer.0.q"]}, "org/minilm")
    W2, mods = runs.load_base_weights(path)
    assert W2["enc.layer.0.q"].dtype == np.float32
    np.testing.assert_array_equal(W2["enc.layer.0.q"], W["enc.layer.0.q"])
    assert mods == {"enc.layer.0.q": MODULES["enc.layer.0.q"]}
    assert _files(path.parent) == ["minilm.safetensors"]


def test_metadata_values_are_strings():
    md = _metadata(extra_list=[1, 2], note="plain")
    assert all(isinstance(v, str) for v in md.values())
    assert md["format"] == runs.ADAPTER_FORMAT
    assert json.loads(md["targets"]) == ["q", "v"] and md["alpha"] == "8.0"
    assert md["extra_list"] == "[1, 2]" and md["note"] == "plain"
    assert yaml.safe_load(md["n_layers"]) == 2


def test_runs_does_not_import_torch():
    """analysis reads run directories through runs; it must stay importable without torch."""
    code = "import sys, lora_repro.runs; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------------------------------------------------------
# A run in progress, the results folder, file permissions
# ------------------------------------------------------------------------------------------------
def test_live_trainer_names_only_a_live_process_on_this_host(tmp_path):
    import socket

    d = tmp_path / "run"
    d.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        for status, expected in [
            ({"status": "running", "pid": sleeper.pid, "host": host}, sleeper.pid),
            ({"status": "running", "pid": sleeper.pid, "host": host + "-other"}, None),
            ({"status": "running", "pid": os.getpid(), "host": host}, None),  # this process
            ({"status": "success", "pid": sleeper.pid, "host": host}, None),
            ({"status": "running"}, None),
        ]:
            runs.atomic_write_json(d / runs.STATUS_FILE, status)
            assert runs.live_trainer(d) == expected, status
    finally:
        sleeper.kill()
        sleeper.wait()
    runs.atomic_write_json(
        d / runs.STATUS_FILE, {"status": "running", "pid": sleeper.pid, "host": host}
    )
    assert runs.live_trainer(d) is None  # killed: its pid is gone
    assert runs.live_trainer(tmp_path / "missing") is None


def test_results_write_problem_names_files_in_the_way(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert runs.results_write_problem(tmp_path / "new" / "deeper") is None
    assert runs.results_write_problem(tmp_path) is None
    assert (
        runs.results_write_problem(afile)
        == f"paths.results={afile} is a file, not a folder: point it at a folder"
    )
    assert "lies below" in runs.results_write_problem(afile / "sub")
    assert runs.results_write_problem("") == (
        "paths.results is empty: give a folder, e.g. paths.results=results"
    )
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert "is not writable by this user" in runs.results_write_problem(ro / "res")


def test_result_files_are_readable_by_others_under_umask_022(tmp_path):
    old = os.umask(0o022)
    try:
        st = runs.atomic_save_safetensors(
            {"a": np.zeros(2, dtype=np.float32)}, tmp_path / "a.safetensors"
        )
        js = runs.atomic_write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert oct(st.stat().st_mode & 0o777) == "0o644"
    assert oct(js.stat().st_mode & 0o777) == "0o644"
