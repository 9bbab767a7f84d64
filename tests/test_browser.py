"""Headless Chromium: notebook 04 in JupyterLab (charts render offline, the panel is live), and the
HTML report of a tiny real run opened from disk with the network blocked (last test; its checks are
in its body: headline, section titles, table width at 1100 px, distinct episodes, collapsible config).

Notebook 04 in JupyterLab, step by step (each wait has its own timeout and failure message):
  1. copies notebooks/04_entropy.ipynb into a temp folder and writes a run store there from
     tests/runstore_fixture.py, so the notebook loads stored episodes instead of sampling (the
     nbclient smoke test covers sampling; this test is about the browser);
  2. starts JupyterLab on a free localhost port with token auth, private settings (no windowed
     notebook rendering, no news fetch) and `--no-browser`;
  3. opens the notebook in Debian's /usr/bin/chromium through Playwright (never `playwright install`),
     blocking and recording every request that is not to localhost: the page must need no network;
  4. runs all cells from the Run menu and waits until no cell is pending and the panel is drawn;
  5. checks the altair charts rendered (SVG made in the kernel by the offline renderer, shown by
     JupyterLab as data-URI images that the browser decoded) and that no cell failed;
  6. presses ArrowRight on the coefficient slider's handle (typing into its readout if the keys
     do not reach it), waits for the kernel's redraw, and asserts that the summary text and the
     chart SVG changed; saves test-artifacts/browser_04_entropy.png (the panel).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from runstore_fixture import make_run_store
from tao_lab.stored_rollouts import store_name

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SECOND = 1000  # Playwright timeouts are in ms

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path) -> None:
    """JupyterLab user settings: render every cell (no virtual scrolling), fetch no news."""
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    notes = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notes.parent.mkdir(parents=True, exist_ok=True)
    notes.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@contextmanager
def jupyter_lab(base: Path, nbdir: Path, settings: Path, env: dict):
    """A JupyterLab server on localhost serving `nbdir` with the user settings in `settings`:
    yields (url, token); the server and its kernels are stopped afterwards."""
    port, token = _free_port(), uuid.uuid4().hex
    env = {**env, "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
           "TOKENIZERS_PARALLELISM": "false"}
    log = open(base / "jupyter.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={base / 'workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=nbdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with code {proc.returncode}; log:\n{(base / 'jupyter.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer on {url} within 120 s; log:\n"
                            f"{(base / 'jupyter.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url, token
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernel it started (our own group)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on localhost serving a copy of notebook 04 with a stored run: (url, token)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make setup does)")
    pytest.importorskip("playwright.sync_api")
    base = tmp_path_factory.mktemp("lab")
    nbdir, settings = base / "notebooks", base / "settings"
    nbdir.mkdir()
    shutil.copy(ROOT / "notebooks" / "04_entropy.ipynb", nbdir)
    # TAO_LAB_RUN_DIR holds the notebooks' run folders; notebook 04 at smoke size reads this one
    make_run_store(base / "runs" / store_name(["arith-L1", "arith-L3"], 2, 4, 128, seed=1))
    _write_settings(settings)
    env = {**os.environ, "TAO_LAB_SMOKE": "1", "TAO_LAB_RUN_DIR": str(base / "runs")}
    with jupyter_lab(base, nbdir, settings, env) as (url, token):
        yield url, token, base


PENDING_CELLS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
    .filter(e => e.textContent.includes('*')).length"""
