"""Thread policy (tao_lab/threads.py) and quiet starts (issue 17 §1, §2)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tao_lab import threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_policy(monkeypatch):
    saved = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads._reset_for_tests()
    yield monkeypatch
    threads._reset_for_tests()
    torch.set_num_threads(saved)


def test_argument_wins_over_environment(fresh_policy):
    fresh_policy.setenv(threads.ENV_VAR, "2")
    assert threads.choose(1)["threads"] == 1 and threads.choose(1)["source"] == "argument"


def test_environment_variable_sets_the_count(fresh_policy):
    fresh_policy.setenv(threads.ENV_VAR, "1")
    rec = threads.apply(verbose=False)
    assert rec["threads"] == 1 and rec["source"] == threads.ENV_VAR and torch.get_num_threads() == 1


def test_user_omp_num_threads_is_kept_not_overridden(fresh_policy):
    fresh_policy.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose()["source"] == "OMP_NUM_THREADS"


def test_bad_environment_value_names_the_variable(fresh_policy):
    fresh_policy.setenv(threads.ENV_VAR, "many")
    with pytest.raises(ValueError, match=threads.ENV_VAR):
        threads.choose()


def test_auto_never_exceeds_affinity_or_drops_below_one(fresh_policy):
    rec = threads.choose()
    assert rec["source"] == "auto" and 1 <= rec["threads"] <= threads.affinity_cores()


def test_auto_leaves_out_a_core_another_process_keeps_busy(fresh_policy):
    if threads.affinity_cores() < 2:
        pytest.skip("needs two cores")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        rec = threads.choose()
    finally:
        busy.kill()
        busy.wait()
    assert rec["busy_elsewhere"] >= 0.7 and rec["threads"] <= threads.affinity_cores() - 1


def test_apply_is_decided_once_and_printed_once(fresh_policy, capsys):
    threads.apply()
    threads.apply()
    out = capsys.readouterr().out
    assert out.count("torch thread") == 1 and threads.describe()["applied_calls"] == 1


def _stderr_of(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd="/tmp", timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_cli_help_prints_nothing_on_stderr():
    assert _stderr_of("from tao_lab.cli import main\nimport sys\n"
                      "try: main(['--help'])\nexcept SystemExit: pass") == ""


def test_tiny_model_load_with_lora_prints_nothing_on_stderr():
    code = ("from tao_lab.models import tiny_model, add_lora, ModelConfig\n"
            "add_lora(tiny_model(layers=1, vocab_size=64), ModelConfig())")
    assert _stderr_of(code) == ""


def test_tiny_model_load_applies_the_policy():
    code = ("from tao_lab.models import tiny_model\nfrom tao_lab import threads\n"
            "tiny_model(layers=1, vocab_size=64)\nimport sys\n"
            "sys.stderr.write(str(threads.describe()['threads']))")
    assert _stderr_of(code) == "1"    # OMP_NUM_THREADS=1 in the child is the user's setting


def test_the_kernel_benchmark_builds_its_program_from_notebook_02():
    """benchmarks/thread_policy_kernel.py --dry-run: the cells it times are found in the notebook and compile."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("thread_policy_kernel", ROOT / "benchmarks" / "thread_policy_kernel.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cells = bench.notebook_cells(tasks=2, group=3, max_new=16)
    assert "N_TASKS, G, MAX_NEW = 2, 3, 16" in cells[1]
    assert any("generate(model, tok, tasks, cfg" in c for c in cells)     # the notebook's rollout cell
    for c in cells:
        compile(c, "<cell>", "exec")
    assert bench.parse_output("tao_lab: 1 torch thread(s) (auto)\nzero_shot: 40 sampled + 3 forced tokens in 2.0 s "
                              "(20 tok/s)\nBENCH_RESULT {\"seconds\": 4.0, \"sampled_tokens\": 80}") == {
        "templates": [{"template": "zero_shot", "sampled_tokens": 40, "seconds": 2.0}], "torch_threads": 1,
        "seconds": 4.0, "sampled_tokens": 80}
