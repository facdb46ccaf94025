"""Packed training (lora_repro.pack): K runs over one base pass equal the same runs trained alone.

Fast: the packed layer and head on a tiny model against standalone LoRA layers, in float64;
planning; recording several runs. Slow: K = 3 runs on the embedded default, packed vs alone.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn

from lora_repro import lifecycle, runs
from lora_repro.errors import LoraReproError
from lora_repro.lora import LoraConfig, inject_lora, lora_layers
from lora_repro.models import head_modules, reset_head
from lora_repro.pack import PackError, fit_pack, inject_pack, passes, plan
from lora_repro.targets import find_targets
from tests.helpers.configs import FAST, compose
from tests.helpers.tiny_models import build, input_ids

# Three runs of different ranks, scalings and weight types (run 2 adapts no Wq, run 1 no Wk).
RUNS = [
    LoraConfig(r=8, alpha=8, targets=("q", "v")),
    LoraConfig(r=2, alpha=4, targets=("q", "k", "v", "o")),
    LoraConfig(r=4, alpha=8, targets=("k",), layers=(1,)),
]
SEEDS = [0, 3, 7]


def _standalone(base: nn.Module, cfg: LoraConfig, seed: int) -> nn.Module:
    m = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    inject_lora(m, cfg, g)
    reset_head(head_modules(m), g)
    for head in head_modules(m).values():
        head.requires_grad_(True)
    return m.double()


def _packed_and_alone(base: nn.Module, runs_=RUNS, seeds=SEEDS):
    """The K runs ``runs_`` packed into a copy of ``base`` and each alone (standalone LoRA layers
    and head, :func:`_standalone`), in float64, with the same random non-zero B in both."""
    alone = [_standalone(base, c, s) for c, s in zip(runs_, seeds, strict=True)]
    packed_model = copy.deepcopy(base)
    targets = [find_targets(packed_model, list(c.targets), c.layers) for c in runs_]
    packed = inject_pack(packed_model, list(runs_), targets, list(seeds))
    packed_model.double()
    # the same A and head as a standalone run draws from the same seed_init; B made non-zero
    g = torch.Generator().manual_seed(11)
    for i, m in enumerate(alone):
        mine = {t.key: f for t, f in packed.factors[i]}
        for layer in lora_layers(m).values():
            for name, f in layer.factors.items():
                p = mine[layer.targets[name].key]
                assert torch.equal(p.lora_A, f.lora_A)
                with torch.no_grad():
                    f.lora_B.copy_(torch.randn(f.lora_B.shape, generator=g, dtype=torch.float64))
                    p.lora_B.copy_(f.lora_B)
        if hasattr(m, "classifier"):
            assert torch.equal(packed.heads[i][0], m.classifier.weight)
    return packed_model, packed, alone


def _assert_same_factor_grads(packed, run: int, alone: nn.Module, **tol) -> None:
    """Run ``run``'s A and B gradients in the pack equal those of the same run alone."""
    mine = {t.key: f for t, f in packed.factors[run]}
    for layer in lora_layers(alone).values():
        for name, f in layer.factors.items():
            p = mine[layer.targets[name].key]
            torch.testing.assert_close(p.lora_A.grad, f.lora_A.grad, **tol)
            torch.testing.assert_close(p.lora_B.grad, f.lora_B.grad, **tol)


def test_packed_layer_equals_each_run_alone_in_float64():
    base = build("bert", head="cls").double()
    packed_model, packed, alone = _packed_and_alone(base)
    assert sum(len(f) for f in packed.factors) == 2 * 2 + 4 * 2 + 1
    ids = [input_ids(batch=n, seq=7, seed=i) for i, n in enumerate((2, 3, 1))]
    packed.state.sizes = [2, 3, 1]
    out = packed_model(input_ids=torch.cat(ids), attention_mask=torch.ones(6, 7)).logits
    nn.functional.cross_entropy(out, torch.zeros(6, dtype=torch.long), reduction="sum").backward()
    rows = [slice(0, 2), slice(2, 5), slice(5, 6)]
    for i, m in enumerate(alone):
        ref = m(input_ids=ids[i], attention_mask=torch.ones_like(ids[i])).logits
        n = ids[i].shape[0]
        nn.functional.cross_entropy(
            ref, torch.zeros(n, dtype=torch.long), reduction="sum"
        ).backward()
        torch.testing.assert_close(out[rows[i]], ref, rtol=1e-12, atol=1e-13)
        _assert_same_factor_grads(packed, i, m, rtol=1e-11, atol=1e-14)
        torch.testing.assert_close(
            packed.heads[i][0].grad, m.classifier.weight.grad, rtol=1e-11, atol=1e-14
        )
    # evaluation mode: one run's adapter and head on every row
    packed.state.replicas = [1]
    with torch.no_grad():
        got = packed_model(input_ids=ids[0], attention_mask=torch.ones_like(ids[0])).logits
        want = alone[1](input_ids=ids[0], attention_mask=torch.ones_like(ids[0])).logits
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    # a batch that is not the pack's is refused, not silently split
    packed.state.replicas = None
    with pytest.raises(PackError, match="without --pack"):
        packed_model(input_ids=ids[0], attention_mask=torch.ones_like(ids[0]))


