"""The paper's tasks and models: configs, loaders on local fixture files in each hub data set's
schema, prompt formatting, metrics with known answers, and every task trained end to end on tiny
models (fast tier)."""

from __future__ import annotations

import pytest

from lora_repro import runs
from lora_repro.config import ConfigError, validate
from lora_repro.data import (
    ClassificationData,
    DataError,
    GenerationData,
    format_prompt,
    load_task,
    tokenize,
)
from lora_repro.lifecycle import diff as _diff
from lora_repro.lifecycle import run_dir_for
from lora_repro.metrics import (
    MetricError,
    accuracy,
    exact_match,
    generation_metrics,
    rouge,
    sacrebleu_scores,
)
from lora_repro.train import fit
from tests.helpers import task_fixtures, tiny_text
from tests.helpers.configs import CONF, compose

PAPER_TASKS = ("mnli", "sst2", "wikisql", "samsum", "e2e_nlg")
GENERATION = ("wikisql", "samsum", "e2e_nlg")


# ------------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------------
def test_every_model_and_task_pair_composes_and_validates():
    models = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    tasks = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
    assert {"roberta_base", "roberta_large", "deberta_v2_xxlarge", "gpt2_medium", "gpt2_large",
            "hf_causal_lm", "smollm2"} <= set(models)  # fmt: skip
    assert set(PAPER_TASKS) <= set(tasks)
    for m in models:
        for t in tasks:
            cfg = compose(f"model={m}", f"task={t}")
            if t in GENERATION and cfg.model.kind == "seq_cls":
                with pytest.raises(ConfigError, match="needs model.kind=causal_lm"):
                    validate(cfg)
            else:
                validate(cfg)
            if cfg.task.loader == "hf":
                assert cfg.task.hf_path and cfg.task.revision  # pinned
            if cfg.model.source == "hub":
                assert "revision" in cfg.model


def test_pair_overlays_set_the_papers_hyperparameters_and_overrides_win():
    pairs = sorted(p.stem for p in (CONF / "pair").glob("*.yaml"))
    models = {p.stem for p in (CONF / "model").glob("*.yaml")}
    tasks = {p.stem for p in (CONF / "task").glob("*.yaml")}
    for pair in pairs:
        m, t = pair.split("-")
        assert m in models and t in tasks, pair
        validate(compose(f"model={m}", f"task={t}"))
    cfg = compose("model=gpt2_medium", "task=e2e_nlg")
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.train.lr, cfg.train.batch_size) == (
        4,
        32,
        2e-4,
        8,
    )
    assert (cfg.train.warmup_steps, cfg.train.label_smoothing, cfg.task.num_beams) == (500, 0.1, 10)
    cfg = compose("model=roberta_base", "task=mnli")
    assert (cfg.adapter.r, cfg.train.lr, cfg.train.batch_size) == (8, 5e-4, 16)
    assert cfg.train.max_steps == 30 * 24544  # 30 epochs
    assert compose("model=roberta_base", "task=mnli", "train.max_steps=3").train.max_steps == 3
    # no pair: the group defaults (the MiniLM default is untouched)
    assert compose().train.max_steps == 200 and compose().train.batch_size == 32


def test_a_saved_config_without_new_keys_is_still_the_same_run():
    saved = {"task": {"name": "rotten_tomatoes", "max_length": 64}, "seed": 0}
    now = {"task": {"name": "rotten_tomatoes", "max_length": 64, "prompt": "x"}, "seed": 0}
    assert _diff(saved, now) == []
    assert _diff({"task": {"max_length": 64}}, {"task": {"max_length": 32}}) == [
        "task.max_length: 64 (saved) vs 32 (now)"
    ]


# ------------------------------------------------------------------------------------------------
# Loaders on local files in the hub schema
# ------------------------------------------------------------------------------------------------
def _task(tmp_path, task: str, *overrides: str):
    return compose(*task_fixtures.write(task, tmp_path / task), *overrides).task


def test_mnli_loads_sentence_pairs_with_matched_and_mismatched_splits(tmp_path):
    data = load_task(_task(tmp_path, "mnli"))
    assert isinstance(data, ClassificationData)
    assert set(data.splits) == {"train", "validation", "test"}
    texts, labels = data.splits["validation"]
    assert texts[0] == ("the food was good", "the food was great") and labels == [0, 1, 2, 0]
    assert data.label_names == ["entailment", "neutral", "contradiction"]
    assert data.fields("train")[1] == {
        "premise": "the pub is near the city centre",
        "hypothesis": "the pub is cheap",
    }
    assert data.identity["source"] == "local files" and len(data.identity["files_sha256"]) == 3
    # an encoder sees the pair as a pair: [BOS] premise [EOS] hypothesis [EOS]
    ids = tokenize(tiny_text.tokenizer(), texts[:1], 64)[0]
    assert ids[0] == 1 and ids.count(2) == 2


