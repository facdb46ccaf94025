"""The run-directory schema: atomic writes, adapter and base-weight files, run discovery.

A run directory (see README, "Run directories") holds::

    config.yaml            resolved config of the run
    meta.json              git SHA, package versions, model/data identity, seeds, device, times
    metrics.jsonl          one JSON object per evaluation, flushed line by line
    summary.json           final metrics, parameter counts, wall time
    adapter.safetensors    float32 LoRA factors, peft key names, metadata in the header
    adapter_init.safetensors  A at initialisation (for the learned part A - A_init)
    delta.safetensors      full fine-tuning (adapter.method=full) instead of the two above:
                           float32 ΔW = W_ft - W0 (d, k) per trained matrix
    status.json            {"status": "running" | "success" | "failed", ...}; written last

Every file is written atomically (temp file in the same directory, fsync, rename), so a killed
run never leaves a file that reads as complete, and a run counts as finished only when
``status.json`` says ``success``.

This module depends on numpy, safetensors and PyYAML only (not torch), so that ``analysis`` can
read results without importing model or training code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import load_file, save_file

from lora_repro.errors import DamagedFile, ResultsWriteError

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_INIT_FILE = "adapter_init.safetensors"
STATUS_FILE = "status.json"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
BASE_WEIGHTS_DIR = "base_weights"
ADAPTER_FORMAT = "lora-repro/1"
DELTA_FILE = "delta.safetensors"
DELTA_FORMAT = "lora-repro-delta/1"
WEIGHT_TYPES = ("q", "k", "v", "o")


def canonical_targets(targets: Any) -> list[str]:
    """Weight types in q, k, v, o order, each once (other names of a custom map after, in order).

    ``[v, q, q]`` and ``[q, v]`` are one run: the same matrices are adapted. The one definition
    of the canonical order, shared by the run config (:mod:`lora_repro.config`), the grids and
    the analysis.
    """
    given = [str(t) for t in targets]
    known = [t for t in WEIGHT_TYPES if t in given]
    return known + list(dict.fromkeys(t for t in given if t not in WEIGHT_TYPES))


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_in(folder: Path, name: str) -> tuple[int, str]:
    """A temp file beside the target, with the permissions a plain ``open`` would give it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results are meant to be shared
    return fd, tmp


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into one line naming the path and the remedy.

    Raises:
        ResultsWriteError: (an ``OSError``) for permission, disk-full and other I/O failures.
    """
    try:
        yield
    except ResultsWriteError:
        raise
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            todo = "free disk space there"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            todo = f"make {path.parent} writable by this user (or choose another paths.results)"
        else:
            todo = "check that folder"
        raise ResultsWriteError(f"cannot write {path}: {why}; {todo}, then rerun") from e


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """Yield a temp file beside ``path``; on success it replaces ``path`` (then the folder is
    fsynced), on any error it is removed and ``path`` is left as it was."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_in(path.parent, path.name)
        os.close(fd)
        try:
            yield tmp
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Readers see either the old file, or the complete new one, never a partial file; a write that
    fails (a full disk mid-way) leaves the old file as it was.

    Returns:
        The path written.

    Raises:
        ResultsWriteError: the folder is not writable, the disk is full, ...
    """
    path = Path(path)
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN written as null-free JSON is not allowed)."""
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    )


# Significant digits of the numbers in derived results (tables, index, figure summaries): enough
# for every quantity reported, few enough that another BLAS kernel (differences in the 15th-16th
# digit) writes the same bytes.
SIG_DIGITS = 8
CSV_FLOAT_FORMAT = f"%.{SIG_DIGITS}g"


