"""Which floating-point precision a run computes in, decided from what the hardware does natively.

``train.precision`` is ``auto`` (the default), ``bf16``, ``fp16`` or ``fp32``. ``auto`` means bf16
autocast where the device computes bf16 natively and fp32 everywhere else, because emulated bf16
is far slower than fp32: on a CPU with AVX2 but neither AVX512_BF16 nor AMX, torch runs a bf16
matmul about 30× slower than the same fp32 one, and a whole training run about 10× slower.

The decision follows what the kernels will do, not only what the processor could do:

* CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (compute capability ≥ 8.0).
* x86 CPU: bf16 is native when the processor has AVX512_BF16 or AMX-BF16 (``/proc/cpuinfo``),
  ATen dispatches its AVX-512 kernels (``ATEN_CPU_CAPABILITY`` can lower that), oneDNN's bf16
  path is enabled (``ONEDNN_MAX_CPU_ISA`` can lower that) and the ISA cap, when set, is
  AVX512_CORE_BF16 or above. Any of these saying no gives fp32.
* ARM CPU: the ``bf16`` feature flag; elsewhere, or where the flags cannot be read, one timing.
* Where the queries cannot tell (no flags to read, an AVX-512 processor without the bf16
  extension where oneDNN may emulate bf16 well): a 1024×384 @ 384×384 matmul timed once per
  process in both precisions on one thread; fp32 is chosen only if bf16 is at least
  :data:`SLOWDOWN_LIMIT` times slower (a wide margin: timing noise never flips a native CPU).

The precision a run used is recorded beside the reason (meta.json and summary.json); it is not
part of a run's identity, so runs of one cell made in bf16 and fp32 pool (the measured effect on
validation accuracy is within the evaluation's noise).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lora_repro.errors import LoraReproError

CHOICES = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}

# bf16 must be this many times slower than fp32 before timing alone picks fp32: emulated bf16
# measured 30-35× slower, native bf16 0.5-1.5×; 3× leaves room for noise on a busy machine.
SLOWDOWN_LIMIT = 3.0

# oneDNN's ISA names, lowest first (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA). bf16 compute is
# native from AVX512_CORE_BF16 on (AVX2_VNNI_2 only converts).
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "ALL",
)
BF16_ISA = "AVX512_CORE_BF16"
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The ISA flags worth recording with a timing (what the measured CPU could do).
RECORDED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                  "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve", "sve2", "asimd")  # fmt: skip


class PrecisionError(LoraReproError, ValueError):
    """A precision the device cannot run (fp16 on a CPU) or an unknown name."""


@dataclass(frozen=True)
class CpuInfo:
    """What the CPU is and which kernels torch will use on it.

    Attributes:
        model: the processor's name (``/proc/cpuinfo`` "model name", else ``platform``).
        machine: ``x86_64``, ``aarch64``, ...
        flags: the ISA flags among :data:`RECORDED_FLAGS` that the processor reports; ``None``
            where they cannot be read (no ``/proc/cpuinfo``).
        aten_capability: the kernel level ATen dispatches to (``AVX2``, ``AVX512``, ``DEFAULT``,
            ``SVE256``, ...), after ``ATEN_CPU_CAPABILITY``.
        onednn_bf16: oneDNN's own answer to "is bf16 supported" (after ``ONEDNN_MAX_CPU_ISA``).
        onednn_max_isa: the ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) cap, if set.
    """

    model: str
    machine: str
    flags: tuple[str, ...] | None
    aten_capability: str
    onednn_bf16: bool
    onednn_max_isa: str | None = None

    def record(self) -> dict:
        """A JSON-ready dict (meta.json ``cpu``)."""
        d = asdict(self)
        d["flags"] = list(self.flags) if self.flags is not None else None
        return d


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, and why.

    Attributes:
        name: ``bf16``, ``fp16`` or ``fp32`` (never ``auto``).
        requested: what ``train.precision`` said.
        reason: one sentence: which query decided.
        timing: ``{"fp32_ms", "bf16_ms", "slowdown"}`` where a matmul was timed, else ``None``.
    """

    name: str
    requested: str
    reason: str
    timing: dict | None = field(default=None)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, ``None`` for fp32 (no autocast)."""
        return DTYPES[self.name]

    def record(self) -> dict:
        """The fields meta.json and summary.json carry: ``precision`` and ``precision_reason``."""
        out = {"precision": self.name, "precision_requested": self.requested}
        out["precision_reason"] = self.reason
        if self.timing is not None:
            out["precision_timing"] = self.timing
        return out


def autocast(device: torch.device, precision: str | Precision):
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    name = precision.name if isinstance(precision, Precision) else precision
    if name == "auto":
        raise PrecisionError("autocast needs a resolved precision; call resolve() first")
    dtype = DTYPES[name]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def _parse_cpuinfo(text: str | None) -> tuple[str | None, tuple[str, ...] | None]:
    """(model name, recorded flags) from ``/proc/cpuinfo`` text (x86 "flags", ARM "Features")."""
    if not text:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "cpu model", "hardware"):
            model = value.strip() or None
        if flags is None and key in ("flags", "features"):
            have = set(value.split())
            flags = tuple(f for f in RECORDED_FLAGS if f in have)
    return model, flags


def _onednn_max_isa() -> str | None:
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var)
        if value:
            return value.strip().upper()
    return None


def _onednn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_info() -> CpuInfo:
    """The CPU and its kernel dispatch, read now (honours the environment variables above)."""
    model, flags = _parse_cpuinfo(_read_cpuinfo())
    return CpuInfo(
        model=model or platform.processor() or platform.machine(),
        machine=platform.machine(),
        flags=flags,
        aten_capability=str(torch.backends.cpu.get_cpu_capability()),
        onednn_bf16=_onednn_bf16(),
        onednn_max_isa=_onednn_max_isa(),
    )


def _isa_rank(name: str) -> int | None:
    return ONEDNN_ISAS.index(name) if name in ONEDNN_ISAS else None


def cpu_bf16_native(info: CpuInfo) -> tuple[bool | None, str]:
    """Whether bf16 matmuls run natively on this CPU: ``(True|False, why)``, or ``(None, why)``.

    ``None`` means the queries cannot tell and a timing must decide.
    """
    cap = info.aten_capability.upper()
    if info.machine in ("x86_64", "AMD64", "i686", "x86"):
        if info.onednn_max_isa is not None:
            rank = _isa_rank(info.onednn_max_isa)
            if rank is not None and rank < ONEDNN_ISAS.index(BF16_ISA):
                return False, f"ONEDNN_MAX_CPU_ISA={info.onednn_max_isa} is below {BF16_ISA}"
        if not cap.startswith("AVX512"):
            return False, f"ATen dispatches {cap} kernels (no AVX-512)"
        if not info.onednn_bf16:
            return False, "oneDNN reports no bf16 support"
        if info.flags is None:
            return None, "CPU flags unreadable"
        native = [f for f in X86_BF16_FLAGS if f in info.flags]
        if native:
            return True, f"{'/'.join(native)} with {cap} kernels"
        return None, "AVX-512 without AVX512_BF16/AMX (oneDNN may emulate bf16)"
    if info.machine in ("aarch64", "arm64"):
        if info.flags is not None and "bf16" not in info.flags:
            return False, "ARM CPU without the BF16 extension"
        return None, "ARM CPU: bf16 speed depends on the kernels"
    return None, f"{info.machine} CPU: no query for bf16"


def _time_matmul(dtype: torch.dtype, reps: int) -> float:
    a = torch.randn(1024, 384, generator=torch.Generator().manual_seed(0)).to(dtype)
    b = torch.randn(384, 384, generator=torch.Generator().manual_seed(1)).to(dtype)
    a @ b  # warm-up: kernel selection, first-touch
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def _timing_cached(env_key: tuple) -> dict:
    del env_key  # part of the cache key only: a changed dispatch is measured again
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = _time_matmul(torch.float32, 5)
        bf16 = _time_matmul(torch.bfloat16, 2)
    finally:
        torch.set_num_threads(threads)
    return {
        "fp32_ms": round(fp32 * 1e3, 3),
        "bf16_ms": round(bf16 * 1e3, 3),
        "slowdown": round(bf16 / fp32, 2),
        "shape": "1024x384 @ 384x384, 1 thread, best of 5 (fp32) / 2 (bf16)",
    }


def time_bf16() -> dict:
    """bf16 vs fp32 matmul timing (ms, best of a few, one thread), measured once per process."""
    key = (
        os.environ.get("ATEN_CPU_CAPABILITY"),
        _onednn_max_isa(),
        str(torch.backends.cpu.get_cpu_capability()),
    )
    return _timing_cached(key)


_warned: set[str] = set()


def resolve(requested: str, device: torch.device, info: CpuInfo | None = None) -> Precision:
    """The precision a run on ``device`` computes in, given ``train.precision``.

    ``info`` (for tests) replaces the CPU queries. An explicit ``bf16`` on a CPU without native
    bf16 is kept, with one warning per process that gives the measured slowdown.

    Raises:
        PrecisionError: an unknown name, or fp16 on a device other than CUDA.
    """
    if requested not in CHOICES:
        raise PrecisionError(
            f"train.precision={requested!r} is invalid: expected one of {', '.join(CHOICES)}"
        )
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(device)
        if requested == "auto":
            if native:
                return Precision("bf16", requested, f"{name} computes bf16 natively")
            return Precision("fp32", requested, f"{name} has no native bf16 (compute < 8.0)")
        return Precision(requested, requested, "set by train.precision")
    if requested == "fp16":
        raise PrecisionError(
            f"train.precision=fp16 needs a CUDA device (this run is on {device.type}); "
            "use train.precision=auto, bf16 or fp32"
        )
    if requested == "fp32":
        return Precision("fp32", requested, "set by train.precision")
    info = info if info is not None else cpu_info()
    native, why = cpu_bf16_native(info)
    timing = None
    if native is None or (requested == "bf16" and not native):
        timing = time_bf16()
        if native is None:
            native = timing["slowdown"] < SLOWDOWN_LIMIT
            verdict = "native speed" if native else "emulated"
            why = f"{why}; timed: bf16 {timing['slowdown']}x the fp32 time ({verdict})"
    if requested == "bf16":
        if not native and "bf16" not in _warned:
            _warned.add("bf16")
            msg = (
                f"train.precision=bf16 on a CPU without native bf16 ({why}): a bf16 matmul "
                f"took {timing['slowdown']}x the fp32 time here; train.precision=auto picks fp32"
            )
            warnings.warn(msg, stacklevel=2)
        return Precision("bf16", requested, f"set by train.precision; {why}", timing)
    name = "bf16" if native else "fp32"
    return Precision(name, requested, f"{'native' if native else 'no native'} bf16: {why}", timing)


# The frozen base's dtype (model.dtype) for each resolved compute precision (train.precision):
# a 16-bit base only under autocast to the same dtype. Under fp32 compute a bf16 base would make
# every activation bf16, so that the run computes in bf16 while recording fp32: refused.
BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALLOWED_BASE = {"fp32": ("fp32",), "bf16": ("fp32", "bf16"), "fp16": ("fp32", "fp16")}


def base_dtype(
    requested: str, precision: Precision, device: torch.device, method: str = "lora"
) -> torch.dtype:
    """The dtype the frozen base model is loaded in, given ``model.dtype`` and the resolved
    precision.

    ``auto`` is bf16 on a CUDA device when the run computes in bf16 (``precision.name``), else
    float32 (always on a CPU, and always for full fine-tuning, whose trained W stay float32
    masters). Allowed pairs (``model.dtype`` × resolved ``train.precision``): fp32 × any;
    bf16 × bf16; fp16 × fp16. LoRA's A, B and the head are float32 in every case.

    Raises:
        PrecisionError: an unknown name, a 16-bit base with another compute precision, or a
            16-bit base with ``adapter.method=full``.
    """
    if requested not in ("auto", *BASE_DTYPES):
        raise PrecisionError(
            f"model.dtype={requested!r} is invalid: expected auto, bf16, fp16 or fp32"
        )
    if requested == "auto":
        bf16 = device.type == "cuda" and precision.name == "bf16" and method != "full"
        return torch.bfloat16 if bf16 else torch.float32
    if requested != "fp32" and method == "full":
        raise PrecisionError(
            f"model.dtype={requested} with adapter.method=full would train {requested} W; "
            "full fine-tuning keeps W in float32: use model.dtype=fp32 (or auto)"
        )
    if requested not in ALLOWED_BASE[precision.name]:
        raise PrecisionError(
            f"model.dtype={requested} needs train.precision={requested} (the run computes in "
            f"{precision.name}); set train.precision={requested} or model.dtype=fp32"
        )
    return BASE_DTYPES[requested]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bf16``, ``torch.float16`` → ``fp16``, ``torch.float32`` → ``fp32``."""
    return {v: k for k, v in BASE_DTYPES.items()}[dtype]