def test_sst2_without_test_labels_has_no_test_split(tmp_path):
    data = load_task(_task(tmp_path, "sst2"))
    assert set(data.splits) == {"train", "validation"} and "test" in data.identity
    assert data.splits["train"] == ([s for s, _ in task_fixtures.SST2_ROWS],
                                    [y for _, y in task_fixtures.SST2_ROWS])  # fmt: skip


def test_wikisql_prompt_reads_nested_fields_from_parquet(tmp_path):
    data = load_task(_task(tmp_path, "wikisql"))
    assert isinstance(data, GenerationData)
    prompts, refs = data.splits["validation"]
    assert prompts[0] == (
        "Table columns: Player | Team | Score\nQuestion: what is the score of tom\nSQL:"
    )
    assert refs[0] == ["SELECT Score FROM table WHERE Player = tom"]


def test_e2e_groups_the_references_of_one_meaning_representation(tmp_path):
    data = load_task(_task(tmp_path, "e2e_nlg"))
    prompts, refs = data.splits["validation"]
    assert prompts == [
        "Meaning representation: name[The Vaults], eatType[pub]\nDescription:",
        "Meaning representation: name[Anna], area[city centre]\nDescription:",
    ]
    assert refs == [["The Vaults is a pub.", "A pub called The Vaults."],
                    ["Anna is in the city centre."]]  # fmt: skip
    assert len(data.splits["train"][0]) == 3  # training keeps one row per reference
    assert data.pairs("validation")[1] == [r for _, r in task_fixtures.E2E_ROWS]


def test_samsum_and_example_limits(tmp_path):
    data = load_task(_task(tmp_path, "samsum", "task.max_eval_examples=2"))
    prompts, refs = data.splits["validation"]
    assert len(prompts) == 2 and len(data.splits["train"][0]) == 3
    assert prompts[0].startswith("Summarize the dialogue.\n") and prompts[0].endswith("\nSummary:")
    assert data.identity["split_sizes"] == {"train": 3, "validation": 2, "test": 2}


def test_format_prompt_and_field_errors():
    row = {"q": "who", "t": {"header": ["A", "B"]}}
    assert format_prompt("{q}? {t.header}", row) == "who? A | B"
    with pytest.raises(DataError, match=r"field 't.rows' is not in the data"):
        format_prompt("{t.rows}", row, "wikisql")


def test_a_missing_column_or_split_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"columns \['sentence'\] are not in the data set"):
        load_task(_task(tmp_path, "mnli", "task.text_fields=[sentence]"))
    with pytest.raises(DataError, match=r"split 'validation_matched' .* is not in the data set"):
        load_task(_task(tmp_path, "sst2", "task.split_names.validation=validation_matched"))


def test_offline_and_not_cached_names_the_data_set_and_the_remedies():
    with pytest.raises(DataError) as e:
        load_task(
            compose("task=mnli", "task.revision=0000000000000000000000000000000000000000").task
        )
    msg = str(e.value)
    assert "'nyu-mll/glue'" in msg and "'mnli'" in msg
    assert "datasets.load_dataset('nyu-mll/glue', 'mnli', revision=" in msg
    assert "task.data_dir=" in msg and "HF_DATASETS_CACHE" in msg


# ------------------------------------------------------------------------------------------------
# Metrics with known answers
# ------------------------------------------------------------------------------------------------
def test_metrics_known_answers():
    assert accuracy([0, 1, 1, 2], [0, 1, 0, 2]) == 0.75
    sql = "SELECT Score FROM table WHERE Player = tom"
    assert exact_match(["select  score from TABLE where player = tom "], [[sql]]) == 1.0
    assert exact_match(["SELECT Team FROM table WHERE Player = tom"], [[sql]]) == 0.0
    assert exact_match(["a", "b"], [["x", "a"], ["c"]]) == 0.5  # any reference counts
    same = rouge(["anna and tom see it."], [["anna and tom see it."]])
    assert same == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge(["tom"], [["anna"]])["rouge1"] == 0.0
    assert rouge(["the vaults is a pub"], [["no", "The Vaults is a pub."]])["rougeL"] == 1.0
    sb = sacrebleu_scores(
        ["The Vaults is a pub ."], [["The Vaults is a pub ."]], ["bleu", "chrf", "ter"]
    )
    assert sb["bleu"] == pytest.approx(100) and sb["chrf"] == pytest.approx(100) and sb["ter"] == 0
    # several references of different counts per example (E2E)
    two = sacrebleu_scores(
        ["a pub called the vaults", "anna"], [["x", "a pub called the vaults"], ["anna"]]
    )
    assert two["bleu"] == pytest.approx(100)
    out = generation_metrics(["exact_match", "rouge", "bleu"], ["a b c d"], [["a b c d"]])
    assert set(out) == {"exact_match", "rouge1", "rouge2", "rougeL", "bleu"}
    with pytest.raises(MetricError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], [["a"]])


