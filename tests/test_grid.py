"""The experiment grid: a real tiny-model grid killed mid-way resumes to the uninterrupted result;
locks, status, spec loading and the thread budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from tao_lab import grid
from tao_lab.grid import Arm, GridSpec
from tao_lab.records import RunStore

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec(**kw) -> GridSpec:
    # a random model's real rewards are all 0 (no gradient): train on the alternating reward of
    # train_helpers so the weights, and with them the final evaluations, depend on every step
    kw.setdefault("reward_fn", "train_helpers:alternating_reward")
    return GridSpec(preset="test_tiny", arms=[Arm("grpo", "grpo"), Arm("grpo_lr", "grpo", ["optim.lr=0.05"])],
                    seeds=[0, 1], steps=2, eval_n=2, eval_k=2, eval_max_new_tokens=8, **kw)


def _grid_cmd(spec_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tao_lab.cli", "grid", str(spec_path), "--out", str(out), "--jobs", "1", "--threads", "1"]


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}


def _wait_for_steps(out: Path, n_lines: int, proc, timeout=240.0) -> None:
    """Wait until the grid has written `n_lines` metric lines in all (so it is mid-way)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        lines = sum(len(grid._metric_steps(p.parent)) for p in out.glob("*/seed_*/metrics.jsonl"))
        if lines >= n_lines:
            return
        assert proc.poll() is None, "the grid ended before it could be interrupted"
        time.sleep(0.2)
    raise AssertionError("the grid made no progress")


def _final_eval_tokens(out: Path, spec: GridSpec) -> dict:
    return {(a.name, s): [list(t) for t in RunStore(grid.cell_dir(out, a, s) / "evals" / "step_000002")
                          .read_step_frame(0)["token_ids"]] for a, s in spec.cells()}