# The kernel item of the status bar reads "No Kernel | Initializing", then "<name> | Idle" / "| Busy".
KERNEL_IDLE = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(e => /[|]\\s*Idle/.test(e.innerText))"""
CHARTS_HTML = "() => document.querySelector('.tao-charts').innerHTML"
SUMMARY = "() => document.querySelector('.tao-summary').innerText"


def test_notebook_04_renders_charts_offline_and_its_panel_redraws_when_the_slider_moves(lab):
    from playwright.sync_api import sync_playwright

    url, token, base = lab
    external: list[str] = []

    def offline_only(route):
        host = route.request.url.split("/")[2] if "://" in route.request.url else ""
        if route.request.url.startswith(("data:", "blob:")) or host.startswith(("127.0.0.1", "localhost")):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser_04_entropy_failure.png").unlink(missing_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.route("**/*", offline_only)
        try:
            page.goto(f"{url}/lab/tree/04_entropy.ipynb?token={token}", timeout=120 * SECOND)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120 * SECOND)
            page.wait_for_function(KERNEL_IDLE, timeout=180 * SECOND)  # kernel started and connected

            # Run > Run All Cells
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            page.wait_for_selector(".tao-panel .tao-charts img, .tao-panel .tao-charts svg",
                                   timeout=480 * SECOND)
            page.wait_for_function(f"() => ({PENDING_CELLS})() === 0", timeout=480 * SECOND)
            page.wait_for_function(KERNEL_IDLE, timeout=120 * SECOND)

            errors = page.evaluate("""() => [...document.querySelectorAll(
                '[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.innerText)
                .filter(t => t.includes('Traceback') || t.includes('Error:'))""")
            assert not errors, f"a cell failed in JupyterLab:\n{errors[0][-2000:]}"

            # JupyterLab shows image/svg+xml outputs as <img src="data:image/svg+xml,...">; a decoded
            # image has a natural width, a broken one has 0.
            widths = page.evaluate("""() => [...document.querySelectorAll(
                '[data-mime-type="image/svg+xml"] img, [data-mime-type="image/svg+xml"] svg')]
                .map(e => e.naturalWidth ?? e.getBoundingClientRect().width)""")
            assert len(widths) >= 6, f"expected the notebook's altair charts as SVG outputs, found {len(widths)}"
            assert all(w > 0 for w in widths), f"some SVG chart did not render (widths {widths})"
            marks = page.evaluate("""() => decodeURIComponent(document.querySelector('.tao-charts img').src)
                .split('<path').length - 1""")
            assert marks > 10, f"the panel's chart SVG has only {marks} paths; did altair draw it?"

            before_summary, before_charts = page.evaluate(SUMMARY), page.evaluate(CHARTS_HTML)
            assert "Ã/A on gated tokens" in before_summary, f"unexpected panel summary: {before_summary!r}"

            handle = page.locator(".tao-coef .noUi-handle").first
            handle.scroll_into_view_if_needed(timeout=30 * SECOND)
            handle.focus()
            for _ in range(3):  # 3 steps of 0.05 decades: a 0.2 -> ~0.28, one kernel redraw each
                handle.press("ArrowRight")
            try:
                page.wait_for_function(f"b => ({SUMMARY})() !== b", arg=before_summary, timeout=120 * SECOND)
            except Exception:
                # keyboard did not reach the slider: type into its editable readout instead
                readout = page.locator(".tao-coef .widget-readout").first
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type("0.5")
                page.keyboard.press("Enter")
                page.wait_for_function(f"b => ({SUMMARY})() !== b", arg=before_summary, timeout=120 * SECOND)
            page.wait_for_function(f"b => ({CHARTS_HTML})() !== b && document.querySelector('.tao-charts img, .tao-charts svg')",
                                   arg=before_charts, timeout=120 * SECOND)
            page.wait_for_function(KERNEL_IDLE, timeout=120 * SECOND)  # every queued redraw done
            page.wait_for_timeout(1000)
            page.wait_for_function(KERNEL_IDLE, timeout=120 * SECOND)
            after_summary = page.evaluate(SUMMARY)
            assert after_summary != before_summary
            readout = float(page.locator(".tao-coef .widget-readout").first.inner_text())
            assert readout > 0.2, f"the coefficient slider reads {readout}, expected it moved up from 0.2"

            panel = page.locator(".tao-panel").first
            panel.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            panel.screenshot(path=str(ARTIFACTS / "browser_04_entropy.png"))
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser_04_entropy_failure.png"))
            raise
        finally:
            browser.close()
    vega_cdn = [u for u in external if "vega" in u or "jsdelivr" in u]
    assert not vega_cdn, f"the charts tried to load vega from the network: {vega_cdn[:3]}"
    assert not external, f"the page made requests off localhost (blocked): {external[:5]}"


# ----------------------------------------------------------------------------------------------
# The HTML report (issue 17 §5), opened from disk in headless Chromium with the network blocked.

REPORT_SECTIONS = ["Is the policy improving?", "What did the filters drop, and why?",
                   "Is the policy less certain after tool output?",
                   "Entropy by distance from the tool output (last step)", "Where does a step spend its time?",
                   "Held-out evaluation", "Episodes of the last step", "Config"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """A real run of the tiny random model (2 steps of TAO-RL's loop, a held-out evaluation before and
    after, as `tao-lab demo` does) and its report.html. The alternating reward (train_helpers) keeps
    every group informative, so both steps update; the random model's episodes all differ."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make setup does)")
    pytest.importorskip("playwright.sync_api")
    from train_helpers import alternating_reward, tiny_cfg

    from tao_lab.evaluate import EvalConfig, evaluate, save_eval
    from tao_lab.report import write_report
    from tao_lab.tasks import load_tasks
    from tao_lab.trainer import Trainer

    out = tmp_path_factory.mktemp("report") / "tiny_run"
    cfg = tiny_cfg("run.steps=2")
    ecfg = EvalConfig(tasks="arith-L1", limit=3, k=2, max_new_tokens=8, max_turns=1)
    held_out = load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit)
    with Trainer(cfg, out, reward_fn=alternating_reward) as tr:
        for phase in ("before", "after"):
            if phase == "after":
                tr.train()
            trajs, m = evaluate(tr.model, tr.tok, held_out, ecfg, cfg.rollout, pool=tr.pool)
            save_eval(out, f"step_{tr.state.step:06d}", trajs, m, config={"eval": ecfg.__dict__})
    return write_report(out)


# Requests a page from disk may make: itself, inline data, nothing else.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def test_the_report_opens_offline_with_its_headline_sections_fitting_table_and_distinct_episodes(tiny_report):
    from playwright.sync_api import sync_playwright

    requested: list[str] = []

    def offline_only(route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            requested.append(route.request.url)
            route.abort()

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})   # the page's own max width
        page.route("**/*", offline_only)
        page_errors: list[str] = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        try:
            page.goto(tiny_report.as_uri(), timeout=60 * SECOND)
            page.wait_for_function("() => document.querySelectorAll('.chart svg').length >= 1", timeout=60 * SECOND)
            page.wait_for_timeout(300)   # vegaEmbed draws the charts one after another

            # offline: nothing requested, and no element points off the page
            links = page.evaluate("""() => [...document.querySelectorAll('[src], [href]')]
                .map(e => e.getAttribute('src') || e.getAttribute('href'))
                .filter(u => /^(https?:)?\\/\\//.test(u))""")
            assert not links, f"the report links to the network: {links[:5]}"
            assert not page_errors, f"a script on the page failed: {page_errors[:3]}"
            charts = page.evaluate("""() => [...document.querySelectorAll('.chart')].map(d =>
                ({svg: d.querySelectorAll('svg path, svg rect, svg line').length, text: d.innerText}))""")
            assert charts and all(c["svg"] > 5 for c in charts), f"a chart did not draw: {charts}"

            # the headline: what ran and what it did, in words
            h1 = page.inner_text("h1")
            assert h1.startswith("tao on arith-L1"), h1
            facts = dict(page.evaluate("""() => [...document.querySelectorAll('.kv span')]
                .map(s => [s.querySelector('b').innerText, s.innerText.slice(s.querySelector('b').innerText.length).trim()])"""))
            assert facts["method"] == "tao" and facts["model"] == "tiny-random" and facts["tasks"] == "arith-L1"
            assert facts["steps"] == "2", facts
            held = facts["held-out avg@2"]
            assert re.fullmatch(r"\d\.\d{3} → \d\.\d{3} \(6 samples; before training → after step 2\)", held), held

            # the sections, with human titles, in order
            titles = page.evaluate("() => [...document.querySelectorAll('h2')].map(h => h.innerText)")
            assert titles == REPORT_SECTIONS, titles

            # the held-out table fits the page: no horizontal scroll anywhere at 1100 px
            widths = page.evaluate("""() => ({page: document.documentElement.scrollWidth,
                view: document.documentElement.clientWidth,
                table: document.querySelector('h2 + table.t, h2 + .dataframe, table.dataframe').getBoundingClientRect().right,
                body: document.body.getBoundingClientRect().right})""")
            assert widths["page"] <= widths["view"], f"the page scrolls sideways: {widths}"
            assert widths["table"] <= widths["body"] + 1, f"the held-out table is wider than the page: {widths}"
            rows = page.evaluate("() => [...document.querySelectorAll('table.dataframe tbody tr')].map(r => r.cells[0].innerText)")
            assert rows == ["before training", "after step 2"], rows

            # distinct example episodes: different headings, different token text
            episodes = page.evaluate("""() => [...document.querySelectorAll('h4')].map(h => {
                let e = h.nextElementSibling;          // each token view comes with its <style>
                while (e && e.tagName !== 'H4' && !e.matches('.tl-view')) e = e.nextElementSibling;
                return {head: h.innerText, body: e && e.matches('.tl-view') ? e.innerText : ''}; })""")
            assert len(episodes) >= 2, episodes
            assert len({e["head"] for e in episodes}) == len(episodes)
            assert all(len(e["body"]) > 20 for e in episodes), f"an episode shows no tokens: {episodes}"
            assert len({e["body"] for e in episodes}) == len(episodes), "two example episodes show the same text"

            # the config: a closed <details> with a field/value table that opens on a click
            cfg_table = page.locator("details table.cfg")
            assert not cfg_table.is_visible(), "the config table should start collapsed"
            page.locator("details summary").click()
            assert cfg_table.is_visible()
            fields = page.evaluate("() => [...document.querySelectorAll('table.cfg tr td:first-child')].map(td => td.innerText)")
            assert {"method", "model.name", "data.tasks", "loss.eps_high"} <= set(fields), fields[:10]

            page.screenshot(path=str(ARTIFACTS / "browser_report.png"), full_page=True)
        finally:
            browser.close()
    assert not requested, f"the report requested the network (blocked): {requested[:5]}"
