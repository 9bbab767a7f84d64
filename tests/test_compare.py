"""The comparison on synthetic grid folders written by the real run store: known means, seeded
bootstrap intervals, the sentences, an offline HTML page and a tidy CSV."""

from __future__ import annotations

import random
import re

import numpy as np
import pandas as pd
import pytest

from runstore_fixture import make_trajectory
from tao_lab import compare, grid
from tao_lab.evaluate import save_eval
from tao_lab.grid import Arm, GridSpec
from tao_lab.records import RunStore

K = 2
# correct samples (of K=2) per seed (rows) and task (columns) after training
BASE = [[1, 1, 0, 0], [1, 0, 0, 0], [2, 1, 0, 0]]
BETTER = [[min(c + 1, 2) for c in row] for row in BASE]


def _eval_trajs(counts_for_seed: list[int]):
    rng = random.Random(0)
    out = []
    for t, c in enumerate(counts_for_seed):
        for j in range(K):
            tr = make_trajectory(t, j, float(j < c), rng)
            tr.task_id = f"task-{t}"
            out.append(tr)
    return out


def _write_grid(root, arms: dict[str, list[list[int]]]):
    spec = GridSpec(preset="test_tiny", arms=[Arm(a, "grpo") for a in arms], seeds=[0, 1, 2], steps=2, eval_k=K)
    grid._write_or_check_spec(spec, root)
    for arm, counts in arms.items():
        for s in spec.seeds:
            d = grid.cell_dir(root, arm, s)
            store = RunStore(d)
            store.write_config({"train": {"method": "grpo", "seed": s, "data": {"prompts_per_step": 2, "oversample": 2.0},
                                          "rollout": {"group_size": 4}, "filter": {"refill": "none"}}})
            for step in (1, 2):
                store.append_metrics({"step": step, "reward/mean": 0.1 * step + 0.01 * s, "time/step_s": 5.0,
                                      "tool/success_rate": 0.5, "entropy/post_tool_mean": 1.2})
            save_eval(d, "step_000000", _eval_trajs(BASE[s]), {"eval/k": K, "entropy/sampled_mean": 0.9})
            save_eval(d, "step_000002", _eval_trajs(counts[s]), {"eval/k": K, "entropy/sampled_mean": 0.5 + 0.1 * s,
                                                                 "behaviour/effi": float("nan")})
    return spec


@pytest.fixture(scope="module")
def two_arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    _write_grid(root, {"base": BASE, "better": BETTER, "same": BASE})
    data = compare.load_runs([root])
    return root, data, compare.summarise(data, n_boot=1000, seed=0)


def _row(summary, kind, arm, metric):
    r = summary[(summary["kind"] == kind) & (summary["arm"] == arm) & (summary["metric"] == metric)]
    assert len(r) == 1
    return r.iloc[0]


def test_an_arms_heldout_mean_is_the_mean_over_seeds_of_its_samples(two_arms):
    _, _, summary = two_arms
    assert _row(summary, "heldout", "base", "avg@2")["mean"] == pytest.approx((2 + 1 + 3) / 8 / 3)
    assert _row(summary, "heldout", "better", "avg@2")["mean"] == pytest.approx((6 + 5 + 6) / 8 / 3)
    # unbiased pass@2 with n = k = 2: a task passes if any sample is correct
    assert _row(summary, "heldout", "base", "pass@2")["mean"] == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert _row(summary, "heldout_before", "better", "avg@2")["mean"] == pytest.approx(0.25)


def test_the_seeded_bootstrap_interval_over_seeds_is_reproducible_and_within_the_seed_range(two_arms):
    _, data, summary = two_arms
    r = _row(summary, "heldout", "base", "avg@2")
    assert 0.125 <= r["lo"] <= r["mean"] <= r["hi"] <= 0.375
    again = compare.summarise(data, n_boot=1000, seed=0)
    assert _row(again, "heldout", "base", "avg@2")[["lo", "hi"]].tolist() == [r["lo"], r["hi"]]
    # known numbers: with 3 seeds a resample of all-lowest (or all-highest) has probability 1/27 > 2.5 %,
    # so the 95 % percentile interval is exactly [min, max] of the seeds
    assert (r["mean"], r["lo"], r["hi"]) == pytest.approx((0.25, 0.125, 0.375), abs=1e-12)


def test_a_constant_sample_has_a_zero_width_interval():
    assert compare.bootstrap_mean(np.full(4, 0.3), 200, 0.95, np.random.default_rng(1)) == pytest.approx((0.3, 0.3, 0.3))


