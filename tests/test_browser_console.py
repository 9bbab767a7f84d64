"""JupyterLab in headless Chromium: notebook 05's training console, as a person would use it.

Runs notebook 05 at smoke size (Run All), then checks what issue 17 §4 asked for, in the browser:
the run folder is under runs/ next to the notebook (the file browser's contents API lists it); the
console's chart is drawn; the buttons' labels are not cut off; choosing the additive shaping greys
out the coefficient a; Apply says what changed from which step on; "Train 1 more step" trains one
more step with its progress line and a redrawn chart in the same output area. Saves
test-artifacts/browser_05_console.png. About 6 minutes on 2 CPU cores (two training steps in Run
All, one from the button), hence the browser tier.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from test_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, KERNEL_IDLE, PENDING_CELLS, ROOT, SECOND,
                          _write_settings, jupyter_lab)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab05(tmp_path_factory):
    """A JupyterLab server on localhost serving a copy of notebook 05: (url, token, notebook folder)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make setup does)")
    pytest.importorskip("playwright.sync_api")
    base = tmp_path_factory.mktemp("lab05")
    nbdir, settings = base / "notebooks", base / "settings"
    nbdir.mkdir()
    shutil.copy(ROOT / "notebooks" / "05_training.ipynb", nbdir)
    _write_settings(settings)
    env = {k: v for k, v in os.environ.items() if k != "TAO_LAB_RUN_DIR"}   # the default: runs/ here
    env["TAO_LAB_SMOKE"] = "1"
    with jupyter_lab(base, nbdir, settings, env) as (url, token):
        yield url, token, nbdir


STATUS = "() => document.querySelector('.tao-console-status').innerText"
PROGRESS = "() => document.querySelector('.tao-console-progress').innerText"
CHART_SRC = "() => (document.querySelector('.tao-console-chart img') || {}).src || ''"
# a label is cut off when its text is wider than the button shows
CUT_LABELS = """() => [...document.querySelectorAll('.tao-console button')]
    .filter(b => b.scrollWidth > b.clientWidth + 1).map(b => b.innerText)"""


def test_notebook_05_console_applies_with_a_confirmation_and_trains_with_a_live_chart(lab05):
    from playwright.sync_api import sync_playwright

    url, token, nbdir = lab05
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser_05_console_failure.png").unlink(missing_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        try:
            page.goto(f"{url}/lab/tree/05_training.ipynb?token={token}", timeout=120 * SECOND)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120 * SECOND)
            page.wait_for_function(KERNEL_IDLE, timeout=180 * SECOND)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            page.wait_for_selector(".tao-console .tao-console-chart img", timeout=480 * SECOND)
            page.wait_for_function(f"() => ({PENDING_CELLS})() === 0", timeout=480 * SECOND)
            page.wait_for_function(KERNEL_IDLE, timeout=120 * SECOND)
            errors = page.evaluate("""() => [...document.querySelectorAll(
                '[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.innerText)
                .filter(t => t.includes('Traceback') || t.includes('Error:'))""")
            assert not errors, f"a cell failed in JupyterLab:\n{errors[0][-2000:]}"

            # the run folder is where the file browser looks: runs/05_training/run_* next to the notebook
            with urllib.request.urlopen(f"{url}/api/contents/runs/05_training?token={token}", timeout=30) as r:
                runs = [c["name"] for c in json.load(r)["content"]]
            assert len(runs) == 1 and runs[0].startswith("run_"), runs

            console = page.locator(".tao-console").first
            console.scroll_into_view_if_needed()
            assert "applied from step 2 on" in page.evaluate(STATUS)   # the Run All example change
            assert not page.evaluate(CUT_LABELS), f"button labels cut off: {page.evaluate(CUT_LABELS)}"

            # additive shaping: a (coef) greys out; Apply confirms the change and the step it starts at
            page.locator(".tao-ctl-kind button", has_text="additive").first.click()
            page.wait_for_function("() => !!document.querySelector('.tao-ctl-coef [disabled], "
                                   ".tao-ctl-coef.mod-disabled, .tao-ctl-coef [aria-disabled=\"true\"]')",
                                   timeout=60 * SECOND)
            page.wait_for_function(f"() => ({STATUS})().includes('not applied yet')", timeout=60 * SECOND)
            page.locator(".tao-console-apply").first.click()
            page.wait_for_function(f"() => ({STATUS})().includes('applied from step 3 on')", timeout=60 * SECOND)
            assert "shaping.kind tao → additive" in page.evaluate(STATUS)

            before_chart = page.evaluate(CHART_SRC)
            page.locator(".tao-console-train").first.click()
            page.wait_for_function(f"() => ({PROGRESS})().includes('step 3 (1/1)')", timeout=300 * SECOND)
            page.wait_for_function(f"b => ({CHART_SRC})() !== b", arg=before_chart, timeout=60 * SECOND)
            page.wait_for_function(KERNEL_IDLE, timeout=120 * SECOND)
            page.wait_for_timeout(500)
            console.screenshot(path=str(ARTIFACTS / "browser_05_console.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser_05_console_failure.png"))
            raise
        finally:
            browser.close()
    changes = [json.loads(line) for line in
               (nbdir / "runs" / "05_training" / runs[0] / "config_changes.jsonl").read_text().splitlines()]
    assert {"step": 3, "field": "shaping.kind", "old": "tao", "new": "additive"} in changes
