"""Benchmark 1: one training step on the embedded default, four ways.

    python -m bench.train_step --results results [--reps 5 --steps 6 --threads 2 --profile]
    python -m bench.train_step --results results --threads 1 --clock cpu   # on a busy machine

The step is train.py's loop body: forward under bf16 autocast, cross-entropy on float32 logits,
backward, AdamW step, LR-scheduler step, ``zero_grad(set_to_none=True)``; MiniLM-L6 with its
classification head on Rotten Tomatoes batches drawn by ``lora_repro.data`` (batch 32, max length
64, length-grouped dynamic padding), the same batches for every variant, in train mode (BERT's
dropout on, as in training). Variants:

* ``lora``: ours, :func:`lora_repro.lora.inject_lora` with r = 8, α = 8 on Wq, Wv of all 6 layers;
  the head trained, as in train.py.
* ``peft``: ``peft.get_peft_model`` with ``LoraConfig(r=8, lora_alpha=8,
  target_modules=["query", "value"], lora_dropout=0)``; the head trained.
* ``full``: every parameter trained (AdamW over all 22.7 M).
* ``floor``: the frozen model, the head trained, and the *outputs* of Wq and Wv of every layer
  marked ``requires_grad`` by a forward hook. Backward then computes exactly the activation
  gradients LoRA's backward computes (down to layer 0's Wq and Wv outputs, not into the
  embeddings) but no weight gradient and no adapter: the cost LoRA cannot beat.

Timing: every variant is built up front and warmed up (the first steps allocate AdamW state and
oneDNN kernels); then, for each repetition, each variant runs the same ``--steps`` batches, the
variant order rotating between repetitions so that drift (thermal, other load) hits all alike.
A step is timed from the forward to the end of ``zero_grad`` with ``time.perf_counter``
(``--clock cpu``: process CPU time, which other processes cannot inflate when torch uses one
thread); padded batches are prepared beforehand (train.py pads inside the loop: ~1 ms). Ratios
are the median over repetitions of the ratio of per-repetition mean step times (paired, so slow
drift cancels); the spread of those per-repetition ratios is printed beside them.

Memory: peak resident set size (VmHWM) added by ``--memory-steps`` training steps, in a *fresh
process per variant* (so memory an earlier variant freed but glibc kept cannot hide a peak): the
child loads the model, builds the variant and its optimizer, hands freed heap back to the OS
(``malloc_trim``), resets VmHWM (``/proc/self/clear_refs``), runs the steps and reports VmHWM
minus the RSS before the first step. It counts activations saved for backward, gradients, AdamW
state and allocator slack; torch has no CPU peak-allocation counter, and tracemalloc does not see
torch's allocator.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common

VARIANTS: tuple[str, ...] = ("lora", "peft", "full", "floor")
DESCRIPTIONS: dict[str, str] = {
    "lora": "ours: inject_lora, r=8, alpha=8, Wq+Wv of every layer; head trained",
    "peft": "peft.get_peft_model, LoraConfig(r=8, lora_alpha=8, target_modules=[query, value]); "
    "head trained",
    "full": "full fine-tuning: every parameter trained",
    "floor": "frozen model, head trained, Wq/Wv outputs marked requires_grad: LoRA's activation "
    "gradients without weight gradients or adapter",
}
NAME = "train_step"


def model_config(name: str = "minilm") -> Any:
    """The ``model`` config node of ``conf/model/<name>.yaml`` over the schema's defaults."""
    from omegaconf import OmegaConf

    from lora_repro.config import ModelConfig

    path = common.CONF / "model" / f"{name}.yaml"
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))


def task_config(name: str = "rotten_tomatoes", **overrides: Any) -> Any:
    """The ``task`` config node of ``conf/task/<name>.yaml`` over the schema's defaults."""
    from omegaconf import OmegaConf

    from lora_repro.config import TaskConfig

    path = common.CONF / "task" / f"{name}.yaml"
    return OmegaConf.merge(OmegaConf.structured(TaskConfig), OmegaConf.load(path), overrides)


