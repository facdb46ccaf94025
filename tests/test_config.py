"""The run config: every file composes, bad values are refused in one line, canonical forms."""

from __future__ import annotations

import pytest

from lora_repro.config import ConfigError, canonical_layers
from lora_repro.runs import canonical_targets
from tests.helpers.configs import CONF, compose


def test_every_config_composes():
    for group in ("model", "task", "adapter", "train", "paths"):
        for f in sorted((CONF / group).glob("*.yaml")):
            cfg = compose(f"{group}={f.stem}")
            assert cfg[group] is not None
    for f in sorted((CONF / "sweep").glob("*.yaml")):
        cfg = compose(f"+sweep={f.stem}")
        assert cfg.sweep == f.stem
    for f in sorted((CONF / "hydra" / "launcher").glob("*.yaml")):
        compose(f"hydra/launcher={f.stem}")


@pytest.mark.parametrize(
    "override, message",
    [
        ("+foo=1", r"unknown config key 'foo'.*drop the leading '\+'"),
        ("+adapter.rr=3", r"unknown config key 'adapter.rr'"),
        ("adapter.targets=[]", r"adapter.targets is empty: give one or more of q, k, v, o"),
        ("adapter.layers=[]", r"adapter.layers=\[\] is invalid"),
        ("adapter.layers=[-1]", r"adapter.layers=\[-1\] is invalid"),
        ("seed=-1", r"seed=-1 is invalid: expected an integer >= 0"),
        ("seed_init=-5", r"seed_init=-5 is invalid"),
        ("task.max_train_examples=-3", r"task.max_train_examples=-3 is invalid"),
        ("task.max_eval_examples=0", r"task.max_eval_examples=0 is invalid"),
        ("group=../../evil", r"group='../../evil' is invalid: expected a folder name"),
        ("group=a/b", r"group='a/b' is invalid"),
        (
            "adapter.target_modules=3",
            r"adapter.target_modules=3 is invalid: expected null or a mapping",
        ),
    ],
)
def test_bad_values_are_refused_in_one_line(override, message):
    from lora_repro.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message) as e:
        validate(compose(override))
    assert "\n" not in str(e.value)


def test_target_modules_and_data_files_take_a_mapping_from_the_command_line():
    from lora_repro.config import validate

    cfg = compose(r'adapter.target_modules={q: "layer\.(\d+)\.attention\.self\.query$"}')
    validate(cfg)
    assert dict(cfg.adapter.target_modules) == {"q": r"layer\.(\d+)\.attention\.self\.query$"}
    cfg = compose("task.data_files={train: /tmp/t.jsonl}", "group=lr1e-3_b16")
    validate(cfg)
    assert dict(cfg.task.data_files) == {"train": "/tmp/t.jsonl"}


def test_canonical_forms():
    assert canonical_targets(["v", "q", "q"]) == ["q", "v"]
    assert canonical_targets(["o", "k"]) == ["k", "o"]
    assert canonical_layers([5, 0, 0]) == [0, 5] and canonical_layers(None) is None
    with pytest.raises(ConfigError, match=r"adapter.layers=\[0, -2\] is invalid"):
        canonical_layers([0, -2])