def test_packed_evaluation_gives_each_run_its_standalone_metrics():
    from lora_repro.tracks import evaluate

    base = build("bert", head="cls").double()
    packed_model, packed, alone = _packed_and_alone(base)
    rng = np.random.default_rng(0)
    ids = [rng.integers(4, 50, size=int(n)).tolist() for n in rng.integers(2, 9, size=11)]
    labels = rng.integers(0, 2, size=11).tolist()
    args = (ids, labels, 0, 4, torch.device("cpu"), "fp32")
    packed.state.replicas = [0, 1, 2]
    got = evaluate(packed_model, *args, copies=3)
    packed.state.replicas = [2, 0]  # any subset, in any order (runs that failed are left out)
    sub = evaluate(packed_model, *args, copies=2)
    for i, m in enumerate(alone):
        want = evaluate(m, *args)
        assert got[i]["accuracy"] == want["accuracy"]
        assert got[i]["loss"] == pytest.approx(want["loss"], rel=1e-12)
    assert sub[0]["loss"] == pytest.approx(got[2]["loss"], rel=1e-12)
    assert sub[1]["loss"] == pytest.approx(got[0]["loss"], rel=1e-12)
    assert len({round(x["loss"], 9) for x in got}) == 3  # three different adapters


# Causal-LM runs: different ranks, scalings and weight types; run 2 adapts one layer only
CAUSAL_RUNS = [
    LoraConfig(r=4, alpha=8, targets=("q", "v")),
    LoraConfig(r=2, alpha=2, targets=("k", "o")),
    LoraConfig(r=8, alpha=8, targets=("v",), layers=(1,)),
]


@pytest.fixture(scope="module")
def causal_pack():
    from tests.test_causal import _tiny_llama

    return _packed_and_alone(_tiny_llama(seed=2).double(), CAUSAL_RUNS, [1, 4, 9])


def test_causal_lm_packed_loss_is_each_runs_own_loss(causal_pack):
    from lora_repro.causal import Example
    from lora_repro.tracks import _lm_batch_loss, _lm_packed_loss

    packed_model, packed, alone = causal_pack
    train = [Example([1, *range(5, 5 + n), 20, 21][: n + 3], 1 + n % 3) for n in range(2, 9)]
    batches = [[0, 3], [1, 2, 6], [4]]
    cpu = torch.device("cpu")
    packed.state.sizes = [len(b) for b in batches]
    losses = _lm_packed_loss(train, 0, cpu, "fp32", 0.1)(packed_model, batches)
    torch.stack(losses).sum().backward()
    for i, m in enumerate(alone):
        want = _lm_batch_loss(train, 0, cpu, "fp32", 0.1)(m, batches[i])
        want.backward()
        torch.testing.assert_close(losses[i], want, rtol=1e-12, atol=1e-13)
        _assert_same_factor_grads(packed, i, m, rtol=1e-10, atol=1e-13)
    packed_model.zero_grad()


