"""Weight types Wq/Wk/Wv/Wo → module (and slice) names, per architecture family (paper §4.2, §7.1).

The paper adapts the attention projections Wq, Wk, Wv, Wo of every Transformer block. Models name
them differently, and two families fuse q, k, v into one projection:

* GPT-2 ``attn.c_attn`` is a ``Conv1D`` whose weight is stored (in, out) with the output columns
  in three blocks ``[q | k | v]`` of ``n_embd`` each.
* GPT-NeoX ``attention.query_key_value`` is a ``Linear`` whose output rows are interleaved per
  head: ``[h0: q k v][h1: q k v]…``, each part ``head_dim`` rows.

A :class:`Target` names one matrix W (d×k) to adapt: the module, the output indices of the slice
(``None`` for the whole module) and its weight type and layer. An unknown architecture, or a
weight type a model lacks, is an error listing the model's linear modules; a mapping can be added
without code with ``adapter.target_modules`` (a dict ``type -> regex`` whose first group is the
layer index).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from lora_repro import weights
from lora_repro.config import canonical_layers
from lora_repro.errors import LoraReproError
from lora_repro.runs import WEIGHT_TYPES

# The name tables live in the torch-free lora_repro.weights (analysis reads them without torch).
FAMILY_PATTERNS = weights.FAMILY_PATTERNS
MODEL_TYPE_FAMILY = weights.MODEL_TYPE_FAMILY


@dataclass(frozen=True)
class Target:
    """One weight matrix W (d×k) to adapt.

    Attributes:
        module: full module name in the model.
        type: weight type ``q``, ``k``, ``v`` or ``o``.
        layer: Transformer block index (0-based).
        d: output features of W (the slice's, for a fused module).
        k: input features of W.
        fused: ``None`` for a whole module; ``"gpt2"`` or ``"neox"`` for a slice of a fused qkv.
        index: output indices of the slice inside the fused output (length d), else ``None``.
    """

    module: str
    type: str
    layer: int
    d: int
    k: int
    fused: str | None = None
    index: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        """Key prefix in adapter files: ``<module>`` or ``<module>.<type>`` for a fused slice."""
        return f"{self.module}.{self.type}" if self.fused else self.module


class TargetError(LoraReproError, ValueError):
    """A weight type, architecture or layer selection that cannot be mapped onto the model."""


def _linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of the model's linear modules (``nn.Linear`` and GPT-2 ``Conv1D``)."""
    return [n for n, m in model.named_modules() if _linear_like(m)]


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(k, d) = (input, output) features of a Linear or a GPT-2 Conv1D (weight stored (in, out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        k, d = module.weight.shape
        return int(k), int(d)
    raise TargetError(f"{type(module).__name__} is not a Linear or Conv1D module")


def family_of(model: nn.Module) -> str:
    """The architecture family of a transformers model, from ``config.model_type``.

    Raises:
        TargetError: for an unknown model type, listing the model's linear modules and how to
            map them with ``adapter.target_modules``.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in MODEL_TYPE_FAMILY:
        return MODEL_TYPE_FAMILY[model_type]
    raise TargetError(
        f"no Wq/Wk/Wv/Wo mapping for model_type={model_type!r} (known: {sorted(MODEL_TYPE_FAMILY)}). "
        "Add one in config, e.g. adapter.target_modules={q: 'layers\\.(\\d+)\\.attn\\.q$', ...} "
        "(a regex per weight type whose first group is the layer index). Linear modules of this "
        f"model: {_summarise(linear_module_names(model))}"
    )


def _summarise(names: Sequence[str], n: int = 12) -> str:
    # Collapse layer indices so the list stays readable: 'encoder.layer.*.attention.self.query'.
    seen: list[str] = []
    for name in names:
        pattern = re.sub(r"\.\d+\.", ".*.", name)
        if pattern not in seen:
            seen.append(pattern)
    more = f" … (+{len(seen) - n} more)" if len(seen) > n else ""
    return ", ".join(seen[:n]) + more


def _fused_index(kind: str, d_total: int, type_: str, n_heads: int | None) -> tuple[int, ...]:
    try:
        return weights.fused_index(kind, d_total, type_, n_heads)
    except weights.WeightFileError as e:
        raise TargetError(str(e)) from e


def check_weight_types(types: Sequence[str]) -> list[str]:
    """Deduplicated weight types, checked against ``q, k, v, o``.

    Raises:
        TargetError: when ``types`` is empty or names another type.
    """
    types = list(dict.fromkeys(types))
    bad = [t for t in types if t not in WEIGHT_TYPES]
    if not types or bad:
        raise TargetError(
            f"unknown weight type(s) {bad or types!r}: adapter.targets takes a non-empty subset of "
            f"{list(WEIGHT_TYPES)} (Wq, Wk, Wv, Wo), e.g. adapter.targets=[q,v]"
        )
    return types


def find_targets(
    model: nn.Module,
    types: Sequence[str],
    layers: Sequence[int] | None = None,
    target_modules: Mapping[str, str] | None = None,
) -> list[Target]:
    """The matrices W to adapt for weight types ``types`` (§7.1: any subset of Wq, Wk, Wv, Wo).

    Args:
        model: a transformers model (or any module with ``config.model_type``).
        types: weight types, a non-empty subset of ``("q", "k", "v", "o")``.
        layers: block indices (>= 0) to adapt; ``None`` for all.
        target_modules: optional ``type -> regex`` mapping (group 1 = layer index) that replaces
            the built-in family map, for architectures it does not know.

    Returns:
        Targets sorted by (layer, type order q, k, v, o).

    Raises:
        TargetError: unknown weight type, unknown architecture, a type the model lacks, or a
            layer index out of range; each message lists what exists.
    """
    types = check_weight_types(types)
    if target_modules:
        patterns = {t: str(p) for t, p in target_modules.items()}
        family = "custom"
    else:
        family = family_of(model)
        patterns = FAMILY_PATTERNS[family]
    n_heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    modules = dict(model.named_modules())
    found: list[Target] = []
    for t in types:
        fused_key = "qkv" if t in "qkv" and "qkv" in patterns else None
        pattern = patterns.get(fused_key or t)
        if pattern is None:
            raise TargetError(
                f"weight type {t!r} has no pattern for family {family!r}; known: {sorted(patterns)}"
                + (
                    f": add {t!r} to adapter.target_modules or drop it from adapter.targets"
                    if family == "custom"
                    else ""
                )
            )
        regex = re.compile(pattern)
        hits = 0
        for name, mod in modules.items():
            m = regex.search(name)
            if not m or not _linear_like(mod):
                continue
            hits += 1
            layer = int(m.group(1))
            k, d_out = in_out_features(mod)
            if fused_key:
                kind = "gpt2" if family == "gpt2" else "neox"
                index = _fused_index(kind, d_out, t, n_heads)
                found.append(Target(name, t, layer, len(index), k, kind, index))
            else:
                found.append(Target(name, t, layer, d_out, k))
        if not hits:
            raise TargetError(
                f"model (family {family!r}) has no module for weight type {t!r} matching "
                f"/{pattern}/. Its linear modules: {_summarise(linear_module_names(model))}. "
                "Map it with adapter.target_modules={"
                + t
                + ": '<regex with (\\d+) for the layer>'}"
            )
    n_layers = 1 + max(t.layer for t in found)
    if layers is not None:
        wanted = canonical_layers(layers)
        for i in wanted:
            if i >= n_layers:
                raise TargetError(
                    f"layer {i} out of range: the model has {n_layers} blocks (0..{n_layers - 1})"
                )
        found = [t for t in found if t.layer in wanted]
    order = {t: i for i, t in enumerate(WEIGHT_TYPES)}
    return sorted(found, key=lambda t: (t.layer, order[t.type]))


def num_layers(model: nn.Module) -> int:
    """Number of Transformer blocks, from the config (``num_hidden_layers`` or ``n_layer``)."""
    cfg = model.config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        n = getattr(cfg, attr, None)
        if isinstance(n, int):
            return n
    raise TargetError("cannot tell the number of layers from the model config")
