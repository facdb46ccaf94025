"""Full fine-tuning of the chosen weight matrices: the reference ΔW that LoRA approximates.

``adapter.method=full`` trains the W (d×k) of ``adapter.targets`` × ``adapter.layers`` directly,
with the task head; everything else stays frozen, including the biases of the trained layers
(the paper's ΔW is on W, so the learned update is W_ft − W0 and nothing else). The run writes
``delta.safetensors`` (:func:`lora_repro.runs.save_delta`): float32 ΔW per matrix, oriented
(d, k) like the adapters and base weights, so that the analysis compares the two on equal terms
(its rank, its subspaces against LoRA's, intruder dimensions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lora_repro import runs
from lora_repro.lora import base_weights, module_infos
from lora_repro.runs import canonical_targets
from lora_repro.targets import Target, TargetError, num_layers


def check_targets(targets: Sequence[Target], model_name: str) -> None:
    """Full fine-tuning trains whole matrices: a slice of a fused q|k|v projection cannot be
    trained alone.

    Raises:
        TargetError: for a fused target (naming the module and what to use instead).
    """
    fused = [t for t in targets if t.fused]
    if fused:
        raise TargetError(
            f"adapter.method=full trains whole weight matrices, but W{fused[0].type} of model "
            f"{model_name!r} is a slice of the fused module {fused[0].module}; use "
            "adapter.method=lora for this model"
        )


def trainable_weights(model: nn.Module, targets: Sequence[Target]) -> list[nn.Parameter]:
    """Freeze ``model`` and make the W of each target trainable; returns those W in target order.

    Raises:
        TargetError: a fused target (:func:`check_targets`).
    """
    check_targets(targets, type(model).__name__)
    for p in model.parameters():
        p.requires_grad_(False)
    weights = weights_of(model, targets)
    for w in weights:
        w.requires_grad_(True)
    return weights


def weights_of(model: nn.Module, targets: Sequence[Target]) -> list[nn.Parameter]:
    """The W parameter of each target's module, in target order."""
    return [model.get_submodule(t.module).weight for t in targets]


def save_delta(
    model: nn.Module,
    path: str | os.PathLike,
    W0: dict[str, np.ndarray],
    targets: Sequence[Target],
    base_model: str,
) -> Path:
    """Atomically write ``delta.safetensors``: ΔW = W_now − W0 (d, k) per target, float32.

    Args:
        W0: the pretrained W per target key, from :func:`lora_repro.lora.base_weights` before
            training.
    """
    W1 = base_weights(model, targets)
    try:
        n_layers = num_layers(model)
    except TargetError:
        n_layers = None
    return runs.save_delta(
        path,
        {k: W1[k] - W0[k] for k in W1},
        targets=canonical_targets(t.type for t in targets),
        base_model=base_model,
        modules=module_infos(targets),
        n_layers=n_layers,
        method="full",
    )


def count(weights: Sequence[torch.Tensor]) -> int:
    """Number of trained entries, Σ d·k."""
    return sum(w.numel() for w in weights)
