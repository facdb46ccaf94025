"""notebooks/layer_subspaces.py executes on fixture results (jupytext -> nbformat -> nbclient)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.fixtures_analysis import make_results, write_full_run

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "layer_subspaces.py"
KERNEL = "lora-repro-test"


def _kernelspec(root: Path) -> Path:
    """A kernelspec that runs *this* interpreter, so the test works from a clean venv."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "lora-repro test",
                "language": "python",
            }
        )
    )
    return root


def test_notebook_runs_on_fixture_results(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # r = 1 is there too (Table 6 runs): the default must still be the paper's r = 8 vs r = 64
    results = make_results(tmp_path / "results", ranks=(1, 8, 64), seed1_ranks=(), d=64, k=64)
    write_full_run(results, d=64, k=64)
    monkeypatch.setenv("JUPYTER_PATH", str(_kernelspec(tmp_path / "jupyter")))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = jupytext.read(NOTEBOOK, fmt="py:percent")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source += f"\nRESULTS = {str(results)!r}\nLAYER = 1\n"

    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=120,
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    client.execute()

    text = "\n".join(
        str(o.get("text", ""))
        + str(o.get("data", {}).get("text/plain", ""))
        + str(o.get("data", {}).get("text/markdown", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "Layer 1 of 4" in text
    assert "r=8 (q_v-r8-a8/seed0) vs r=64 (q_v-r64-a8/seed0)" in text
    assert "φ(1, 1)" in text and "random" in text
    assert "amplification" in text and "ratio_to_random" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert "energy_rank" in text and "intruders" in text  # the full fine-tuning section
    assert len(images) >= 5  # φ heatmaps, two spectra, full FT spectra and its φ grids
