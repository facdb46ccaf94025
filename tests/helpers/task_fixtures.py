"""Small local copies of the paper's hub data sets, in each data set's own schema.

``write(task, folder)`` writes json-lines (or parquet, for WikiSQL's nested schema) files named
by the hub's split names and returns the Hydra overrides that point ``task.data_dir`` at them,
so a test runs the same loader code as a hub download would.
"""

from __future__ import annotations

import json
from pathlib import Path

MNLI_ROWS = [
    ("the food was good", "the food was great", 0),
    ("the pub is near the city centre", "the pub is cheap", 1),
    ("it was a bad movie", "it was a great movie", 2),
    ("anna was at the pub", "anna was near the pub", 0),
]
SST2_ROWS = [("it was a good movie", 1), ("a terrible film", 0), ("great food", 1), ("bad", 0)]
WIKISQL_ROWS = [
    (
        "what is the score of tom",
        ["Player", "Team", "Score"],
        "SELECT Score FROM table WHERE Player = tom",
    ),
    ("who is the player of team a", ["Player", "Team"], "SELECT Player FROM table WHERE Team = a"),
    ("what is the name", ["Name", "Area"], "SELECT Name FROM table"),
]
SAMSUM_ROWS = [
    ("anna: hi tom\ntom: hello anna", "anna and tom see it."),
    ("tom: see you tomorrow at 5\nanna: ok thanks", "tom and anna see tomorrow at 5."),
    ("anna: the food was good\ntom: great", "the food was good."),
]
E2E_ROWS = [
    ("name[The Vaults], eatType[pub]", "The Vaults is a pub."),
    ("name[The Vaults], eatType[pub]", "A pub called The Vaults."),
    ("name[Anna], area[city centre]", "Anna is in the city centre."),
]


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _wikisql_row(question: str, header: list[str], sql: str) -> dict:
    return {
        "phase": 1,
        "question": question,
        "table": {
            "header": header,
            "page_title": "",
            "page_id": "",
            "types": ["text"] * len(header),
            "id": "1-0",
            "section_title": "",
            "caption": "",
            "rows": [["x"] * len(header)],
            "name": "table_1",
        },
        "sql": {
            "human_readable": sql,
            "sel": 0,
            "agg": 0,
            "conds": {"column_index": [0], "operator_index": [0], "condition": ["x"]},
        },
    }


def write(task: str, folder: Path) -> list[str]:
    """Write fixture files of ``task`` under ``folder``; return the overrides that use them."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    fmt = "json"
    if task == "mnli":
        rows = [
            {"premise": p, "hypothesis": h, "label": y, "idx": i}
            for i, (p, h, y) in enumerate(MNLI_ROWS)
        ]
        for split in ("train", "validation_matched", "validation_mismatched"):
            files[split] = _jsonl(folder / f"{split}.jsonl", rows)
    elif task == "sst2":
        rows = [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(SST2_ROWS)]
        files["train"] = _jsonl(folder / "train.jsonl", rows)
        files["validation"] = _jsonl(folder / "validation.jsonl", rows)
        files["test"] = _jsonl(folder / "test.jsonl", [{**r, "label": -1} for r in rows])
    elif task == "wikisql":
        import pandas as pd

        fmt = "parquet"
        rows = [_wikisql_row(*r) for r in WIKISQL_ROWS]
        for split in ("train", "validation", "test"):
            pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet")
            files[split] = str(folder / f"{split}.parquet")
    elif task == "samsum":
        rows = [{"id": str(i), "dialogue": d, "summary": s} for i, (d, s) in enumerate(SAMSUM_ROWS)]
        for split in ("train", "validation", "test"):
            files[split] = _jsonl(folder / f"{split}.jsonl", rows)
    elif task == "e2e_nlg":
        rows = [{"meaning_representation": m, "human_reference": r} for m, r in E2E_ROWS]
        for split in ("train", "validation", "test"):
            files[split] = _jsonl(folder / f"{split}.jsonl", rows)
    else:
        raise KeyError(task)
    return [f"task={task}", f"task.data_dir={folder}", f"task.file_format={fmt}"]
