"""Synthetic results folders for the analysis tests, written exactly as training writes them.

A results folder holds finished runs (``config.yaml``, ``meta.json``, ``status.json`` success,
``adapter.safetensors`` + ``adapter_init.safetensors``) under
``runs/<task>/<model>/<targets>-r<r>-a<alpha>/seed<k>/`` and the pretrained W of every adapted
module type at every layer in ``base_weights/<model>.safetensors``, all through
:mod:`lora_repro.runs`.

Every module's factors carry a *planted* shared direction: A = A_init + c·e₁ a*ᵀ + noise and
B = c·b* e₁ᵀ + noise with a* (k,), b* (d,) fixed per (type, layer) and shared by every run, so the
top singular directions of A, B, ΔW and A − A_init agree across ranks and seeds (φ(1, 1) ≈ 1)
while the other directions are noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lora_repro import runs

TASK = "rotten_tomatoes"
MODEL = "minilm"
D = K = 48
N_LAYERS = 4
MODULE_PATHS = {
    "q": "bert.encoder.layer.{l}.attention.self.query",
    "k": "bert.encoder.layer.{l}.attention.self.key",
    "v": "bert.encoder.layer.{l}.attention.self.value",
    "o": "bert.encoder.layer.{l}.attention.output.dense",
}
PLANT_SCALE = 2.0
NOISE = 0.02


def module_info(t: str, layer: int, d: int = D, k: int = K) -> runs.ModuleInfo:
    """The :class:`ModuleInfo` of weight type ``t`` at block ``layer``."""
    path = MODULE_PATHS[t].format(l=layer)
    return runs.ModuleInfo(key=path, module=path, type=t, layer=layer, d=d, k=k)


def planted(t: str, layer: int, d: int = D, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The shared unit directions (b* (d,), a* (k,)) of module (t, layer)."""
    rng = np.random.default_rng([7, "qkvo".index(t), layer])
    b, a = rng.standard_normal(d), rng.standard_normal(k)
    return b / np.linalg.norm(b), a / np.linalg.norm(a)


def base_weights(d: int = D, k: int = K, n_layers: int = N_LAYERS) -> dict[str, np.ndarray]:
    """Pretrained W (d, k) per adapter key, all four types at all layers (seeded)."""
    rng = np.random.default_rng(99)
    out = {}
    for layer in range(n_layers):
        for t in MODULE_PATHS:
            out[module_info(t, layer, d, k).key] = rng.standard_normal((d, k)) / np.sqrt(k)
    return out


def write_run(
    results: Path,
    *,
    targets: Sequence[str] = ("q", "v"),
    r: int = 8,
    seed: int = 0,
    alpha: float = 8.0,
    d: int = D,
    k: int = K,
    n_layers: int = N_LAYERS,
    with_init: bool = True,
    task: str = TASK,
    model: str = MODEL,
    group: str = "runs",
) -> Path:
    """Write one finished run (in ``<results>/<group>/``, as experiments.train does)."""
    name = f"{'_'.join(targets)}-r{r}-a{int(alpha) if float(alpha).is_integer() else alpha}"
    run = Path(results) / group / task / model / name / f"seed{seed}"
    rng = np.random.default_rng([r, seed, 11])
    modules, A, B, A0 = {}, {}, {}, {}
    for layer in range(n_layers):
        for t in targets:
            info = module_info(t, layer, d, k)
            b_star, a_star = planted(t, layer, d, k)
            a_init = rng.normal(0.0, NOISE, (r, k))
            a = a_init + rng.normal(0.0, NOISE, (r, k))
            a[0] += PLANT_SCALE * a_star
            b = rng.normal(0.0, NOISE, (d, r))
            b[:, 0] += PLANT_SCALE * b_star
            modules[info.key], A[info.key], B[info.key], A0[info.key] = info, a, b, a_init
    md = runs.adapter_metadata(
        r=r,
        alpha=alpha,
        scaling=alpha / r,
        init="gaussian",
        targets=list(targets),
        base_model="fixture/minilm",
        modules=modules,
        n_layers=n_layers,
    )
    runs.save_adapter_factors(run / runs.ADAPTER_FILE, A, B, md)
    if with_init:
        runs.atomic_save_safetensors(
            {f"{key}.lora_A.weight": v.astype(np.float32) for key, v in A0.items()},
            run / runs.ADAPTER_INIT_FILE,
        )
    cfg = {
        "model": {"name": model, "id": "fixture/minilm"},
        "task": {"name": task},
        "adapter": {"targets": list(targets), "r": r, "alpha": alpha, "init": "gaussian"},
        "seed": seed,
        "group": group,
    }
    runs.atomic_write_yaml(run / runs.CONFIG_FILE, cfg)
    runs.atomic_write_json(run / runs.META_FILE, {"seed": seed, "fixture": True})
    runs.atomic_write_json(run / runs.SUMMARY_FILE, {"r": r, "val_accuracy": 0.8})
    runs.atomic_write_json(run / runs.STATUS_FILE, {"status": "success"})
    return run


