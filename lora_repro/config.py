"""Typed config schema of a training run (used as Hydra structured configs by ``experiments``).

OmegaConf checks types and rejects unknown keys against these dataclasses; :func:`validate`
checks values. The override names ``model``, ``task``, ``seed``, ``adapter.targets``,
``adapter.r``, ``adapter.alpha``, ``adapter.budget``, ``train.max_steps``, ``paths.results`` are a
public contract.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError

from lora_repro.errors import LoraReproError


class ConfigError(LoraReproError, ValueError):
    """A config value that is out of range or inconsistent."""


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run directories, e.g. minilm
    source: str = "package"  # package | path | hub
    id: str = MISSING  # "<package>/<subdir>", a folder, or a hub id
    revision: str | None = None  # hub revision (pin it)
    kind: str = "seq_cls"  # seq_cls | causal_lm
    gguf_file: str | None = None  # a GGUF file inside the folder: dequantised to float32, cached
    # eager | sdpa | flash_attention_2; the implementation actually used is in meta.json. The
    # embedded defaults keep eager (what their committed runs used); conf/model/ hub configs set
    # sdpa where the architecture has it.
    attn_implementation: str = "eager"
    # The frozen base's dtype: auto | bf16 | fp16 | fp32. auto = bf16 on a CUDA device where the
    # run computes in bf16, fp32 everywhere else (always on a CPU). LoRA's A, B and the head
    # stay float32 whatever this is (lora_repro.precision.base_dtype gives the allowed pairs).
    dtype: str = "auto"
    # Architecture numbers for `experiments.sweep --plan` when the model is not on this machine:
    # {layers, d_model, heads, kv_heads, vocab, intermediate, params}; null reads the model's
    # own config. Descriptive only (not part of a run's identity).
    arch: Any = None


@dataclass
class TaskConfig:
    name: str = MISSING
    loader: str = "rotten_tomatoes"  # rotten_tomatoes | hf
    type: str = "classification"  # classification | generation
    max_length: int = 64  # tokens per example: input (seq_cls) or prompt + target (causal_lm)
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    hf_path: str | None = None
    hf_name: str | None = None
    revision: str | None = None
    data_files: Any = (
        None  # {hub split name: local file} instead of the hub (Any: see target_modules)
    )
    data_dir: str | None = None  # or a folder of <hub split name>.{jsonl,json,parquet,csv} files
    file_format: str = "json"
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    label_names: list[str] = field(default_factory=list)
    split_names: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"}
    )
    # Causal-LM track (model.kind=causal_lm). ``prompt`` is a template over the data set's
    # fields ("{sentence}", nested "{sql.human_readable}", lists joined with " | ").
    prompt: str | None = None
    label_words: list[str] = field(default_factory=list)  # one per label, scored after the prompt
    target_field: str | None = None  # generation: the field the model learns to write
    target_prefix: str = " "  # put before a generation target (it follows "SQL:", "Summary:")
    max_target_length: int = 64  # generation: target tokens kept (EOS added after them)
    max_new_tokens: int = 64  # generation: decoding length at evaluation
    num_beams: int = 1  # 1 = greedy decoding
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    group_references: bool = False  # evaluate once per distinct prompt against all its targets
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    metric: str = "accuracy"  # the headline metric (summary val_metric / test_metric)
    max_train_examples: int | None = None  # random subsets (split_seed) for quick runs
    max_eval_examples: int | None = None  # per evaluation split (validation and test)


@dataclass
class AdapterConfig:
    # lora: ΔW = s·B·A on each target (Section 4). full: the targets' W themselves are trained
    # (full fine-tuning of those matrices, the reference for ΔW's rank); r, α, dropout, init,
    # scaling and budget do not apply and are recorded as null.
    method: str = "lora"
    targets: list[str] = field(default_factory=lambda: ["q", "v"])
    r: int = 8
    alpha: float = 8.0  # held fixed when r changes (paper §4.1)
    budget: Any = None  # null | auto | int (Table 5's rule; overrides r)
    dropout: float = 0.0
    init: str = "gaussian"  # gaussian | kaiming_uniform | gaussian_1_over_r
    scaling: str = "standard"  # standard (α/r) | rslora (α/√r)
    layers: list[int] | None = None
    # {type: regex} or null. Typed Any (checked in validate): OmegaConf cannot set an
    # Optional[Dict] that defaults to None from the command line.
    target_modules: Any = None


@dataclass
class TrainConfig:
    max_steps: int = 200
    batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None  # null: the method's default, METHOD_LR (recorded resolved)
    head_lr: float | None = None  # null: lr (LoRA); full fine-tuning keeps LoRA's 4e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    warmup_steps: int | None = None  # overrides warmup_ratio (GPT-2 on E2E: 500)
    label_smoothing: float = 0.0  # on the training loss (GPT-2 on E2E: 0.1)
    max_grad_norm: float | None = None
    eval_every: int = 100
    eval_batch_size: int = 128
    precision: str = "auto"  # auto (bf16 where native, else fp32) | bf16 | fp16 (CUDA) | fp32
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch.set_num_threads
    deterministic: bool = False  # torch.use_deterministic_algorithms
    progress: bool = True
    save_base_weights: bool = True
    # Recompute each block's activations in the backward pass (transformers' own switch, with
    # use_reentrant=False): less activation memory, ~30% more compute, the same gradients.
    gradient_checkpointing: bool = False


@dataclass
class PathsConfig:
    results: str = "results"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    seed_init: int | None = None  # adapter A and head init; defaults to seed
    seed_data: int | None = None  # data order and dropout; defaults to seed
    group: str = "runs"  # top folder under paths.results
    sweep: str | None = None  # name of the sweep that launched the run (not part of its identity)


# Keys that do not change what a run computes: a finished run is reused whatever their value.
NON_IDENTITY = {
    ("paths",),
    ("sweep",),
    ("group",),
    ("train", "progress"),
    ("train", "eval_every"),  # evaluation draws no random numbers and never touches the weights
    ("train", "eval_batch_size"),
    ("adapter", "budget"),  # the rank it gives is recorded in adapter.r
    # Rounding differences only (bf16 vs fp32 moved validation accuracy by <= 0.4 points on
    # Table 5's cells); the precision used is recorded in meta.json and summary.json.
    ("train", "precision"),
    ("train", "threads"),
    ("train", "device"),
    # Recomputation gives the same gradients (tests/test_train.py checks it on a tiny model).
    ("train", "gradient_checkpointing"),
    ("model", "arch"),  # the planner's description of the model, not an input of the run
}
# model.dtype is part of a run's identity: an explicit bf16 base trains against other W than an
# fp32 one. Saved configs that lack it are not compared (lifecycle.diff), and auto on a CPU is
# fp32, what they ran.
MODEL_DTYPES = ("auto", "bf16", "fp16", "fp32")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
METHODS = ("lora", "full")
# The learning rate a method gets when train.lr is null, resolved before the run's identity.
# lora 4e-3: over three seeds Wq alone at r = 2 (the slowest learner in 200 steps) reached
# 0.76-0.79 validation accuracy, against 0.69-0.75 at 2e-3; no cell of the paper grid diverged.
# full 1e-3: Wq,Wv fully fine-tuned on the embedded default (seed 0, 200 steps, head at 4e-3)
# reached 0.790 / 0.811 / 0.815 / 0.761 validation accuracy at lr 1e-4 / 3e-4 / 1e-3 / 3e-3.
METHOD_LR = {"lora": 4e-3, "full": 1e-3}
# The adapter keys that mean nothing for full fine-tuning (recorded as null, so any value given
# for them names the same run).
LORA_ONLY = ("r", "alpha", "dropout", "init", "scaling", "budget")


def resolve_method(cfg: Any) -> None:
    """Fill the method's defaults into ``cfg`` in place: ``train.lr`` when null
    (:data:`METHOD_LR`), and for full fine-tuning ``train.head_lr`` when null: LoRA's lr, so that
    the head trains as in the LoRA runs and only the matrices' update differs.

    Raises:
        ConfigError: an unknown method, or a budget given with full fine-tuning.
    """
    method = cfg.adapter.get("method", "lora")
    if method not in METHODS:
        raise ConfigError(
            f"adapter.method={method!r} is invalid: expected lora (ΔW = s·B·A) or full "
            "(the targets' W trained directly)"
        )
    if cfg.train.lr is None:
        cfg.train.lr = METHOD_LR[method]
    if method == "full":
        if cfg.train.head_lr is None:
            cfg.train.head_lr = METHOD_LR["lora"]
        if cfg.adapter.budget is not None:
            raise ConfigError(
                f"adapter.budget={cfg.adapter.budget} sets LoRA's rank and does not apply to "
                "adapter.method=full; drop it (adapter.budget=null)"
            )


def recorded(resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as a run records it: for full fine-tuning the LoRA-only adapter keys
    (:data:`LORA_ONLY`) are null, so any value they were given names the same run (in place,
    returned)."""
    adapter = resolved.get("adapter") or {}
    if adapter.get("method", "lora") == "full":
        for key in LORA_ONLY:
            adapter[key] = None
    return resolved