def test_causal_lm_packed_scoring_and_decoding_equal_each_run_alone(causal_pack):
    from lora_repro import causal
    from tests.helpers import tiny_text

    packed_model, packed, alone = causal_pack
    cpu, tok = torch.device("cpu"), tiny_text.tokenizer()
    prompts = [[1, 5, 6, 7], [1, 8], [1, 9, 10, 11, 12, 13], [1, 14, 15]]
    words = [[20], [21], [22]]  # one token each: the next-token path
    long_words = [[20, 23], [21]]  # the general path
    pairs = [causal.Example(p + [30, 31], len(p)) for p in prompts]
    packed.state.replicas = [0, 1, 2]
    try:
        fast = causal.label_scores(packed_model, prompts, words, 0, 3, cpu, copies=3)
        slow = causal.label_scores(packed_model, prompts, long_words, 0, 3, cpu, copies=3)
        seq = causal.sequence_logprobs(packed_model, pairs, 0, 3, cpu, copies=3)
        greedy = causal.generate(packed_model, tok, prompts, 5, 3, cpu, copies=3)
        beams = causal.generate(packed_model, tok, prompts, 5, 3, cpu, num_beams=2, copies=3)
    finally:
        packed.state.replicas = None
    assert fast.shape == (3, 4, 3) and slow.shape == (3, 4, 2) and seq.shape == (3, 4)
    for i, m in enumerate(alone):
        tol = {"rtol": 1e-10, "atol": 1e-10}
        torch.testing.assert_close(
            fast[i], causal.label_scores(m, prompts, words, 0, 3, cpu), **tol
        )
        want = causal.label_scores(m, prompts, long_words, 0, 3, cpu)
        torch.testing.assert_close(slow[i], want, **tol)
        torch.testing.assert_close(seq[i], causal.sequence_logprobs(m, pairs, 0, 3, cpu), **tol)
        assert greedy[i] == causal.generate(m, tok, prompts, 5, 3, cpu)
        assert beams[i] == causal.generate(m, tok, prompts, 5, 3, cpu, num_beams=2)
    assert not torch.allclose(seq[0], seq[1])  # the copies went through different adapters


def test_packed_lora_dropout_draws_from_each_runs_own_generator():
    base = build("bert", head="cls")
    cfgs = [LoraConfig(r=2, alpha=2, targets=("q",), dropout=0.5)] * 2
    outs = []
    for seeds in ([0, 1], [0, 2]):
        m = copy.deepcopy(base)
        targets = [find_targets(m, ["q"], None) for _ in cfgs]
        packed = inject_pack(m, cfgs, targets, [5, 5], seeds_dropout=seeds)
        for _, f in packed.factors[0] + packed.factors[1]:
            nn.init.ones_(f.lora_B)
        m.train()
        packed.state.sizes = [1, 1]
        ids = input_ids(batch=1, seq=5).repeat(2, 1)
        with torch.no_grad():
            outs.append(m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits)
    # run 0 kept its stream (seed 0) and gives the same output; run 1's changed with its seed
    torch.testing.assert_close(outs[0][0], outs[1][0])
    assert not torch.allclose(outs[0][1], outs[1][1])


def test_passes_share_a_base_pass_only_while_padding_stays_within_the_slack():
    # 8 rows each: lengths 20, 21, 22 pad to 22 at 3 % extra tokens; 60 would cost 2.6x alone
    shapes = {0: (8, 60), 1: (8, 21), 2: (8, 20), 3: (8, 22)}
    assert passes(shapes, slack=0.1) == [[1, 2, 3], [0]]
    assert passes(shapes, slack=10.0) == [[0, 1, 2, 3]]
    assert passes(shapes, slack=0.0) == [[2], [1], [3], [0]]
    assert passes({5: (4, 9)}) == [[5]]


def test_plan_groups_by_base_pass_and_bounds_the_pack():
    cfgs = [compose(*FAST, f"adapter.r={r}") for r in (1, 2, 4, 8, 64)]
    cfgs.append(compose(*FAST, "train.batch_size=4"))
    cfgs.append(compose(*FAST, "train.lr=1e-3", "seed=5"))  # per-run: packs with the others
    packs = plan(cfgs, pack_size=4)
    assert [len(p) for p in packs] == [4, 2, 1]
    assert packs[2][0].train.batch_size == 4
    per_run = 8 * int(cfgs[0].task.max_length)
    assert [len(p) for p in plan(cfgs, 4, max_tokens=2 * per_run + 1)] == [2, 2, 2, 1]
    with pytest.raises(PackError, match="raise it to at least"):
        plan(cfgs, 4, max_tokens=per_run - 1)
    with pytest.raises(PackError, match="without --pack"):
        plan([compose(*FAST, "adapter.method=full")], 4)


