"""Benchmarks: scripts that print ratios measured in one run, never timed assertions.

Each script writes one JSON file to ``<results>/bench/`` (atomically) and prints a small table:

* :mod:`bench.train_step`: time per training step and peak memory on the embedded default, our
  LoRA against peft's, full fine-tuning and the frozen-model floor.
* :mod:`bench.analysis_scale`: the subspace analysis at GPT-3's shape (d = k = 12288, r = 64),
  factored against dense SVD, and a 96-layer × 4-type report.
* :mod:`bench.sweep_time`: wall time of the default sweep and the share of each run spent outside
  training steps.
* :mod:`bench.gpu`: bf16 training throughput on a GPU (only when one is present).

``python -m bench.run_all --results results`` (``make bench``) runs the first three with quick
defaults, and the fourth when a GPU is present.
"""
