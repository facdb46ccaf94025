"""Packed training step: one base pass for K adapters against K standalone steps, in one run.

    python -m bench.pack_step --results results [--k 4] [--steps 4] [--reps 3] [--batch-size 32]

The K runs (mixed ranks and weight types: Wq,Wv r = 8; Wq,Wk,Wv,Wo r = 2; Wq r = 1; Wv r = 64)
train MiniLM on the embedded default with their own data seeds. Each repetition times ``--steps``
packed steps (:mod:`lora_repro.pack`) and the same runs' standalone steps on the same batches
(:func:`lora_repro.train.step`), the order alternating per repetition; the ratio is
packed ÷ (sum of the K standalone steps), per repetition and as the median. Also printed:

* the padding the stacking costs: padded tokens of the packed batches (each padded to the pack's
  longest) over those of the K standalone batches (each to its own longest), over 200 steps;
* the adapters' delta s·B·A·x of K runs as a loop over runs against one batched matmul with
  ranks padded to the largest (forward + backward, Wq's shape), the choice PackedLoraLayer makes;
* evaluation of the validation split: the K adapters batched (every batch stacked K times,
  :attr:`lora_repro.tracks.Track.packed_evaluate`) against each run's standalone evaluation,
  ``--eval-reps`` times each, alternating (0: not measured).

Writes ``<results>/bench/pack_step.json``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from bench import common

RUNS = [
    (["q", "v"], 8, 8.0),
    (["q", "k", "v", "o"], 2, 4.0),
    (["q"], 1, 8.0),
    (["v"], 64, 64.0),
]


def _cfg(
    targets: list[str],
    r: int,
    alpha: float,
    seed: int,
    batch_size: int,
    steps: int,
    val_fraction: float | None = None,
) -> Any:
    from omegaconf import OmegaConf

    from bench.train_step import model_config, task_config
    from lora_repro.config import RunConfig

    cfg = OmegaConf.structured(RunConfig)
    cfg.model = model_config("minilm")
    cfg.task = task_config("rotten_tomatoes")
    if val_fraction is not None:
        cfg.task.val_fraction = val_fraction
    cfg.adapter.targets, cfg.adapter.r, cfg.adapter.alpha = targets, r, alpha
    cfg.seed = seed
    cfg.train.batch_size, cfg.train.max_steps = batch_size, steps
    cfg.train.lr, cfg.train.precision, cfg.train.progress = 4e-3, "fp32", False
    return cfg


def main(argv: list[str] | None = None) -> int:
    import torch

    from lora_repro import pack, train
    from lora_repro.data import length_grouped_batches
    from lora_repro.tracks import make_track

    p = common.parser(__doc__)
    p.add_argument("--k", type=int, default=4, help="runs per pack (at most 4)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-reps", type=int, default=1, help="evaluation timings per variant")
    p.add_argument(
        "--val-fraction", type=float, default=None, help="validation split size (default: task's)"
    )
    p.add_argument(
        "--slack",
        type=float,
        default=None,
        help="lora_repro.pack.PAD_SLACK for the packed step (large: always one pass)",
    )
    args = p.parse_args(argv)
    k = min(args.k, len(RUNS))
    total_steps = args.steps * args.reps * 2 + 10
    cfgs = [
        _cfg(t, r, a, seed, args.batch_size, total_steps, args.val_fraction)
        for seed, (t, r, a) in enumerate(RUNS[:k])
    ]
    preps = [train.prepare(cfgs[0])]
    preps += [train.prepare(c, preps[0].data, preps[0].loaded) for c in cfgs[1:]]
    loaded = preps[0].loaded
    device = torch.device("cpu")
    track = make_track(cfgs[0], preps[0].data, loaded.tokenizer, device, "fp32")

    # standalone: one model per run, as train.fit builds it
    import copy

    alone = []
    for c, prep in zip(cfgs, preps, strict=True):
        m = copy.deepcopy(loaded.model)
        head = train.attach(m, prep, c.seed)
        from lora_repro.lora import lora_parameters

        t = train.make_trainee(m, [(lora_parameters(m), c.train.lr), (head, c.train.lr)], c.train)
        t.model.train()
        alone.append(t)
    # packed: one model for the K runs
    pm = copy.deepcopy(loaded.model)
    packed = pack.inject_pack(
        pm, [q.lora for q in preps], [q.targets for q in preps], [c.seed for c in cfgs]
    )
    trainees = [
        train.make_trainee(
            pm, [(packed.lora_parameters(i), c.train.lr), (packed.heads[i], c.train.lr)], c.train
        )
        for i, c in enumerate(cfgs)
    ]
    pm.train()

    streams = []
    for c in cfgs:
        g = torch.Generator().manual_seed(c.seed)
        streams.append(list(length_grouped_batches(track.lengths, args.batch_size, g)))

    slack = pack.PAD_SLACK if args.slack is None else args.slack

    def packed_step(j: int) -> None:
        bs = {i: s[j] for i, s in enumerate(streams)}
        pack.forward_backward(
            pm, track, packed.state, bs, {i: t.scaler for i, t in enumerate(trainees)}, slack=slack
        )
        for t in trainees:
            train.update(t)

    def alone_step(j: int) -> None:
        for i, t in enumerate(alone):
            train.step(t, track.batch_loss, iter([streams[i][j]]))

    packed_step(0), alone_step(0)  # warm-up
    times: dict[str, list[float]] = {"packed": [], "sequential": []}
    j = 1
    for rep in range(args.reps):
        order = [("packed", packed_step), ("sequential", alone_step)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for s in range(args.steps):
                fn(j + s)
            times[name].append((time.perf_counter() - t0) / args.steps)
        j += args.steps
    ratios = [a / b for a, b in zip(times["packed"], times["sequential"], strict=True)]

    # padding: packed batches padded to the pack's longest vs each run's own longest
    lengths = track.lengths
    pad_packed = pad_alone = real = 0
    n_passes = one_pass = 0
    for j in range(min(200, min(len(s) for s in streams))):
        ls = [[lengths[i] for i in s[j]] for s in streams]
        real += sum(sum(x) for x in ls)
        pad_alone += sum(len(x) * max(x) for x in ls)
        one_pass += sum(len(x) for x in ls) * max(max(x) for x in ls)
        groups = pack.passes({i: (len(x), max(x)) for i, x in enumerate(ls)}, slack)
        n_passes += len(groups)
        pad_packed += sum(sum(len(ls[i]) for i in g) * max(max(ls[i]) for i in g) for g in groups)
    steps_counted = min(200, min(len(s) for s in streams))

    delta = _delta_bench(k, args.batch_size)

    def eval_packed() -> None:
        packed.state.replicas = list(range(k))
        try:
            track.packed_evaluate(pm, "validation", k)
        finally:
            packed.state.replicas = None

    def eval_alone() -> None:
        for t in alone:
            track.evaluate(t.model, "validation")

    evals: dict[str, list[float]] = {"packed": [], "sequential": []}
    for rep in range(args.eval_reps):
        order = [("packed", eval_packed), ("sequential", eval_alone)]
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn()
            evals[name].append(time.perf_counter() - t0)
    payload = {
        "bench": "pack_step",
        "k": k,
        "runs": [f"{','.join(t)} r={r}" for t, r, _ in RUNS[:k]],
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "ms_per_step": {n: [1e3 * x for x in v] for n, v in times.items()},
        "ratio_packed_over_sequential": ratios,
        "median_ratio": statistics.median(ratios),
        "slack": slack,
        "passes_per_step": n_passes / steps_counted,
        "padded_tokens_packed_over_alone": pad_packed / pad_alone,
        "padded_tokens_one_pass_over_alone": one_pass / pad_alone,
        "padding_fraction": {"packed": 1 - real / pad_packed, "alone": 1 - real / pad_alone},
        "delta_ms": delta,
        "eval_s": evals,
        "eval_ratio_packed_over_sequential": (
            statistics.median(evals["packed"]) / statistics.median(evals["sequential"])
            if args.eval_reps
            else None
        ),
        "machine": common.machine_info(),
    }
    common.write_result(args.results, "pack_step", payload)
    print(render(payload))
    return 0


def _delta_bench(k: int, batch_size: int, length: int = 64, reps: int = 20) -> dict[str, float]:
    """Forward + backward of K runs' s·B·A·x (Wq of MiniLM, 384 × 384): loop vs batched."""
    import torch

    ranks = [r for _, r, _ in RUNS[:k]]
    d = kk = 384
    rows = batch_size * length
    x = torch.randn(k * rows, kk)
    A = [torch.randn(r, kk, requires_grad=True) for r in ranks]
    B = [torch.randn(d, r, requires_grad=True) for r in ranks]
    rmax = max(ranks)

    def loop() -> None:
        out = [(x[i * rows : (i + 1) * rows] @ A[i].t()) @ B[i].t() for i in range(k)]
        torch.cat(out).sum().backward()

    def batched() -> None:
        Ap = torch.stack([torch.nn.functional.pad(a, (0, 0, 0, rmax - a.shape[0])) for a in A])
        Bp = torch.stack([torch.nn.functional.pad(b, (0, rmax - b.shape[1])) for b in B])
        xs = x.view(k, rows, kk)
        torch.bmm(torch.bmm(xs, Ap.transpose(1, 2)), Bp.transpose(1, 2)).sum().backward()

    out = {}
    for name, fn in (("loop", loop), ("batched", batched)):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = 1e3 * statistics.median(ts)
    return out


