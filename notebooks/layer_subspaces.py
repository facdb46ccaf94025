# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One layer's LoRA subspaces (paper §7.2–7.3)
#
# Reads finished runs from a results folder (never trains) and shows, for one layer and one
# weight type:
#
# 1. φ(i, j) (paper Eq. 4) between two runs (by default the `[q, v]` runs at seed 0 with the
#    paper's r = 8 and r = 64, as in Figure 3; the nearest ranks found, with a note, when those
#    were not run) under every subspace view, and a random Gaussian baseline;
# 2. the singular-value spectra of A, B and ΔW = (α/r)·B·A;
# 3. the Table 7 numbers (‖UᵀWV‖F for ΔW's, W's and random directions, ‖ΔW‖F, amplification,
#    ratio to random) for each run;
# 4. where a full fine-tuning run exists, its ΔW beside LoRA's: spectra, rank, intruder
#    dimensions and φ between the two.
#
# Run it into a notebook with outputs: `.venv/bin/jupytext --to ipynb --execute
# notebooks/layer_subspaces.py` (writes `notebooks/layer_subspaces.ipynb`; without `--execute` the
# notebook has no outputs).

# %%
import sys
from pathlib import Path

ROOT = next(
    (p for p in [Path.cwd(), *Path.cwd().parents] if (p / "analysis" / "subspace.py").exists()),
    Path.cwd(),
)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from IPython.display import Image, Markdown, display  # noqa: E402

from analysis import amplification, basemodel, fullft, layer_data, subspace  # noqa: E402
from analysis.figures import plots  # noqa: E402
from lora_repro import runs  # noqa: E402
from lora_repro.errors import LoraReproError  # noqa: E402

# %% tags=["parameters"]
RESULTS = "results"  # results folder, relative to the repository root or absolute
TASK = "rotten_tomatoes"
MODEL = "minilm"
GROUP = "runs"  # the runs' group (experiments.train group=...; runs is the default)
RANKS = None  # (small, large) [q,v] ranks at seed 0, used exactly; None: the paper's (8, 64)
RUN_DIRS = None  # or two run directories to compare (overrides RANKS)
LAYER = None  # block index; None: the middle one (n_layers // 2, the paper's 48 of 96)
WEIGHT = "q"  # weight type: q, k, v or o
N_RANDOM = 10  # random orthonormal pairs for Table 7's random level
SEED = 0  # seed of the random baselines
BASE = None  # W's source: model folder, hub id or file; None: <results>/base_weights

# %%
results = Path(RESULTS) if Path(RESULTS).is_absolute() else ROOT / RESULTS
records = [
    r
    for r in layer_data.index_runs(results, where={"group": GROUP})
    if (r.spec.task, r.spec.model) == (TASK, MODEL)
]
if RUN_DIRS is None:
    # raises MissingRuns (naming the run and the sweep that makes it) when a rank is missing
    pick = layer_data.pick_rank_pair(
        records, task=TASK, model=MODEL, targets=("q", "v"), seed=0, ranks=RANKS
    )
    if pick.note:
        print(f"note: {pick.note}")
    run_dirs = [pick.small.path, pick.large.path]
else:
    run_dirs = [Path(p) if Path(p).is_absolute() else ROOT / p for p in RUN_DIRS]

cache = layer_data.AdapterCache()
adapters = [cache.get(p) for p in run_dirs]
n_layers = layer_data.n_layers_of(adapters[0])
layer = (
    layer_data.default_layer(n_layers) if LAYER is None else layer_data.check_layer(LAYER, n_layers)
)
factors = [layer_data.layer_factors(a, WEIGHT, layer) for a in adapters]
labels = [
    f"r={f.r} ({Path(p).parent.name}/{Path(p).name})"
    for f, p in zip(factors, run_dirs, strict=True)
]
display(Markdown(f"**Layer {layer} of {n_layers}, ΔW{WEIGHT}**: " + " vs ".join(labels)))

# %% [markdown]
# ## φ(i, j) under every view
# `A` is the paper's view (right-singular vectors of A). `dA` needs `adapter_init.safetensors`.

# %%
f1, f2 = factors
panels, phi11 = [], {}
for view in subspace.VIEWS:
    try:
        u1 = subspace.view_basis(view, f1.A, f1.B, f1.A_init)
        u2 = subspace.view_basis(view, f2.A, f2.B, f2.A_init)
    except ValueError as e:
        print(f"view {view}: {e}")
        continue
    grid = subspace.phi_grid(u1, u2)
    phi11[view] = grid[0, 0]
    panels.append(plots.Panel(grid, f"{view}", f"i ({labels[0]})", f"j ({labels[1]})"))