def make_batches(
    n: int,
    batch_size: int,
    max_length: int,
    seed: int,
    task: str = "rotten_tomatoes",
    model: Any = "minilm",
) -> tuple[list[tuple[Any, Any, Any]], int]:
    """The first ``n`` training batches train.py would draw with data seed ``seed``, padded.

    ``model`` is a name in ``conf/model/`` or a ``model`` config node (its tokenizer is used).

    Returns:
        ``([(input_ids (b, L), attention_mask (b, L), labels (b,)), ...], num_labels)``.
    """
    import torch

    from lora_repro.data import length_grouped_batches, load_task, pad_batch, tokenize
    from lora_repro.models import load_model

    data = load_task(task_config(task, max_length=max_length))
    model_cfg = model_config(model) if isinstance(model, str) else model
    tok = load_model(model_cfg, num_labels=len(data.label_names)).tokenizer
    texts, labels = data.splits["train"]
    ids = tokenize(tok, texts, max_length)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in length_grouped_batches([len(x) for x in ids], batch_size, gen):
        if len(b) < batch_size:  # the ragged last batch of an epoch
            continue
        input_ids, mask = pad_batch([ids[i] for i in b], tok.pad_token_id)
        out.append((input_ids, mask, torch.tensor([labels[i] for i in b])))
        if len(out) == n:
            break
    return out, len(data.label_names)


@dataclass
class Variant:
    """A model ready to train, with its optimizer and LR schedule.

    Attributes:
        name: one of :data:`VARIANTS`.
        model: the model (train mode, CPU).
        opt: AdamW over the trainable parameters.
        sched: train.py's warmup/decay schedule.
        trainable: number of trainable parameters.
    """

    name: str
    model: Any
    opt: Any
    sched: Any
    trainable: int


def _mark_output(module: Any, inputs: Any, output: Any) -> Any:
    """Forward hook: the output becomes a gradient target (a leaf when nothing upstream is)."""
    if not output.requires_grad:
        output.requires_grad_(True)
    return output


def build_variant(
    name: str,
    num_labels: int,
    *,
    r: int = 8,
    alpha: float = 8.0,
    lr: float = 4e-3,
    lr_full: float = 5e-5,
    seed: int = 0,
    model: str = "minilm",
) -> Variant:
    """A fresh copy of the embedded default set up as variant ``name`` (see module docstring).

    Raises:
        ValueError: for an unknown variant name.
    """
    import torch

    from lora_repro.lora import LoraConfig, inject_lora, lora_parameters
    from lora_repro.models import head_modules, load_model, reset_head
    from lora_repro.targets import find_targets
    from lora_repro.train import lr_lambda

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    m = load_model(model_config(model), num_labels=num_labels).model
    m.train()
    gen = torch.Generator().manual_seed(seed)
    if name == "lora":
        inject_lora(m, LoraConfig(r=r, alpha=alpha, targets=("q", "v")), gen)
        extra = lora_parameters(m)
    elif name == "peft":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        m = get_peft_model(
            m,
            PeftLoraConfig(
                r=r,
                lora_alpha=alpha,
                lora_dropout=0.0,
                target_modules=["query", "value"],
                bias="none",
            ),
        )
        extra = [p for n, p in m.named_parameters() if "lora_" in n]
    elif name == "full":
        for p in m.parameters():
            p.requires_grad_(True)
    else:  # floor
        for p in m.parameters():
            p.requires_grad_(False)
        for t in find_targets(m, ["q", "v"]):
            m.get_submodule(t.module).register_forward_hook(_mark_output)
        extra = []
    head = head_modules(m.get_base_model() if name == "peft" else m)
    reset_head(head, gen)
    head_params = [p for h in head.values() for p in h.parameters()]
    if name == "full":
        groups = [{"params": list(m.parameters()), "lr": lr_full}]
    else:
        for p in head_params:
            p.requires_grad_(True)
        groups = [{"params": extra + head_params, "lr": lr}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(10_000, 600))
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    return Variant(name, m, opt, sched, trainable)


