"""Planned peak memory of a run, from the architecture's numbers alone (nothing is loaded).

The estimate (bytes) is the sum of four parts:

* **base**: every parameter of the pretrained model in ``model.dtype`` (4 bytes for fp32, 2 for
  bf16 / fp16); under 16-bit autocast over an fp32 base, plus autocast's 2-byte copies of the
  block weights for the step (``2·P_blocks``).
* **adapters**: the trained parameters (LoRA's Σ r·(d + k), or the full W, plus the head) in
  float32 with their gradients: ``8·P_train``.
* **optimizer**: AdamW's two float32 moments: ``8·P_train``.
* **activations** saved for the backward pass of a step with the base frozen, per layer and
  token: ``n_layers · b · L · [(6·h + g·f + m·h)·e + (2 + m)·a·L·e]`` bytes, where ``b`` is
  ``train.batch_size``, ``L`` the configured length (``task.max_length``; an upper bound, since
  batches are padded to their longest example only), ``h`` the width, ``f`` the MLP width
  (``g = 1``, or 3 for a gated MLP such as LLaMA's: gate, up and their product), ``a`` the
  attention heads, ``e`` the bytes of an activation (4 in fp32, 2 under 16-bit autocast) and
  ``m`` 1 for a model that trains with dropout, else 0. The terms are the tensors autograd keeps
  (counted with ``torch.autograd.graph.saved_tensors_hooks`` on the embedded default; a frozen
  W's input is not kept, since no weight gradient needs it): the adapted matrices' input, Q, K,
  V, the two layer norms' inputs and the MLP's activation input (6·h + g·f), a dropout mask
  (m·h), and the attention probabilities, their copy for the product with V and their dropout
  mask ((2 + m)·a·L; 0 with a fused attention, ``model.attn_implementation`` other than
  ``eager``, which keeps only a per-row log-sum-exp). This is below Korthikanti et al. (2022, eq. 2), who count a trained W's
  inputs too. A causal LM adds its logits and their float32 log-softmax, ``b·L·V·(e + 4)``.
  With ``train.gradient_checkpointing`` only each block's input is kept, ``n_layers·b·L·h·e``,
  plus one block's activations while it is recomputed. To these the backward pass adds its
  workspace: the gradients of one block's activations while that block is back-propagated,
  about twice its saved activations (the incoming gradient and the gradient of each saved
  tensor), ``2·b·L·[...]``.

On a CPU the measured figure is the run's peak RSS above the process's RSS before the model was
loaded (:mod:`lora_repro.memory`); the first run of a process also holds the process cache's
copy of the base, which this estimate leaves out (``python -m experiments.sweep --plan`` lists
it). A slow test checks the estimate against a measured run (tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lora_repro.budget import lora_param_count, resolve_budget
from lora_repro.errors import LoraReproError

MIB = 2**20
ARCH_KEYS = ("layers", "d_model", "heads", "kv_heads", "vocab", "intermediate", "params")


class PlanError(LoraReproError, ValueError):
    """Architecture numbers that are missing or inconsistent."""


@dataclass(frozen=True)
class Arch:
    """The numbers of a transformer that the estimate needs.

    Attributes:
        layers: blocks. d_model: width h. heads: attention heads a. kv_heads: key/value heads
        (grouped-query attention; = heads otherwise). vocab: vocabulary V. intermediate: MLP
        width f. params: every parameter of the pretrained model (embeddings included).
        dropout: whether training applies dropout (masks are saved). causal_lm: whether the
        loss needs the vocabulary logits.
    """

    layers: int
    d_model: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int
    params: int
    dropout: bool = True
    causal_lm: bool = False
    gated_mlp: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def shape(self, weight_type: str) -> tuple[int, int]:
        """(d, k) of one block's Wq, Wk, Wv or Wo."""
        kv = self.kv_heads * self.head_dim
        return {"q": (self.d_model, self.d_model), "k": (kv, self.d_model),
                "v": (kv, self.d_model), "o": (self.d_model, self.d_model)}[weight_type]  # fmt: skip

    @classmethod
    def from_mapping(cls, node: Any, name: str, **extra: bool) -> Arch:
        """From ``model.arch`` (a mapping with :data:`ARCH_KEYS`; ``kv_heads`` defaults to heads).

        Raises:
            PlanError: a missing or non-positive number (names the model and the keys).
        """
        d = dict(node or {})
        d.setdefault("kv_heads", d.get("heads"))
        missing = [k for k in ARCH_KEYS if not isinstance(d.get(k), int) or d[k] <= 0]
        if missing:
            raise PlanError(
                f"model {name!r}: model.arch needs positive integers {list(ARCH_KEYS)}; "
                f"missing or bad: {missing} (write them in conf/model/{name}.yaml)"
            )
        return cls(**{k: int(d[k]) for k in ARCH_KEYS}, **{**extra, **_flags(d)})


def _flags(d: dict) -> dict[str, bool]:
    return {k: bool(d[k]) for k in ("dropout", "gated_mlp") if k in d}


GATED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2")


def arch_of_config(config: Any, params: int, causal_lm: bool) -> Arch:
    """:class:`Arch` from a transformers config (BERT, GPT-2, LLaMA-style names)."""

    def get(*names: str, default: Any = None) -> Any:
        for n in names:
            v = getattr(config, n, None)
            if v is not None:
                return v
        return default

    h = int(get("hidden_size", "n_embd", "d_model"))
    heads = int(get("num_attention_heads", "n_head"))
    drop = any(
        float(get(n, default=0.0) or 0.0) > 0
        for n in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop",
                  "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout")
    )  # fmt: skip
    return Arch(
        layers=int(get("num_hidden_layers", "n_layer")),
        d_model=h,
        heads=heads,
        kv_heads=int(get("num_key_value_heads", default=heads)),
        vocab=int(get("vocab_size")),
        intermediate=int(get("intermediate_size", "n_inner", "ffn_dim", default=4 * h)),
        params=int(params),
        dropout=drop,
        causal_lm=causal_lm,
        gated_mlp=getattr(config, "model_type", "") in GATED,
    )


