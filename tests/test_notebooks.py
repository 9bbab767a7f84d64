"""Every notebook runs top to bottom headless at smoke sizes; the notebooks' own asserts are the
checks. Each is stored without outputs and in sync with its jupytext py:percent twin."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def execute_notebook(name: str, monkeypatch, timeout: int = 600):
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    monkeypatch.setenv("TAO_LAB_SMOKE", "1")  # inherited by the kernel: tiny sizes
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_stored_without_outputs_and_in_sync_with_its_py_twin(name):
    import jupytext

    ipynb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert all(not c.get("outputs") for c in ipynb.cells if c.cell_type == "code"), \
        f"strip outputs: .venv/bin/jupytext --to ipynb notebooks/{name}.py"
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells], \
        f"run: .venv/bin/jupytext --sync notebooks/{name}.py"


@pytest.mark.smoke
def test_notebook_02_rollouts_runs_headless(monkeypatch):
    nb = execute_notebook("02_rollouts", monkeypatch)
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells
                   for o in c.get("outputs", []))
    assert "tl-view" in html, "the coloured token view should render"
