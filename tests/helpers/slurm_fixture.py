"""A real single-node Slurm cluster for integration tests (scripts/slurm_up.sh / slurm_down.sh).

Use it from a test module::

    import pytest
    from tests.helpers.slurm_fixture import SlurmCluster, slurm_cluster_fixture  # noqa: F401  (fixture "slurm_cluster")

    pytestmark = [pytest.mark.slurm, pytest.mark.slow]

    def test_sweep(slurm_cluster: SlurmCluster, tmp_path):
        subprocess.run([sys.executable, "-m", "experiments.train", "-m", ...,
                        *slurm_cluster.launcher_overrides()], env=slurm_cluster.env, ...)

The fixture is module-scoped: the cluster starts once per test module (about 3-5 s when the
packages are installed; apt-get installs them on first use) and is ALWAYS stopped at teardown,
also when a test fails. It skips when not root or when apt-get cannot install the packages.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
UP_TIMEOUT_S = 900  # includes apt-get install on a clean machine
DOWN_TIMEOUT_S = 180


@dataclass(frozen=True)
class SlurmCluster:
    base: Path
    slurm_conf: Path
    partition: str
    env: dict[str, str] = field(repr=False)  # os.environ + SLURM_CONF: pass to subprocesses

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> str:
        """Run a Slurm client command (sinfo, squeue, sacct, scancel...) against this cluster."""
        proc = subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def launcher_overrides(
        self, timeout_min: int = 10, cpus_per_task: int = 1, mem_gb: int = 1
    ) -> list[str]:
        """Hydra overrides that send a multirun sweep to this cluster (conf/hydra/launcher/slurm.yaml)."""
        return [
            "hydra/launcher=slurm",
            f"hydra.launcher.partition={self.partition}",
            f"hydra.launcher.timeout_min={timeout_min}",
            f"hydra.launcher.cpus_per_task={cpus_per_task}",
            f"hydra.launcher.mem_gb={mem_gb}",
        ]

    def sacct_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        """{job id: state} of whole jobs (no steps); array tasks appear as '<array id>_<task>'."""
        ids = ",".join(str(j) for j in job_ids)
        out = self.run("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ids)
        states = {}
        for line in out.splitlines():
            if "|" in line:
                job, state = line.split("|", 1)
                states[job.strip()] = state.split()[0] if state.strip() else ""
        return states

    def wait_sacct(
        self, job_ids: Iterable[str], expected: Iterable[str], timeout: float = 30
    ) -> dict[str, str]:
        """Poll sacct until every id in `expected` has a final state (records lag 1-2 s)."""
        expected = list(expected)
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
        deadline = time.monotonic() + timeout
        while True:
            states = self.sacct_states(job_ids)
            if all(states.get(j) in final for j in expected) or time.monotonic() > deadline:
                return states
            time.sleep(1)

    def logs(self, lines: int = 30) -> str:
        """Tails of the daemons' logs, for failure messages."""
        parts = []
        for f in sorted((self.base / "log").glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {f}\n" + "\n".join(text))
        return "\n".join(parts)


def _base() -> Path:
    return Path(os.environ.get("SLURM_BASE", "/tmp/lora-repro-slurm"))


def _down() -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPTS / "slurm_down.sh")],
        capture_output=True,
        text=True,
        timeout=DOWN_TIMEOUT_S,
    )


@pytest.fixture(scope="module", name="slurm_cluster")
def slurm_cluster_fixture() -> Iterator[SlurmCluster]:
    """Start the local Slurm cluster (scripts/slurm_up.sh); always stop it afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("local Slurm cluster needs root (scripts/slurm_up.sh starts the daemons)")
    old_conf = os.environ.get("SLURM_CONF")
    try:
        up = subprocess.run(
            ["bash", str(SCRIPTS / "slurm_up.sh")],
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S,
        )
        if up.returncode == 2:
            pytest.skip(f"scripts/slurm_up.sh: not root\n{up.stderr[-2000:]}")
        if up.returncode == 3:
            pytest.skip(
                f"scripts/slurm_up.sh: apt-get could not install Slurm\n{up.stderr[-2000:]}"
            )
        if up.returncode != 0:
            pytest.fail(
                f"scripts/slurm_up.sh failed ({up.returncode})\n{up.stdout}\n{up.stderr[-6000:]}"
            )
        base = _base()
        values = dict(
            line.split("=", 1)
            for line in (base / "cluster.env").read_text().splitlines()
            if "=" in line
        )
        env = dict(os.environ, SLURM_CONF=values["SLURM_CONF"])
        # Slurm commands run by the tests themselves (and by submitit in-process) see the cluster.
        os.environ["SLURM_CONF"] = values["SLURM_CONF"]
        yield SlurmCluster(
            base=base,
            slurm_conf=Path(values["SLURM_CONF"]),
            partition=values["PARTITION"],
            env=env,
        )
    finally:
        down = _down()
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if down.returncode != 0:  # slurm_down.sh exits 0 by design; report if it ever does not
            print(f"scripts/slurm_down.sh exited {down.returncode}:\n{down.stderr}")