def rounded(obj: Any, digits: int = SIG_DIGITS) -> Any:
    """``obj`` with every float (in nested dicts, lists and tuples) at ``digits`` significant digits."""
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    return obj


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as YAML."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_save_safetensors(
    tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> Path:
    """Atomically save numpy arrays as a safetensors file with string ``metadata`` in the header."""
    path = Path(path)
    with _replacing(path) as tmp:
        arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        save_file(arrays, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors recreates the file 0600
        _sort_header(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return path


def _sort_header(path: str) -> None:
    """Rewrite a safetensors header with sorted keys, in place and at the same length.

    safetensors stores ``__metadata__`` from a hash map, so its key order (and so the file's
    bytes) changes from one process to the next; sorting makes equal content give equal files.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if isinstance(header.get("__metadata__"), dict):
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(
            header, separators=(",", ":"), sort_keys=True, ensure_ascii=False
        ).encode()
        if len(text) > n:  # cannot happen for a reordering; keep the library's bytes if it does
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` and flush it to disk (metrics log).

    Raises:
        ResultsWriteError: the file cannot be written.
    """
    with writing(Path(path)), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------------------------
# Reading run directories
# --------------------------------------------------------------------------------------------
def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (any JSON value; run files go through :func:`read_object`)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_object(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run file that must hold one mapping: JSON (``.json``) or YAML (``.yaml``).

    The one reader of status, summary, meta and config files: whatever is wrong with the file
    comes back as one :class:`DamagedFile` naming it.

    Raises:
        FileNotFoundError: there is no such file.
        DamagedFile: unreadable, not UTF-8, torn or not JSON/YAML, or not a mapping.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DamagedFile(path, f"unreadable ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFile(path, f"not valid UTF-8 (byte {e.start})") from e
    try:
        if path.suffix in (".yaml", ".yml"):
            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        what = "empty" if not text.strip() else f"torn or not {kind}"
        raise DamagedFile(path, what) from e
    if not isinstance(obj, dict):
        raise DamagedFile(
            path, f"holds {type(obj).__name__ if obj is not None else 'null'}, not an object"
        )
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a torn last line (killed writer) is ignored.

    Raises:
        DamagedFile: the file is not UTF-8.
    """
    out = []
    p = Path(path)
    if not p.exists():
        return out
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFile(p, f"not valid UTF-8 (byte {e.start})") from e
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The resolved config of a run (``config.yaml``) as a plain dict.

    Raises:
        FileNotFoundError, DamagedFile: see :func:`read_object`.
    """
    return read_object(Path(run_dir) / CONFIG_FILE)


def run_status(run_dir: str | os.PathLike) -> str | None:
    """``"running"``, ``"success"``, ``"failed"``, or ``None`` when no status was written.

    Raises:
        DamagedFile: status.json is unreadable, torn or not an object.
    """
    try:
        return read_object(Path(run_dir) / STATUS_FILE).get("status")
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class RunState:
    """What a run directory holds: its status, and the first damaged file if one is.

    Attributes:
        status: ``"running"``, ``"success"``, ``"failed"`` or ``None`` (no status file).
        problem: the damaged file, ``None`` when every file read was sound.
    """

    status: str | None
    problem: DamagedFile | None = None

    @property
    def usable(self) -> bool:
        """Finished, and its config, summary and adapter (when present) read soundly."""
        return self.status == "success" and self.problem is None


def run_state(run_dir: str | os.PathLike) -> RunState:
    """Read a run's status and, for a finished run, check the files the analysis reads.

    Never raises for a damaged file: it is returned in :attr:`RunState.problem`.
    """
    run_dir = Path(run_dir)
    try:
        status = run_status(run_dir)
    except DamagedFile as e:
        return RunState(None, e)
    if status != "success":
        return RunState(status)
    try:
        read_config(run_dir)
        read_object(run_dir / SUMMARY_FILE)
        read_object(run_dir / META_FILE)
        for name in (ADAPTER_FILE, ADAPTER_INIT_FILE, DELTA_FILE):
            if (run_dir / name).exists():
                _read_metadata(run_dir / name)
    except FileNotFoundError as e:
        return RunState(status, DamagedFile(Path(e.filename or run_dir), "missing"))
    except DamagedFile as e:
        return RunState(status, e)
    return RunState(status)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (``pid`` > 0)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OverflowError:
        return False
    try:  # a killed child that its parent has not reaped yet is still listed, as a zombie
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def live_trainer(run_dir: str | os.PathLike) -> int | None:
    """The pid of the process training ``run_dir`` now, if it runs on this host and is alive.

    ``status.json`` of a run in progress holds ``{"status": "running", "pid", "host"}``. A run
    killed outright keeps that status; its pid is then gone (``None`` here). A pid on another
    host cannot be checked from here: ``None``.
    """
    p = Path(run_dir) / STATUS_FILE
    try:
        status = read_object(p)
    except (FileNotFoundError, DamagedFile):
        return None
    pid = status.get("pid")
    if status.get("status") != "running" or not isinstance(pid, int):
        return None
    if status.get("host") != socket.gethostname() or pid == os.getpid():
        return None
    return pid if pid_alive(pid) else None


def results_read_problem(results: str | os.PathLike) -> str | None:
    """Why ``results`` cannot be read as a results folder (one line), or ``None`` when it can."""
    path = Path(results)
    if not path.exists():
        return (
            f"results folder {path} does not exist; run `make sweep` to make it (or point "
            "RESULTS / --results at a results folder)"
        )
    if not path.is_dir():
        return (
            f"results path {path} is not a folder; point RESULTS / --results at a results folder "
            "(the one `make sweep` writes)"
        )
    return None


def results_write_problem(results: str | os.PathLike) -> str | None:
    """Why ``results`` cannot hold results (a file, or not writable), or ``None`` when it can.

    The folder need not exist yet: the nearest existing parent must then be writable.
    """
    if not str(results).strip():
        return "paths.results is empty: give a folder, e.g. paths.results=results"
    path = Path(results)
    if path.exists() and not path.is_dir():
        return f"paths.results={results} is a file, not a folder: point it at a folder"
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and not os.access(probe, os.W_OK | os.X_OK):
        return (
            f"paths.results={results} is not writable by this user: choose a folder you can write"
        )
    if not probe.is_dir():
        return f"paths.results={results} lies below {probe}, which is a file: choose another folder"
    return None


def is_finished(run_dir: str | os.PathLike) -> bool:
    """True when ``status.json`` says success and the run's files are sound (:func:`run_state`)."""
    return run_state(run_dir).usable


def find_runs(
    results: str | os.PathLike,
    finished_only: bool = True,
    damaged: list[DamagedFile] | None = None,
) -> list[Path]:
    """All run directories below ``results`` (folders holding a ``config.yaml``), sorted.

    Args:
        results: a results folder (``paths.results``).
        finished_only: keep only finished runs whose files are sound.
        damaged: when given, each finished-looking run left out for a damaged file is appended
            (as the :class:`DamagedFile`), so the caller can name it.
    """
    root = Path(results)
    if not root.exists():
        return []
    found = sorted(p.parent for p in root.rglob(CONFIG_FILE) if not p.parent.name.startswith("."))
    # a run directory has a meta.json or a status.json (a run killed before its meta.json was
    # written has the status); other folders with a config.yaml are not runs
    found = [
        r
        for r in found
        if ".hydra" not in r.parts and ((r / META_FILE).exists() or (r / STATUS_FILE).exists())
    ]
    if not finished_only:
        return found
    out = []
    for run in found:
        state = run_state(run)
        if state.usable:
            out.append(run)
        elif state.problem is not None and damaged is not None:
            damaged.append(state.problem)
    return out


# --------------------------------------------------------------------------------------------
# Adapter files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleInfo:
    """One adapted weight matrix W (d x k): which type and layer it is, and where it lives.

    Attributes:
        key: the key prefix in adapter files, ``<module path>`` or ``<module path>.<q|k|v>``
            for a slice of a fused projection.
        module: the module path in the model.
        type: weight type, one of ``q``, ``k``, ``v``, ``o``.
        layer: transformer block index (0-based).
        d: output features of W (rows of B).
        k: input features of W (columns of A).
        slice: ``None`` for a whole module, else the weight type of the slice of a fused module.
    """

    key: str
    module: str
    type: str
    layer: int
    d: int
    k: int
    slice: str | None = None


@dataclass
class Adapter:
    """LoRA factors of one run, as float32 numpy arrays (Section 4: ΔW = s·B·A).

    Attributes:
        r: rank.
        alpha: α.
        scaling: s (α/r, or α/√r for rsLoRA).
        init: name of A's initialisation.
        targets: adapted weight types.
        base_model: identity of the pretrained model (id or path).
        modules: ``key -> ModuleInfo``.
        A: ``key -> (r, k)`` arrays.
        B: ``key -> (d, r)`` arrays.
        A_init: ``key -> (r, k)`` arrays of A at initialisation, or ``None`` when not saved.
        n_layers: number of transformer blocks in the base model (``None`` if unknown).
        extra: the rest of the header metadata.
    """

    r: int
    alpha: float
    scaling: float
    init: str
    targets: list[str]
    base_model: str
    modules: dict[str, ModuleInfo]
    A: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    A_init: dict[str, np.ndarray] | None = None
    n_layers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def key_for(self, weight_type: str, layer: int) -> str:
        """The adapter key of weight type ``weight_type`` at block ``layer``.

        Raises:
            KeyError: when the adapter has no such matrix (the message lists what it has).
        """
        for key, info in self.modules.items():
            if info.type == weight_type and info.layer == layer:
                return key
        have = sorted({(i.type, i.layer) for i in self.modules.values()})
        raise KeyError(
            f"adapter has no ΔW{weight_type} at layer {layer}; it adapts (type, layer) = {have}"
        )

    def layers(self) -> list[int]:
        """Sorted block indices that carry an adapter."""
        return sorted({i.layer for i in self.modules.values()})

    def delta_w(self, key: str, scaled: bool = True) -> np.ndarray:
        """Dense ΔW = s·B·A (d, k) in float64 (small models only; analysis uses factors)."""
        dw = self.B[key].astype(np.float64) @ self.A[key].astype(np.float64)
        return dw * self.scaling if scaled else dw


def adapter_metadata(
    *,
    r: int,
    alpha: float,
    scaling: float,
    init: str,
    targets: list[str],
    base_model: str,
    modules: dict[str, ModuleInfo],
    n_layers: int | None = None,
    **extra: Any,
) -> dict[str, str]:
    """Build the safetensors header metadata (all values are strings, JSON where structured)."""
    md = {
        "format": ADAPTER_FORMAT,
        "r": str(int(r)),
        "alpha": repr(float(alpha)),
        "scaling": repr(float(scaling)),
        "init": init,
        "targets": json.dumps(list(targets)),
        "base_model": str(base_model),
        "n_layers": json.dumps(n_layers),
        "modules": json.dumps({k: vars(v) for k, v in modules.items()}, sort_keys=True),
    }
    for k, v in extra.items():
        md[k] = v if isinstance(v, str) else json.dumps(v)
    return md


def save_adapter_factors(
    path: str | os.PathLike,
    A: dict[str, np.ndarray],
    B: dict[str, np.ndarray],
    metadata: dict[str, str],
) -> Path:
    """Atomically save factors with peft key names ``<key>.lora_A.weight`` (r, k), ``<key>.lora_B.weight`` (d, r).

    Raises:
        ValueError: when A and B do not name the same keys or their ranks disagree.
    """
    if set(A) != set(B):
        raise ValueError(f"A and B name different modules: {sorted(set(A) ^ set(B))}")
    tensors: dict[str, np.ndarray] = {}
    for key in A:
        a, b = np.asarray(A[key], np.float32), np.asarray(B[key], np.float32)
        if a.shape[0] != b.shape[1]:
            raise ValueError(
                f"{key}: A is {a.shape} but B is {b.shape}; expected A (r, k), B (d, r)"
            )
        tensors[f"{key}.lora_A.weight"] = a
        tensors[f"{key}.lora_B.weight"] = b
    return atomic_save_safetensors(tensors, path, metadata)


def _split_factor_key(name: str) -> tuple[str, str]:
    for suffix, which in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
        if name.endswith(suffix):
            return name[: -len(suffix)], which
    raise ValueError(
        f"not a LoRA factor key: {name!r} (expected '<module>.lora_A.weight' or '.lora_B.weight')"
    )


def _read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file (checks that the file is complete).

    Raises:
        FileNotFoundError: no such file.
        DamagedFile: torn, truncated or not a safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    if not Path(path).exists():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise DamagedFile(path, f"not a complete safetensors file ({e})") from e


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter from a run directory or an ``adapter.safetensors`` file.

    ``adapter_init.safetensors`` beside it, when present, fills :attr:`Adapter.A_init`.

    Raises:
        FileNotFoundError: when there is no adapter file at ``path``.
        DamagedFile: (a ``ValueError``) the file is torn or not a safetensors file.
        ValueError: when the file is a safetensors file but not a lora-repro adapter (use
            :func:`lora_repro.lora.import_peft_adapter` for peft directories).
    """
    path = Path(path)
    file = path / ADAPTER_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no adapter file at {file}; is this a finished run directory?")
    md = _read_metadata(file)
    if md.get("format") != ADAPTER_FORMAT:
        raise ValueError(
            f"{file} is not a lora-repro adapter (header format={md.get('format')!r}); "
            "read a peft adapter folder with lora_repro.lora.import_peft_adapter(DIR)"
        )
    tensors = load_file(str(file))
    A, B = {}, {}
    for name, t in tensors.items():
        key, which = _split_factor_key(name)
        (A if which == "A" else B)[key] = t
    modules = {k: ModuleInfo(**v) for k, v in json.loads(md["modules"]).items()}
    A_init = None
    init_file = file.parent / ADAPTER_INIT_FILE
    if init_file.exists():
        A_init = {_split_factor_key(n)[0]: t for n, t in load_file(str(init_file)).items()}
    known = {
        "format",
        "r",
        "alpha",
        "scaling",
        "init",
        "targets",
        "base_model",
        "modules",
        "n_layers",
    }
    return Adapter(
        r=int(md["r"]),
        alpha=float(md["alpha"]),
        scaling=float(md["scaling"]),
        init=md["init"],
        targets=json.loads(md["targets"]),
        base_model=md["base_model"],
        modules=modules,
        A=A,
        B=B,
        A_init=A_init,
        n_layers=json.loads(md.get("n_layers", "null")),
        extra={k: v for k, v in md.items() if k not in known},
    )


# --------------------------------------------------------------------------------------------
# Full fine-tuning: the dense ΔW
# --------------------------------------------------------------------------------------------
@dataclass
class Delta:
    """ΔW = W_ft − W0 of a full fine-tuning run, as float32 numpy arrays (the reference that
    LoRA's low-rank ΔW = s·B·A is compared with).

    Attributes:
        targets: trained weight types.
        base_model: identity of the pretrained model (id or path).
        modules: ``key -> ModuleInfo`` (the same keys as an adapter of those targets).
        dW: ``key -> (d, k)`` arrays.
        n_layers: number of transformer blocks in the base model (``None`` if unknown).
        extra: the rest of the header metadata.
    """

    targets: list[str]
    base_model: str
    modules: dict[str, ModuleInfo]
    dW: dict[str, np.ndarray]
    n_layers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def key_for(self, weight_type: str, layer: int) -> str:
        """The key of ΔW of type ``weight_type`` at block ``layer``.

        Raises:
            KeyError: no such matrix was trained (the message lists what was).
        """
        for key, info in self.modules.items():
            if info.type == weight_type and info.layer == layer:
                return key
        have = sorted({(i.type, i.layer) for i in self.modules.values()})
        raise KeyError(f"run has no ΔW{weight_type} at layer {layer}; it trained {have}")

    def layers(self) -> list[int]:
        """Sorted block indices with a trained matrix."""
        return sorted({i.layer for i in self.modules.values()})


def save_delta(
    path: str | os.PathLike,
    dW: dict[str, np.ndarray],
    *,
    targets: list[str],
    base_model: str,
    modules: dict[str, ModuleInfo],
    n_layers: int | None = None,
    **extra: Any,
) -> Path:
    """Atomically save ``delta.safetensors``: float32 ``<key>.weight`` = ΔW (d, k) per matrix,
    the targets, base model and module map in the header (as in an adapter file).

    Raises:
        ValueError: a ΔW whose shape is not its module's (d, k), or keys without a module.
    """
    if set(dW) != set(modules):
        raise ValueError(f"ΔW and modules name different keys: {sorted(set(dW) ^ set(modules))}")
    tensors = {}
    for key, m in dW.items():
        m = np.asarray(m, np.float32)
        info = modules[key]
        if m.shape != (info.d, info.k):
            raise ValueError(f"{key}: ΔW is {m.shape}, expected (d, k) = {(info.d, info.k)}")
        tensors[f"{key}.weight"] = m
    md = {
        "format": DELTA_FORMAT,
        "targets": json.dumps(list(targets)),
        "base_model": str(base_model),
        "n_layers": json.dumps(n_layers),
        "modules": json.dumps({k: vars(v) for k, v in modules.items()}, sort_keys=True),
    }
    md.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return atomic_save_safetensors(tensors, path, md)


def load_delta(path: str | os.PathLike) -> Delta:
    """Read ``delta.safetensors`` from a full fine-tuning run directory (or the file itself).

    Raises:
        FileNotFoundError: no delta file at ``path`` (a LoRA run has ``adapter.safetensors``).
        DamagedFile: (a ``ValueError``) the file is torn or not a safetensors file.
        ValueError: a safetensors file that is not a lora-repro ΔW file.
    """
    path = Path(path)
    file = path / DELTA_FILE if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(
            f"no {DELTA_FILE} at {file}; is this a finished adapter.method=full run directory?"
        )
    md = _read_metadata(file)
    if md.get("format") != DELTA_FORMAT:
        raise ValueError(f"{file} is not a lora-repro ΔW file (format={md.get('format')!r})")
    modules = {k: ModuleInfo(**v) for k, v in json.loads(md["modules"]).items()}
    dW = {}
    for name, t in load_file(str(file)).items():
        if not name.endswith(".weight") or name[: -len(".weight")] not in modules:
            raise DamagedFile(file, f"unexpected tensor {name!r}")
        dW[name[: -len(".weight")]] = t
    if set(dW) != set(modules):
        raise DamagedFile(file, f"tensors missing for {sorted(set(modules) - set(dW))[:3]}")
    known = {"format", "targets", "base_model", "modules", "n_layers"}
    return Delta(
        targets=json.loads(md["targets"]),
        base_model=md["base_model"],
        modules=modules,
        dW=dW,
        n_layers=json.loads(md.get("n_layers", "null")),
        extra={k: v for k, v in md.items() if k not in known},
    )


# --------------------------------------------------------------------------------------------
# Pretrained weights W, saved once per model
# --------------------------------------------------------------------------------------------
def base_weights_path(results: str | os.PathLike, model_name: str) -> Path:
    """Where the pretrained W of model ``model_name`` are saved under a results folder."""
    return Path(results) / BASE_WEIGHTS_DIR / f"{model_name}.safetensors"


def save_base_weights(
    path: str | os.PathLike,
    weights: dict[str, np.ndarray],
    modules: dict[str, ModuleInfo],
    model_id: str,
    source_dtype: str = "fp32",
) -> Path:
    """Atomically save pretrained W (d, k) per adapter key, float32, with module info in the header.

    ``source_dtype`` (``fp32``, ``bf16``, ``fp16``) is the dtype the model was loaded in; the W
    are upcast from it exactly, and the header records it as ``source_dtype``.
    """
    md = {
        "format": ADAPTER_FORMAT + "-base",
        "base_model": model_id,
        "source_dtype": source_dtype,
        "modules": json.dumps({k: vars(v) for k, v in modules.items()}, sort_keys=True),
    }
    return atomic_save_safetensors(
        {k: np.asarray(v, np.float32) for k, v in weights.items()}, path, md
    )


def load_base_weights(
    path: str | os.PathLike,
) -> tuple[dict[str, np.ndarray], dict[str, ModuleInfo]]:
    """Read pretrained W saved by :func:`save_base_weights`: ``(key -> W (d, k), key -> ModuleInfo)``.

    Raises:
        FileNotFoundError: with a hint to run a training run of that model first.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no pretrained weights at {path}; any finished training run of this model writes them "
            "(train.save_base_weights=true), or point the analysis at another results folder"
        )
    md = _read_metadata(path)
    modules = {k: ModuleInfo(**v) for k, v in json.loads(md["modules"]).items()}
    return dict(load_file(str(path))), modules


def iter_finished(
    results: str | os.PathLike, damaged: list[DamagedFile] | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield ``(run_dir, config)`` for every usable finished run below ``results``.

    Runs with a damaged file are skipped and, when ``damaged`` is given, appended to it.
    """
    for run in find_runs(results, damaged=damaged):
        yield run, read_config(run)


# --------------------------------------------------------------------------------------------
# Provenance (meta.json, benchmark JSON)
# --------------------------------------------------------------------------------------------
def git_state(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"git_sha", "git_dirty"}`` of the checkout holding this package (``None`` outside git).

    ``git_dirty`` counts tracked files only: untracked results do not make a run "dirty".
    """
    here = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if sha.returncode == 0:
            return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_sha": None, "git_dirty": None}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB chunks (model weights, data files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` when absent), plus Python's."""
    out: dict[str, str | None] = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    out["python"] = platform.python_version()
    return out