def make_results(
    results: Path,
    *,
    ranks: Iterable[int] = (4, 8, 32),
    seed1_ranks: Iterable[int] = (32,),
    d: int = D,
    k: int = K,
    n_layers: int = N_LAYERS,
    with_base: bool = True,
    with_init: bool = True,
) -> Path:
    """A results folder with [q, v] runs at ``ranks`` (seed 0) and ``seed1_ranks`` (seed 1).

    The paper's 8 / 64 are replaced by 8 / 32 to stay small: pass ``--ranks 8,32`` to the CLI.
    """
    results = Path(results)
    for r in ranks:
        write_run(results, r=r, seed=0, d=d, k=k, n_layers=n_layers, with_init=with_init)
    for r in seed1_ranks:
        write_run(results, r=r, seed=1, d=d, k=k, n_layers=n_layers, with_init=with_init)
    if with_base:
        w = base_weights(d, k, n_layers)
        infos = {key: _info_for_key(key, d, k) for key in w}
        runs.save_base_weights(runs.base_weights_path(results, MODEL), w, infos, "fixture/minilm")
    return results


def _info_for_key(key: str, d: int, k: int) -> runs.ModuleInfo:
    layer = int(key.split(".")[3])
    t = next(t for t, p in MODULE_PATHS.items() if p.format(l=layer) == key)
    return module_info(t, layer, d, k)


def write_full_run(
    results: Path,
    *,
    targets: Sequence[str] = ("q", "v"),
    seed: int = 0,
    d: int = D,
    k: int = K,
    n_layers: int = N_LAYERS,
    noise: float = 0.05,
) -> Path:
    """Write one finished full fine-tuning run: ΔW = PLANT_SCALE² · b* a*ᵀ (the direction the LoRA
    runs plant) plus dense Gaussian noise of std ``noise`` (full rank)."""
    run = Path(results) / "runs" / TASK / MODEL / f"{'_'.join(targets)}-full" / f"seed{seed}"
    rng = np.random.default_rng([seed, 13])
    modules, dW = {}, {}
    for layer in range(n_layers):
        for t in targets:
            info = module_info(t, layer, d, k)
            b_star, a_star = planted(t, layer, d, k)
            dW[info.key] = PLANT_SCALE**2 * np.outer(b_star, a_star) + rng.normal(0, noise, (d, k))
            modules[info.key] = info
    runs.save_delta(run / runs.DELTA_FILE, dW, targets=list(targets), base_model="fixture/minilm",
                    modules=modules, n_layers=n_layers, method="full")  # fmt: skip
    cfg = {
        "model": {"name": MODEL, "id": "fixture/minilm"},
        "task": {"name": TASK},
        "adapter": {"method": "full", "targets": list(targets), "r": None, "alpha": None},
        "seed": seed,
        "group": "runs",
    }
    runs.atomic_write_yaml(run / runs.CONFIG_FILE, cfg)
    runs.atomic_write_json(run / runs.META_FILE, {"seed": seed, "fixture": True})
    runs.atomic_write_json(run / runs.SUMMARY_FILE, {"r": None, "val_accuracy": 0.81})
    runs.atomic_write_json(run / runs.STATUS_FILE, {"status": "success"})
    return run
