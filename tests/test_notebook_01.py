"""Notebook 01 (the tool sandbox) runs top to bottom headless; its own asserts are the checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.smoke
def test_notebook_01_runs_headless_with_its_asserts():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / "01_tool_sandbox.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "store the notebook without outputs"
    os.environ["TAO_LAB_SMOKE"] = "1"  # inherited by the kernel: smaller batches
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()


def test_notebook_01_pair_is_in_sync():
    jupytext = pytest.importorskip("jupytext")
    py = jupytext.read(NOTEBOOKS / "01_tool_sandbox.py")
    ipynb = jupytext.read(NOTEBOOKS / "01_tool_sandbox.ipynb")
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells], \
        "run: .venv/bin/jupytext --sync notebooks/01_tool_sandbox.py"