def test_the_paired_difference_is_taken_per_seed_and_task(two_arms):
    _, _, summary = two_arms
    r = _row(summary, "paired", "better", "avg@2")
    assert r["other"] == "base" and (r["n_seeds"], r["n_tasks"]) == (3, 4)
    assert r["mean"] == pytest.approx((0.5 + 0.5 + 0.375) / 3)
    assert 0 < r["lo"] <= r["mean"] <= r["hi"] <= 0.5
    same = _row(summary, "paired", "same", "avg@2")
    assert (same["mean"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)


def test_a_sentence_says_which_intervals_separate_the_arms(two_arms):
    _, _, summary = two_arms
    words = compare.sentences(summary)
    better = [w for w in words if w.startswith("better − base (work=equal_rollouts), held-out avg@2")]
    same = [w for w in words if w.startswith("same − base (work=equal_rollouts), held-out avg@2")]
    assert "excludes 0, so better scores higher than base" in better[0]
    assert "includes 0, so these runs do not separate same from base" in same[0]
    assert "3 paired seeds × 4 tasks" in better[0]


def test_telemetry_is_summarised_per_arm_over_seeds(two_arms):
    _, _, summary = two_arms
    r = _row(summary, "telemetry", "base", "reward/mean")
    assert r["mean"] == pytest.approx(0.15 + 0.01)      # mean over steps (0.1s, 0.2s) then over seeds
    assert _row(summary, "telemetry", "base", "time/step_s")["mean"] == pytest.approx(5.0)


def test_held_out_metrics_are_summarised_before_and_after_over_seeds_and_nan_is_skipped(two_arms):
    _, _, summary = two_arms
    assert _row(summary, "heldout_metric_before", "base", "entropy/sampled_mean")["mean"] == pytest.approx(0.9)
    after = _row(summary, "heldout_metric", "base", "entropy/sampled_mean")
    assert after["mean"] == pytest.approx(0.6) and after["n_seeds"] == 3 and after["step"] == 2
    assert summary[summary["metric"] == "behaviour/effi"].empty          # NaN: no value, not a zero


def test_a_run_without_an_evaluation_after_training_is_left_out_of_the_after_numbers(two_arms, tmp_path):
    import shutil
    root, _, _ = two_arms
    copy = tmp_path / "grid"
    shutil.copytree(root, copy)
    shutil.rmtree(grid.cell_dir(copy, "better", 2) / "evals" / "step_000002")   # still training
    summary = compare.summarise(compare.load_runs([copy]), n_boot=200, seed=0)
    assert _row(summary, "heldout_before", "better", "avg@2")["n_seeds"] == 3
    assert _row(summary, "heldout", "better", "avg@2")["n_seeds"] == 2          # not its "before" as an "after"
    assert _row(summary, "paired", "better", "avg@2")["n_seeds"] == 2
    assert _row(summary, "heldout_metric", "better", "entropy/sampled_mean")["n_seeds"] == 2


def test_the_page_is_self_contained_and_the_csv_is_tidy(two_arms, tmp_path):
    root, _, _ = two_arms
    paths = compare.write_comparison([root], tmp_path / "out", n_boot=200)
    page = paths["html"].read_text()
    assert not re.search(r"<script[^>]+src=", page), "the page must not load scripts from anywhere"
    assert not re.search(r"<link[^>]+href=[\"']https?:", page)
    assert "vegaEmbed(" in page and "excludes 0" in page
    # the stored configs predate TrainConfig.work: they ran equal_rollouts, and grpo has no refill
    assert "work=equal_rollouts (up to 4 groups per update, 16 rollouts per step)" in page
    assert "work per step, base: work=equal_rollouts" in paths["sentences"]
    assert "better − base (work=equal_rollouts), held-out" in paths["sentences"]
    md = paths["md"].read_text().splitlines()
    assert md[0].startswith("| arm | seeds | avg@2 before -> after [CI]") and md[2].startswith("| base | 3 |")
    assert "(baseline)" in md[2] and "| better | 3 |" in md[3] and any(x.startswith("- better − base") for x in md)
    csv = pd.read_csv(paths["csv"])
    assert set(csv["kind"]) == {"heldout", "heldout_before", "paired", "telemetry", "heldout_metric", "heldout_metric_before"}
    assert "Held-out behaviour and entropy after training" in page
    assert list(csv.columns) == ["kind", "arm", "other", "metric", "step", "n_seeds", "n_tasks", "mean", "lo", "hi",
                                 "work"]
    assert set(csv["work"]) == {"equal_rollouts"}


def test_the_work_mode_is_read_from_the_config_and_compare_can_keep_one_mode(two_arms, tmp_path):
    root, _, _ = two_arms
    train = {"method": "grpo", "work": "equal_groups", "data": {"prompts_per_step": 2, "oversample": 2.0},
             "rollout": {"group_size": 4}, "filter": {"refill": "none"}}
    assert compare.work_mode(train) == ("equal_groups", "B=2 groups per update, 16 rollouts per step")
    assert compare.work_mode({**train, "work": "equal_rollouts"})[1].startswith("up to 4 groups")
    assert compare.work_mode({}) == ("?", "budget ?")
    arpo = {**train, "method": "arpo", "rollout": {**train["rollout"], "group_size": 2}, "arpo": {"total_rollouts": 4}}
    assert compare.work_mode(arpo)[1].endswith("16 rollouts per step")     # G = total_rollouts rows, not M
    assert set(compare.load_runs([root], work="equal_rollouts").runs["work"]) == {"equal_rollouts"}
    with pytest.raises(ValueError, match=r"work='equal_groups'.*made with work=\['equal_rollouts'\]"):
        compare.write_comparison([root], tmp_path, n_boot=10, work="equal_groups")


def test_a_comparison_of_arms_under_different_modes_says_so_beside_the_numbers(tmp_path):
    root = tmp_path / "grid"
    _write_grid(root, {"base": BASE, "better": BETTER})
    d = grid.cell_dir(root, "better", 0)
    cfg = RunStore(d).read_config()
    RunStore(d).write_config({"train": {**cfg["train"], "work": "equal_groups"}})
    summary = compare.summarise(compare.load_runs([root]), n_boot=10)
    assert set(summary.loc[summary["arm"] == "better", "work"]) == {"equal_groups+equal_rollouts"}
    assert set(summary.loc[summary["arm"] == "base", "work"]) == {"equal_rollouts"}


def test_a_run_folder_is_read_as_its_method_and_seed(two_arms):
    root, _, _ = two_arms
    found = compare.find_runs([grid.cell_dir(root, "better", 1)])
    assert [(a, s) for a, s, _ in found] == [("grpo", 1)]


def test_a_folder_that_is_neither_grid_nor_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a grid folder"):
        compare.find_runs([tmp_path])