def canonical_layers(layers: Any) -> list[int] | None:
    """Layer indices sorted and each once; ``None`` (every layer) stays ``None``.

    Raises:
        ConfigError: an empty list or a negative index.
    """
    if layers is None:
        return None
    values = [int(i) for i in layers]
    if not values or min(values) < 0:
        raise ConfigError(
            f"adapter.layers={values} is invalid: expected null (every layer) or a "
            "non-empty list of layer indices >= 0"
        )
    return sorted(set(values))


def validate(cfg: Any) -> None:
    """Check values the type system cannot (ranges, choices).

    Raises:
        ConfigError: naming the key, the bad value and what is expected.
    """
    t = cfg.train
    checks = [
        (t.max_steps >= 1, "train.max_steps", t.max_steps, "an integer >= 1"),
        (t.batch_size >= 1, "train.batch_size", t.batch_size, "an integer >= 1"),
        (t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "an integer >= 1"),
        (t.lr is None or t.lr > 0, "train.lr", t.lr, "null (the method's default) or > 0"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio", t.warmup_ratio, "in [0, 1)"),
        (t.eval_every >= 1, "train.eval_every", t.eval_every, "an integer >= 1"),
        (
            t.precision in PRECISIONS,
            "train.precision",
            t.precision,
            "auto, bf16, fp16 (CUDA only) or fp32",
        ),
        (t.device in ("auto", "cpu", "cuda"), "train.device", t.device, "auto, cpu or cuda"),
        (
            cfg.model.get("dtype", "auto") in MODEL_DTYPES,
            "model.dtype",
            cfg.model.get("dtype"),
            "auto, bf16, fp16 or fp32",
        ),
        (
            cfg.model.get("attn_implementation", "eager") in ATTN_IMPLEMENTATIONS,
            "model.attn_implementation",
            cfg.model.get("attn_implementation"),
            ", ".join(ATTN_IMPLEMENTATIONS),
        ),
        (
            cfg.model.kind in ("seq_cls", "causal_lm"),
            "model.kind",
            cfg.model.kind,
            "seq_cls or causal_lm",
        ),
        (cfg.task.max_length >= 2, "task.max_length", cfg.task.max_length, ">= 2"),
        (
            cfg.task.get("type", "classification") in TASK_TYPES,
            "task.type",
            cfg.task.get("type"),
            " or ".join(TASK_TYPES),
        ),
        (
            0 <= t.get("label_smoothing", 0.0) < 1,
            "train.label_smoothing",
            t.get("label_smoothing"),
            "in [0, 1)",
        ),
    ]
    for ok, key, value, expected in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")
    _validate_keys(cfg)
    _validate_run(cfg)
    _validate_track(cfg)


GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


def _validate_keys(cfg: Any) -> None:
    """Every key is one the schema knows (``+key=value`` overrides get past Hydra's check)."""
    try:
        OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.to_container(cfg))
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"unknown config key {key!r}: the schema (lora_repro/config.py) has no such key; "
            "check its spelling and drop the leading '+' from the override"
        ) from None