@dataclass(frozen=True)
class Estimate:
    """A run's planned peak memory, in MiB per part (see the module docstring)."""

    base_mb: float
    adapters_mb: float
    optimizer_mb: float
    activations_mb: float
    trainable_params: int
    r: int | None

    @property
    def total_mb(self) -> float:
        return self.base_mb + self.adapters_mb + self.optimizer_mb + self.activations_mb

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "total_mb": self.total_mb}


BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def activation_bytes(
    arch: Arch,
    batch: int,
    length: int,
    compute: str,
    checkpointing: bool = False,
    attention: str = "eager",
) -> float:
    """Saved activations of one training step (bytes; formula in the module docstring)."""
    e, m = BYTES[compute], (1 if arch.dropout else 0)  # masks: float on a CPU, bool on CUDA
    h, f, a = arch.d_model, arch.intermediate, arch.heads
    g = 3 if arch.gated_mlp else 1
    probs = (2 + m) * a * length * e if attention == "eager" else 0
    per_token = (6 * h + g * f + m * h) * e + probs
    tokens = batch * length
    blocks = arch.layers * tokens * per_token
    if checkpointing:
        blocks = arch.layers * tokens * h * e + tokens * per_token
    blocks += 2 * tokens * per_token  # backward workspace of one block
    logits = tokens * arch.vocab * (e + 4) if arch.causal_lm else 0
    return float(blocks + logits)


def estimate(
    arch: Arch,
    targets: list[str],
    r: int | None,
    budget: Any,
    batch: int,
    length: int,
    base_dtype: str = "fp32",
    compute: str = "fp32",
    method: str = "lora",
    layers: list[int] | None = None,
    head_params: int = 0,
    checkpointing: bool = False,
    attention: str = "eager",
) -> Estimate:
    """The planned peak memory of one run.

    Args:
        arch: the model's numbers.
        targets: weight types adapted (q, k, v, o).
        r: LoRA rank (ignored when ``budget`` sets it, and for full fine-tuning).
        budget: ``adapter.budget`` (null, ``auto`` or an int): Table 5's rule resolves r.
        batch: ``train.batch_size``. length: ``task.max_length`` (tokens).
        base_dtype: the base's dtype (``fp32``, ``bf16``, ``fp16``). compute: the resolved
            ``train.precision``.
        method: ``lora`` or ``full``. layers: adapted blocks (None: all).
        head_params: parameters of a freshly trained head.
        checkpointing: ``train.gradient_checkpointing``. attention:
            ``model.attn_implementation``.

    Raises:
        BudgetError: a budget too small for rank 1.
    """
    blocks = list(layers) if layers is not None else list(range(arch.layers))
    shapes = [arch.shape(t) for _ in blocks for t in targets]
    if method == "full":
        r = None
        trained = sum(d * k for d, k in shapes)
    else:
        q_shapes = [arch.shape("q") for _ in blocks]
        _, from_budget = resolve_budget(budget, shapes, q_shapes)
        r = from_budget if from_budget is not None else int(r)
        trained = lora_param_count(shapes, r)
    trained += head_params
    base = arch.params * BYTES[base_dtype]
    if compute != "fp32" and base_dtype == "fp32":
        base += 2 * arch.layers * (4 * arch.d_model**2 + 2 * arch.d_model * arch.intermediate)
    acts = activation_bytes(arch, batch, length, compute, checkpointing, attention)
    return Estimate(
        base_mb=base / MIB,
        adapters_mb=8 * trained / MIB,
        optimizer_mb=8 * trained / MIB,
        activations_mb=acts / MIB,
        trainable_params=trained,
        r=r,
    )


def arch_for(model_cfg: Any, num_labels: int = 2) -> tuple[Arch, int]:
    """``(arch, head parameters)`` of the model ``model_cfg`` describes.

    ``model.arch`` when the config gives it (hub models: written in ``conf/model/``); otherwise
    the model's own transformers config, read from its local files (the embedded defaults, a
    ``path`` model, or a hub model already in the local cache), with the parameters counted on
    the ``meta`` device (no memory, no weights read).

    Raises:
        PlanError: no ``model.arch`` and no local config to read.
    """
    causal = model_cfg.kind == "causal_lm"
    if model_cfg.get("arch"):
        arch = Arch.from_mapping(model_cfg.arch, model_cfg.name, causal_lm=causal)
        return arch, 0 if causal else arch.d_model * num_labels + num_labels
    import torch
    import transformers

    from lora_repro.models import ModelLoadError, head_modules, model_config

    try:
        config = model_config(model_cfg)
    except (ModelLoadError, OSError, ValueError) as e:
        raise PlanError(
            f"model {model_cfg.name!r} has no model.arch and its config cannot be read here "
            f"({str(e).splitlines()[0]}); write model.arch {{{', '.join(ARCH_KEYS)}}} in "
            f"conf/model/{model_cfg.name}.yaml or give it as an override, model.arch='{{layers: ...}}'"
        ) from None
    if not causal:
        config.num_labels = num_labels
    auto = (
        transformers.AutoModelForCausalLM
        if causal
        else (transformers.AutoModelForSequenceClassification)
    )
    with torch.device("meta"):
        model = auto.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for m in head_modules(model).values() for p in m.parameters())
    return arch_of_config(config, total - head, causal), head
