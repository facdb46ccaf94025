"""How close a real training step runs to this CPU's matrix-multiply limit.

    python -m bench.cpu_efficiency --results results [--steps 10 --threads 2]

Builds the embedded default exactly as ``python -m experiments.train`` does (Wq,Wv at r = 8,
batch 32, length-grouped batches, ``train.precision=auto``), counts the floating-point operations
of each step with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and attention,
forward and backward), times the same steps again without the counter, and divides the
achieved GFLOP/s by the best fp32 GEMM rate measured on this machine in the same process (a
4096×384 @ 384×1536 product, the shape of the feed-forward layers). Prints the ratio and writes
``<results>/bench/cpu_efficiency.json`` with the CPU it ran on.
"""

from __future__ import annotations

import time

from bench import common


def gemm_gflops(dtype, reps: int = 10) -> float:
    """Best GFLOP/s of a 4096×384 @ 384×1536 product in ``dtype``."""
    import torch

    a = torch.randn(4096, 384).to(dtype)
    b = torch.randn(384, 1536).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 4096 * 384 * 1536 / best / 1e9


def main(argv=None) -> int:
    p = common.parser(__doc__)
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_dir
    from torch.utils.flop_counter import FlopCounterMode

    import experiments.train  # noqa: F401  (registers the config schema)
    from lora_repro import grids
    from lora_repro.data import length_grouped_batches
    from lora_repro.lora import lora_parameters
    from lora_repro.precision import cpu_info, resolve
    from lora_repro.tracks import make_track
    from lora_repro.train import attach, make_trainee, prepare, step

    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=str(grids.CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["train.progress=false"])
    prep = prepare(cfg)
    model = prep.loaded.model
    head_params = attach(model, prep, seed_init=0)
    cpu = torch.device("cpu")
    prec = resolve(cfg.train.precision, cpu)
    track = make_track(cfg, prep.data, prep.loaded.tokenizer, cpu, prec.name)
    trainee = make_trainee(
        model,
        [(lora_parameters(model), cfg.train.lr), (head_params, cfg.train.lr)],
        cfg.train,
        prec,
    )

    def batches(seed: int):
        g = torch.Generator().manual_seed(seed)
        while True:
            yield from length_grouped_batches(track.lengths, cfg.train.batch_size, g)

    model.train()
    warm = batches(1)
    for _ in range(2):
        step(trainee, track.batch_loss, warm)
    counted = batches(0)
    with FlopCounterMode(display=False) as fc:
        for _ in range(args.steps):
            step(trainee, track.batch_loss, counted)
    flops = fc.get_total_flops()
    timed = batches(0)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(trainee, track.batch_loss, timed)
    seconds = time.perf_counter() - t0
    achieved = flops / seconds / 1e9
    peak_fp32 = gemm_gflops(torch.float32)
    peak_run = peak_fp32 if prec.name == "fp32" else gemm_gflops(torch.bfloat16, reps=3)
    info = cpu_info()
    out = {
        "cpu": info.record(),
        "precision": prec.record(),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "gflop_per_step": flops / args.steps / 1e9,
        "ms_per_step": seconds / args.steps * 1e3,
        "achieved_gflops": achieved,
        "gemm_fp32_gflops": peak_fp32,
        "gemm_gflops_at_run_precision": peak_run,
        "ratio_to_fp32_gemm": achieved / peak_fp32,
        "ratio_to_gemm_at_run_precision": achieved / peak_run,
    }
    common.write_result(args.results, "cpu_efficiency", out)
    print(
        f"{info.model} ({info.aten_capability}), {out['threads']} thread(s), {prec.name}: "
        f"{out['gflop_per_step']:.1f} GFLOP/step in {out['ms_per_step']:.0f} ms = "
        f"{achieved:.1f} GFLOP/s; fp32 GEMM {peak_fp32:.1f} GFLOP/s; "
        f"ratio {out['ratio_to_fp32_gemm']:.2f} (to the GEMM at {prec.name}: "
        f"{out['ratio_to_gemm_at_run_precision']:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
