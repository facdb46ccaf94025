"""train.precision=auto: bf16 only where the kernels compute it natively (lora_repro.precision)."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

from lora_repro import precision

CPU = torch.device("cpu")
AVX2 = "sse4_2 avx avx2 fma"
SAPPHIRE = "sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile"


def info(flags: str | None, cap: str = "AVX512", onednn: bool = True, isa=None, machine="x86_64"):
    return precision.CpuInfo(
        model="test cpu",
        machine=machine,
        flags=None if flags is None else tuple(flags.split()),
        aten_capability=cap,
        onednn_bf16=onednn,
        onednn_max_isa=isa,
    )


@pytest.fixture
def no_timing(monkeypatch):
    """Fail the test if a matmul timing is taken (the queries alone must decide)."""

    def boom():
        raise AssertionError("timed although the queries could tell")

    monkeypatch.setattr(precision, "time_bf16", boom)


def timed(monkeypatch, slowdown: float) -> None:
    monkeypatch.setattr(
        precision, "time_bf16", lambda: {"fp32_ms": 1.0, "bf16_ms": slowdown, "slowdown": slowdown}
    )


def test_native_bf16_cpu_picks_bf16(no_timing):
    p = precision.resolve("auto", CPU, info(SAPPHIRE))
    assert (p.name, p.dtype) == ("bf16", torch.bfloat16)
    assert "avx512_bf16/amx_bf16" in p.reason and p.timing is None


def test_avx2_cpu_picks_fp32(no_timing):
    p = precision.resolve("auto", CPU, info(AVX2, cap="AVX2", onednn=False))
    assert (p.name, p.dtype) == ("fp32", None)
    assert "AVX2" in p.reason


def test_aten_capability_cap_overrides_flags(no_timing):
    # ATEN_CPU_CAPABILITY=avx2 on a native-bf16 CPU: ATen runs AVX2 kernels, so fp32
    p = precision.resolve("auto", CPU, info(SAPPHIRE, cap="AVX2"))
    assert p.name == "fp32" and "ATen dispatches AVX2" in p.reason


@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE", "AVX512_CORE_VNNI"])
def test_onednn_isa_cap_below_bf16_picks_fp32(no_timing, isa):
    p = precision.resolve("auto", CPU, info(SAPPHIRE, isa=isa))
    assert p.name == "fp32" and f"ONEDNN_MAX_CPU_ISA={isa}" in p.reason


@pytest.mark.parametrize("isa", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL"])
def test_onednn_isa_cap_at_or_above_bf16_keeps_bf16(no_timing, isa):
    assert precision.resolve("auto", CPU, info(SAPPHIRE, isa=isa)).name == "bf16"


def test_onednn_without_bf16_picks_fp32(no_timing):
    assert precision.resolve("auto", CPU, info(SAPPHIRE, onednn=False)).name == "fp32"


def test_arm_without_bf16_feature_picks_fp32(no_timing):
    p = precision.resolve("auto", CPU, info("asimd", cap="DEFAULT", machine="aarch64"))
    assert p.name == "fp32" and "BF16 extension" in p.reason


@pytest.mark.parametrize(
    ("slowdown", "expected"), [(0.8, "bf16"), (2.9, "bf16"), (3.0, "fp32"), (34.0, "fp32")]
)
def test_undecided_queries_time_a_matmul_with_a_wide_margin(monkeypatch, slowdown, expected):
    # AVX-512 without the bf16 extension: oneDNN may emulate well or not; the timing decides,
    # and only a slowdown of at least SLOWDOWN_LIMIT (3x) picks fp32
    timed(monkeypatch, slowdown)
    p = precision.resolve("auto", CPU, info("avx2 avx512f avx512bw"))
    assert p.name == expected
    assert p.timing["slowdown"] == slowdown and f"{slowdown}x" in p.reason


@pytest.mark.parametrize("flags", [None])
def test_unreadable_flags_time_a_matmul(monkeypatch, flags):
    timed(monkeypatch, 30.0)
    assert precision.resolve("auto", CPU, info(flags)).name == "fp32"


def test_explicit_choices_are_kept(monkeypatch, no_timing):
    assert precision.resolve("fp32", CPU, info(SAPPHIRE)).name == "fp32"
    assert precision.resolve("bf16", CPU, info(SAPPHIRE)).name == "bf16"


def test_explicit_bf16_without_native_support_warns_once_with_the_slowdown(monkeypatch):
    timed(monkeypatch, 34.0)
    monkeypatch.setattr(precision, "_warned", set())
    avx2 = info(AVX2, cap="AVX2", onednn=False)
    with pytest.warns(UserWarning, match=r"34.0x the fp32 time"):
        p = precision.resolve("bf16", CPU, avx2)
    assert p.name == "bf16" and p.timing["slowdown"] == 34.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve("bf16", CPU, avx2)  # the second run in the process is quiet


def test_fp16_on_cpu_and_unknown_names_are_refused():
    with pytest.raises(precision.PrecisionError, match="fp16 needs a CUDA device"):
        precision.resolve("fp16", CPU)
    with pytest.raises(precision.PrecisionError, match="expected one of auto, bf16, fp16, fp32"):
        precision.resolve("fp8", CPU)


def test_cuda_follows_the_device(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Test GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve("auto", gpu).name == "bf16"
    assert precision.resolve("fp16", gpu).name == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    p = precision.resolve("auto", gpu)
    assert p.name == "fp32" and "Test GPU" in p.reason


def test_cpuinfo_parsing():
    text = (
        "processor\t: 0\nmodel name\t: Test EPYC 9999\nflags\t\t: fpu sse4_2 avx2 fma avx512_bf16\n"
    )
    model, flags = precision._parse_cpuinfo(text)
    assert model == "Test EPYC 9999" and flags == ("sse4_2", "avx2", "fma", "avx512_bf16")
    assert precision._parse_cpuinfo("processor : 0\nFeatures : fp asimd bf16\n")[1] == (
        "bf16",
        "asimd",
    )
    assert precision._parse_cpuinfo(None) == (None, None)


def test_autocast_contexts():
    assert precision.autocast(CPU, "fp32").__class__.__name__ == "nullcontext"
    with precision.autocast(CPU, "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    with pytest.raises(precision.PrecisionError):
        precision.autocast(CPU, "auto")


_PROBE = "import torch; from lora_repro import precision; print(precision.resolve('auto', torch.device('cpu')).name)"


def test_avx2_imitation_picks_fp32_for_real():
    """In a real process with AVX2-only kernels (what a CPU without AVX-512 runs), auto is fp32."""
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "fp32"


def test_real_decision_agrees_with_a_timing():
    """On this machine, the decision matches what a bf16 matmul costs against fp32."""
    p = precision.resolve("auto", CPU)
    t = precision.time_bf16()
    if p.name == "bf16":
        assert t["slowdown"] < precision.SLOWDOWN_LIMIT, (p, t)
    else:
        assert p.name == "fp32"
        # an fp32 pick on queries alone must not be leaving a fast bf16 unused
        assert t["slowdown"] > 1.5, (p, t)
