"""The README's two pictures, taken in headless Chromium (the driver tests/test_browser.py uses):

  docs/img/notebook_04_heatmap.png  notebook 04's "All episodes at once" section (entropy heatmap),
                                    from the notebook executed at smoke size and exported to HTML
                                    the way `make docs SMOKE=1` does (or from --notebook-html);
  docs/img/report.png               the top of a run's HTML report (headline, learning curves),
                                    written afresh from --run into a temp folder (the run is only read).

    TAO_LAB_THREADS=1 PYTHONPATH=$PWD .venv/bin/python scripts/screenshots.py [--run runs/demo]
        [--notebook-html docs/04_entropy.html]

Each PNG is kept under 300 KB (the page is shot at device scale 1, and re-shot narrower if needed).
The network is blocked while shooting: what the pictures show is what an offline reader sees.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
MAX_BYTES = 300_000
HEATMAP_CELL = "plots.entropy_heatmap(heat)"   # the code of the cell whose output is shot


def export_notebook_04(out_dir: Path) -> Path:
    """Execute notebooks/04_entropy.ipynb at smoke size and export it to HTML (make docs' command)."""
    env = {**os.environ, "TAO_LAB_SMOKE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TAO_LAB_RUN_DIR", None)    # sample with the embedded model, as a reader's `make docs` would
    cmd = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
           "--ExecutePreprocessor.timeout=1800", "--output-dir", str(out_dir),
           str(ROOT / "notebooks" / "04_entropy.ipynb")]
    print("executing notebook 04 at smoke size (a few minutes on 2 busy cores) ...", flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=ROOT / "notebooks")
    return out_dir / "04_entropy.html"


def write_report_copy(run_dir: Path, out_dir: Path) -> Path:
    from tao_lab.report import write_report

    if not (run_dir / "metrics.jsonl").is_file():
        raise SystemExit(f"{run_dir} is not a training run (no metrics.jsonl); run `make demo` first "
                         f"(it writes runs/demo) or pass --run DIR")
    return write_report(run_dir, out=out_dir / "report.html")


def _offline(route):
    if route.request.url.startswith(("file:", "data:", "blob:", "about:")):
        route.continue_()
    else:
        route.abort()


def _save_small(shoot, path: Path) -> None:
    """Shoot; if the PNG is over the budget, shoot again at a smaller device scale."""
    for scale in (1.0, 0.8, 0.65):
        shoot(path, scale)
        if path.stat().st_size <= MAX_BYTES:
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1000} KB", flush=True)
            return
    raise SystemExit(f"{path} is {path.stat().st_size // 1000} KB even at scale 0.65 (budget {MAX_BYTES // 1000} KB)")


def shoot_notebook(browser, html: Path, png: Path) -> None:
    def shoot(path, scale):
        page = browser.new_page(viewport={"width": 1000, "height": 900}, device_scale_factor=scale)
        page.route("**/*", _offline)
        page.goto(html.as_uri(), wait_until="load")
        cells = page.locator(".jp-Cell").filter(has_text=HEATMAP_CELL)
        if cells.count() == 0:
            raise SystemExit(f"{html}: no cell with {HEATMAP_CELL!r}; was notebook 04 changed?")
        cell = cells.first
        cell.scroll_into_view_if_needed()
        # the section heading (the markdown cell just above) and the heatmap cell, as one clip
        top = page.evaluate("""c => { let p = c.previousElementSibling;
            return (p ? p : c).getBoundingClientRect().top + window.scrollY; }""", cell.element_handle())
        box = cell.bounding_box()
        page.screenshot(path=str(path), full_page=True,
                        clip={"x": box["x"] - 8, "y": top - 8, "width": box["width"] + 16,
                              "height": box["y"] + page.evaluate("window.scrollY") + box["height"] - top + 16})
        page.close()

    _save_small(shoot, png)


def shoot_report(browser, html: Path, png: Path) -> None:
    def shoot(path, scale):
        page = browser.new_page(viewport={"width": 1100, "height": 1000}, device_scale_factor=scale)
        page.route("**/*", _offline)
        page.goto(html.as_uri(), wait_until="load")
        page.wait_for_function("() => document.querySelector('#chart0 svg')", timeout=60_000)
        page.wait_for_timeout(500)
        # the headline and the first section (learning curves), down to the second section's title
        bottom = page.evaluate("() => document.querySelectorAll('h2')[1].getBoundingClientRect().top")
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": 1100, "height": bottom - 12})
        page.close()

    _save_small(shoot, png)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="runs/demo", help="a training run folder (default: make demo's)")
    ap.add_argument("--notebook-html", default=None,
                    help="an exported notebook 04 (docs/04_entropy.html from make docs); default: export one now")
    ap.add_argument("--only", choices=("notebook", "report"), default=None)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: install Debian's chromium (make setup does)")
    IMG.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tao_shots_") as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if args.only in (None, "report"):
                shoot_report(browser, write_report_copy(Path(args.run), Path(tmp)), IMG / "report.png")
            if args.only in (None, "notebook"):
                html = Path(args.notebook_html) if args.notebook_html else export_notebook_04(Path(tmp))
                shoot_notebook(browser, html, IMG / "notebook_04_heatmap.png")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
