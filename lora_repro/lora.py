"""LoRA layers with the paper's semantics (Hu et al. 2021, §4.1), injection, merge, adapter I/O.

For a frozen pretrained weight W0 (d×k) the adapted layer computes (Eq. 3)

    h = W0·x + s · B·A·dropout(x),   A: (r, k),  B: (d, r),  s = α / r  (rsLoRA: α / √r),

with B = 0 at start, so the adapted model equals the base model at initialisation, and A random
with a scale that does **not** depend on r (see ``init`` below: with α fixed across ranks, an A
whose scale shrinks with r stays mostly its random start, which hides the effects of §7).

Fused q|k|v projections (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``) get one adapter per
adapted slice, each with its own A (r×k) and B (d×r), so Wq alone, Wv alone or any subset can be
adapted (peft puts one A on the whole fused layer, which is not the paper's object).

Merging B·A into W is an explicit call (:func:`merge_lora` / :func:`unmerge_lora`), never a side
effect of ``.train()`` / ``.eval()``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lora_repro import runs, weights
from lora_repro.config import AdapterConfig
from lora_repro.errors import LoraReproError
from lora_repro.targets import Target, check_weight_types, find_targets, num_layers

INITS = ("gaussian", "kaiming_uniform", "gaussian_1_over_r")
SCALINGS = ("standard", "rslora")


class AdapterError(LoraReproError, ValueError):
    """An adapter file or config that does not fit the model or is malformed."""


@dataclass
class LoraConfig:
    """Configuration of the LoRA adapters (paper §4.1, §7).

    Attributes:
        r: rank r ≥ 1.
        alpha: α; the scaling is α/r (or α/√r with ``scaling="rslora"``). The paper sets α once to
            the first r tried and keeps it fixed when r changes.
        targets: weight types to adapt, a subset of ``q, k, v, o``.
        dropout: dropout probability on the adapter's input x.
        init: A's initialisation; B is always zero.
            ``gaussian`` (default, the paper's Gaussian): N(0, 1/(3k)), i.e. variance 1/(3k) and
            standard deviation 1/√(3k), those of the authors' kaiming-uniform init, independent
            of r. ``kaiming_uniform``: U(−1/√k, 1/√k)
            (loralib / peft default). ``gaussian_1_over_r``: N(0, 1/r²), peft's "gaussian"
            (its scale depends on r; not recommended for §7 analyses).
        scaling: ``standard`` (α/r) or ``rslora`` (α/√r).
        layers: block indices to adapt; ``None`` for all.
        target_modules: optional ``type -> regex`` map for architectures without a built-in one.

    Raises:
        AdapterError: on a bad value (in ``__post_init__``).
    """

    # The schema's defaults (lora_repro.config.AdapterConfig), their one definition.
    r: int = AdapterConfig.r
    alpha: float = AdapterConfig.alpha
    targets: Sequence[str] = tuple(AdapterConfig().targets)
    dropout: float = AdapterConfig.dropout
    init: str = AdapterConfig.init
    scaling: str = AdapterConfig.scaling
    layers: Sequence[int] | None = None
    target_modules: dict[str, str] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise AdapterError(f"adapter.r must be an integer >= 1, got {self.r!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise AdapterError(f"adapter.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterError(f"adapter.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise AdapterError(f"adapter.init must be one of {list(INITS)}, got {self.init!r}")
        if self.scaling not in SCALINGS:
            raise AdapterError(
                f"adapter.scaling must be one of {list(SCALINGS)}, got {self.scaling!r}"
            )
        self.targets = tuple(self.targets)
        check_weight_types(self.targets)

    @property
    def scale(self) -> float:
        """s = α/r, or α/√r for rsLoRA."""
        return float(self.alpha) / (math.sqrt(self.r) if self.scaling == "rslora" else self.r)


def init_A(shape: tuple[int, int], init: str, generator: torch.Generator) -> torch.Tensor:
    """A fresh A (r, k) in float32 drawn with ``generator`` (paper §4.1: "random Gaussian").

    ``gaussian``: entries with variance 1/(3k) (standard deviation 1/√(3k)), as U(−1/√k, 1/√k);
    ``kaiming_uniform``: U(−1/√k, 1/√k); ``gaussian_1_over_r``: standard deviation 1/r.

    Raises:
        AdapterError: for an unknown ``init``.
    """
    r, k = shape
    if init == "gaussian":
        return torch.randn(r, k, generator=generator) / math.sqrt(3 * k)
    if init == "kaiming_uniform":
        bound = 1.0 / math.sqrt(k)
        return (torch.rand(r, k, generator=generator) * 2 - 1) * bound
    if init == "gaussian_1_over_r":
        return torch.randn(r, k, generator=generator) / r
    raise AdapterError(f"unknown init {init!r}; choose one of {list(INITS)}")


class LoraFactor(nn.Module):
    """The pair A (r, k), B (d, r) for one weight matrix W (d×k)."""

    def __init__(self, r: int, d: int, k: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(r, k))
        self.lora_B = nn.Parameter(torch.zeros(d, r))

    def delta(self) -> torch.Tensor:
        """B·A (d, k), unscaled."""
        return self.lora_B @ self.lora_A


class LoraLayer(nn.Module):
    """A frozen Linear or GPT-2 Conv1D with one LoRA factor per adapted output slice.

    ``forward(x)``: x (..., k) → base(x) + s·B·A·dropout(x), the delta added to each slice's
    output features (all of them for a plain module). Shapes: output (..., d_total).
    """

    def __init__(self, base_layer: nn.Module, scaling: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scaling = float(scaling)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.factors = nn.ModuleDict()
        self.targets: dict[str, Target] = {}
        self.merged = False
        self.conv1d = type(base_layer).__name__ == "Conv1D"
        for p in base_layer.parameters():
            p.requires_grad_(False)

    def add(self, target: Target, r: int) -> LoraFactor:
        """Attach a factor pair for ``target`` (a whole module or one fused slice)."""
        name = target.type if target.fused else "main"
        factor = LoraFactor(r, target.d, target.k).train(self.training)
        self.factors[name] = factor
        self.targets[name] = target
        if target.index is not None:
            index = torch.tensor(target.index, device=self.base_layer.weight.device)
            self.register_buffer(f"index_{name}", index, persistent=False)
        return factor

    def _index(self, name: str) -> torch.Tensor | None:
        return getattr(self, f"index_{name}", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.merged or not self.factors:
            return y
        h = self.dropout(x)
        for name, f in self.factors.items():
            delta = (h @ f.lora_A.t().to(h.dtype)) @ f.lora_B.t().to(h.dtype)
            delta = (delta * self.scaling).to(y.dtype)
            idx = self._index(name)
            y = y + delta if idx is None else y.index_add(-1, idx, delta)
        return y

    @torch.no_grad()
    def _apply_delta(self, sign: float) -> None:
        W = self.base_layer.weight
        for name, f in self.factors.items():
            delta = (f.delta().double() * (sign * self.scaling)).to(W.dtype)  # (d, k)
            idx = self._index(name)
            if self.conv1d:  # stored (k, d_total)
                if idx is None:
                    W.add_(delta.t())
                else:
                    W.index_add_(1, idx, delta.t().contiguous())
            elif idx is None:
                W.add_(delta)
            else:
                W.index_add_(0, idx, delta)

    def merge(self) -> None:
        """W ← W + s·B·A for every factor; the forward then skips the adapter path."""
        if not self.merged:
            self._apply_delta(+1.0)
            self.merged = True

    def unmerge(self) -> None:
        """W ← W − s·B·A, undoing :meth:`merge`."""
        if self.merged:
            self._apply_delta(-1.0)
            self.merged = False


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """``module name -> LoraLayer`` for every injected layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def iter_factors(model: nn.Module):
    """Yield ``(target, factor)`` for every adapted matrix, in injection order."""
    for layer in lora_layers(model).values():
        for name, factor in layer.factors.items():
            yield layer.targets[name], factor


def inject_lora(
    model: nn.Module,
    cfg: LoraConfig,
    generator: torch.Generator | None = None,
    targets: list[Target] | None = None,
) -> list[Target]:
    """Freeze ``model`` and wrap every target matrix with a LoRA factor pair (paper §4.1).

    A is drawn with ``generator`` (``cfg.init``), one target after another in (layer, q, k, v, o)
    order, so the same seed gives the same A; B is zero.

    Args:
        model: a transformers model; all its parameters are frozen (set ``requires_grad`` on a
            classification head yourself).
        cfg: the LoRA configuration.
        generator: RNG for A; a fresh ``torch.Generator`` seeded 0 when ``None``.
        targets: precomputed targets (default: :func:`find_targets` from ``cfg``).

    Returns:
        The adapted targets.

    Raises:
        AdapterError: when the model already carries LoRA layers.
        TargetError: see :func:`lora_repro.targets.find_targets`.
    """
    if lora_layers(model):
        raise AdapterError("model already has LoRA layers; load a fresh base model to re-inject")
    if targets is None:
        targets = find_targets(model, cfg.targets, cfg.layers, cfg.target_modules)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: dict[str, LoraLayer] = {}
    for t in targets:
        layer = wrapped.get(t.module)
        if layer is None:
            base = model.get_submodule(t.module)
            layer = LoraLayer(base, cfg.scale, cfg.dropout)
            layer.train(base.training)  # a new module starts in train mode: keep the model's mode
            _set_module(model, t.module, layer)
            wrapped[t.module] = layer
        factor = layer.add(t, cfg.r)
        weight = layer.base_layer.weight
        with torch.no_grad():
            factor.lora_A.copy_(init_A((cfg.r, t.k), cfg.init, generator))
        factor.to(device=weight.device)
    return targets


def merge_lora(model: nn.Module) -> None:
    """Merge every adapter into its W (W ← W + s·B·A); explicit, never done by ``.eval()``."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (W ← W − s·B·A)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All A and B parameters of the injected adapters."""
    return [p for _, f in iter_factors(model) for p in (f.lora_A, f.lora_B)]


def count_lora_parameters(model: nn.Module) -> int:
    """Number of trainable LoRA parameters, Σ r·(d + k)."""
    return sum(p.numel() for p in lora_parameters(model))


def lora_state(model: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Current factors as float32 numpy: ``(key -> A (r, k), key -> B (d, r))``."""
    A, B = {}, {}
    for t, f in iter_factors(model):
        A[t.key] = f.lora_A.detach().float().cpu().numpy().copy()
        B[t.key] = f.lora_B.detach().float().cpu().numpy().copy()
    return A, B


def module_infos(targets: Sequence[Target]) -> dict[str, runs.ModuleInfo]:
    """``key -> ModuleInfo`` for adapter headers."""
    return {
        t.key: runs.ModuleInfo(
            key=t.key,
            module=t.module,
            type=t.type,
            layer=t.layer,
            d=t.d,
            k=t.k,
            slice=t.type if t.fused else None,
        )
        for t in targets
    }


def adapter_header(model: nn.Module, cfg: LoraConfig, base_model: str) -> dict[str, str]:
    """Header metadata for ``adapter.safetensors`` (r, α, scaling, init, targets, base model)."""
    try:
        n_layers = num_layers(model)
    except Exception:  # noqa: BLE001 - models without the usual config keys
        n_layers = None
    return header_for([t for t, _ in iter_factors(model)], n_layers, cfg, base_model)


def header_for(
    targets: Sequence[Target], n_layers: int | None, cfg: LoraConfig, base_model: str
) -> dict[str, str]:
    """:func:`adapter_header` from the adapted targets themselves (a model may carry several
    runs' factors, :mod:`lora_repro.pack`)."""
    return runs.adapter_metadata(
        r=cfg.r,
        alpha=cfg.alpha,
        scaling=cfg.scale,
        init=cfg.init,
        targets=list(cfg.targets),
        base_model=base_model,
        modules=module_infos(targets),
        n_layers=n_layers,
        scaling_rule=cfg.scaling,
        dropout=cfg.dropout,
    )


def save_adapter(
    model: nn.Module, path: str | os.PathLike, cfg: LoraConfig, base_model: str
) -> Path:
    """Atomically write ``adapter.safetensors``: float32, keys ``<key>.lora_A.weight`` (r, k) and
    ``<key>.lora_B.weight`` (d, r), with the configuration in the header."""
    A, B = lora_state(model)
    return runs.save_adapter_factors(path, A, B, adapter_header(model, cfg, base_model))


@torch.no_grad()
def load_adapter_into(model: nn.Module, adapter: runs.Adapter | str | os.PathLike) -> None:
    """Copy saved factors into a model that was injected with the same targets and rank.

    Raises:
        AdapterError: when keys or shapes differ (the message names the first mismatch).
    """
    if not isinstance(adapter, runs.Adapter):
        adapter = runs.load_adapter(adapter)
    have = {t.key: f for t, f in iter_factors(model)}
    missing, extra = sorted(set(adapter.A) - set(have)), sorted(set(have) - set(adapter.A))
    if missing or extra:
        raise AdapterError(
            f"adapter and model disagree on adapted matrices: only in adapter {missing[:4]}, only in "
            f"model {extra[:4]}; inject with the adapter's targets {adapter.targets} first"
        )
    for key, f in have.items():
        a, b = adapter.A[key], adapter.B[key]
        if tuple(a.shape) != tuple(f.lora_A.shape) or tuple(b.shape) != tuple(f.lora_B.shape):
            raise AdapterError(
                f"{key}: adapter has A {tuple(a.shape)}, B {tuple(b.shape)} but the model expects "
                f"A {tuple(f.lora_A.shape)}, B {tuple(f.lora_B.shape)} (other rank or base model?)"
            )
        f.lora_A.copy_(torch.from_numpy(a))
        f.lora_B.copy_(torch.from_numpy(b))


def base_weights(model: nn.Module, targets: Sequence[Target]) -> dict[str, np.ndarray]:
    """Pretrained W (d, k) per target key, float32: GPT-2 Conv1D transposed, fused slices cut.

    Must be called before any merge (it reads the base layers' weights as they are).
    """
    out = {}
    for t in targets:
        mod = model.get_submodule(t.module)
        mod = mod.base_layer if isinstance(mod, LoraLayer) else mod
        W = mod.weight.detach().float().cpu()
        if type(mod).__name__ == "Conv1D":
            W = W.t()
        if t.index is not None:
            W = W[list(t.index)]
        out[t.key] = W.numpy().copy()
    return out


# ------------------------------------------------------------------------------------------------
# peft interoperability
# ------------------------------------------------------------------------------------------------
PEFT_CONFIG = weights.PEFT_CONFIG
PEFT_WEIGHTS = weights.PEFT_WEIGHTS


def export_peft(
    adapter: runs.Adapter, out_dir: str | os.PathLike, fan_in_fan_out: bool = False
) -> Path:
    """Write ``adapter`` in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``).

    Args:
        adapter: a lora-repro adapter.
        out_dir: folder to create.
        fan_in_fan_out: True when the targets are GPT-2 Conv1D modules (W stored (in, out)).

    Raises:
        AdapterError: for slices of fused qkv projections (peft has one A per module, so
            per-slice adapters cannot be represented) or for a scaling peft does not offer.
    """
    fused = [k for k, m in adapter.modules.items() if m.slice]
    if fused:
        raise AdapterError(
            f"peft cannot represent per-slice adapters of fused qkv projections ({fused[0]}, …): "
            "it puts one A on the whole fused module. Keep the lora-repro adapter.safetensors."
        )
    rule = adapter.extra.get("scaling_rule", "standard")
    out = Path(out_dir)
    tensors = {}
    for key in adapter.A:
        tensors[f"base_model.model.{key}.lora_A.weight"] = adapter.A[key]
        tensors[f"base_model.model.{key}.lora_B.weight"] = adapter.B[key]
    config = {
        "peft_type": "LORA",
        "r": adapter.r,
        "lora_alpha": adapter.alpha,
        "use_rslora": rule == "rslora",
        "target_modules": sorted({m.module for m in adapter.modules.values()}),
        "lora_dropout": float(json.loads(adapter.extra.get("dropout", "0.0"))),
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "base_model_name_or_path": adapter.base_model,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    runs.atomic_save_safetensors(tensors, out / PEFT_WEIGHTS, {"format": "pt"})
    runs.atomic_write_json(out / PEFT_CONFIG, config)
    return out


def import_peft_adapter(
    peft_dir: str | os.PathLike, model: nn.Module | None = None
) -> runs.Adapter:
    """Read a peft LoRA adapter directory as a lora-repro :class:`~lora_repro.runs.Adapter`.

    Weight types and layers are recovered from module names with the built-in family map when
    ``model`` is given (or guessed from the common names otherwise), so the §7 analyses run on
    adapters users already have.

    Raises:
        AdapterError: when the directory is not a peft LoRA adapter, or ranks differ per module
            (``rank_pattern``), which the analyses do not support.
    """
    from lora_repro.targets import family_of

    try:
        return weights.read_peft_adapter(
            peft_dir,
            family=family_of(model) if model is not None else None,
            n_layers=num_layers(model) if model is not None else None,
        )
    except weights.WeightFileError as e:
        raise AdapterError(str(e)) from e