def train_step(v: Variant, batch: tuple[Any, Any, Any], precision: str = "fp32") -> float:
    """One step of train.py's loop (:func:`lora_repro.train.step`) on ``batch``; returns the loss.

    ``precision`` is a resolved one (``bf16`` or ``fp32``; see :func:`resolved_precision`).
    """
    import torch

    from lora_repro.precision import autocast
    from lora_repro.train import Trainee, step

    def batch_loss(model, b):
        input_ids, mask, y = b
        with autocast(torch.device("cpu"), precision):
            logits = model(input_ids=input_ids, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(logits.float(), y)

    return step(Trainee(v.model, [], v.opt, v.sched), batch_loss, iter([batch]))


def resolved_precision(requested: str) -> str:
    """``--precision`` as training would run it here (``auto`` → bf16 where native, else fp32)."""
    import torch

    from lora_repro.precision import resolve

    return resolve(requested, torch.device("cpu")).name


def time_interleaved(
    variants: Sequence[Variant],
    batches: Sequence[Any],
    reps: int,
    precision: str,
    clock: str = "wall",
) -> dict[str, list[list[float]]]:
    """Step times ``name -> [rep][batch]`` in seconds, variant order rotating per repetition.

    ``clock="wall"`` uses ``time.perf_counter``; ``"cpu"`` uses ``time.process_time`` (CPU time
    of all this process's threads: robust to other processes on a busy machine when run with one
    thread, but it also counts OpenMP workers spinning while they wait).
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    times: dict[str, list[list[float]]] = {v.name: [] for v in variants}
    for rep in range(reps):
        k = rep % len(variants)
        for v in list(variants[k:]) + list(variants[:k]):
            row = []
            for b in batches:
                t0 = now()
                train_step(v, b, precision)
                row.append(now() - t0)
            times[v.name].append(row)
    return times


def rep_ratios(a: list[list[float]], b: list[list[float]]) -> list[float]:
    """Per repetition, mean(a_rep) / mean(b_rep)."""
    return [sum(x) / len(x) / (sum(y) / len(y)) for x, y in zip(a, b, strict=True)]


# ------------------------------------------------------------------------------------------------
# Memory: one fresh process per variant
# ------------------------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> int:
    """Measure one variant's peak RSS added by training steps; print one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = torch.load(args.batches_file)
    v = build_variant(args.child, args.num_labels, r=args.r, alpha=args.alpha, seed=args.seed)
    before = common.rss_mib()
    reset_ok = common.reset_peak_rss()
    before = common.rss_mib() if reset_ok else before
    for i in range(args.memory_steps):
        train_step(v, batches[i % len(batches)], args.precision)
    peak = common.peak_rss_mib()
    out = {
        "variant": args.child,
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "peak_delta_mib": None if peak is None or before is None else peak - before,
        "peak_reset": reset_ok,
        "steps": args.memory_steps,
    }
    print(json.dumps(out), flush=True)
    return 0


def measure_memory(
    names: Sequence[str], batches: Any, num_labels: int, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Run :func:`_child` for each variant in a fresh interpreter; ``name -> its JSON``."""
    import torch

    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batches.pt"
        torch.save(list(batches), path)
        for name in names:
            cmd = common.python_cmd(
                "bench.train_step",
                "--child",
                name,
                "--batches-file",
                str(path),
                "--num-labels",
                str(num_labels),
                "--memory-steps",
                str(args.memory_steps),
                "--precision",
                args.precision,
                "--r",
                str(args.r),
                "--alpha",
                str(args.alpha),
                "--seed",
                str(args.seed),
                *(["--threads", str(args.threads)] if args.threads else []),
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
            if proc.returncode != 0:
                out[name] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
                continue
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ------------------------------------------------------------------------------------------------
# Profile (why one variant is slower than another)
# ------------------------------------------------------------------------------------------------
def profile(
    variants: Sequence[Variant], batches: Sequence[Any], precision: str, row_limit: int = 20
) -> dict[str, str]:
    """torch.profiler tables (sorted by self CPU time) of a few steps per variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for v in variants:
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches:
                train_step(v, b, precision)
        out[v.name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
    return out


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma list of " + ",".join(VARIANTS)
    )
    p.add_argument("--reps", type=int, default=5, help="repetitions (variant order rotates)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant per repetition")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time (use with --threads 1 on a busy machine)",
    )
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0, help="data order and adapter/head init")
    p.add_argument(
        "--memory",
        choices=("subprocess", "none"),
        default="subprocess",
        help="peak-RSS measurement in a fresh process per variant, or none",
    )
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also write torch.profiler tables of lora and peft steps",
    )
    p.add_argument("--profile-steps", type=int, default=3)
    # internal: one memory measurement in a child process
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batches-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--num-labels", type=int, default=2, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print its table, write ``<results>/bench/train_step.json``."""
    args = parse_args(argv)
    args.precision = resolved_precision(args.precision)
    if args.child:
        return _child(args)
    import torch

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        print(f"error: unknown variant(s) {bad}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    info = common.machine_info(
        torch_threads=torch.get_num_threads(),
        versions=common.versions("torch", "transformers", "peft", "numpy"),
    )
    note = common.busy_note(info)
    t_start = time.perf_counter()

    batches, num_labels = make_batches(args.steps, args.batch_size, args.max_length, args.seed)
    variants = [
        build_variant(n, num_labels, r=args.r, alpha=args.alpha, seed=args.seed) for n in names
    ]
    losses = {}
    for v in variants:
        for i in range(args.warmup):
            losses[v.name] = train_step(v, batches[i % len(batches)], args.precision)
    times = time_interleaved(variants, batches, args.reps, args.precision, args.clock)
    for v in variants:
        losses[v.name] = train_step(v, batches[0], args.precision)

    memory = measure_memory(names, batches, num_labels, args) if args.memory == "subprocess" else {}
    profiles = (
        profile(
            [v for v in variants if v.name in ("lora", "peft")],
            batches[: args.profile_steps],
            args.precision,
        )
        if args.profile
        else {}
    )

    per_variant = {}
    for v in variants:
        flat = [t for rep in times[v.name] for t in rep]
        mem = memory.get(v.name, {})
        per_variant[v.name] = {
            "description": DESCRIPTIONS[v.name],
            "trainable_params": v.trainable,
            "step_s_median": common.median(flat),
            "step_s_min": min(flat),
            "rep_mean_s": [sum(r) / len(r) for r in times[v.name]],
            "step_s": times[v.name],
            "last_loss": losses.get(v.name),
            "memory": mem,
        }
    ratios: dict[str, float] = {}
    ratio_reps: dict[str, list[float]] = {}
    if "lora" in times:
        for n in names:
            if n != "lora":
                ratio_reps[f"lora/{n}"] = rep_ratios(times["lora"], times[n])
                ratios[f"lora/{n}"] = common.median(ratio_reps[f"lora/{n}"])

    targets = {
        "lora_vs_peft": common.target(ratios.get("lora/peft"), 1.0),
        "lora_vs_floor": common.target(ratios.get("lora/floor"), 1.15),
    }
    payload = {
        "bench": NAME,
        "machine": info,
        "settings": {
            "model": "minilm (all-MiniLM-L6-v2, 6 layers, d_model 384) + classification head",
            "task": "rotten_tomatoes",
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "padded_lengths": [int(b[0].shape[1]) for b in batches],
            "precision": args.precision,
            "threads": torch.get_num_threads(),
            "reps": args.reps,
            "steps_per_rep": args.steps,
            "clock": args.clock,
            "warmup": args.warmup,
            "r": args.r,
            "alpha": args.alpha,
            "seed": args.seed,
            "memory": args.memory,
            "memory_steps": args.memory_steps,
            "ratio_rule": "median over repetitions of (mean step time of lora / of the other)",
            "memory_rule": "VmHWM - VmRSS around --memory-steps steps, fresh process per variant",
        },
        "variants": per_variant,
        "ratios": ratios,
        "ratio_per_rep": ratio_reps,
        "targets": targets,
        "profile": profiles,
        "wall_s": time.perf_counter() - t_start,
    }
    path = common.write_result(args.results, NAME, payload)
    if profiles:
        prof_path = common.bench_dir(args.results) / f"{NAME}_profile.txt"
        from lora_repro.runs import atomic_write_text

        atomic_write_text(prof_path, "\n\n".join(f"== {k}\n{t}" for k, t in profiles.items()))

    print(render(payload))
    if note:
        print(note)
        if args.clock == "wall":
            print("hint: on a busy machine, --threads 1 --clock cpu gives steadier ratios")
    print(f"wrote {path}")
    return 0


