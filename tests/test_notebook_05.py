"""Notebook 05 (training) runs top to bottom headless at smoke sizes; its asserts are the checks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.smoke
def test_notebook_05_training_runs_headless_with_its_asserts(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / "05_training.ipynb", as_version=4)
    env = {"TAO_LAB_SMOKE": "1", "TAO_LAB_RUN_DIR": str(tmp_path / "run")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the kernel
    try:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                         resources={"metadata": {"path": str(NOTEBOOKS)}})
        t = time.perf_counter()
        client.execute()
        print(f"05_training: {time.perf_counter() - t:.0f} s")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert (tmp_path / "run" / "report.html").exists()


def test_notebook_05_pair_is_in_sync_and_stored_without_outputs():
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    py = jupytext.read(NOTEBOOKS / "05_training.py")
    ipynb = nbformat.read(NOTEBOOKS / "05_training.ipynb", as_version=4)
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells], \
        "run `jupytext --sync notebooks/05_training.py` after editing either file"
    assert all(not c.get("outputs") for c in ipynb.cells if c.cell_type == "code")
