"""The pretrained W of Wq, Wk, Wv, Wo read from a base model's own files (paper §7.3).

Table 7 and Figure 8 compare ΔW with the W it was added to. :func:`open_base` reads W from:

* a model folder (``save_pretrained`` output, or a hub snapshot): ``model.safetensors``, or a
  sharded checkpoint through ``model.safetensors.index.json`` (only the shards holding the
  requested tensors are opened);
* a hub id (``owner/name``): ``huggingface_hub.snapshot_download`` of ``config.json`` and the
  index first, then of only the shard files that hold the requested tensors;
* a GGUF file, or a folder holding one (the embedded SmolLM2), through the ``gguf`` package's
  numpy dequantiser, with llama.cpp's row permutation of Wq and Wk undone;
* the float32 copy a training run writes (``<results>/base_weights/<model>.safetensors``, keyed by
  adapter key), or the ``base_weights`` folder holding it (the file is chosen by model name).

Each W is read lazily, one tensor at a time, in the checkpoint's dtype, and upcast per matrix
(bf16 / fp16 → float32; float64 stays). It is oriented (d, k) = (out, in) like ΔW = B·A: GPT-2's
``Conv1D`` weights (stored (in, out)) are transposed, and a fused q|k|v projection is sliced like
the adapter's slices (:func:`lora_repro.weights.fused_index`). No torch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lora_repro import runs, weights
from lora_repro.errors import DamagedFile, LoraReproError

INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
BASE_FORMAT = runs.ADAPTER_FORMAT + "-base"

# GGUF (llama.cpp) tensor names per weight type, for the llama family
GGUF_NAMES = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class BaseModelError(LoraReproError, ValueError):
    """A base model that cannot give the W an adapter needs (missing tensor, wrong shapes, ...)."""


class BaseModel:
    """W (d, k) per (weight type, layer) from one base model (see the module docstring).

    Attributes:
        spec: what was asked for (folder, file or hub id).
        source: ``"safetensors"``, ``"sharded"``, ``"gguf"`` or ``"base_weights"``.
        family: architecture family (:data:`lora_repro.weights.FAMILY_PATTERNS`) or ``None``
            for a ``base_weights`` file (keyed by adapter key).
        n_layers: number of blocks.
        identity: what was read, for the report (files, dtype, revision).
    """

    def __init__(
        self,
        spec: str,
        source: str,
        entries: dict[tuple[str, int], tuple[str, str | None]],
        reader: Callable[[str], np.ndarray],
        *,
        family: str | None,
        n_layers: int,
        n_heads: int | None = None,
        conv1d: bool = False,
        dtype_of: Callable[[str], str] | None = None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self._entries = entries  # (type, layer) -> (tensor name, fused kind)
        self._read = reader
        self.family = family
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.conv1d = conv1d
        self._dtype_of = dtype_of
        self.identity = {"spec": spec, "source": source, "family": family, **(identity or {})}
        self.reads: list[str] = []  # tensors read, in order (one at a time)

    def has(self, weight: str, layer: int) -> bool:
        """Whether the model has W_weight at block ``layer``."""
        return (weight, layer) in self._entries

    def tensor_name(self, weight: str, layer: int) -> str:
        """The checkpoint tensor holding W_weight at ``layer``.

        Raises:
            BaseModelError: when the model has no such tensor (the message says what it has).
        """
        if (weight, layer) not in self._entries:
            types = sorted({t for t, _ in self._entries}, key="qkvo".index)
            raise BaseModelError(
                f"base model {self.spec} has no W{weight} at layer {layer}: it has W"
                f"{','.join(types) or '(none)'} at layers 0..{self.n_layers - 1}; is --base the "
                "model the adapter was trained on?"
            )
        return self._entries[(weight, layer)][0]

    def matrix(self, weight: str, layer: int) -> np.ndarray:
        """W_weight at block ``layer``, (d, k) = (out, in), float32 (float64 if stored so).

        Raises:
            BaseModelError: no such tensor in the model, or it is not a matrix.
            DamagedFile: the file holding it is torn.
        """
        name = self.tensor_name(weight, layer)
        fused = self._entries[(weight, layer)][1]
        try:
            w = self._read(name)
        except KeyError as e:
            raise BaseModelError(
                f"base model {self.spec}: tensor {name!r} is listed but missing ({e.args[0]})"
            ) from e
        self.reads.append(name)
        if w.ndim != 2:
            raise BaseModelError(f"base model {self.spec}: {name} is {w.shape}, not a matrix")
        if w.dtype not in (np.float32, np.float64):
            w = w.astype(np.float32)
        if self.conv1d:
            w = w.T
        if fused:
            w = w[list(weights.fused_index(fused, w.shape[0], weight, self.n_heads))]
        return np.ascontiguousarray(w)

    def matrix_for(self, info: runs.ModuleInfo) -> np.ndarray:
        """W of an adapter module, checked against the adapter's (d, k).

        Raises:
            BaseModelError: the model lacks it, or its shape is not the adapter's (the wrong base).
        """
        if self.source == "base_weights":
            name = info.key
            if name not in self._keys():
                raise BaseModelError(
                    f"{self.spec} has no W for adapter module {info.key!r} (W{info.type}, layer "
                    f"{info.layer}); it is the copy of another model? Pass that model's file"
                )
            w = np.asarray(self._read(name))
            self.reads.append(name)
            w = w if w.dtype in (np.float32, np.float64) else w.astype(np.float32)
        else:
            w = self.matrix(info.type, info.layer)
        if w.shape != (info.d, info.k):
            raise BaseModelError(
                f"base model {self.spec}: W{info.type} at layer {info.layer} is {w.shape} but the "
                f"adapter's ΔW is ({info.d}, {info.k}); pass the base model the adapter was "
                "trained on"
            )
        return w

    def _keys(self) -> set[str]:
        return {name for name, _ in self._entries.values()}

    def dtype(self, weight: str, layer: int) -> str | None:
        """The stored dtype of W_weight at ``layer`` (``None`` when unknown)."""
        if self._dtype_of is None:
            return None
        return self._dtype_of(self.tensor_name(weight, layer))


# --------------------------------------------------------------------------------------------
# Name maps
# --------------------------------------------------------------------------------------------
def _entries_from_names(
    names: Iterable[str], family: str | None
) -> tuple[dict[tuple[str, int], tuple[str, str | None]], str | None]:
    """(type, layer) -> (tensor name, fused kind) from checkpoint tensor names, and the family."""
    names = list(names)
    families = [family] if family else list(weights.FAMILY_PATTERNS)
    best: tuple[dict, str | None] = ({}, None)
    for fam in families:
        entries: dict[tuple[str, int], tuple[str, str | None]] = {}
        for module in weights.tensor_modules(names):
            found = weights.type_and_layer(module, [fam])
            if found is None:
                continue
            typ, layer, _ = found
            if typ == "qkv":
                for t in "qkv":
                    entries[(t, layer)] = (module + ".weight", weights.FUSED_KIND[fam])
            else:
                entries[(typ, layer)] = (module + ".weight", None)
        if len(entries) > len(best[0]):
            best = (entries, fam)
    return best


def _read_config(folder: Path) -> dict[str, Any]:
    p = folder / CONFIG_FILE
    if not p.is_file():
        return {}
    try:
        return runs.read_object(p)
    except DamagedFile as e:
        raise BaseModelError(str(e)) from e


def _int_field(cfg: dict[str, Any], *names: str) -> int | None:
    for n in names:
        v = cfg.get(n)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _n_layers(cfg: dict[str, Any], entries: dict) -> int:
    n = _int_field(cfg, "num_hidden_layers", "n_layer", "num_layers")
    return n if n else 1 + max((layer for _, layer in entries), default=-1)


# --------------------------------------------------------------------------------------------
# Openers
# --------------------------------------------------------------------------------------------
def _open_checkpoint(
    folder: Path, spec: str, fetch: Callable[[list[str]], None] | None = None
) -> BaseModel:
    """A transformers checkpoint folder: one safetensors file or a sharded one (index)."""
    cfg = _read_config(folder)
    family = weights.MODEL_TYPE_FAMILY.get(str(cfg.get("model_type"))) if cfg else None
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = runs.read_object(index)["weight_map"]
        except (DamagedFile, KeyError) as e:
            raise BaseModelError(f"{index}: not a safetensors index ({e})") from e
        if not isinstance(weight_map, dict):
            raise BaseModelError(f"{index}: 'weight_map' is not an object")
        source, names = "sharded", list(weight_map)
        shard_of = {n: str(f) for n, f in weight_map.items()}
    else:
        files = sorted(folder.glob("*.safetensors"))
        if fetch is not None and not files:
            fetch(["model.safetensors"])
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise BaseModelError(
                f"{folder} holds no model.safetensors, {INDEX_FILE} or .gguf file; pass a model "
                "folder (save_pretrained output), a hub id, or a base_weights file"
            )
        if len(files) > 1 and (folder / "model.safetensors").is_file():
            files = [folder / "model.safetensors"]
        if len(files) > 1:
            raise BaseModelError(
                f"{folder} holds {len(files)} safetensors files and no {INDEX_FILE}; pass one file"
            )
        st = weights.SafetensorsFile(files[0])
        if st.metadata.get("format") == BASE_FORMAT:
            return _open_base_weights(files[0], spec)
        source, names = "safetensors", st.names()
        shard_of = {n: files[0].name for n in names}
    entries, family = _entries_from_names(names, family)
    if not entries:
        raise BaseModelError(
            f"no Wq/Wk/Wv/Wo found in {folder} (model_type {cfg.get('model_type')!r}; known "
            f"families: {sorted(weights.FAMILY_PATTERNS)}); tensors such as {names[:3]}"
        )
    files_open: dict[str, weights.SafetensorsFile] = {}

    def shard(name: str) -> weights.SafetensorsFile:
        if name not in shard_of:
            raise KeyError(f"{name} is not in the checkpoint")
        fname = shard_of[name]
        if fname not in files_open:
            path = folder / fname
            if not path.is_file() and fetch is not None:
                fetch([fname])
            if not path.is_file():
                raise BaseModelError(
                    f"{INDEX_FILE} of {spec} puts {name} in {fname}, which is missing"
                )
            files_open[fname] = weights.SafetensorsFile(path)
        return files_open[fname]

    def read(name: str) -> np.ndarray:
        return shard(name).get(name)

    n_heads = _int_field(cfg, "num_attention_heads", "n_head")
    return BaseModel(
        spec,
        source,
        entries,
        read,
        family=family,
        n_layers=_n_layers(cfg, entries),
        n_heads=n_heads,
        conv1d=family in weights.CONV1D_FAMILIES,
        dtype_of=lambda n: shard(n).dtype(n),
        identity={"folder": str(folder), "model_type": cfg.get("model_type")},
    )


def _open_base_weights(path: Path, spec: str) -> BaseModel:
    """The float32 copy written by training (keyed by adapter key, already (d, k))."""
    st = weights.SafetensorsFile(path)
    try:
        modules = {k: runs.ModuleInfo(**v) for k, v in json.loads(st.metadata["modules"]).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise BaseModelError(
            f"{path}: no module table in its header; not a base_weights file"
        ) from e
    entries = {(m.type, m.layer): (k, None) for k, m in modules.items()}
    return BaseModel(
        spec,
        "base_weights",
        entries,
        st.get,
        family=None,
        n_layers=1 + max((m.layer for m in modules.values()), default=-1),
        dtype_of=st.dtype,
        identity={"file": str(path), "base_model": st.metadata.get("base_model")},
    )


def _open_gguf(path: Path, spec: str) -> BaseModel:
    """A GGUF file (llama family), dequantised per tensor by the ``gguf`` package."""
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError as e:  # pragma: no cover - gguf is a dependency
        raise BaseModelError("reading a GGUF base needs the `gguf` package (make setup)") from e
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise DamagedFile(path, f"not a readable GGUF file ({e})") from e

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode() if v.dtype == np.uint8 else int(v[0])

    arch = field("general.architecture")
    if arch not in ("llama", "mistral", "qwen2"):
        raise BaseModelError(f"{path}: GGUF architecture {arch!r}; only llama-family is read")
    n_heads, n_kv = field(f"{arch}.attention.head_count"), field(f"{arch}.attention.head_count_kv")
    tensors = {t.name: t for t in reader.tensors}
    entries = {}
    pat = re.compile(r"^blk\.(\d+)\.(" + "|".join(GGUF_NAMES.values()) + r")\.weight$")
    by_name = {v: k for k, v in GGUF_NAMES.items()}
    for name in tensors:
        m = pat.match(name)
        if m:
            entries[(by_name[m.group(2)], int(m.group(1)))] = (name, None)

    def read(name: str) -> np.ndarray:
        t = tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        kind = name.split(".")[2]
        # llama.cpp permutes Wq / Wk rows for its rotary layout; transformers undoes it the same way
        heads = n_heads if kind == "attn_q" else n_kv if kind == "attn_k" else None
        if heads:
            half = w.shape[0] // heads // 2
            w = w.reshape(heads, half, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        return w

    return BaseModel(
        spec,
        "gguf",
        entries,
        read,
        family="llama",
        n_layers=field(f"{arch}.block_count") or 1 + max(layer for _, layer in entries),
        n_heads=n_heads,
        dtype_of=lambda n: tensors[n].tensor_type.name,
        identity={"file": str(path), "architecture": arch},
    )


def _open_hub(repo_id: str, revision: str | None, cache_dir: str | None) -> BaseModel:
    """A hub model: config and index first, then only the shards holding the tensors read."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a dependency of transformers
        raise BaseModelError("a hub id needs the huggingface_hub package (make setup)") from e

    def download(patterns: list[str]) -> Path:
        try:
            return Path(
                snapshot_download(
                    repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir
                )
            )
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated: one line
            raise BaseModelError(
                f"cannot download {patterns} of {repo_id} (revision {revision or 'main'}): "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Offline? "
                "Download the model folder elsewhere and pass it with --base FOLDER"
            ) from e

    folder = download([CONFIG_FILE, INDEX_FILE])
    model = _open_checkpoint(folder, repo_id, fetch=download)
    model.identity.update(hub_id=repo_id, revision=revision)
    return model