def render(payload: dict[str, Any]) -> str:
    """The printed table of a ``train_step.json`` payload."""
    s = payload["settings"]
    rows = []
    for name in [n for n in VARIANTS if n in payload["variants"]]:
        pv = payload["variants"][name]
        ratio = payload["ratios"].get(f"lora/{name}", 1.0 if name == "lora" else None)
        ratio = None if ratio is None else f"{ratio:.3f}"
        rows.append(
            [
                name,
                pv["trainable_params"],
                pv["step_s_median"] * 1000,
                ratio,
                (pv.get("memory") or {}).get("peak_delta_mib"),
            ]
        )
    head = (
        f"Training step, MiniLM-L6 + head, batch {s['batch_size']}, max length "
        f"{s['max_length']}, {s['precision']}, {s['threads']} thread(s), {s.get('clock', 'wall')} "
        f"clock, {s['reps']}×"
        f"{s['steps_per_rep']} steps per variant (interleaved)"
    )
    lines = [
        head,
        common.table(
            ["variant", "trainable", "step ms (median)", "lora ÷ this", "peak RSS Δ MiB"], rows
        ),
    ]
    for key in ("lora_vs_peft", "lora_vs_floor"):
        t = payload["targets"][key]
        if t["value"] is None:
            continue
        per_rep = payload.get("ratio_per_rep", {}).get(key.replace("_vs_", "/"), [])
        spread = f", per-repetition {min(per_rep):.3f}–{max(per_rep):.3f}" if per_rep else ""
        unresolved = bool(per_rep) and min(per_rep) <= t["target"] <= max(per_rep)
        lines.append(
            f"{key}: {t['value']:.3f} (target {t['rule']} {t['target']}: "
            f"{'met' if t['met'] else 'MISSED'}{spread}"
            + (
                "; the target lies inside the spread: not resolved at this noise)"
                if unresolved
                else ")"
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