def test_recording_all_fails_one_run_and_a_crash_fails_the_rest(tmp_path: Path):
    dirs = [tmp_path / f"run{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    with lifecycle.recording_all(dirs) as fail:
        fail(dirs[1], "TrainingDiverged: loss is nan")
    assert [runs.read_json(d / "status.json")["status"] for d in dirs] == [
        "success",
        "failed",
        "success",
    ]
    with pytest.raises(RuntimeError), lifecycle.recording_all(dirs) as fail:
        fail(dirs[0], "TrainingDiverged: loss is inf")
        raise RuntimeError("killed")
    status = [runs.read_json(d / "status.json") for d in dirs]
    assert [s["status"] for s in status] == ["failed"] * 3
    assert "inf" in status[0]["error"] and "killed" in status[2]["error"]


# ---------------------------------------------------------------------------------------------
# Slow: packed vs standalone on the embedded default
# ---------------------------------------------------------------------------------------------
# Measured on this suite's CPU (2-core AVX2 EPYC, fp32, 20 steps of batch 8): the same standalone
# runs on 1 vs 2 torch threads (only the GEMM reduction order changes) differ by up to 7.7e-6
# relative (Frobenius, per matrix) in A and B; packed vs standalone by at most 1.5e-6. The
# tolerance is 1e-5: above the reduction-order baseline, far below a real difference (one step
# more or another data order moves the adapters by > 1e-2).
REL_TOL = 1e-5
SLOW_RUNS = [
    ["adapter.targets=[q,v]", "adapter.r=8"],
    ["adapter.targets=[q,k,v,o]", "adapter.r=2", "adapter.alpha=4"],
    ["adapter.targets=[k]", "adapter.r=4", "seed=1"],
]


@pytest.fixture
def no_base_dropout(monkeypatch):
    """MiniLM's attention and hidden dropout (0.1) off: the pack's base pass draws one dropout
    stream for all runs, a standalone run its own, so only without it are the two comparable."""
    from lora_repro import train

    load = train.load_model

    def load_without_dropout(*a, **k):
        loaded = load(*a, **k)
        for m in loaded.model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        return loaded

    monkeypatch.setattr(train, "load_model", load_without_dropout)


def _cfg(results: Path, overrides: list[str]):
    return compose(
        *FAST, "train.max_steps=20", "train.precision=fp32", f"paths.results={results}", *overrides
    )


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.usefixtures("no_base_dropout")
def test_three_packed_runs_equal_the_same_runs_trained_alone(tmp_path: Path):
    from lora_repro.train import fit

    for o in SLOW_RUNS:
        fit(_cfg(tmp_path / "alone", o))
    summaries = fit_pack([_cfg(tmp_path / "packed", o) for o in SLOW_RUNS])
    assert all(s is not None for s in summaries)
    alone = runs.find_runs(tmp_path / "alone")
    assert len(alone) == 3
    for d in alone:
        p = tmp_path / "packed" / d.relative_to(tmp_path / "alone")
        assert sorted(x.name for x in p.iterdir()) == sorted(x.name for x in d.iterdir())
        a, b = (
            runs.load_adapter(p / "adapter.safetensors"),
            runs.load_adapter(d / "adapter.safetensors"),
        )
        assert sorted(a.A) == sorted(b.A) and a.r == b.r and a.targets == b.targets
        for k in b.A:
            assert _rel(a.A[k], b.A[k]) < REL_TOL and _rel(a.B[k], b.B[k]) < REL_TOL, k
        init_a = load_file(p / runs.ADAPTER_INIT_FILE)
        init_b = load_file(d / runs.ADAPTER_INIT_FILE)
        assert all(np.array_equal(init_a[k], init_b[k]) for k in init_b)  # A drawn identically
        sa, sb = runs.read_json(p / "summary.json"), runs.read_json(d / "summary.json")
        assert sorted(sa) == sorted(sb)
        for m in ("val_accuracy", "test_accuracy"):
            assert sa[m] == sb[m]
        for m in ("val_loss", "test_loss", "final_train_loss"):
            assert sa[m] == pytest.approx(sb[m], rel=REL_TOL)
        assert sa["n_lora_params"] == sb["n_lora_params"]
        meta = runs.read_json(p / "meta.json")
        others = sorted(str(x) for x in runs.find_runs(tmp_path / "packed") if x != p)
        assert sorted(meta["packed_with"]) == others
        assert lifecycle.identity(runs.read_config(p)) == lifecycle.identity(runs.read_config(d))
    # a rerun trains nothing: every run is finished
    again = fit_pack([_cfg(tmp_path / "packed", o) for o in SLOW_RUNS])
    assert [s["val_loss"] for s in again] == [s["val_loss"] for s in summaries]


@pytest.mark.slow
def test_a_diverging_run_fails_alone_and_the_pack_goes_on(tmp_path: Path):
    bad = ["train.lr=1e12", "train.warmup_steps=1", "seed=1"]
    cfgs = [_cfg(tmp_path, ["train.max_steps=6", *o]) for o in ([], bad)]
    ok, failed = fit_pack(cfgs)
    assert failed is None and ok is not None and np.isfinite(ok["val_loss"])
    states = {d.name: runs.read_json(d / "status.json") for d in runs.find_runs(tmp_path, False)}
    assert states["seed0"]["status"] == "success"
    assert states["seed1"]["status"] == "failed"
    assert "TrainingDiverged" in states["seed1"]["error"]
    assert "lower train.lr" in states["seed1"]["error"]


@pytest.mark.slow
def test_a_run_in_conflict_is_left_out_with_its_own_error_and_the_pack_goes_on(tmp_path: Path):
    first = fit_pack([_cfg(tmp_path, ["train.max_steps=2"])])
    assert first[0] is not None
    errors: dict[int, str] = {}
    other_steps = _cfg(tmp_path, ["train.max_steps=3"])  # seed 0's folder, other settings
    done = fit_pack([other_steps, _cfg(tmp_path, ["train.max_steps=3", "seed=1"])], errors)
    assert done[0] is None and done[1] is not None
    assert list(errors) == [0] and errors[0].startswith("RunConflict: ")
    seed0 = {d.name: d for d in runs.find_runs(tmp_path)}["seed0"]
    assert runs.read_json(seed0 / "summary.json")["steps"] == 2  # the finished run is untouched


def test_sweep_pack_expands_each_grid_with_the_command_line_overrides():
    from experiments.packs import combinations

    combos = combinations("table6", ["seed=0,1", "train.max_steps=5"])
    assert len(combos) == 3 * 5 * 2  # targets × ranks × the command line's seeds
    assert ["adapter.targets=[q,v]", "adapter.r=64", "seed=1", "train.max_steps=5"] in combos
    assert all(c.count("train.max_steps=5") == 1 for c in combos)


def test_a_sweep_names_the_paper_grids_one_grid_or_a_comma_list():
    from experiments.sweep import PAPER, grids

    assert grids("paper") == PAPER and grids("table6") == ["table6"]
    assert grids("table5,table6,subspace,seeds") == PAPER[:4]
    assert grids("seeds,paper") == ["seeds", *[g for g in PAPER if g != "seeds"]]
    assert grids("seeds,nope") is None and grids("") is None


def test_sweep_pack_refuses_a_bad_pack_size_in_one_line(tmp_path, capsys):
    from experiments.sweep import main

    assert main(["--pack", "--pack-size", "0", f"paths.results={tmp_path}"]) == 2
    assert "--pack-size" in capsys.readouterr().err
    assert main(["--pack", "--pack-tokens", "0", f"paths.results={tmp_path}"]) == 2
    assert "--pack-tokens" in capsys.readouterr().err
    for bad in ("train.nonexistent=1", "train.batch_size=abc", "seed=0,,"):
        assert main(["--pack", "--sweep", "seeds", f"paths.results={tmp_path}", bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_a_damaged_pack_manifest_is_named_in_one_line(tmp_path: Path):
    from experiments.pack_job import read_job, write_manifest

    good = write_manifest(tmp_path / "good.yaml", [[compose(*FAST)], [compose(*FAST, "seed=1")]])
    assert [c.seed for c in read_job(good, 1)] == [1]
    text = good.read_text(encoding="utf-8")
    cases = {
        "invalid.yaml": ("jobs: [[{model: ", 0),
        "not_a_list.yaml": ("jobs: 3\n", 0),
        "truncated.yaml": (text[: text.index("  adapter:")], 0),
        "wrong_type.yaml": (text.replace("batch_size: 8", "batch_size: abc", 1), 0),
        "negative.yaml": (text, -1),
        "out_of_range.yaml": (text, 2),
        "not_a_number.yaml": (text, "abc"),
    }
    for name, (content, job) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(LoraReproError, match="rerun experiments.sweep --pack") as e:
            read_job(path, job)
        assert "\n" not in str(e.value), name
    with pytest.raises(LoraReproError, match="cannot read job 0"):
        read_job(tmp_path / "missing.yaml", 0)


# Few steps on a small validation and test split: the sweep's plumbing, not the training
SHORT = [
    "train.max_steps=3",
    "train.batch_size=8",
    "task.val_fraction=0.02",
    "task.test_fraction=0.02",
    "train.progress=false",
]


@pytest.mark.slow
def test_sweep_pack_plans_the_paper_grid_into_packs_and_full_fine_tuning_jobs(tmp_path: Path):
    from experiments.pack_job import describe
    from experiments.packs import jobs
    from experiments.sweep import PAPER

    todo, conflicts = jobs(PAPER, [f"paths.results={tmp_path}", *SHORT], 8, None)
    assert conflicts == []
    kinds = [[c.adapter.method for c in job] for job in todo]
    assert kinds == [["lora"] * 8, ["lora"] * 8, ["lora"] * 4, ["full"]]
    # Table 5's Wq at its budget's r = 8 is Table 6's Wq at r = 8: trained once
    assert len({describe(c) for job in todo for c in job}) == 21
    assert sum("targets=[q] " in describe(c) and "r=8" in describe(c) for j in todo for c in j) == 0
    smaller, _ = jobs(PAPER, [f"paths.results={tmp_path}", *SHORT], 3, None)
    assert [len(j) for j in smaller] == [3, 3, 3, 3, 3, 3, 2, 1]
    # a swept key the folder name leaves out makes another run in the same folder: a conflict,
    # reported, not silently dropped
    lr = jobs(
        ["seeds"], [f"paths.results={tmp_path}", "seed=0", "train.lr=1e-3,2e-3", *SHORT], 8, None
    )
    (job,), ((cfg, error),) = lr
    assert [c.train.lr for c in job] == [1e-3] and cfg.train.lr == 2e-3
    assert error.startswith("RunConflict: ") and "train.lr" in error and "group=" in error


@pytest.mark.slow
def test_sweep_pack_trains_each_pack_as_one_job_and_resumes(tmp_path: Path, capsys):
    from experiments.sweep import main

    results = tmp_path / "results"
    argv = ["--sweep", "seeds", "--pack", f"paths.results={results}", *SHORT]
    assert main(argv) == 0
    finished = runs.find_runs(results)
    assert sorted(d.name for d in finished) == ["seed0", "seed1"]
    for d in finished:
        (other,) = [str(x) for x in finished if x != d]
        assert runs.read_json(d / "meta.json")["packed_with"] == [other]
        assert runs.read_json(d / "summary.json")["val_accuracy"] > 0
    assert (results / "index.parquet").exists()
    (manifest,) = (results / ".hydra" / "packed").glob("*/manifest.yaml")
    capsys.readouterr()
    assert main(argv) == 0  # everything finished: no job is launched
    out = capsys.readouterr().out
    assert "0 run(s) to train" in out and "experiments.pack_job" not in out
    assert len(list((results / ".hydra" / "packed").glob("*/manifest.yaml"))) == 1


@pytest.mark.slow
def test_a_full_fine_tuning_job_of_a_packed_sweep_trains_alone(tmp_path: Path):
    from experiments.pack_job import read_job, train_job, write_manifest
    from experiments.packs import jobs

    (job,), _ = jobs(["full_qv"], [f"paths.results={tmp_path}", "seed=0", *SHORT], 8, None)
    manifest = write_manifest(tmp_path / "manifest.yaml", [job])
    assert train_job(read_job(manifest, 0)) == []
    (d,) = runs.find_runs(tmp_path)
    assert d.parent.name == "q_v-full" and (d / runs.DELTA_FILE).exists()
    assert "packed_with" not in runs.read_json(d / "meta.json")
    with pytest.raises(LoraReproError, match="rerun experiments.sweep --pack"):
        read_job(manifest, 3)
