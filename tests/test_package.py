"""tao_lab installs as a package, not only as a checkout: a wheel built from this tree, installed
into a fresh virtual environment outside the checkout, loads the bundled task sets and
demonstrations and rolls out the tiny model (issue 17 §6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import tao_lab, tao_lab.tasks as T
    from tao_lab.models import load_tokenizer, tiny_model
    from tao_lab.rollout import RolloutConfig, generate
    assert "site-packages" in tao_lab.__file__, tao_lab.__file__     # the wheel, not the checkout
    tasks = T.load_tasks("arith-L2", split="test", limit=2)
    demos = T.load_demos()
    tok = load_tokenizer()
    model = tiny_model(vocab_size=len(tok), seed=0).eval()
    trajs, stats = generate(model, tok, tasks, RolloutConfig(group_size=2, max_new_tokens=8, tools=False,
                                                              template="few_shot", n_demos=1))
    print("OK", len(tasks), len(demos), len(trajs), T.DATA_DIR)
""")


@pytest.mark.smoke
def test_the_wheel_installs_outside_the_checkout_and_finds_its_task_data(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("tao_lab-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith("share/tao_lab/data/demos.jsonl") for n in names), "task data missing from the wheel"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the dependencies come from this test's environment (a path line, not its .pth files, so the
    # editable checkout is NOT on the path); tao_lab itself only from the wheel
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    Path(site, "deps.pth").write_text(deps + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--prefix", str(venv), str(wheel)],
                   check=True)
    out = subprocess.run([str(py), "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("OK 2 ") and str(venv) in line, line
    # installing into the new prefix must leave this environment's (editable) tao_lab alone
    here = subprocess.run([sys.executable, "-c", "import tao_lab; print(tao_lab.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert here.returncode == 0 and str(ROOT) in here.stdout, here.stderr[-500:]
