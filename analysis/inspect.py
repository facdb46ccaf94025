"""``python -m analysis.inspect``: Section 7's analyses of one layer of any adapter, any size.

    python -m analysis.inspect ADAPTER [ADAPTER2] --base MODEL [--layer L] [--type q] [--out DIR]

ADAPTER is a run directory (``results/runs/.../seedN`` with ``adapter.safetensors``) or a peft
adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``). MODEL gives W: a model
folder, a hub id, a ``.safetensors`` / ``.gguf`` file, or ``<results>/base_weights``
(:func:`analysis.basemodel.open_base`). Only the one W needed is read.

Written into DIR (default ``results/inspect/<adapter>[_vs_<adapter2>]/W<type>-L<layer>/``), with
the functions ``make figures`` uses (:mod:`analysis.layer_data`, :mod:`analysis.amplification`,
:mod:`analysis.tables`, :mod:`analysis.figures.plots`):

* two adapters: ``phi_<view>.{png,pdf,csv}``, φ(i, j) (paper Eq. 4) between them — a rank pair
  (Fig. 3: full grid and the zoom i, j ≤ min r) or a seed pair at one rank (Fig. 4: beside two
  random Gaussian matrices);
* ``figure8.{png,pdf,csv}``: φ between W's top-i and ΔW's top-j left-singular directions per
  adapter, and random (App. H.3, Fig. 8);
* ``table7.{md,csv,tex}`` (a second adapter of the same rank: ``adapter2/table7.*``): ‖UᵀWV‖F for
  ΔW's, W's and random directions, ‖ΔW‖F, amplification (§7.3, Table 7). W's top-r σ come from
  :mod:`analysis.rsvd` (dense for min(d, k) ≤ 2048, randomized above), computed once per base
  model and layer; the random level is the closed form r·‖W‖F/√(dk) unless ``--n-random N``;
* ``spectra.{png,pdf,csv}``: singular values of A, B, ΔW of each adapter and W's top ones;
* ``inspect.json``: every number above, the files read and the timings.

Exit status: 0 done; 2 bad input (one line on stderr: a damaged adapter file, a tensor missing
from the base model, shapes that do not match, a layer out of range, ...).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import amplification, basemodel, layer_data, rsvd, subspace, tables
from analysis.figures.draw import long_frame, random_like
from analysis.figures.plots import Panel, heatmap_figure, save_figure, spectrum_figure
from lora_repro import runs, weights
from lora_repro.errors import LoraReproError
from lora_repro.runs import CSV_FLOAT_FORMAT, atomic_write_json, atomic_write_text, rounded

DEFAULT_ROOT = Path("results") / "inspect"
FIG8_TOP_LARGE = 64
"""Rows of Fig. 8 (W's top-i directions) for a W too large for the dense SVD: max(64, r)."""
DENSE_PASS_MAX = 2048 * 2048
"""d·k up to which the pass over W runs in float64; above it in float32 (1e-6 relative)."""


class InspectError(LoraReproError, ValueError):
    """Bad input to the inspector: an adapter, a layer, a weight type or a base that do not fit."""


@dataclass
class Inspected:
    """One adapter to inspect.

    Attributes:
        path: what was given on the command line.
        adapter: its factors.
        kind: ``"run"`` or ``"peft"``.
        name: a file-system-safe name (the default output folder).
        label: short label of plots and tables, e.g. ``r=8 seed0``.
        model_name: the run's ``model.name`` (picks the file in a base_weights folder).
    """

    path: Path
    adapter: runs.Adapter
    kind: str
    name: str
    label: str
    model_name: str | None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-") or "adapter"


def read_adapter(path: str | Path) -> Inspected:
    """Read an adapter to inspect (run directory, adapter file or peft folder).

    Raises:
        InspectError: not an adapter. DamagedFile: a torn or truncated file.
    """
    p = Path(path)
    try:
        adapter, kind = weights.read_any_adapter(p)
    except weights.WeightFileError as e:
        raise InspectError(str(e)) from e
    run_dir = p if p.is_dir() else p.parent
    model_name, seed = None, None
    if kind == "run":
        try:
            cfg = runs.read_config(run_dir)
            model_name = layer_data.config_get(cfg, "model.name")
            seed = layer_data.config_get(cfg, "seed")
        except (FileNotFoundError, LoraReproError):
            pass
        parts = run_dir.resolve().parts
        name = "-".join(parts[-4:]) if len(parts) >= 4 else run_dir.name
        label = f"r={adapter.r}" + (f" seed{seed}" if seed is not None else f" {run_dir.name}")
    else:
        name = run_dir.resolve().name
        label = f"r={adapter.r} {run_dir.name}"
    return Inspected(p, adapter, kind, _safe(name), label, model_name)


def default_out(items: Sequence[Inspected], weight: str, layer: int) -> Path:
    """``results/inspect/<adapter>[_vs_<adapter2>]/W<type>-L<layer>``."""
    name = "_vs_".join(i.name for i in items)
    return DEFAULT_ROOT / name / f"W{weight}-L{layer}"


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _check_layer(layer: int | None, n_layers: int) -> int:
    if layer is None:
        return layer_data.default_layer(n_layers)
    try:
        return layer_data.check_layer(int(layer), n_layers)
    except ValueError as e:
        raise InspectError(f"--layer {layer}: {e}") from e


def _factors(item: Inspected, weight: str, layer: int) -> layer_data.LayerFactors:
    try:
        return layer_data.layer_factors(item.adapter, weight, layer)
    except KeyError as e:
        msg = e.args[0] if e.args else str(e)
        raise InspectError(f"{item.path}: {msg}; choose --type and --layer among those") from e


def inspect(
    adapters: Sequence[str | Path],
    base: str | Path,
    *,
    layer: int | None = None,
    weight: str = "q",
    out: str | Path | None = None,
    views: Sequence[str] = ("A",),
    n_random: int = 0,
    seed: int = 0,
    formats: Sequence[str] = ("png", "pdf"),
    revision: str | None = None,
    svd_cache: rsvd.SVDCache | None = None,
    base_model: basemodel.BaseModel | None = None,
) -> dict[str, Any]:
    """Inspect ΔW_weight at one layer of one or two adapters against their base model's W.

    Args:
        adapters: one or two adapter paths (run directories, adapter files or peft folders).
        base: the base model (see :func:`analysis.basemodel.open_base`).
        layer: block index 0 … n_layers − 1; default the middle one (n_layers // 2).
        weight: weight type q, k, v or o.
        out: output folder; default :func:`default_out`.
        views: subspace views of the φ heatmaps (:data:`analysis.subspace.VIEWS`).
        n_random: 0: the random level of Table 7 in closed form; N > 0: mean of N seeded draws.
        seed: seed of every random baseline.
        formats: figure formats.
        revision: hub revision when ``base`` is a hub id.
        svd_cache: W's SVDs, shared across calls (one per base model and layer).
        base_model: an already opened base (``base`` then only names it).

    Returns:
        The content of ``inspect.json`` (also written), with ``"out"`` and ``"files"``.

    Raises:
        InspectError: a path that is not an adapter, an unknown weight type or view, a layer out
            of range, adapters of different shapes.
        BaseModelError: W missing from the base, or of another shape than ΔW.
        DamagedFile: a torn or truncated adapter or weight file.
    """
    t_start = time.perf_counter()
    if not 1 <= len(adapters) <= 2:
        raise InspectError(f"give one or two adapters, got {len(adapters)}")
    if weight not in runs.WEIGHT_TYPES:
        raise InspectError(
            f"--type {weight!r}: expected one of {', '.join(runs.WEIGHT_TYPES)} (Wq, Wk, Wv, Wo)"
        )
    for v in views:
        if v not in subspace.VIEWS:
            raise InspectError(f"unknown view {v!r}; expected one of {', '.join(subspace.VIEWS)}")
    if n_random < 0:
        raise InspectError(f"--n-random must be 0 (closed form) or positive, got {n_random}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    items = [read_adapter(p) for p in adapters]
    timings["read_adapters_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = base_model or basemodel.open_base(
        base, model_name=items[0].model_name, revision=revision
    )
    timings["open_base_s"] = time.perf_counter() - t0
    n_layers = model.n_layers
    for it in items:
        if it.adapter.n_layers and int(it.adapter.n_layers) != n_layers:
            raise basemodel.BaseModelError(
                f"{it.path} was trained on a model with {it.adapter.n_layers} blocks but "
                f"{base} has {n_layers}; pass the base model the adapter was trained on"
            )
    layer = _check_layer(layer, n_layers)
    facs = [_factors(it, weight, layer) for it in items]
    if len(facs) == 2 and (facs[0].d, facs[0].k) != (facs[1].d, facs[1].k):
        raise InspectError(
            f"ΔW{weight} at layer {layer} is ({facs[0].d}, {facs[0].k}) in {items[0].path} but "
            f"({facs[1].d}, {facs[1].k}) in {items[1].path}: adapters of different models"
        )
    out_dir = Path(out) if out is not None else default_out(items, weight, layer)
    info = items[0].adapter.modules[facs[0].key]

    t0 = time.perf_counter()
    W = model.matrix_for(info)
    timings["read_W_s"] = time.perf_counter() - t0
    d, k = W.shape
    r_max = max(f.r for f in facs)
    dense = min(d, k) <= rsvd.DENSE_MAX
    # Fig. 8 rows: every direction of a small W (as make figures draws it), the top ones of a large
    m_w = min(d, k) if dense else min(min(d, k), max(FIG8_TOP_LARGE, r_max))
    t0 = time.perf_counter()
    cache = svd_cache if svd_cache is not None else rsvd.SVDCache()
    w_svd = cache.get((str(base), weight, layer), W, m_w)
    timings["W_svd_s"] = time.perf_counter() - t0

    files: list[Path] = []
    payload: dict[str, Any] = {
        "adapters": [
            {
                "path": str(it.path),
                "kind": it.kind,
                "label": it.label,
                "r": it.adapter.r,
                "alpha": it.adapter.alpha,
                "scaling": it.adapter.scaling,
                "base_model": it.adapter.base_model,
                "key": f.key,
            }
            for it, f in zip(items, facs, strict=True)
        ],
        "base": {
            **{k_: v for k_, v in model.identity.items() if v is not None},
            "n_layers": n_layers,
            "tensor": model.reads[-1] if model.reads else None,
            "stored_dtype": model.dtype(info.type, info.layer),
        },
        "layer": layer,
        "n_layers": n_layers,
        "weight": weight,
        "W": {
            "shape": [d, k],
            "norm_F": amplification.checked_norm(W),
            "svd_method": w_svd.method,
            "svd_directions": w_svd.m,
            "sigma_top": w_svd.S[: min(w_svd.m, 2 * r_max)].tolist(),
        },
        "random_level": (
            "closed form r·‖W‖F/√(dk)" if n_random == 0 else f"mean of {n_random} seeded draws"
        ),
    }

    t0 = time.perf_counter()
    labels = [it.label for it in items]
    if len(labels) == 2 and labels[0] == labels[1]:
        labels = [f"{lab} (1)" if i == 0 else f"{lab} (2)" for i, lab in enumerate(labels)]
    if len(facs) == 2:
        payload["phi"] = _pair_figures(
            facs, labels, views, weight, layer, seed, out_dir, formats, files
        )
    timings["phi_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dtype = np.float64 if d * k <= DENSE_PASS_MAX else np.float32
    stats = amplification.table7_many(
        W,
        [(f.B, f.A, f.scaling) for f in facs],
        w_sigma=w_svd.S,
        n_random=n_random,
        seed=seed,
        dtype=dtype,
    )
    timings["table7_s"] = time.perf_counter() - t0
    payload["table7"] = {lab: s for lab, s in zip(labels, stats, strict=True)}
    payload["table7_pass_dtype"] = np.dtype(dtype).name
    caption = (
        f"Table 7 on ΔW{weight} at layer {layer} of {n_layers} ({', '.join(labels)}) against W "
        f"from {base}; random = {payload['random_level']}. Paper: GPT-3 175B layer 48 of 96 "
        "(arXiv 2106.09685 v2, Table 7)."
    )
    ranks = [f.r for f in facs]
    if len(set(ranks)) == len(ranks):
        files += tables.write_table7(
            tables.table7_frame(dict(zip(ranks, stats, strict=True))), out_dir, caption
        )
    else:
        for i, s in enumerate(stats):
            sub_dir = out_dir if i == 0 else out_dir / f"adapter{i + 1}"
            cap = caption.replace(", ".join(labels), labels[i])
            files += tables.write_table7(tables.table7_frame({ranks[i]: s}), sub_dir, cap)

    t0 = time.perf_counter()
    payload["figure8_phi_top_r"] = _figure8(
        facs, labels, w_svd, weight, layer, seed, out_dir, formats, files
    )
    payload["spectra"] = _spectra(facs, labels, w_svd, weight, layer, out_dir, formats, files)
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start
    payload["timings_s"] = timings
    payload["out"] = str(out_dir)
    json_path = out_dir / "inspect.json"
    payload["files"] = [str(p) for p in [*files, json_path]]
    atomic_write_json(json_path, rounded(_finite(payload)))
    return payload


def _write_csv(path: Path, frames: list[pd.DataFrame], files: list[Path]) -> None:
    text = pd.concat(frames, ignore_index=True).to_csv(index=False, float_format=CSV_FLOAT_FORMAT)
    files.append(atomic_write_text(path, text))


def _pair_figures(
    facs: Sequence[layer_data.LayerFactors],
    labels: Sequence[str],
    views: Sequence[str],
    weight: str,
    layer: int,
    seed: int,
    out_dir: Path,
    formats: Sequence[str],
    files: list[Path],
) -> dict[str, Any]:
    """φ heatmaps between two adapters: Fig. 3's layout for a rank pair, Fig. 4's for a seed pair."""
    f1, f2 = facs
    rank_pair = f1.r != f2.r
    out: dict[str, Any] = {"pair": "ranks" if rank_pair else "seeds"}
    for view in subspace.VIEWS:  # φ(1, 1) of every view in the JSON, drawn views only as figures
        try:
            g = layer_data.phi_between(f1, f2, view)
        except ValueError as e:  # dA without A_init
            out[view] = {"phi11": None, "why": str(e)}
            if view in views:
                out.setdefault("not_drawn", {})[f"phi_{view}"] = str(e)
            continue
        rnd = random_like(f1, f2, view, seed)
        out[view] = {
            "phi11": float(g[0, 0]),
            "phi_diag": np.diag(g).tolist(),
            "random_phi11": float(rnd[0, 0]),
            "random_expected_phi11": 1.0 / subspace.basis_dim(view, f1.d, f1.k),
        }
        if view not in views:
            continue
        ylab, xlab = f"i ({labels[0]})", f"j ({labels[1]})"
        t = f"ΔW{weight} layer {layer}"
        frames = [long_frame("inspect", view, layer, f"dW{weight}", g)]
        if rank_pair:
            zoom = min(f1.r, f2.r)
            row = [Panel(g, t, ylab, xlab), Panel(g, f"{t}, i,j ≤ {zoom}", ylab, xlab, zoom=zoom)]
            fig = heatmap_figure(
                [row],
                f"φ({view}: {labels[0]} vs {labels[1]}) — {subspace.VIEW_DESCRIPTIONS[view]}",
                width_ratios=[3.0, 1.1],
                panel_size=(2.0, 1.9),
            )
        else:
            frames.append(long_frame("inspect", view, layer, "random", rnd))
            row = [Panel(g, t, ylab, xlab), Panel(rnd, "random Gaussian", "i", "j")]
            fig = heatmap_figure(
                [row],
                f"φ({view}: {labels[0]} vs {labels[1]}) — {subspace.VIEW_DESCRIPTIONS[view]}",
                panel_size=(3.0, 2.8),
            )
        files += save_figure(fig, out_dir / f"phi_{view}", formats)
        _write_csv(out_dir / f"phi_{view}.csv", frames, files)
    return out


def _figure8(
    facs: Sequence[layer_data.LayerFactors],
    labels: Sequence[str],
    w_svd: rsvd.TopSVD,
    weight: str,
    layer: int,
    seed: int,
    out_dir: Path,
    formats: Sequence[str],
    files: list[Path],
) -> dict[str, float]:
    """Fig. 8: φ(W's top-i left directions, ΔW's top-j) per adapter, and random (App. H.3)."""
    panels, frames, head = [], [], {}
    for f, lab in zip(facs, labels, strict=True):
        g = amplification.w_vs_dw_phi(None, subspace.factored_svd(f.B, f.A).U, W_left=w_svd.U)
        frames.append(long_frame("figure8", "W_left_vs_dW_left", layer, lab, g))
        panels.append(
            Panel(g, f"W{weight} vs ΔW{weight}, {lab}", f"i (W{weight})", f"j (ΔW{weight})")
        )
        head[lab] = float(g[g.shape[1] - 1, g.shape[1] - 1])
    r_max = max(f.r for f in facs)
    rng = np.random.default_rng(seed)
    g = amplification.w_vs_dw_phi(
        None, subspace.random_gaussian_basis(facs[0].d, r_max, rng), W_left=w_svd.U
    )
    frames.append(long_frame("figure8", "W_left_vs_dW_left", layer, "random", g))
    panels.append(Panel(g, f"W{weight} vs random, r={r_max}", f"i (W{weight})", "j (random)"))
    head["random"] = float(g[g.shape[1] - 1, g.shape[1] - 1])
    fig = heatmap_figure(
        [panels],
        f"φ(W{weight} top-i, ΔW{weight} top-j), left singular vectors, layer {layer}",
        panel_size=(2.2, 4.0),
    )
    files += save_figure(fig, out_dir / "figure8", formats)
    _write_csv(out_dir / "figure8.csv", frames, files)
    return head


def _spectra(
    facs: Sequence[layer_data.LayerFactors],
    labels: Sequence[str],
    w_svd: rsvd.TopSVD,
    weight: str,
    layer: int,
    out_dir: Path,
    formats: Sequence[str],
    files: list[Path],
) -> dict[str, dict[str, list[float]]]:
    """Singular values of A, B, ΔW (scaled) per adapter and W's top ones; figure and CSV."""
    lines: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, list[float]]] = {}
    rows = []
    for f, lab in zip(facs, labels, strict=True):
        spec = subspace.factor_spectra(f.A, f.B, f.scaling)
        out[lab] = {m: s.tolist() for m, s in spec.items()}
        for m, s in spec.items():
            lines[f"{m}, {lab}" if len(facs) > 1 else m] = s
            rows += [{"adapter": lab, "matrix": m, "i": i + 1, "sigma": v} for i, v in enumerate(s)]
    r_max = max(f.r for f in facs)
    s_w = w_svd.S[: min(w_svd.m, 2 * r_max)]
    lines[f"W{weight} (top {s_w.size})"] = s_w
    rows += [
        {"adapter": "", "matrix": f"W{weight}", "i": i + 1, "sigma": v} for i, v in enumerate(s_w)
    ]
    fig = spectrum_figure(lines, f"singular values, ΔW{weight} and W{weight}, layer {layer}")
    files += save_figure(fig, out_dir / "spectra", formats)
    files.append(
        atomic_write_text(
            out_dir / "spectra.csv",
            pd.DataFrame(rows).to_csv(index=False, float_format=CSV_FLOAT_FORMAT),
        )
    )
    return out


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m analysis.inspect",
        description="LoRA §7 on one layer of one or two adapters (run dirs or peft folders): "
        "φ heatmaps, Table 7, Fig. 8, spectra, against W read from the base model's files.",
    )
    p.add_argument("adapters", nargs="+", metavar="ADAPTER", help="one or two adapters")
    p.add_argument(
        "--base",
        required=True,
        metavar="MODEL",
        help="model folder, hub id, .safetensors/.gguf file, or <results>/base_weights",
    )
    p.add_argument("--layer", type=int, default=None, help="block 0..n-1 [n_layers // 2]")
    p.add_argument("--type", default="q", dest="weight", help="weight type q, k, v or o [q]")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder [results/inspect/<adapter>/...]"
    )
    p.add_argument(
        "--view",
        action="append",
        choices=[*subspace.VIEWS, "all"],
        help="φ view(s) drawn, repeatable [A]; inspect.json has φ(1,1) of every view",
    )
    p.add_argument(
        "--n-random",
        type=int,
        default=0,
        help="Table 7 random level: 0 closed form r·‖W‖F/√(dk) [0], N: mean of N draws",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines [0]")
    p.add_argument("--revision", default=None, help="hub revision when --base is a hub id")
    p.add_argument("--formats", default="png,pdf", help="figure formats [png,pdf]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 2 bad input)."""
    args = parser().parse_args(argv)
    views = args.view or ["A"]
    views = list(subspace.VIEWS) if "all" in views else list(dict.fromkeys(views))
    try:
        rep = inspect(
            args.adapters,
            args.base,
            layer=args.layer,
            weight=args.weight,
            out=args.out,
            views=views,
            n_random=args.n_random,
            seed=args.seed,
            formats=tuple(f for f in args.formats.split(",") if f),
            revision=args.revision,
        )
    except (LoraReproError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(render(rep))
    return 0


def render(rep: dict[str, Any]) -> str:
    """A few lines on stdout: what was read, φ(1, 1), Table 7's ratios, where it was written."""
    w = rep["weight"]
    lines = [
        f"analysis.inspect: ΔW{w} at layer {rep['layer']} of {rep['n_layers']}, W "
        f"{tuple(rep['W']['shape'])} from {rep['base'].get('spec')} "
        f"({rep['base'].get('source')}, {rep['W']['svd_method']} SVD)"
    ]
    phi = rep.get("phi")
    if phi:
        a = phi["A"]
        lines.append(
            f"  φ(1,1) view A ({phi['pair']} pair): {a['phi11']:.3f} (random {a['random_phi11']:.3f})"
        )
        for name, why in (phi.get("not_drawn") or {}).items():
            lines.append(f"  not drawn: {name}: {why}")
    for lab, t in rep["table7"].items():
        lines.append(
            f"  Table 7 {lab}: ‖UᵀWV‖F {t['proj_dW']:.4g} (W's own {t['proj_W']:.4g}, random "
            f"{t['proj_random']:.4g}), ΔW/random {t['ratio_to_random']:.2f}x, amplification "
            f"{t['amplification']:.2f}"
        )
    lines.append(
        f"  wrote {len(rep['files'])} files to {rep['out']} ({rep['timings_s']['total_s']:.1f} s)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
