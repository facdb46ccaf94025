"""Many LoRA runs over one frozen base model: one base forward/backward per step for K adapters.

Section 7's grids train dozens of adapters on the same frozen W: Table 6 sweeps r for three sets of
weight types, Table 5 seven sets under one budget, Figure 4 seeds. The base model's forward and
backward dominate a step, so K runs that share the model, the task, the maximum length, the
number of steps and the batch size (:func:`pack_key`) are trained together here:

* every run keeps its own A and B per adapted matrix (its own r, α and weight types: a run that
  does not adapt Wk has no factor there), its own head, its own AdamW state and learning-rate
  schedule (:func:`lora_repro.train.make_trainee`), its own data order (``seed_data``) and its own
  init (``seed_init``: A, then the head, drawn from it exactly as a standalone run draws them);
* one step takes each run's next batch, stacks the K batches along the batch axis (right-padded
  to the longest sequence; batches whose lengths differ too much go into separate passes,
  :func:`passes`), runs the base model once per pass, and each :class:`PackedLoraLayer`
  adds run i's s_i·B_i·A_i·x to run i's rows; each run's loss is the mean over its own rows, the
  K losses are summed and backpropagated once: a run's gradients come only from its own rows;
* evaluation gives every batch of a split to the model K times, stacked (copy i through run i's
  adapter and head, :attr:`PackState.replicas`), through the same track code a standalone run
  uses (:attr:`lora_repro.tracks.Track.packed_evaluate`), so each run's metrics are those of a
  standalone evaluation of its adapter; the pack's evaluation batch is K × ``eval_batch_size``
  rows, as its training pass is K × ``batch_size``.

Each run writes exactly the run directory a standalone run writes (:func:`lora_repro.train.fit`),
with ``packed_with`` in meta.json: the run directories it trained beside. A packed run is the same
experiment as a standalone one (the same identity, so a finished run is skipped either way), not
the same bytes: the stacked GEMMs reduce in another order, and the base model's dropout draws
from one stream for the whole pack (a standalone run's stream depends on its own ``seed_data``).
LoRA's own dropout (``adapter.dropout``) draws from a per-run generator seeded with the run's
``seed_data``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lora_repro import lifecycle, runs
from lora_repro import train as standalone
from lora_repro.config import ConfigError, validate
from lora_repro.data import length_grouped_batches
from lora_repro.errors import LoraReproError
from lora_repro.lora import LoraConfig, LoraFactor, header_for, init_A
from lora_repro.memory import PeakMemory
from lora_repro.models import head_modules, reset_head
from lora_repro.precision import dtype_name
from lora_repro.precision import resolve as resolve_precision
from lora_repro.targets import Target, num_layers
from lora_repro.tracks import make_track

log = logging.getLogger("lora_repro")

# train.* keys each run of a pack may set on its own (its optimizer and schedule); every other key
# of model, task, train and paths must agree (:func:`pack_key`).
PER_RUN_TRAIN = ("lr", "head_lr", "weight_decay", "warmup_ratio", "warmup_steps", "max_grad_norm")


class PackError(LoraReproError, ValueError):
    """Runs that cannot share one base pass were put in one pack."""


def pack_key(cfg: Any) -> str:
    """What runs of one pack must share: model, task, paths and the train settings less
    :data:`PER_RUN_TRAIN` (steps, batch size, precision, ...), as canonical text.

    Raises:
        PackError: for full fine-tuning (``adapter.method=full``), which trains W itself and so
            cannot share a frozen base model.
    """
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if c["adapter"].get("method", "lora") != "lora":
        raise PackError(
            "adapter.method=full trains W itself and cannot share a frozen base model; "
            "train it without --pack"
        )
    return _shared_key(c)


def _shared_key(cfg: Any) -> str:
    """:func:`pack_key` of any run (full fine-tuning too): what one loaded model can serve."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    tc = {k: v for k, v in c["train"].items() if k not in PER_RUN_TRAIN and k != "progress"}
    shared = {"model": c["model"], "task": c["task"], "train": tc, "paths": c["paths"]}
    return OmegaConf.to_yaml(OmegaConf.create(shared), sort_keys=True)


