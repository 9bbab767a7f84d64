"""Every notebook runs top to bottom headless at smoke sizes; the notebooks' own asserts are the
checks. Each is stored without outputs and in sync with its jupytext py:percent twin.

Notebooks 03 and 04 read one run store: 03 samples it from the embedded model into a temporary
folder, 04 reuses it, as a reader going through the notebooks in order would. TAO_LAB_RUN_DIR is the
folder that holds the notebooks' run folders (tao_lab/rundir.py), in every notebook.
"""

from __future__ import annotations

import re
import json

import pytest

from notebook_runner import NOTEBOOKS, execute_notebook, html_outputs
from tao_lab import config_changes

ALL = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_stored_without_outputs_and_in_sync_with_its_py_twin(name):
    import jupytext

    ipynb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert all(not c.get("outputs") for c in ipynb.cells if c.cell_type == "code"), \
        f"strip outputs: .venv/bin/jupytext --to ipynb notebooks/{name}.py"
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells], \
        f"run: .venv/bin/jupytext --sync notebooks/{name}.py"


def test_every_notebook_has_a_headless_run_below():
    assert ALL == ["00_start_here", "01_tool_sandbox", "02_rollouts", "03_filtering", "04_entropy", "05_training",
                   "06_tree_rollouts", "07_behaviour", "08_weak_models"]


@pytest.mark.smoke
def test_notebook_00_start_here_runs_headless(monkeypatch):
    nb = execute_notebook("00_start_here", monkeypatch, timeout=120)
    assert "bundled tasks load" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.smoke
def test_notebook_01_tool_sandbox_runs_headless(monkeypatch):
    execute_notebook("01_tool_sandbox", monkeypatch, timeout=300)


@pytest.mark.smoke
def test_notebook_02_rollouts_runs_headless(monkeypatch):
    nb = execute_notebook("02_rollouts", monkeypatch)
    assert "tl-view" in html_outputs(nb), "the coloured token view should render"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    return str(tmp_path_factory.mktemp("nb_runs"))


@pytest.mark.smoke
def test_notebook_03_filtering_runs_headless(monkeypatch, shared_store):
    nb = execute_notebook("03_filtering", monkeypatch, {"TAO_LAB_RUN_DIR": shared_store})
    rollout = next(c for c in nb.cells if "sample_or_load(SOURCES" in c.source)
    shown = " ".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in rollout.outputs)
    assert re.search(r"episodes:\s*\d+%\|", shown), f"no progress bar in the rollout cell at smoke size: {shown!r}"
    compare = next(c for c in nb.cells if "explore.differing_groups(table)" in c.source)
    said = "".join(o.get("text", "") for o in compare.outputs)
    assert "drop and mask give different advantages" in said or "What-if" in said, said


@pytest.mark.smoke
def test_notebook_04_entropy_runs_headless_on_the_store_03_wrote(monkeypatch, shared_store):
    execute_notebook("04_entropy", monkeypatch, {"TAO_LAB_RUN_DIR": shared_store})


@pytest.mark.smoke
def test_notebook_05_training_runs_headless(monkeypatch, tmp_path):
    nb = execute_notebook("05_training", monkeypatch, {"TAO_LAB_RUN_DIR": str(tmp_path)})
    runs = list((tmp_path / "05_training").glob("run_*"))
    assert len(runs) == 1 and (runs[0] / "report.html").exists()
    assert [c["field"] for c in config_changes.read(runs[0])] == ["filter.filter_a_mode", "shaping.coef"]
    # the console's widgets carry the confirmation and the chart in the saved widget state
    state = json.dumps(nb.metadata.get("widgets", {}))
    assert "applied from step 2 on" in state and "Train 1 more step" in state


@pytest.mark.smoke
def test_notebook_06_tree_rollouts_runs_headless(monkeypatch):
    nb = execute_notebook("06_tree_rollouts", monkeypatch)
    assert "tl-view" in html_outputs(nb), "the anchored row as coloured tokens should render"


@pytest.mark.smoke
def test_notebook_07_behaviour_runs_headless(monkeypatch):
    nb = execute_notebook("07_behaviour", monkeypatch)
    assert "tl-view" in html_outputs(nb), "the flywheel's token views should render"


@pytest.mark.smoke
def test_notebook_08_weak_models_runs_headless(monkeypatch):
    nb = execute_notebook("08_weak_models", monkeypatch)
    assert "tl-view" in html_outputs(nb), "the token views should render"
