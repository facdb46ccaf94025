"""The run-directory lifecycle (lora_repro.lifecycle) without training a model: identity, claim,
recording, signals, damaged files and failed writes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_repro import lifecycle, runs
from lora_repro.config import ConfigError
from lora_repro.errors import DamagedFile, LoraReproError, ResultsWriteError
from lora_repro.lifecycle import RunConflict
from tests.helpers.configs import REPO


def config(results: Path, targets=("q", "v"), layers=None, **train) -> dict:
    return {
        "model": {"name": "minilm"},
        "task": {"name": "rotten_tomatoes"},
        "adapter": {"targets": list(targets), "r": 8, "alpha": 8.0, "layers": layers},
        "train": {"lr": 4e-3, "precision": "auto", "threads": None, "progress": True, **train},
        "paths": {"results": str(results)},
        "seed": 0,
        "seed_init": None,
        "seed_data": None,
        "group": "runs",
        "sweep": None,
    }


def finished(results: Path, cfg: dict) -> Path:
    """A run directory as a finished run leaves it (the config written as given)."""
    run_dir = lifecycle.run_dir_for(cfg, 8)
    runs.atomic_write_yaml(run_dir / runs.CONFIG_FILE, cfg)
    runs.atomic_write_json(run_dir / runs.META_FILE, {"seed": 0})
    runs.atomic_write_json(run_dir / runs.SUMMARY_FILE, {"val_accuracy": 0.8})
    runs.atomic_write_json(run_dir / runs.STATUS_FILE, {"status": "success"})
    return run_dir


# ------------------------------------------------------------------------------------------------
# Identity and names
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("targets", "layers", "name"),
    [
        (["q", "v"], None, "q_v-r8-a8"),
        (["v", "q"], None, "q_v-r8-a8"),
        (["q", "v", "q"], None, "q_v-r8-a8"),
        (["q"], [5, 0], "q-r8-a8-L0_5"),
        (["q"], [0, 0, 5], "q-r8-a8-L0_5"),
    ],
)
def test_folder_names_come_from_canonical_forms(tmp_path, targets, layers, name):
    assert lifecycle.run_dir_for(config(tmp_path, targets, layers), 8).parent.name == name


def test_negative_layers_are_refused_with_the_configs_message(tmp_path):
    with pytest.raises(ConfigError, match=r"adapter.layers=\[-1\] is invalid"):
        lifecycle.run_dir_for(config(tmp_path, layers=[-1]), 8)


@pytest.mark.parametrize(
    ("saved", "now"),
    [((["q", "q"],), (["q"],)), ((["v", "q"],), (["q", "v"],)), ((["q"], [5, 0]), (["q"], [0, 5]))],
)
def test_runs_saved_in_non_canonical_form_are_the_same_run(tmp_path, saved, now):
    run_dir = finished(tmp_path, config(tmp_path, *saved))
    cfg = lifecycle.canonical_config(config(tmp_path, *now))
    assert lifecycle.run_dir_for(cfg, 8) == run_dir
    assert lifecycle.claim(run_dir, cfg) == {"val_accuracy": 0.8}  # skipped, not a conflict


def test_precision_threads_and_device_are_not_identity(tmp_path):
    run_dir = finished(tmp_path, config(tmp_path, precision="bf16", threads=None))
    now = config(tmp_path, precision="fp32", threads=1, device="cpu")
    assert lifecycle.claim(run_dir, now) == {"val_accuracy": 0.8}


def test_a_finished_run_with_other_settings_is_a_conflict(tmp_path):
    run_dir = finished(tmp_path, config(tmp_path))
    with pytest.raises(RunConflict, match=r"train.lr: 0.004 \(saved\) vs 0.001 \(now\)"):
        lifecycle.claim(run_dir, config(tmp_path, lr=1e-3))
    assert runs.run_status(run_dir) == "success"  # nothing was touched


# ------------------------------------------------------------------------------------------------
# Claim: fresh, killed, live, damaged
# ------------------------------------------------------------------------------------------------
def test_claim_of_a_new_folder_writes_running_and_the_config(tmp_path):
    cfg = config(tmp_path)
    run_dir = lifecycle.run_dir_for(cfg, 8)
    assert lifecycle.claim(run_dir, cfg) is None
    status = runs.read_object(run_dir / runs.STATUS_FILE)
    assert status["status"] == "running" and status["pid"] == os.getpid()
    assert runs.read_config(run_dir) == cfg


def test_a_killed_run_is_cleared_and_claimed_again(tmp_path):
    cfg = config(tmp_path)
    run_dir = lifecycle.run_dir_for(cfg, 8)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs.atomic_write_yaml(run_dir / runs.CONFIG_FILE, cfg)
    runs.atomic_write_json(run_dir / runs.STATUS_FILE, {"status": "running", "pid": dead.pid,
                                                        "host": os.uname().nodename})  # fmt: skip
    (run_dir / runs.ADAPTER_FILE).write_bytes(b"half an adapter")
    (run_dir / runs.METRICS_FILE).write_text('{"step": 100}\n')
    assert lifecycle.claim(run_dir, cfg) is None
    assert not (run_dir / runs.ADAPTER_FILE).exists() and not (run_dir / runs.METRICS_FILE).exists()
    assert runs.read_object(run_dir / runs.STATUS_FILE)["pid"] == os.getpid()


def test_a_run_a_live_process_trains_is_refused(tmp_path):
    cfg = config(tmp_path)
    run_dir = lifecycle.run_dir_for(cfg, 8)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.atomic_write_json(
            run_dir / runs.STATUS_FILE,
            {"status": "running", "pid": other.pid, "host": os.uname().nodename},
        )
        with pytest.raises(RunConflict, match=rf"being trained now by process {other.pid} "):
            lifecycle.claim(run_dir, cfg)
    finally:
        other.kill()
        other.wait()
    assert lifecycle.claim(run_dir, cfg) is None  # gone: the folder is free again


DAMAGED_STATUS = {
    "not UTF-8": (b'{"status": "success\xff\xfe"}', "not valid UTF-8"),
    "a list": (b"[1, 2]", "holds list, not an object"),
    "null": (b"null", "holds null, not an object"),
    "torn": (b'{"status": "succ', "torn or not JSON"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_STATUS))
def test_a_damaged_status_names_the_file_and_the_run_is_trained_again(tmp_path, kind):
    data, why = DAMAGED_STATUS[kind]
    cfg = config(tmp_path)
    run_dir = finished(tmp_path, cfg)
    (run_dir / runs.STATUS_FILE).write_bytes(data)
    state = runs.run_state(run_dir)
    assert not state.usable and state.problem.path == run_dir / runs.STATUS_FILE
    assert why in str(state.problem)
    assert runs.live_trainer(run_dir) is None
    assert lifecycle.claim(run_dir, cfg) is None  # retrained, not skipped, no traceback
    assert runs.run_status(run_dir) == "running"


@pytest.mark.parametrize(
    ("name", "data", "why"),
    [
        (runs.SUMMARY_FILE, b'{"val_acc', "torn or not JSON"),
        (runs.SUMMARY_FILE, b"[0.8]", "holds list"),
        (runs.CONFIG_FILE, b"\xff\xfe", "not valid UTF-8"),
        (runs.CONFIG_FILE, b"- a\n- b\n", "holds list"),
        (runs.ADAPTER_FILE, b"\x10\x00\x00\x00\x00\x00\x00\x00{", "not a complete safetensors"),
    ],
)
def test_a_finished_run_with_a_damaged_file_is_not_usable(tmp_path, name, data, why):
    run_dir = finished(tmp_path, config(tmp_path))
    (run_dir / name).write_bytes(data)
    damaged: list[DamagedFile] = []
    assert runs.find_runs(tmp_path, damaged=damaged) == []
    assert [d.path for d in damaged] == [run_dir / name] and why in str(damaged[0])


# ------------------------------------------------------------------------------------------------
# Recording how a run ends
# ------------------------------------------------------------------------------------------------
def test_recording_writes_success_last_and_failed_with_the_reason(tmp_path):
    run_dir = tmp_path / "run"
    with lifecycle.recording(run_dir):
        pass
    assert runs.run_status(run_dir) == "success"
    with pytest.raises(ValueError), lifecycle.recording(run_dir):
        raise ValueError("boom")
    assert runs.read_object(run_dir / runs.STATUS_FILE)["error"] == "ValueError: boom"
    with pytest.raises(KeyboardInterrupt), lifecycle.recording(run_dir):
        raise KeyboardInterrupt
    assert runs.read_object(run_dir / runs.STATUS_FILE)["error"] == "interrupted"


_SIGNALLED = """
import os, signal, sys, time
from pathlib import Path
from lora_repro import lifecycle
run_dir, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "previous":  # a handler installed before, as submitit installs its own
    signal.signal(signal.SIGUSR2, lambda s, f: (run_dir / "previous-called").write_text(str(s)))
