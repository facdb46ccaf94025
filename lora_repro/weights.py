"""Weight files without torch: safetensors tensors (bf16 included), module names → Wq/Wk/Wv/Wo,
and peft adapter folders (paper §4.2, §7).

``analysis`` reads adapters and pretrained W through this module, so that inspecting an adapter
never imports torch. It depends on numpy and safetensors only (and on :mod:`lora_repro.runs`).

* :data:`FAMILY_PATTERNS` / :data:`MODEL_TYPE_FAMILY`: which module is Wq, Wk, Wv, Wo in each
  architecture family (``lora_repro.targets`` builds its targets from the same tables).
* :class:`SafetensorsFile`: one tensor at a time from a safetensors file, in the file's dtype;
  bf16, which numpy cannot hold, is upcast to float32 from its raw bytes (a bf16 number is the
  upper 16 bits of the float32 with the same value, so the upcast is exact).
* :func:`read_peft_adapter`: a peft LoRA folder (``adapter_config.json`` +
  ``adapter_model.safetensors``) as a :class:`lora_repro.runs.Adapter`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lora_repro import runs
from lora_repro.errors import DamagedFile, LoraReproError

# family -> weight type -> regex on the full module name; group 1 is the layer index.
# "qkv" names a fused projection holding q, k and v (GPT-2 c_attn, GPT-NeoX query_key_value).
FAMILY_PATTERNS: dict[str, dict[str, str]] = {
    "bert": {
        "q": r"(?:^|\.)layer\.(\d+)\.attention\.self\.query$",
        "k": r"(?:^|\.)layer\.(\d+)\.attention\.self\.key$",
        "v": r"(?:^|\.)layer\.(\d+)\.attention\.self\.value$",
        "o": r"(?:^|\.)layer\.(\d+)\.attention\.output\.dense$",
    },
    "deberta-v2": {
        "q": r"(?:^|\.)layer\.(\d+)\.attention\.self\.query_proj$",
        "k": r"(?:^|\.)layer\.(\d+)\.attention\.self\.key_proj$",
        "v": r"(?:^|\.)layer\.(\d+)\.attention\.self\.value_proj$",
        "o": r"(?:^|\.)layer\.(\d+)\.attention\.output\.dense$",
    },
    "llama": {
        "q": r"(?:^|\.)layers\.(\d+)\.self_attn\.q_proj$",
        "k": r"(?:^|\.)layers\.(\d+)\.self_attn\.k_proj$",
        "v": r"(?:^|\.)layers\.(\d+)\.self_attn\.v_proj$",
        "o": r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj$",
    },
    "opt": {
        "q": r"(?:^|\.)layers\.(\d+)\.self_attn\.q_proj$",
        "k": r"(?:^|\.)layers\.(\d+)\.self_attn\.k_proj$",
        "v": r"(?:^|\.)layers\.(\d+)\.self_attn\.v_proj$",
        "o": r"(?:^|\.)layers\.(\d+)\.self_attn\.out_proj$",
    },
    "gpt2": {
        "qkv": r"(?:^|\.)h\.(\d+)\.attn\.c_attn$",
        "o": r"(?:^|\.)h\.(\d+)\.attn\.c_proj$",
    },
    "gpt_neox": {
        "qkv": r"(?:^|\.)layers\.(\d+)\.attention\.query_key_value$",
        "o": r"(?:^|\.)layers\.(\d+)\.attention\.dense$",
    },
}

# transformers ``config.model_type`` -> family. Not mapped on purpose: "deberta" (v1, fused
# ``in_proj``) and "phi3" (fused ``qkv_proj`` with GQA sizes): q, k, v share one module there.
MODEL_TYPE_FAMILY: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
    "deberta-v2": "deberta-v2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "opt": "opt",
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
}

CONV1D_FAMILIES: frozenset[str] = frozenset({"gpt2"})
"""Families whose attention weights are GPT-2 ``Conv1D``: stored (in, out), transposed to (d, k)."""

FUSED_KIND: dict[str, str] = {"gpt2": "gpt2", "gpt_neox": "neox"}
"""Families with a fused qkv module -> the slice layout of :func:`fused_index`."""


class WeightFileError(LoraReproError, ValueError):
    """A weight file or adapter folder that cannot be read as what it claims to be."""


def fused_index(kind: str, d_total: int, type_: str, n_heads: int | None) -> tuple[int, ...]:
    """Output rows of weight type ``type_`` inside a fused q|k|v projection of ``d_total`` rows.

    Args:
        kind: ``"gpt2"`` (blocks ``[q | k | v]``) or ``"neox"`` (per head ``[q k v]``, each
            ``head_dim`` rows).
        d_total: output features of the fused module (3·d).
        type_: ``q``, ``k`` or ``v``.
        n_heads: attention heads (needed for ``"neox"``).

    Returns:
        d row indices, in the order of the slice's output features.

    Raises:
        WeightFileError: when the sizes do not split into three parts (or into heads).
    """
    part = "qkv".index(type_)
    if d_total % 3:
        raise WeightFileError(f"fused qkv output size {d_total} is not divisible by 3")
    d = d_total // 3
    if kind == "gpt2":
        return tuple(range(part * d, (part + 1) * d))
    if not n_heads or d % n_heads:
        raise WeightFileError(
            f"GPT-NeoX fused qkv needs num_attention_heads dividing {d}, got {n_heads}"
        )
    hd = d // n_heads
    idx = np.arange(n_heads)[:, None] * 3 * hd + part * hd + np.arange(hd)[None, :]
    return tuple(int(i) for i in idx.reshape(-1))


def type_and_layer(
    module: str, families: Iterable[str] | None = None
) -> tuple[str, int, str] | None:
    """``(weight type, layer, family)`` of a module name, or ``None`` when no family knows it.

    A fused qkv module gives type ``"qkv"``.

    Args:
        module: full module name (a tensor name without ``.weight``), any prefix.
        families: families to try, in order; default all of :data:`FAMILY_PATTERNS`.
    """
    for fam in families if families is not None else FAMILY_PATTERNS:
        for typ, pat in FAMILY_PATTERNS[fam].items():
            m = re.search(pat, module)
            if m:
                return typ, int(m.group(1)), fam
    return None


# --------------------------------------------------------------------------------------------
# safetensors, one tensor at a time
# --------------------------------------------------------------------------------------------
def bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    """float32 values of bf16 numbers given as their uint16 bit patterns (exact: a 16-bit shift).

    Args:
        raw: uint16 array of bf16 bit patterns, any shape.

    Returns:
        float32 array of the same shape.
    """
    out = np.asarray(raw, np.uint16).astype(np.uint32)
    out <<= 16  # in place: one float32-sized buffer, whatever the size of W
    return out.view(np.float32)


_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # bit patterns, upcast by bf16_to_float32
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsFile:
    """A safetensors file read lazily: the header once, each tensor's bytes only when asked.

    The header is parsed here (8-byte length, JSON), so that every dtype — bf16 included — is
    read the same way: the tensor's byte range is read from the file and viewed as numpy.
    The file's length is checked against the header, so a truncated file is refused at open.

    Raises:
        FileNotFoundError: no such file.
        DamagedFile: torn, truncated or not a safetensors file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(2, "no such file", str(self.path))
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than a header")
                n = int.from_bytes(head, "little")
                if n <= 0 or n > min(size - 8, 100 << 20):
                    raise ValueError(f"header length {n} does not fit in {size} bytes")
                header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
        except (ValueError, UnicodeDecodeError) as e:
            raise DamagedFile(self.path, f"not a complete safetensors file ({e})") from e
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self._start = 8 + n
        self._entries: dict[str, dict] = header
        end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
        if self._start + end > size:
            raise DamagedFile(
                self.path,
                f"truncated: the header describes {self._start + end} bytes, the file has {size}",
            )

    def names(self) -> list[str]:
        """Tensor names, in the header's order."""
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def dtype(self, name: str) -> str:
        """The stored dtype, safetensors spelling (``F32``, ``BF16``, ``F16`` ...)."""
        return str(self._entries[name]["dtype"])

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape."""
        return tuple(int(x) for x in self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as numpy: its own dtype, bf16 upcast to float32.

        Raises:
            KeyError: no such tensor (the message names a few that exist).
            DamagedFile: the entry's dtype or byte range is inconsistent.
        """
        if name not in self._entries:
            raise KeyError(
                f"{self.path} has no tensor {name!r} ({len(self._entries)} tensors such as "
                f"{self.names()[:3]})"
            )
        e = self._entries[name]
        dt = _NUMPY_DTYPES.get(str(e["dtype"]))
        if dt is None:
            raise DamagedFile(self.path, f"tensor {name!r} has unsupported dtype {e['dtype']}")
        shape = self.shape(name)
        lo, hi = (int(x) for x in e["data_offsets"])
        count = math.prod(shape)
        if hi - lo != count * np.dtype(dt).itemsize:
            raise DamagedFile(self.path, f"tensor {name!r}: byte range does not match its shape")
        with open(self.path, "rb") as f:
            f.seek(self._start + lo)
            buf = f.read(hi - lo)
        if len(buf) != hi - lo:
            raise DamagedFile(self.path, f"truncated inside tensor {name!r}")
        arr = np.frombuffer(buf, dtype=np.dtype(dt).newbyteorder("<"), count=count)
        arr = arr.reshape(shape)
        if e["dtype"] == "BF16":
            return bf16_to_float32(arr)
        return arr.astype(arr.dtype.newbyteorder("="), copy=True)