def test_a_grid_killed_twice_resumes_to_the_uninterrupted_result_with_every_step_once(tmp_path):
    spec = tiny_spec()
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({**spec.__dict__, "arms": [a.__dict__ for a in spec.arms]}))
    out = tmp_path / "killed"
    # 1) SIGKILL the whole process group (grid + worker) mid-way: nothing gets to clean up
    p = subprocess.Popen(_grid_cmd(spec_path, out), env=_env(), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_steps(out, 3, p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    # 2) SIGTERM the grid process only: its worker must checkpoint and stop, not train on as an orphan
    p = subprocess.Popen(_grid_cmd(spec_path, out), env=_env(), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_steps(out, 6, p)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)
    assert grid.status(out)["state"].ne("done").any(), "interrupted too late: nothing was left to resume"
    # 3) finish
    done = subprocess.run(_grid_cmd(spec_path, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    st = grid.status(out)
    assert list(st["state"]) == ["done"] * 4
    for a, s in spec.cells():
        d = grid.cell_dir(out, a, s)
        assert grid._metric_steps(d) == [1, 2]
        for label in ("step_000000", "step_000002"):
            assert len((d / "evals" / label / "metrics.jsonl").read_text().splitlines()) == 1
    # same final evaluations as a grid that was never interrupted (in-process, same seeds)
    clean = tmp_path / "clean"
    assert grid.run_grid(spec, clean, isolate=False, progress=False)["done"] == 4
    assert _final_eval_tokens(out, spec) == _final_eval_tokens(clean, spec)
    # ... and training mattered: the two arms (different learning rates) evaluate differently
    final = _final_eval_tokens(clean, spec)
    assert final[("grpo", 0)] != final[("grpo_lr", 0)]


def test_the_step_0_evaluation_is_made_once_per_base_model_and_copied_into_each_cell(tmp_path):
    spec = replace(tiny_spec(), seeds=[0], steps=1)
    assert grid.run_grid(spec, tmp_path, isolate=False, progress=False)["done"] == 2
    cached = list((tmp_path / "base_evals").iterdir())
    assert len(cached) == 1                                    # two arms, one base model: one evaluation
    before = [RunStore(grid.cell_dir(tmp_path, a, 0) / "evals" / "step_000000").read_step_frame(0)["token_ids"]
              for a in spec.arms]
    assert [list(t) for t in before[0]] == [list(t) for t in before[1]]
    assert grid.status(tmp_path)["state"].tolist() == ["done", "done"]
    cfg0, cfg1 = (grid.make_cell_config(spec, Arm("grpo", "grpo"), s, tmp_path / "x") for s in (0, 1))
    assert grid.base_eval_key(spec, cfg0) != grid.base_eval_key(spec, cfg1)     # tiny model: weights from the seed
    real = replace(spec, preset="cpu_demo")
    a, b = (grid.make_cell_config(real, Arm("grpo", "grpo"), s, tmp_path / "x") for s in (0, 1))
    assert grid.base_eval_key(real, a) == grid.base_eval_key(real, b)          # real model: B = 0 adapter, one base
    c = grid.make_cell_config(real, Arm("sft", "grpo", ["model.init_adapter=runs/sft"]), 0, tmp_path / "x")
    assert grid.base_eval_key(real, c) != grid.base_eval_key(real, a)


def test_a_cell_locked_by_another_process_is_skipped_and_counted(tmp_path):
    spec = GridSpec(preset="test_tiny", arms=[Arm("grpo", "grpo")], seeds=[0], steps=1, eval_n=1, eval_k=1)
    with grid.cell_lock(grid.cell_dir(tmp_path, "grpo", 0)) as got:
        assert got
        counts = grid.run_grid(spec, tmp_path, isolate=False, progress=False)
        assert grid.status(tmp_path)["state"].tolist() == ["running"]
    assert counts == {"done": 0, "skipped_done": 0, "skipped_locked": 1, "failed": 0}
    assert not (grid.cell_dir(tmp_path, "grpo", 0) / "metrics.jsonl").exists()


def test_status_tells_done_partial_and_pending_cells_apart(tmp_path):
    spec = tiny_spec()
    grid._write_or_check_spec(spec, tmp_path)
    (cells := spec.cells())
    d0, d1 = grid.cell_dir(tmp_path, *cells[0]), grid.cell_dir(tmp_path, *cells[1])
    for d, n in ((d0, 2), (d1, 1)):
        store = RunStore(d)
        for s in range(1, n + 1):
            store.append_metrics({"step": s})
    (d0 / grid.DONE).write_text("{}")
    st = grid.status(tmp_path)
    assert st["state"].tolist() == ["done", "partial", "pending", "pending"]
    assert st["steps"].tolist() == [2, 1, 0, 0]
    text = grid.format_status(st, tmp_path)
    assert "1/4 cells done" in text and "1 partial" in text and "2 pending" in text


def test_a_toml_spec_loads_to_the_same_gridspec_as_the_dataclass(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('preset = "test_tiny"\nseeds = [0, 1]\nsteps = 2\neval_n = 2\neval_k = 2\neval_max_new_tokens = 8\n'
                 'reward_fn = "train_helpers:alternating_reward"\n'
                 '[[arms]]\nname = "grpo"\nmethod = "grpo"\n[[arms]]\nname = "grpo_lr"\nmethod = "grpo"\n'
                 'set = ["optim.lr=0.05"]\n')
    assert grid.load_spec(p) == tiny_spec()


def test_a_spec_with_an_unknown_key_is_refused_naming_it(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"arms": [{"name": "a"}], "stepz": 3}))
    with pytest.raises(ValueError, match="stepz"):
        grid.load_spec(p)


def test_restarting_a_grid_folder_with_a_different_spec_is_refused(tmp_path):
    grid._write_or_check_spec(tiny_spec(), tmp_path)
    grid._write_or_check_spec(tiny_spec(), tmp_path)          # the same spec: fine
    with pytest.raises(ValueError, match="steps"):
        grid._write_or_check_spec(GridSpec(**{**tiny_spec().__dict__, "steps": 3}), tmp_path)


def test_a_grid_made_before_the_work_switch_resumes_only_as_equal_rollouts(tmp_path):
    spec = tiny_spec()
    grid._write_or_check_spec(replace(spec, work="equal_rollouts"), tmp_path)
    old = json.loads((tmp_path / "grid.json").read_text())
    del old["work"]                                          # the grid.json of an older checkout
    (tmp_path / "grid.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="resume it with --work equal_rollouts"):
        grid._write_or_check_spec(spec, tmp_path)            # the default, equal_groups: refused
    grid._write_or_check_spec(replace(spec, work="equal_rollouts"), tmp_path)
    assert grid.make_cell_config(spec, spec.arms[0], 0, tmp_path / "x").work == "equal_groups"
    assert grid.make_cell_config(replace(spec, work="equal_rollouts"), spec.arms[0], 0, tmp_path / "x").work == \
        "equal_rollouts"
    with pytest.raises(ValueError, match="GridSpec.work='equal'"):
        replace(spec, work="equal")


def test_jobs_times_threads_above_the_cores_is_refused():
    grid.check_budget(2, 2, cores=4)
    with pytest.raises(ValueError, match="exceeds the 3 usable cores"):
        grid.check_budget(2, 2, cores=3)


def test_evaluation_steps_are_before_every_k_and_after():
    assert GridSpec(arms=[Arm("a")], steps=10, eval_every=4).eval_steps() == [0, 4, 8, 10]
    assert GridSpec(arms=[Arm("a")], steps=3).eval_steps() == [0, 3]


def test_the_cell_config_carries_the_seed_steps_folder_and_arm_overrides(tmp_path):
    spec = tiny_spec(set=["rollout.max_new_tokens=12"])
    cfg = grid.make_cell_config(spec, spec.arms[1], 1, tmp_path / "x")
    assert (cfg.seed, cfg.run.steps, cfg.run.out_dir) == (1, 2, str(tmp_path / "x"))
    assert (cfg.optim.lr, cfg.rollout.max_new_tokens, cfg.method) == (0.05, 12, "grpo")


def test_arm_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        GridSpec(arms=[Arm("a"), Arm("a")])


def test_an_arm_with_its_own_seeds_gets_exactly_those_cells_in_seed_major_order():
    spec = GridSpec(arms=[Arm("grpo", "grpo", seeds=[0, 1, 2]), Arm("tao")], seeds=[0, 1])
    assert [(a.name, s) for a, s in spec.cells()] == [("grpo", 0), ("tao", 0), ("grpo", 1), ("tao", 1), ("grpo", 2)]
