"""One layer's LoRA factors and pretrained W from saved runs, and the φ / Table 7 numbers on them.

Reads ``adapter.safetensors`` (and ``adapter_init.safetensors``) of chosen runs
(:mod:`analysis.selection`) or any :class:`lora_repro.runs.Adapter` (e.g. an imported peft one),
and ``<results>/base_weights/<model>.safetensors``, through :mod:`lora_repro.runs` only: analysis
never imports torch, transformers or the training code. Everything is float64 (paper §7.2, §7.3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis import amplification, subspace
from analysis.selection import RunRecord
from lora_repro import runs


class AdapterCache:
    """Loads each run's adapter once (:func:`lora_repro.runs.load_adapter`)."""

    def __init__(self) -> None:
        self._cache: dict[Path, runs.Adapter] = {}

    def get(self, run: RunRecord | str | os.PathLike) -> runs.Adapter:
        """The adapter of a run (record or run directory)."""
        path = Path(run.path if isinstance(run, RunRecord) else run)
        if path not in self._cache:
            self._cache[path] = runs.load_adapter(path)
        return self._cache[path]


@dataclass(frozen=True)
class LayerFactors:
    """The LoRA factors of one weight type at one layer, as float64.

    Attributes:
        key: adapter key.
        weight: weight type (q, k, v, o).
        layer: block index.
        A: (r, k).
        B: (d, r).
        A_init: (r, k) or ``None`` when the run saved no initial A.
        scaling: s of ΔW = s·B·A (α/r).
    """

    key: str
    weight: str
    layer: int
    A: np.ndarray
    B: np.ndarray
    A_init: np.ndarray | None
    scaling: float

    @property
    def r(self) -> int:
        """Rank."""
        return int(self.A.shape[0])

    @property
    def d(self) -> int:
        """Output features of W."""
        return int(self.B.shape[0])

    @property
    def k(self) -> int:
        """Input features of W."""
        return int(self.A.shape[1])


def layer_factors(adapter: runs.Adapter, weight: str, layer: int) -> LayerFactors:
    """The factors of ΔW_weight at block ``layer`` of an adapter (lora-repro or imported peft).

    Raises:
        KeyError: when the adapter has no such module (the message lists what it has).
    """
    key = adapter.key_for(weight, layer)
    a_init = None
    if adapter.A_init is not None and key in adapter.A_init:
        a_init = np.asarray(adapter.A_init[key], np.float64)
    return LayerFactors(
        key=key,
        weight=weight,
        layer=layer,
        A=np.asarray(adapter.A[key], np.float64),
        B=np.asarray(adapter.B[key], np.float64),
        A_init=a_init,
        scaling=float(adapter.scaling),
    )


def phi_between(f1: LayerFactors, f2: LayerFactors, view: str = "A") -> np.ndarray:
    """φ grid (Eq. 4) between two modules' directions under ``view`` (rows: f1's i, cols: f2's j).

    Raises:
        ValueError: for an unknown view, ``"dA"`` without A_init, or modules of different shape.
    """
    u1 = subspace.view_basis(view, f1.A, f1.B, f1.A_init)
    u2 = subspace.view_basis(view, f2.A, f2.B, f2.A_init)
    return subspace.phi_grid(u1, u2, check=False)


def adapter_phi(
    adapter1: runs.Adapter,
    adapter2: runs.Adapter,
    weight: str,
    layer: int,
    view: str = "A",
) -> np.ndarray:
    """φ grid between ΔW_weight at ``layer`` of two adapters (any source, e.g. an imported peft one).

    Returns:
        (r1, r2) grid (fewer rows / columns when r exceeds the dimension of the view's space).

    Raises:
        KeyError: when an adapter lacks that module; ValueError as :func:`phi_between`.
    """
    return phi_between(
        layer_factors(adapter1, weight, layer), layer_factors(adapter2, weight, layer), view
    )


def adapter_table7(
    adapter: runs.Adapter,
    W: np.ndarray,
    weight: str,
    layer: int,
    *,
    n_random: int = 10,
    seed: int = 0,
) -> dict[str, float]:
    """Table 7 quantities (§7.3) for ΔW_weight at ``layer`` of an adapter against its W (d, k).

    Raises:
        KeyError: when the adapter lacks that module; ValueError when W is not (d, k).
    """
    f = layer_factors(adapter, weight, layer)
    return amplification.table7_stats(W, f.B, f.A, f.scaling, n_random=n_random, seed=seed)


def n_layers_of(adapter: runs.Adapter) -> int:
    """Number of blocks of the base model (header ``n_layers``, else 1 + the deepest adapted)."""
    if adapter.n_layers:
        return int(adapter.n_layers)
    return max(adapter.layers()) + 1


def default_layer(n_layers: int) -> int:
    """The middle block, n_layers // 2 (the paper's layer 48 of 96)."""
    return n_layers // 2


def spread_layers(n_layers: int) -> list[int]:
    """First, quarter, middle, three-quarter and last blocks (deduplicated), for Fig. 6 / 7."""
    cand = [0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1]
    return sorted(set(cand))


def check_layer(layer: int, n_layers: int) -> int:
    """``layer`` if it is a valid block index.

    Raises:
        ValueError: listing the valid range.
    """
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range; the model has blocks 0..{n_layers - 1}")
    return layer


class BaseWeights:
    """Pretrained W of one model, read once from ``<results>/base_weights/<model>.safetensors``."""

    def __init__(self, results: str | os.PathLike, model: str) -> None:
        self.path = runs.base_weights_path(results, model)
        self._w: dict[str, np.ndarray] | None = None
        self._infos: dict[str, runs.ModuleInfo] = {}

    def exists(self) -> bool:
        """Whether the file is there."""
        return self.path.exists()

    def _load(self) -> dict[str, np.ndarray]:
        if self._w is None:
            self._w, self._infos = runs.load_base_weights(self.path)
        return self._w

    def n_layers(self) -> int:
        """Number of blocks, 1 + the deepest layer saved (every block's W is saved).

        Raises:
            FileNotFoundError: when the file is missing (with a hint).
        """
        self._load()
        return 1 + max(info.layer for info in self._infos.values())

    def matrix(self, key: str) -> np.ndarray:
        """W (d, k) = (out, in) of adapter key ``key`` in float64.

        Raises:
            FileNotFoundError: when the file is missing (with a hint).
            KeyError: when the file has no such key.
        """
        self._load()
        assert self._w is not None
        if key not in self._w:
            raise KeyError(
                f"{self.path} has no weight {key!r}; it holds {len(self._w)} keys such as "
                f"{sorted(self._w)[:3]}"
            )
        return np.asarray(self._w[key], np.float64)