@dataclass
class PackState:
    """What every packed layer of one model reads at forward time.

    Attributes:
        sizes: training: rows of the stacked batch per run, in run order (0 for a run left out).
        replicas: evaluation: the batch is ``len(replicas)`` equal blocks of rows, block j passed
            through run ``replicas[j]``'s adapter and head; ``None`` while training.
        generators: one generator per run for LoRA's dropout on x.
    """

    sizes: list[int]
    replicas: list[int] | None = None
    generators: list[torch.Generator] = field(default_factory=list)

    def rows(self, n: int) -> list[tuple[int, slice]]:
        """``(run, rows)`` of each run with rows in a stacked batch of ``n`` rows.

        Raises:
            PackError: ``n`` does not split into the replicas' equal blocks, or differs from
                the sum of ``sizes``.
        """
        if self.replicas is not None:
            k = len(self.replicas)
            if not k or n % k:
                raise PackError(f"a batch of {n} rows does not split into {k} equal blocks")
            b = n // k
            return [(run, slice(j * b, (j + 1) * b)) for j, run in enumerate(self.replicas)]
        if n != sum(self.sizes):
            raise PackError(
                f"a packed layer got {n} rows where the pack's batch has {sum(self.sizes)}: the "
                "model applies an adapted matrix to something other than the batch (DeBERTa's "
                "relative position embeddings do); train these runs without --pack"
            )
        out, o = [], 0
        for i, m in enumerate(self.sizes):
            if m:
                out.append((i, slice(o, o + m)))
            o += m
        return out