# --------------------------------------------------------------------------------------------
# peft adapter folders
# --------------------------------------------------------------------------------------------
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


def is_peft_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding ``adapter_config.json``."""
    return (Path(path) / PEFT_CONFIG).is_file()


def read_peft_adapter(
    peft_dir: str | os.PathLike,
    family: str | None = None,
    n_layers: int | None = None,
) -> runs.Adapter:
    """Read a peft LoRA adapter folder as a :class:`~lora_repro.runs.Adapter` (float32 factors).

    Weight types and layers come from the module names through :data:`FAMILY_PATTERNS` (only
    ``family``'s patterns when given, else every family's). bf16 and fp16 factors are upcast.

    Args:
        peft_dir: folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
        family: architecture family of the base model, when known.
        n_layers: blocks of the base model, when known (recorded in the adapter).

    Returns:
        The adapter: A (r, k) and B (d, r) per module, scaling α/r (α/√r with rsLoRA).

    Raises:
        WeightFileError: not a peft LoRA folder, per-module ranks, DoRA, a module whose type
            cannot be told, or factors whose shapes do not chain.
        DamagedFile: the config or the weights file is torn or truncated.
    """
    d = Path(peft_dir)
    cfg_path, w_path = d / PEFT_CONFIG, d / PEFT_WEIGHTS
    if not cfg_path.exists() or not w_path.exists():
        raise WeightFileError(
            f"{d} is not a peft adapter folder: expected {PEFT_CONFIG} and {PEFT_WEIGHTS}"
        )
    cfg = runs.read_object(cfg_path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise WeightFileError(
            f"{d}: peft_type is {cfg.get('peft_type')!r}, only LORA adapters are supported"
        )
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise WeightFileError(
            f"{d}: per-module ranks (rank_pattern/alpha_pattern) are not supported"
        )
    if cfg.get("use_dora"):  # DoRA's magnitude vector changes ΔW; reading only A, B would be wrong
        raise WeightFileError(
            f"{d}: DoRA adapters (use_dora=true) are not plain LoRA; not supported"
        )
    try:
        r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightFileError(f"{cfg_path}: needs integer 'r' and number 'lora_alpha'") from e
    rslora = bool(cfg.get("use_rslora", False))
    st = SafetensorsFile(w_path)
    A: dict[str, np.ndarray] = {}
    B: dict[str, np.ndarray] = {}
    for name in st.names():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue
        key = name.removeprefix("base_model.model.")
        key = key.replace(".lora_A.default.weight", ".lora_A.weight").replace(
            ".lora_B.default.weight", ".lora_B.weight"
        )
        key, which = runs._split_factor_key(key)
        t = st.get(name)
        if t.ndim != 2 or not np.issubdtype(t.dtype, np.floating):
            raise DamagedFile(w_path, f"{name} is {t.dtype} {t.shape}, not a float matrix")
        (A if which == "A" else B)[key] = t.astype(np.float32)
    if not A or set(A) != set(B):
        raise WeightFileError(
            f"{w_path}: expected matching '<module>.lora_A.weight' / '.lora_B.weight' pairs; "
            f"found {len(A)} A and {len(B)} B factors"
        )
    families = [family] if family else None
    modules = {}
    for key in A:
        a, b = A[key], B[key]
        if a.shape[0] != r or b.shape[1] != r:
            raise WeightFileError(
                f"{w_path}: {key} has A {a.shape}, B {b.shape} but adapter_config.json says r={r}"
            )
        found = type_and_layer(key, families)
        if found is None or found[0] == "qkv":
            raise WeightFileError(
                f"{d}: cannot tell the weight type and layer of {key!r}"
                + (" (fused qkv modules hold three types in one A)" if found else "")
            )
        modules[key] = runs.ModuleInfo(
            key=key,
            module=key,
            type=found[0],
            layer=found[1],
            d=int(b.shape[0]),
            k=int(a.shape[1]),
        )
    return runs.Adapter(
        r=r,
        alpha=alpha,
        scaling=alpha / (math.sqrt(r) if rslora else r),
        init="unknown (peft)",
        targets=sorted({m.type for m in modules.values()}, key=runs.WEIGHT_TYPES.index),
        base_model=str(cfg.get("base_model_name_or_path")),
        modules=modules,
        A=A,
        B=B,
        n_layers=n_layers,
        extra={"scaling_rule": "rslora" if rslora else "standard"},
    )


def read_any_adapter(path: str | os.PathLike) -> tuple[runs.Adapter, str]:
    """An adapter from a run directory, an ``adapter.safetensors`` file or a peft folder.

    Returns:
        ``(adapter, kind)`` with kind ``"run"`` or ``"peft"``.

    Raises:
        WeightFileError: ``path`` is none of these (the message says what each needs).
        DamagedFile: the adapter file is torn or truncated.
    """
    p = Path(path)
    if p.is_dir() and is_peft_folder(p):
        return read_peft_adapter(p), "peft"
    if (p.is_dir() and (p / runs.ADAPTER_FILE).is_file()) or (
        p.is_file() and p.suffix == ".safetensors"
    ):
        try:
            return runs.load_adapter(p), "run"
        except FileNotFoundError as e:
            raise WeightFileError(str(e)) from e
        except DamagedFile:
            raise
        except (ValueError, KeyError) as e:
            raise WeightFileError(f"{p}: not a lora-repro adapter ({e})") from e
    raise WeightFileError(
        f"{p} is not an adapter: expected a run directory with {runs.ADAPTER_FILE} or a peft "
        f"folder with {PEFT_CONFIG} and {PEFT_WEIGHTS}"
    )


def tensor_modules(names: Sequence[str]) -> list[str]:
    """Module names of the ``.weight`` tensors among ``names`` (the suffix dropped)."""
    return [n[: -len(".weight")] for n in names if n.endswith(".weight")]