n = subspace.basis_dim("A", f1.d, f1.k)
rnd = subspace.random_phi_grid(n, f1.r, f2.r, SEED)
phi11["random"] = rnd[0, 0]
panels.append(plots.Panel(rnd, "random Gaussian", "i", "j"))
fig = plots.heatmap_figure([panels], f"φ, ΔW{WEIGHT}, layer {layer}", panel_size=(2.6, 2.2))
display(Image(plots.png_bytes(fig)))
pd.Series(phi11, name="φ(1, 1)").to_frame()

# %% [markdown]
# ## Singular-value spectra of A, B and ΔW = (α/r)·B·A

# %%
rows = []
for f, label in zip(factors, labels, strict=True):
    spectra = subspace.factor_spectra(f.A, f.B, f.scaling)
    s_dw = spectra["ΔW (scaled)"]
    fig = plots.spectrum_figure(spectra, f"{label}, layer {layer}")
    display(Image(plots.png_bytes(fig)))
    rows.append(
        {
            "run": label,
            "σ1(ΔW)": s_dw[0],
            "σ2/σ1(ΔW)": s_dw[1] / s_dw[0] if s_dw.size > 1 else np.nan,
        }
    )
pd.DataFrame(rows)

# %% [markdown]
# ## Table 7 numbers for this layer
# Needs the pretrained W, read as `python -m analysis.inspect` reads it (`analysis.basemodel`):
# from `BASE` (a model folder, a hub id, a .safetensors / .gguf file) or, by default, the copy
# a training run writes (`<results>/base_weights/<model>.safetensors`), oriented (d, k) = (out, in).

# %%
try:
    base = basemodel.open_base(BASE or results / "base_weights", model_name=MODEL)
except LoraReproError as e:
    print(f"no pretrained weights: {e}")
else:
    t7 = {}
    for ad, f, label in zip(adapters, factors, labels, strict=True):
        W = base.matrix_for(ad.modules[f.key])
        t7[label] = amplification.table7_stats(W, f.B, f.A, f.scaling, n_random=N_RANDOM, seed=SEED)
    table7 = pd.DataFrame(t7)
    display(table7)

# %% [markdown]
# ## Full fine-tuning beside LoRA (this layer)
# When the results hold a full fine-tuning run of Wq,Wv (`make sweep SWEEP=full`), its ΔW =
# W_ft − W0 at this layer against the two LoRA runs: the spectra, the rank that explains 90% of
# ‖ΔW‖F², intruder dimensions (top 10, |cos| < 0.5 with every direction of W0) and φ between
# LoRA's and full fine-tuning's top left singular vectors (`analysis.fullft`).

# %%
full_run = fullft.find(results).get((TASK, MODEL))
if full_run is None or WEIGHT not in fullft.TYPES:
    print(f"no full fine-tuning run of Wq,Wv for {TASK}/{MODEL}: make sweep SWEEP=full")
else:
    delta = runs.load_delta(full_run.full[min(full_run.full)])
    dW_full = np.asarray(delta.dW[delta.key_for(WEIGHT, layer)], np.float64)
    W0 = base.matrix_for(delta.modules[delta.key_for(WEIGHT, layer)])
    updates = {label: subspace.factored_svd(f.B, f.A, f.scaling).dense()
               for f, label in zip(factors, labels, strict=True)}  # fmt: skip
    updates["full FT"] = dW_full
    spectra, rows = {}, []
    for label, dW in updates.items():
        s = fullft.singular_values(dW)
        spectra[label] = s
        rows.append({"update": label, **fullft.rank_measures(s),
                     "intruders": fullft.intruders(W0, dW)["count"]})  # fmt: skip
    display(Image(plots.png_bytes(plots.spectrum_figure(spectra, f"ΔW{WEIGHT}, layer {layer}"))))
    u_full = fullft.left_vectors(dW_full, fullft.PHI_TOP)
    panels = [plots.Panel(fullft.lora_vs_full_phi(fullft.left_vectors(updates[lab], f.r), u_full),
                          f"{lab} vs full FT", "i (LoRA)", "j (full FT)")
              for f, lab in zip(factors, labels, strict=True)]  # fmt: skip
    fig = plots.heatmap_figure([panels], f"LoRA vs full fine-tuning, ΔW{WEIGHT}, layer {layer}")
    display(Image(plots.png_bytes(fig)))
    display(pd.DataFrame(rows).set_index("update"))