def render(payload: dict[str, Any]) -> str:
    """The benchmark's printed report."""
    ms = payload["ms_per_step"]
    pad = payload["padding_fraction"]
    lines = [
        f"pack of K = {payload['k']} ({'; '.join(payload['runs'])}), batch "
        f"{payload['batch_size']} each, fp32, {payload['threads']} threads, "
        f"{payload['machine'].get('cpu')}, load {payload['machine'].get('load_avg')}",
        common.table(
            ["variant", "ms / step (median)"],
            [
                ["packed (one base pass)", common.fmt(statistics.median(ms["packed"]))],
                ["sequential (K steps)", common.fmt(statistics.median(ms["sequential"]))],
            ],
        ),
        "packed ÷ sequential per repetition: "
        + ", ".join(f"{r:.3f}" for r in payload["ratio_packed_over_sequential"])
        + f"; median {payload['median_ratio']:.3f} (target <= 1: not slower)",
        f"padded tokens, packed ÷ standalone: {payload['padded_tokens_packed_over_alone']:.3f} "
        f"(padding {100 * pad['packed']:.1f} % packed, {100 * pad['alone']:.1f} % alone; "
        f"{payload['passes_per_step']:.2f} base passes per step at slack {payload['slack']}); "
        f"all K in one pass: {payload['padded_tokens_one_pass_over_alone']:.3f}",
        f"delta s·B·A·x of K runs, fwd+bwd: loop {payload['delta_ms']['loop']:.2f} ms, "
        f"batched (ranks padded) {payload['delta_ms']['batched']:.2f} ms",
    ]
    ev = payload.get("eval_s") or {}
    if ev.get("packed"):
        lines.append(
            f"evaluation of the validation split, K adapters batched: "
            f"{statistics.median(ev['packed']):.2f} s; one by one: "
            f"{statistics.median(ev['sequential']):.2f} s; ratio "
            f"{payload['eval_ratio_packed_over_sequential']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