def open_base(
    spec: str | os.PathLike,
    *,
    model_name: str | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> BaseModel:
    """Open a base model for reading W (see the module docstring for what ``spec`` can be).

    Args:
        spec: a model folder, a ``.safetensors`` or ``.gguf`` file, a ``base_weights`` folder,
            or a hub id ``owner/name``.
        model_name: the run's model name, to pick ``<model_name>.safetensors`` in a
            ``base_weights`` folder holding several.
        revision: hub revision (commit, branch or tag) for a hub id.
        cache_dir: hub cache folder (default: huggingface_hub's).

    Raises:
        BaseModelError: nothing readable there (the message lists what is accepted).
        DamagedFile: a weight file is torn or truncated.
    """
    text = str(spec)
    p = Path(text).expanduser()
    if p.is_file():
        if p.suffix == ".gguf":
            return _open_gguf(p, text)
        if p.suffix == ".safetensors":
            st = weights.SafetensorsFile(p)
            if st.metadata.get("format") == BASE_FORMAT:
                return _open_base_weights(p, text)
            return _open_checkpoint_file(p, text)
        raise BaseModelError(f"--base {text}: expected a .safetensors or .gguf file or a folder")
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if ggufs and not (p / INDEX_FILE).exists() and not list(p.glob("*.safetensors")):
            if len(ggufs) > 1:
                raise BaseModelError(f"{p} holds {len(ggufs)} GGUF files; pass one of them")
            return _open_gguf(ggufs[0], text)
        copies = _base_weights_files(p)
        if copies:
            if model_name and f"{model_name}.safetensors" in copies:
                return _open_base_weights(p / f"{model_name}.safetensors", text)
            if len(copies) == 1:
                return _open_base_weights(p / copies[0], text)
            raise BaseModelError(
                f"{p} holds the W of several models ({', '.join(copies)}); pass one file"
            )
        return _open_checkpoint(p, text)
    parent = p.parent
    local = text.startswith((".", "/", "~")) or (str(parent) not in ("", ".") and parent.exists())
    if HUB_ID.match(text) and not local:
        return _open_hub(text, revision, cache_dir)
    raise BaseModelError(
        f"--base {text}: no such file or folder, and not a hub id (owner/name); pass a model "
        "folder, a .safetensors / .gguf file, <results>/base_weights, or a hub id"
    )


def _open_checkpoint_file(path: Path, spec: str) -> BaseModel:
    """A single transformers safetensors file, with its folder's config.json when there is one."""
    model = _open_checkpoint(path.parent, spec) if path.name == "model.safetensors" else None
    if model is not None:
        return model
    st = weights.SafetensorsFile(path)
    cfg = _read_config(path.parent)
    family = weights.MODEL_TYPE_FAMILY.get(str(cfg.get("model_type"))) if cfg else None
    entries, family = _entries_from_names(st.names(), family)
    if not entries:
        raise BaseModelError(f"no Wq/Wk/Wv/Wo tensors found in {path}")
    return BaseModel(
        spec,
        "safetensors",
        entries,
        st.get,
        family=family,
        n_layers=_n_layers(cfg, entries),
        n_heads=_int_field(cfg, "num_attention_heads", "n_head"),
        conv1d=family in weights.CONV1D_FAMILIES,
        dtype_of=st.dtype,
        identity={"file": str(path)},
    )


def _base_weights_files(folder: Path) -> list[str]:
    """Names of the lora-repro base_weights files in ``folder``."""
    out = []
    for f in sorted(folder.glob("*.safetensors")):
        try:
            if weights.SafetensorsFile(f).metadata.get("format") == BASE_FORMAT:
                out.append(f.name)
        except (DamagedFile, FileNotFoundError):
            continue
    return out