def _validate_run(cfg: Any) -> None:
    """Adapter targets and layers, seeds, subset sizes, mappings and the run group."""
    a = cfg.adapter
    if not list(a.targets):
        raise ConfigError(
            "adapter.targets is empty: give one or more of q, k, v, o, e.g. adapter.targets=[q,v]"
        )
    canonical_layers(a.layers)
    for key in ("seed", "seed_init", "seed_data"):
        value = cfg.get(key)
        if value is not None and value < 0:
            raise ConfigError(f"{key}={value} is invalid: expected an integer >= 0")
    for key in ("max_train_examples", "max_eval_examples"):
        value = cfg.task.get(key)
        if value is not None and value < 1:
            raise ConfigError(f"task.{key}={value} is invalid: expected null (all) or >= 1")
    for key, node in (
        ("adapter.target_modules", a.target_modules),
        ("task.data_files", cfg.task.data_files),
        ("model.arch", cfg.model.get("arch")),
    ):
        if node is not None and not isinstance(node, Mapping):
            raise ConfigError(
                f"{key}={node!r} is invalid: expected null or a mapping, e.g. {{q: <regex>}}"
            )
    if not GROUP_NAME.fullmatch(str(cfg.group)):
        raise ConfigError(
            f"group={cfg.group!r} is invalid: expected a folder name (letters, digits, . _ = + -), "
            "e.g. group=lr1e-3"
        )


TASK_TYPES = ("classification", "generation")
METRICS = ("accuracy", "exact_match", "rouge", "bleu", "chrf", "ter")


def _validate_track(cfg: Any) -> None:
    """The model kind and the task type fit together, and the causal track has its prompt."""
    task, kind = cfg.task, cfg.model.kind
    ttype = task.get("type", "classification")
    if ttype == "generation" and kind != "causal_lm":
        raise ConfigError(
            f"task {task.name!r} is a generation task and needs model.kind=causal_lm "
            f"(model {cfg.model.name!r} is {kind}); choose a causal LM, e.g. model=smollm2"
        )
    if kind == "causal_lm":
        if not task.get("prompt"):
            raise ConfigError(
                f"task {task.name!r} has no task.prompt, which model.kind=causal_lm needs "
                "(a template over the data set's fields, e.g. 'Review: {text}\\nSentiment:')"
            )
        words, names = list(task.get("label_words") or []), list(task.label_names or [])
        if ttype == "classification" and (not words or (names and len(words) != len(names))):
            raise ConfigError(
                f"task.label_words={words} must give one word per label {names} for the "
                "causal-LM track (scored by their likelihood after the prompt)"
            )
        if ttype == "generation" and not task.get("target_field"):
            raise ConfigError(f"generation task {task.name!r} needs task.target_field")
    unknown = [m for m in task.get("metrics") or [] if m not in METRICS]
    if unknown:
        raise ConfigError(f"task.metrics has unknown {unknown}; known: {list(METRICS)}")
