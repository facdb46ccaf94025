"""The GPU-ready path, checked on the CPU: the frozen base's dtype (model.dtype), activation
checkpointing, placement, the attention implementation, memory and speed in the summary, and the
identity of the committed runs under the current schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from lora_repro import lifecycle, runs
from lora_repro.config import ConfigError, recorded, resolve_method, validate
from lora_repro.lora import LoraConfig, inject_lora, lora_parameters, save_adapter
from lora_repro.precision import Precision, PrecisionError, base_dtype
from lora_repro.train import enable_checkpointing
from tests.helpers import tiny_models
from tests.helpers.configs import FAST, REPO, compose

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
BF16, FP32 = Precision("bf16", "auto", "test"), Precision("fp32", "auto", "test")


# ------------------------------------------------------------------------------------------------
# model.dtype × train.precision
# ------------------------------------------------------------------------------------------------
def test_auto_is_bf16_only_on_a_bf16_cuda_run_and_fp32_on_a_cpu():
    assert base_dtype("auto", BF16, CUDA) == torch.bfloat16
    assert base_dtype("auto", FP32, CUDA) == torch.float32  # train.precision=fp32 on a GPU
    assert base_dtype("auto", BF16, CPU) == torch.float32  # what the committed runs used
    assert base_dtype("auto", FP32, CPU) == torch.float32
    assert base_dtype("auto", BF16, CUDA, method="full") == torch.float32  # W stay fp32


def test_allowed_and_refused_pairs():
    fp16 = Precision("fp16", "fp16", "test")
    assert base_dtype("bf16", BF16, CPU) == torch.bfloat16
    assert base_dtype("fp16", fp16, CUDA) == torch.float16
    assert base_dtype("fp32", fp16, CUDA) == torch.float32
    with pytest.raises(PrecisionError, match=r"model.dtype=bf16 needs train.precision=bf16"):
        base_dtype("bf16", FP32, CPU)
    with pytest.raises(PrecisionError, match=r"model.dtype=fp16 needs train.precision=fp16"):
        base_dtype("fp16", BF16, CUDA)
    with pytest.raises(PrecisionError, match=r"adapter.method=full would train bf16 W"):
        base_dtype("bf16", BF16, CUDA, method="full")
    with pytest.raises(ConfigError, match=r"model.dtype='fp8' is invalid"):
        validate(compose("model.dtype=fp8"))
    with pytest.raises(ConfigError, match=r"model.attn_implementation='fast' is invalid"):
        validate(compose("model.attn_implementation=fast"))


def _train_tiny(dtype: torch.dtype, steps: int = 6) -> tuple[list[float], torch.nn.Module]:
    """LoRA (Wq, Wv, r = 4) on a tiny LLaMA whose base is ``dtype``; bf16 autocast when the
    base is bf16 (the allowed pair), fp32 otherwise. Same data and init either way."""
    model = tiny_models.build("llama", head="lm").to(dtype).train()
    inject_lora(model, LoraConfig(r=4, alpha=4, targets=("q", "v")))
    tiny_models.set_random_B(model, std=0.05)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = tiny_models.input_ids(batch=4, seq=12, seed=3)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, tiny_models.VOCAB), ids[:, 1:].reshape(-1)
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model


def test_a_bf16_base_with_fp32_adapters_trains_like_the_fp32_run(tmp_path):
    fp32, _ = _train_tiny(torch.float32)
    bf16, model = _train_tiny(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in lora_parameters(model))
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert bf16[-1] < bf16[0] - 0.05  # it learns
    # bf16 keeps 8 bits of mantissa: the loss (~3.9 nats) agrees within 0.02 nats at every step
    # (measured: at most 0.0005, against a decrease of 0.09 over the 6 steps).
    assert max(abs(a - b) for a, b in zip(fp32, bf16, strict=True)) < 0.02
    path = save_adapter(model, tmp_path / "adapter.safetensors", LoraConfig(r=4, alpha=4), "tiny")
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


# ------------------------------------------------------------------------------------------------
# Activation checkpointing
# ------------------------------------------------------------------------------------------------
def _grads(family: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    head = "lm" if family == "llama" else "cls"
    model = tiny_models.build(family, head=head)
    inject_lora(model, LoraConfig(r=4, alpha=4, targets=("q", "v")))
    tiny_models.set_random_B(model)
    model.train()  # dropout is 0 in the tiny configs; checkpointing acts in train mode only
    if checkpointing:
        enable_checkpointing(model)
        assert (
            getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        )
    ids = tiny_models.input_ids(batch=3, seq=9)
    out = tiny_models.output_tensor(model(input_ids=ids, attention_mask=torch.ones_like(ids)))
    (out.float() ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_checkpointing_gives_identical_gradients(family):
    plain, ckpt = _grads(family, False), _grads(family, True)
    assert plain.keys() == ckpt.keys() and len(plain) == 2 * 2 * 2  # A, B × q, v × 2 blocks
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-7, msg=name)


def test_checkpointing_and_arch_are_not_identity_but_model_dtype_is(tmp_path):
    def ident(*overrides):
        cfg = compose(f"paths.results={tmp_path}", *overrides)
        resolve_method(cfg)
        return lifecycle.identity(recorded(OmegaConf.to_container(cfg, resolve=True)))

    assert ident() == ident("train.gradient_checkpointing=true")
    assert ident() == ident("model.arch={layers: 6}")
    assert ident() != ident("model.dtype=bf16")


# ------------------------------------------------------------------------------------------------
# The committed runs under the current schema
# ------------------------------------------------------------------------------------------------
COMMITTED = sorted((REPO / "results" / "runs").rglob("config.yaml"))


@pytest.mark.skipif(not COMMITTED, reason="no committed runs in this checkout")
def test_committed_runs_keep_their_identity():
    """Each committed config equals (as lifecycle.claim compares them) the config the current
    code composes from its model, task and adapter settings, so a rerun skips it."""
    for path in COMMITTED:
        saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        a, t = saved["adapter"], saved["train"]
        overrides = [
            f"model={saved['model']['name']}",
            f"task={saved['task']['name']}",
            f"seed={saved['seed']}",
            f"adapter.targets=[{','.join(a['targets'])}]",
            f"adapter.method={a.get('method', 'lora')}",
            f"train.max_steps={t['max_steps']}",
            f"paths.results={saved['paths']['results']}",
        ]
        if a.get("method", "lora") == "lora":
            overrides += [f"adapter.r={a['r']}", f"adapter.alpha={a['alpha']}"]
        if a.get("layers") is not None:
            overrides.append(f"adapter.layers=[{','.join(map(str, a['layers']))}]")
        cfg = compose(*overrides)
        resolve_method(cfg)
        now = recorded(OmegaConf.to_container(cfg, resolve=True))
        now["adapter"]["r"] = a["r"]
        assert lifecycle.diff(lifecycle.identity(saved), lifecycle.identity(now)) == [], path
        assert now["model"]["dtype"] == "auto" and now["model"]["attn_implementation"] == "eager"
        assert now["train"]["gradient_checkpointing"] is False


# ------------------------------------------------------------------------------------------------
# Hub model configs: attention implementation, architecture numbers, the Qwen2.5 loading path
# ------------------------------------------------------------------------------------------------
def test_hub_configs_use_sdpa_where_supported_and_embedded_defaults_keep_eager():
    import transformers

    for path in sorted((REPO / "conf" / "model").glob("*.yaml")):
        node = OmegaConf.load(path)
        if node.source != "hub":
            assert node.get("attn_implementation", "eager") == "eager", path.name
            continue
        family = {"deberta_v2_xxlarge": transformers.DebertaV2Model}.get(path.stem)
        want = "eager" if family is not None and not family._supports_sdpa else "sdpa"
        assert node.get("attn_implementation") == want, path.name


def test_qwen2_config_loads_a_tiny_model_of_its_architecture(tmp_path):
    """conf/model/qwen2_5_0_5b.yaml's loading path (sdpa, the dtype asked for, the implementation
    recorded) on a tiny Qwen2 saved to a folder; its architecture numbers feed the planner."""
    from lora_repro.models import load_model
    from lora_repro.plan import Arch, estimate

    tiny = tiny_models.build("qwen2", head="lm")
    tiny.save_pretrained(tmp_path / "tiny")
    cfg = compose("model=qwen2_5_0_5b").model
    assert cfg.attn_implementation == "sdpa" and cfg.revision is None
    arch = Arch.from_mapping(cfg.arch, cfg.name, causal_lm=True)
    assert (arch.layers, arch.d_model, arch.heads, arch.kv_heads) == (24, 896, 14, 2)
    est = estimate(arch, ["q", "v"], 8, None, 16, 384, "bf16", "bf16", attention="sdpa")
    assert est.trainable_params == 24 * 8 * ((896 + 896) + (128 + 896))
    assert round(est.total_mb / 1024, 1) == 12.1  # the figure in the config's comment
    assert est.base_mb == pytest.approx(494032768 * 2 / 2**20)
    local = OmegaConf.merge(cfg, {"source": "path", "id": str(tmp_path / "tiny"), "name": "t"})
    _write_tokenizer(tmp_path / "tiny")
    loaded = load_model(local, dtype=torch.bfloat16)
    assert loaded.identity["attn_implementation"] == "sdpa"
    assert loaded.identity["dtype"] == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def _write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the tiny vocabulary (the loader needs one beside the weights)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, tiny_models.VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# A real run: bf16 base on the CPU, memory and speed in the summary and the index
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_bf16_base_run_records_dtype_memory_and_speed(tmp_path):
    from analysis.index import build_index
    from lora_repro.train import fit

    results = tmp_path / "res"
    cfg = compose(*FAST, f"paths.results={results}", "model.dtype=bf16", "train.precision=bf16")
    with pytest.warns(UserWarning, match="without native bf16"):
        summary = fit(cfg)
    assert summary["base_dtype"] == "bf16" and summary["precision"] == "bf16"
    assert summary["peak_mem_mb"] > 10 and summary["tokens_per_s"] > 0
    assert 3 * 8 * 5 < summary["train_tokens"] <= 3 * 8 * 64  # non-pad tokens of 3 batches of 8
    run_dir = lifecycle.run_dir_for(runs.read_config(next(results.rglob("config.yaml")).parent), 8)
    meta = json.loads((run_dir / runs.META_FILE).read_text())
    assert meta["base_dtype"] == "bf16" and meta["model"]["attn_implementation"] == "eager"
    adapter = runs.load_adapter(run_dir / runs.ADAPTER_FILE)
    assert {str(v.dtype) for v in adapter.A.values()} | {
        str(v.dtype) for v in adapter.B.values()
    } == {"float32"}
    base = runs.base_weights_path(results, "minilm")
    with safe_open(str(base), "np") as f:
        assert f.metadata()["source_dtype"] == "bf16"
        assert {f.get_tensor(k).dtype.name for k in f.keys()} == {"float32"}
    index = build_index(results)
    assert {"peak_mem_mb", "tokens_per_s", "base_dtype"} <= set(index.columns)
    assert index["peak_mem_mb"].iloc[0] == pytest.approx(summary["peak_mem_mb"])


def test_out_of_memory_is_one_line_with_the_need_and_the_options():
    from lora_repro.models import ModelLoadError, out_of_memory_error
    from lora_repro.plan import arch_for, estimate
    from lora_repro.train import attach, planned_peak_mb, prepare

    err = out_of_memory_error("minilm", "training", CPU, 1234.4)
    msg = str(err)
    assert isinstance(err, ModelLoadError) and "\n" not in msg and "about 1,234 MiB" in msg
    for option in ("model.dtype=bf16", "train.gradient_checkpointing=true", "train.grad_accum"):
        assert option in msg
    cfg = compose()
    prep = prepare(cfg)
    attach(prep.loaded.model, prep, 0)
    arch, head = arch_for(cfg.model)
    planned = estimate(arch, ["q", "v"], 8, None, 32, 64, head_params=head).total_mb
    assert planned_peak_mb(cfg, prep, prep.loaded.model) == pytest.approx(planned)