# ------------------------------------------------------------------------------------------------
# Every paper task end to end on tiny models (same code path as the hub: data_files)
# ------------------------------------------------------------------------------------------------
TINY = [
    "train.max_steps=2",
    "train.batch_size=2",
    "train.eval_batch_size=4",
    "train.progress=false",
    "train.precision=fp32",
    "task.max_length=48",
    "task.max_target_length=12",
    "task.max_new_tokens=6",
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llama": tiny_text.save_tiny(root / "llama", "llama", "lm"),
        "gpt2": tiny_text.save_tiny(root / "gpt2", "gpt2", "lm"),
        "roberta": tiny_text.save_tiny(root / "roberta", "roberta", "base"),
    }


CASES = [
    ("mnli", "roberta_base", "roberta"),
    ("sst2", "roberta_base", "roberta"),
    ("mnli", "hf_causal_lm", "llama"),
    ("sst2", "hf_causal_lm", "llama"),
    ("wikisql", "hf_causal_lm", "llama"),
    ("samsum", "hf_causal_lm", "llama"),
    ("e2e_nlg", "gpt2_medium", "gpt2"),
]


@pytest.mark.parametrize(("task", "model", "tiny"), CASES)
def test_every_paper_task_trains_on_fixture_data(tmp_path, tiny_dirs, task, model, tiny):
    results = tmp_path / "results"
    cfg = compose(
        *task_fixtures.write(task, tmp_path / "data"),
        f"model={model}",  # the pair overlay applies; the overrides below win
        "model.source=path",
        f"model.id={tiny_dirs[tiny]}",
        f"model.name=tiny_{tiny}",
        "model.revision=null",
        f"paths.results={results}",
        *TINY,
        *(["task.num_beams=2"] if task == "e2e_nlg" else []),
    )
    summary = fit(cfg)
    run_dir = run_dir_for(cfg, summary["r"])
    assert runs.is_finished(run_dir) and runs.load_adapter(run_dir).r == cfg.adapter.r
    metrics = runs.read_jsonl(run_dir / "metrics.jsonl")
    assert metrics[0]["split"] == "validation" and metrics[0]["step"] == 2
    assert summary["metric"] == cfg.task.metric and summary["val_metric"] is not None
    if task in GENERATION:
        preds = runs.read_jsonl(run_dir / "predictions_validation.jsonl")
        assert len(preds) == len(load_task(cfg.task).splits["validation"][0])
        assert all(isinstance(p["prediction"], str) for p in preds)
        assert summary["n_head_params"] == 0 and summary["majority_val"] is None
    if task == "wikisql":
        assert summary["val_accuracy"] == summary["val_exact_match"]
    if task == "e2e_nlg":
        assert {"val_bleu", "val_rougeL", "val_chrf", "val_ter"} <= set(summary)
        assert len(preds) == 2  # one decoding per distinct meaning representation
    if task == "sst2":
        assert summary["test_accuracy"] is None and [m["split"] for m in metrics] == ["validation"]
    else:
        assert [m["split"] for m in metrics] == ["validation", "test"]
    if model == "roberta_base":
        assert summary["n_head_params"] > 0 and 0 <= summary["val_accuracy"] <= 1


def test_an_uncached_hub_model_offline_names_the_model_and_the_remedies():
    from lora_repro.models import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as e:
        load_model(compose("model=roberta_base").model, num_labels=2)
    msg = str(e.value)
    assert "'FacebookAI/roberta-base'" in msg and "e2da8e2f811d1448a5b465c236feacd80ffbac7b" in msg
    assert "hf download FacebookAI/roberta-base --revision" in msg and "model.source=path" in msg


def test_a_data_dir_without_the_split_files_lists_what_it_expects(tmp_path):
    (tmp_path / "other.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match=r"should hold \['train.jsonl', 'validation_matched.jsonl'"):
        load_task(compose("task=mnli", f"task.data_dir={tmp_path}").task)
