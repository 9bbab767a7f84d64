"""The GPU route is known to work before a GPU appears: benchmarks/gpu_check.sh --dry-run runs every
script of the GPU check on CPU at tiny sizes and writes its result files (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.smoke
def test_gpu_check_dry_run_runs_every_part_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "TAO_LAB_THREADS": "1"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    rollout = json.loads((tmp_path / "rollout.json").read_text())
    step = json.loads((tmp_path / "grpo_step.json").read_text())
    scale = json.loads((tmp_path / "scale_step.json").read_text())
    assert rollout["summary"]["tao_lab.rollout"]["tokens_per_s"] > 0 and rollout["speedup"] > 0
    assert set(step["results"]) == {"tao_lab", "trl"} and step["summary"]["step_time_ratio_tao_over_trl"] > 0
    assert scale["device"] == "cpu (dry run)" and scale["median_step_s"] > 0 and scale["estimate_peak_gib"] > 0
    assert '"ok": true' in out.stdout                       # 4-bit vs dequantised gradients agree