try:
    with lifecycle.recording(run_dir):
        os.kill(os.getpid(), signal.SIGUSR2 if mode == "previous" else signal.SIGTERM)
        time.sleep(30)
except lifecycle.Interrupted as e:
    sys.exit(lifecycle.exit_code(e.signum))
"""


@pytest.mark.parametrize(("mode", "signum"), [("default", 15), ("previous", 12)])
def test_stop_signals_mark_the_run_failed_and_are_handed_on(tmp_path, mode, signum):
    run_dir = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SIGNALLED), str(run_dir), mode],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 128 + signum, p.stderr
    status = runs.read_object(run_dir / runs.STATUS_FILE)
    assert status["status"] == "failed"
    assert status["error"].startswith(f"interrupted by signal {signum} ")
    assert (run_dir / "previous-called").exists() == (mode == "previous")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process is untouched


# ------------------------------------------------------------------------------------------------
# Writes that fail
# ------------------------------------------------------------------------------------------------
def test_a_read_only_folder_is_one_line_naming_the_path(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(runs.tempfile, "mkstemp", denied)  # root ignores chmod: simulate it
    with pytest.raises(ResultsWriteError) as e:
        runs.atomic_write_json(tmp_path / "runs" / "status.json", {"status": "running"})
    msg = str(e.value)
    assert msg.startswith(f"cannot write {tmp_path / 'runs' / 'status.json'}: Permission denied")
    assert "writable" in msg and "\n" not in msg and isinstance(e.value, LoraReproError)


def test_a_full_disk_mid_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    runs.atomic_write_json(path, {"val_accuracy": 0.8})
    before = path.read_bytes()
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half of it lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "open", lambda p, mode="r": Full(real_open(p, mode)), raising=False)
    with pytest.raises(ResultsWriteError, match="No space left on device; free disk space"):
        runs.atomic_write_json(path, {"val_accuracy": 0.9, "more": "x" * 1000})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left