class PackedLoraLayer(nn.Module):
    """A frozen Linear or GPT-2 Conv1D with LoRA factors of K runs (paper §4.1, Eq. 3, per run).

    ``forward(x)``: x (b, ..., k), the K runs' rows stacked along the batch axis in run order with
    :attr:`PackState.sizes` rows each → y (b, ..., d_total), where run i's rows get
    ``W0·x + s_i·B_i·A_i·dropout_i(x)`` for each of its factors (a run with no factor on this
    matrix gets ``W0·x``); in evaluation, block j of the rows gets run ``replicas[j]``'s.
    Each run's delta is a loop over the runs with rows: a batched matmul with ranks padded to the
    largest was not consistently faster on a 2-core CPU (``bench.pack_step``), and the loop needs
    no padding of r nor of the runs that do not adapt this matrix.
    """

    def __init__(self, base_layer: nn.Module, state: PackState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.state = state
        self.runs = nn.ModuleList(nn.ModuleDict() for _ in state.sizes)
        self.scalings = [0.0] * len(state.sizes)
        self.dropouts = [0.0] * len(state.sizes)
        self.targets: list[dict[str, Target]] = [{} for _ in state.sizes]
        for p in base_layer.parameters():
            p.requires_grad_(False)

    def add(self, run: int, target: Target, cfg: LoraConfig) -> LoraFactor:
        """Attach run ``run``'s factor pair for ``target`` (a whole module or one fused slice)."""
        name = target.type if target.fused else "main"
        factor = LoraFactor(cfg.r, target.d, target.k)
        self.runs[run][name] = factor
        self.targets[run][name] = target
        self.scalings[run], self.dropouts[run] = cfg.scale, float(cfg.dropout)
        if target.index is not None:
            index = torch.tensor(target.index, device=self.base_layer.weight.device)
            self.register_buffer(f"index_{name}", index, persistent=False)
        return factor

    def _delta(self, run: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` (rows of run ``run``) plus that run's s·B·A·dropout(x) on each adapted slice."""
        h, p = x, self.dropouts[run]
        if self.training and p > 0:
            g = self.state.generators[run]
            keep = torch.empty(x.shape, dtype=x.dtype).bernoulli_(1 - p, generator=g)
            h = x * keep.to(x.device) / (1 - p)
        for name, f in self.runs[run].items():
            delta = (h @ f.lora_A.t().to(h.dtype)) @ f.lora_B.t().to(h.dtype)
            delta = (delta * self.scalings[run]).to(y.dtype)
            idx = getattr(self, f"index_{name}", None)
            y = y + delta if idx is None else y.index_add(-1, idx, delta)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        parts = [
            self._delta(i, x[rows], y[rows]) if self.runs[i] else y[rows]
            for i, rows in self.state.rows(x.shape[0])
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class PackedHead(nn.Module):
    """K copies of a task head (``classifier`` / ``score``), copy i applied to run i's rows.

    ``forward(x)``: x (b, ...) stacked as in :class:`PackedLoraLayer` → the heads' outputs, cat
    along the batch axis.
    """

    def __init__(self, heads: list[nn.Module], state: PackState) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.state = state

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rows = self.state.rows(x.shape[0])
        parts = [self.heads[i](x[r], *args, **kwargs) for i, r in rows]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


@dataclass
class Packed:
    """The K runs' trainable pieces inside one model (:func:`inject_pack`).

    Attributes:
        state: the shared forward-time state.
        factors: per run, ``(target, factor)`` in injection order.
        heads: per run, its head's parameters.
    """

    state: PackState
    factors: list[list[tuple[Target, LoraFactor]]]
    heads: list[list[nn.Parameter]]

    def lora_parameters(self, run: int) -> list[nn.Parameter]:
        """Run ``run``'s A and B parameters."""
        return [p for _, f in self.factors[run] for p in (f.lora_A, f.lora_B)]

    def state_of(self, run: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run ``run``'s factors as float32 numpy: ``(key -> A (r, k), key -> B (d, r))``."""
        A = {t.key: f.lora_A.detach().float().cpu().numpy().copy() for t, f in self.factors[run]}
        B = {t.key: f.lora_B.detach().float().cpu().numpy().copy() for t, f in self.factors[run]}
        return A, B


def inject_pack(
    model: nn.Module,
    loras: list[LoraConfig],
    targets: list[list[Target]],
    seeds_init: list[int],
    seeds_dropout: list[int] | None = None,
) -> Packed:
    """Freeze ``model`` and give each of K runs its own LoRA factors and head (paper §4.1).

    Run i's A are drawn from ``torch.Generator().manual_seed(seeds_init[i])`` one target after
    another in ``targets[i]``'s order, then its head from the same generator
    (:func:`lora_repro.models.reset_head`): the same draws as :func:`lora_repro.train.attach`
    makes for that run alone. B is zero.

    Args:
        model: a transformers model without LoRA layers.
        loras: run i's settings (r, α, scaling, init, dropout).
        targets: run i's adapted matrices (its weight types and layers).
        seeds_init: run i's ``seed_init``.
        seeds_dropout: seeds of the per-run LoRA dropout generators (default ``seeds_init``).

    Raises:
        PackError: lists of different lengths, or K = 0.
    """
    k = len(loras)
    if not k or len(targets) != k or len(seeds_init) != k:
        raise PackError(
            f"inject_pack needs one LoRA config, target list and seed per run; got "
            f"{len(loras)}, {len(targets)}, {len(seeds_init)}"
        )
    state = PackState([0] * k)
    seeds_dropout = seeds_init if seeds_dropout is None else seeds_dropout
    state.generators = [torch.Generator().manual_seed(int(s)) for s in seeds_dropout]
    for p in model.parameters():
        p.requires_grad_(False)
    head = head_modules(model)
    heads = {name: [copy.deepcopy(m) for _ in range(k)] for name, m in head.items()}
    wrapped: dict[str, PackedLoraLayer] = {}
    factors: list[list[tuple[Target, LoraFactor]]] = [[] for _ in range(k)]
    head_params: list[list[nn.Parameter]] = [[] for _ in range(k)]
    for i in range(k):
        g = torch.Generator().manual_seed(int(seeds_init[i]))
        for t in targets[i]:
            layer = wrapped.get(t.module)
            if layer is None:
                base = model.get_submodule(t.module)
                layer = PackedLoraLayer(base, state).train(base.training)
                parent, _, child = t.module.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, layer)
                wrapped[t.module] = layer
            factor = layer.add(i, t, loras[i])
            with torch.no_grad():
                factor.lora_A.copy_(init_A((loras[i].r, t.k), loras[i].init, g))
            factor.to(device=layer.base_layer.weight.device)
            factors[i].append((t, factor))
        mine = {name: copies[i] for name, copies in heads.items()}
        reset_head(mine, g)
        head_params[i] = [p for m in mine.values() for p in m.parameters()]
        for p in head_params[i]:
            p.requires_grad_(True)
    for name, copies in heads.items():
        setattr(model, name, PackedHead(copies, state).train(head[name].training))
    return Packed(state, factors, head_params)


# ---------------------------------------------------------------------------------------------
# One step of a pack
# ---------------------------------------------------------------------------------------------
# Runs whose batches differ in length share a pass only while padding them to the longest costs
# at most this fraction of extra tokens: on a CPU a step's time is proportional to its padded
# tokens (2048 rows already saturate the GEMMs), so a pass that pads a short batch to a long one
# costs more than the second pass it saves.
PAD_SLACK = 0.1


def passes(shapes: dict[int, tuple[int, int]], slack: float = PAD_SLACK) -> list[list[int]]:
    """Group runs into base passes by their batch's padded length.

    Args:
        shapes: run -> (rows, padded length L) of its batch this step.
        slack: a run joins the pass of the runs shorter than it while the pass's padded tokens
            (rows · longest L) stay within (1 + slack) × the tokens of each batch padded alone.

    Returns:
        The passes, each a list of runs in run order; every run in exactly one.
    """
    order = sorted(shapes, key=lambda i: shapes[i][1])
    groups: list[list[int]] = []
    rows = alone = 0
    for i in order:
        n, L = shapes[i]
        if groups and (rows + n) * L <= (1 + slack) * (alone + n * L):
            groups[-1].append(i)
            rows, alone = rows + n, alone + n * L
        else:
            groups.append([i])
            rows, alone = n, n * L
    return [sorted(g) for g in groups]


def forward_backward(
    model: nn.Module,
    track: Any,
    state: PackState,
    batches: dict[int, list[int]],
    scalers: dict[int, torch.amp.GradScaler],
    grad_accum: int = 1,
    slack: float = PAD_SLACK,
) -> dict[int, float]:
    """Forward and backward of one micro-batch per run, the runs stacked into few base passes
    (:func:`passes`); each run's gradients accumulate into its own parameters only.

    Args:
        model: the packed model (:func:`inject_pack`).
        track: the task's :class:`lora_repro.tracks.Track` (its ``packed_loss``).
        state: the model's :class:`PackState`.
        batches: run -> indices of its training examples this micro-step.
        scalers: run -> its loss scaler (fp16; a no-op otherwise).
        grad_accum: each loss is divided by it, as in :func:`lora_repro.train.step`.
        slack: see :func:`passes`.

    Returns:
        run -> its loss / grad_accum (a float; NaN or inf left for the caller to act on).
    """
    shapes = {i: (len(b), max(track.lengths[j] for j in b)) for i, b in batches.items()}
    out: dict[int, float] = {}
    for group in passes(shapes, slack):
        state.sizes = [len(batches[i]) if i in group else 0 for i in range(len(state.sizes))]
        losses = [x / grad_accum for x in track.packed_loss(model, [batches[i] for i in group])]
        torch.stack(
            [scalers[i].scale(x) for i, x in zip(group, losses, strict=True)]
        ).sum().backward()
        out |= {i: x.item() for i, x in zip(group, losses, strict=True)}
    return out


# ---------------------------------------------------------------------------------------------
# Training a pack
# ---------------------------------------------------------------------------------------------
@dataclass
class _Run:
    cfg: DictConfig
    prep: standalone.Prepared
    resolved: dict[str, Any]
    run_dir: Path


def _prepared_runs(
    cfgs: list[DictConfig], allow_repeats: bool = False, packing: bool = True
) -> list[_Run]:
    """Validate, canonicalize and prepare every run over one loaded model and data set
    (``packing``: refuse runs that cannot share a base pass)."""
    out: list[_Run] = []
    first = None
    for cfg in cfgs:
        validate(cfg)
        problem = runs.results_write_problem(cfg.paths.results)
        if problem:
            raise ConfigError(problem)
        standalone._canonicalize(cfg)
        if first is None:
            first = standalone.prepare(cfg)
            prep = first
        else:
            prep = standalone.prepare(cfg, first.data, first.loaded)
        if packing and prep.method != "lora":
            pack_key(cfg)  # raises the one-line PackError
        resolved, run_dir = standalone.resolve_run(cfg, prep)
        out.append(_Run(cfg, prep, resolved, run_dir))
    keys = {(pack_key if packing else _shared_key)(r.cfg) for r in out}
    if len(keys) > 1:
        raise PackError(
            "runs of one pack must share model, task, paths and train settings other than "
            f"{', '.join(PER_RUN_TRAIN)}; group them with lora_repro.pack.plan"
        )
    dirs = [r.run_dir for r in out]
    if len(set(dirs)) < len(dirs) and not allow_repeats:
        raise PackError("a pack holds the same run twice; give each run once")
    return out


def pending(cfgs: list[DictConfig]) -> tuple[list[DictConfig], list[tuple[DictConfig, str]]]:
    """The runs of ``cfgs`` not finished yet (Table 5's r resolved from its budget first), each
    run once (two configs naming one run directory with one identity are one run); full
    fine-tuning runs too; and the conflicts, each ``(config, one-line error)``.

    Each group of runs that share model, task and train settings loads its model once. A run
    whose directory holds a finished run with the same identity is left out. A conflict is a run
    whose directory holds a finished run with other settings, or that another config of the
    sweep names with other settings (e.g. a swept ``train.lr``, which the directory name leaves
    out): it is not trained, as :func:`lora_repro.lifecycle.claim` would refuse it.
    """
    out: list[DictConfig] = []
    conflicts: list[tuple[DictConfig, str]] = []
    seen: dict[Path, dict[str, Any]] = {}
    for group in _groups(cfgs, _shared_key):
        for r in _prepared_runs(group, allow_repeats=True, packing=False):
            mine = lifecycle.identity(r.resolved)
            if r.run_dir in seen:  # e.g. Table 5's Wq at r = 8 is Table 6's Wq at r = 8
                other = lifecycle.diff(seen[r.run_dir], mine)
                if other:
                    conflicts.append(
                        (r.cfg, _conflict(r.run_dir, other, "another run of the sweep"))
                    )
                continue
            seen[r.run_dir] = mine
            state = runs.run_state(r.run_dir)
            if state.usable:
                other = lifecycle.diff(lifecycle.identity(runs.read_config(r.run_dir)), mine)
                if other:
                    conflicts.append((r.cfg, _conflict(r.run_dir, other, "a finished run")))
                continue
            out.append(r.cfg)
    return out, conflicts


def _conflict(run_dir: Path, differences: list[str], holder: str) -> str:
    return (
        f"RunConflict: {run_dir} is {holder} with other settings ({'; '.join(differences[:3])}); "
        "set group=<name> to keep both, or change the folder with paths.results"
    )


def _groups(cfgs: list[DictConfig], key=pack_key) -> list[list[DictConfig]]:
    groups: dict[str, list[DictConfig]] = {}
    for c in cfgs:
        groups.setdefault(key(c), []).append(c)
    return list(groups.values())


def plan(
    cfgs: list[DictConfig], pack_size: int, max_tokens: int | None = None
) -> list[list[DictConfig]]:
    """Split LoRA runs into packs: runs of one :func:`pack_key`, at most ``pack_size`` each and at
    most ``max_tokens`` padded tokens per step (K · batch_size · task.max_length ≤ max_tokens).

    Raises:
        PackError: ``pack_size`` < 1, ``max_tokens`` below one run's batch, or a full
            fine-tuning run.
    """
    if pack_size < 1:
        raise PackError(f"--pack-size must be >= 1, got {pack_size}")
    out = []
    for group in _groups(cfgs):
        per_run = int(group[0].train.batch_size) * int(group[0].task.max_length)
        k = pack_size
        if max_tokens is not None:
            if max_tokens < per_run:
                raise PackError(
                    f"--pack-tokens={max_tokens} is below one run's batch_size × max_length = "
                    f"{per_run}; raise it to at least {per_run}"
                )
            k = min(k, max_tokens // per_run)
        out += [group[s : s + k] for s in range(0, len(group), k)]
    return out


def fit_pack(
    cfgs: list[DictConfig], errors: dict[int, str] | None = None
) -> list[dict[str, Any] | None]:
    """Train the LoRA runs ``cfgs`` together over one frozen base model; write each run directory.

    Runs already finished are left out (their summary is returned); each other run is claimed
    (:func:`lora_repro.lifecycle.claim`: a run it refuses is left out, its error in ``errors``
    under its index) and recorded (:func:`lora_repro.lifecycle.recording_all`):
    a run whose loss becomes NaN or infinite is marked failed with the reason and the others go
    on; an exception or stop signal marks every unfinished run failed.

    Returns:
        Per run, in order: its summary, or ``None`` for a run that failed.

    Raises:
        PackError: runs that cannot share a base pass (:func:`pack_key`), or one run twice.
        LoraReproError: bad config, a run conflict (one-line messages).
        lifecycle.Interrupted: SIGTERM / SIGUSR2 arrived (every unfinished run is marked failed).
    """
    t_start = time.time()
    tc0 = cfgs[0].train
    if tc0.threads:
        torch.set_num_threads(int(tc0.threads))
    prepared = _prepared_runs(cfgs)
    results: list[dict[str, Any] | None] = [None] * len(prepared)
    todo = []
    for i, r in enumerate(prepared):
        try:
            done = lifecycle.claim(r.run_dir, r.resolved)
        except LoraReproError as e:  # this run only (e.g. its folder holds another run)
            log.error("run not trained, the pack goes on: %s: %s", type(e).__name__, e)
            if errors is not None:
                errors[i] = f"{type(e).__name__}: {e}"
            continue
        if done is not None:
            results[i] = done
        else:
            todo.append(i)
    if not todo:
        return results
    chosen = [prepared[i] for i in todo]
    # The pack's peak (one process trains every run of it): each packed run records it.
    memory = PeakMemory(standalone.device_for(cfgs[0])).start()
    try:
        with lifecycle.recording_all([r.run_dir for r in chosen]) as fail:
            summaries = _train_pack(chosen, fail, t_start, memory)
    finally:
        memory.stop()
    for i, s in zip(todo, summaries, strict=True):
        results[i] = s
    return results


def _train_pack(
    pack: list[_Run], fail, t_start: float, memory: PeakMemory
) -> list[dict[str, Any] | None]:
    cfg0, prep0 = pack[0].cfg, pack[0].prep
    tc = cfg0.train
    device = standalone.device_for(cfg0)
    torch.use_deterministic_algorithms(bool(tc.deterministic), warn_only=True)
    model, tok = prep0.loaded.model, prep0.loaded.tokenizer
    standalone._save_base_weights(cfg0, model, prep0.dtype)

    seeds = [lifecycle.seeds_of(r.cfg) for r in pack]
    packed = inject_pack(
        model,
        [r.prep.lora for r in pack],
        [r.prep.targets for r in pack],
        [s_init for s_init, _ in seeds],
        [s_data for _, s_data in seeds],
    )
    for i, r in enumerate(pack):
        A_init, _ = packed.state_of(i)
        runs.atomic_save_safetensors(
            {f"{k}.lora_A.weight": v for k, v in A_init.items()},
            r.run_dir / runs.ADAPTER_INIT_FILE,
            {"format": runs.ADAPTER_FORMAT + "-init"},
        )
    model.to(device)
    prec = resolve_precision(tc.precision, device)
    log.info("precision: %s (%s); %d runs packed", prec.name, prec.reason, len(pack))
    track = make_track(cfg0, prep0.data, tok, device, prec.name)

    metas = []
    for r in pack:
        meta = standalone._meta(r.cfg, r.prep, device, prec, t_start)
        meta["packed_with"] = [str(o.run_dir) for o in pack if o is not r]
        runs.atomic_write_json(r.run_dir / runs.META_FILE, meta)
        metas.append(meta)
    trainees = [
        standalone.make_trainee(
            model,
            [
                (packed.lora_parameters(i), r.cfg.train.lr),
                (packed.heads[i], r.cfg.train.head_lr or r.cfg.train.lr),
            ],
            r.cfg.train,
            prec,
            name=r.run_dir.parent.name,
        )  # fmt: skip
        for i, r in enumerate(pack)
    ]

    def batches(seed_data: int):
        g = torch.Generator().manual_seed(seed_data)
        while True:
            yield from length_grouped_batches(track.lengths, tc.batch_size, g)

    streams = [batches(s_data) for _, s_data in seeds]
    torch.manual_seed(seeds[0][1])  # the base model's dropout: one stream for the pack
    alive = list(range(len(pack)))
    last = [float("nan")] * len(pack)

    final: dict[str, dict[int, dict[str, float]]] = {}

    def evaluate(split: str, step_: int) -> None:
        packed.state.replicas = list(alive)
        try:
            results = track.packed_evaluate(model, split, len(alive))
        finally:
            packed.state.replicas = None
        final[split] = {}
        for i, (ev, preds) in zip(alive, results, strict=True):
            final[split][i] = ev
            run_dir = pack[i].run_dir
            rec = {"step": step_, "split": split}
            if split == "validation":
                lr = trainees[i].sched.get_last_lr()[0]
                rec |= {"train_loss": last[i], "lr": lr}
            runs.append_jsonl(
                run_dir / runs.METRICS_FILE, {**rec, **ev, "time_s": time.time() - t_start}
            )
            if preds is not None:
                standalone._write_predictions(run_dir, split, prep0.data, preds)

    from tqdm.auto import tqdm

    setup_s = time.time() - t_start
    model.train()
    tokens = dict.fromkeys(alive, 0)
    t0, eval_s = time.time(), 0.0
    for step_ in tqdm(range(tc.max_steps), desc=f"pack of {len(pack)}", disable=not tc.progress):
        totals = dict.fromkeys(alive, 0.0)
        scalers = {i: trainees[i].scaler for i in alive}
        for _ in range(tc.grad_accum):
            bs = {i: next(streams[i]) for i in alive}
            for i, b in bs.items():
                tokens[i] += sum(track.lengths[j] for j in b)  # non-pad tokens of run i
            for i, x in forward_backward(
                model, track, packed.state, bs, scalers, tc.grad_accum
            ).items():
                totals[i] += x
        for i in alive:
            standalone.update(trainees[i], pack[i].cfg.train.max_grad_norm)
            last[i] = totals[i]
        for i in list(alive):
            if not math.isfinite(totals[i]):
                err = standalone.diverged(totals[i], step_ + 1, pack[i].cfg.train, prec.name)
                fail(pack[i].run_dir, f"{type(err).__name__}: {err}")
                log.error("run failed, the pack goes on: %s: %s", pack[i].run_dir, err)
                alive.remove(i)
        if not alive:
            break
        if (step_ + 1) % tc.eval_every == 0 or step_ + 1 == tc.max_steps:
            e0 = time.time()
            evaluate("validation", step_ + 1)
            eval_s += time.time() - e0
    train_s = time.time() - t0 - eval_s
    if "test" in track.splits:
        e0 = time.time()
        evaluate("test", tc.max_steps)
        eval_s += time.time() - e0

    try:
        n_layers = num_layers(model)
    except Exception:  # noqa: BLE001 - models without the usual config keys
        n_layers = None
    out: list[dict[str, Any] | None] = [None] * len(pack)
    peak = memory.stop()
    for i in alive:
        r = pack[i]
        A, B = packed.state_of(i)
        header = header_for(
            [t for t, _ in packed.factors[i]], n_layers, r.prep.lora, r.cfg.model.id
        )
        runs.save_adapter_factors(r.run_dir / runs.ADAPTER_FILE, A, B, header)
        val = [
            m for m in runs.read_jsonl(r.run_dir / runs.METRICS_FILE) if m["split"] == "validation"
        ]
        test = final.get("test", {}).get(i)
        t_end = time.time()
        times = {
            "wall_time_s": t_end - t_start,
            "setup_time_s": setup_s,
            "train_time_s": train_s,
            "eval_time_s": eval_s,
            "steps_per_s": tc.max_steps / train_s if train_s > 0 else None,
            "tokens_per_s": tokens[i] / train_s if train_s > 0 else None,
            "train_tokens": tokens[i],
            "base_dtype": dtype_name(r.prep.dtype),
            **peak,
        }
        n_lora = sum(p.numel() for p in packed.lora_parameters(i))
        counts = {
            "n_trained_params": n_lora,
            "n_head_params": sum(p.numel() for p in packed.heads[i]),
            "n_lora_params": n_lora,
        }
        summary = standalone._summary(
            r.cfg, r.prep, track, val[-1], test, last[i], counts, prec, times
        )
        runs.atomic_write_json(r.run_dir / runs.SUMMARY_FILE, summary)
        metas[i]["ended"] = t_end
        runs.atomic_write_json(r.run_dir / runs.META_FILE, metas[i])
        out[i] = summary
        log.info("finished (packed): %s (val %s %.4f)", r.run_dir, summary["metric"],
                 summary["val_metric"] or 0.0)  # fmt: skip
    return out
