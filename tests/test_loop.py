"""The loop's own switches on test_tiny: equal work per update across arms (TrainConfig.work),
DAPO dynamic sampling from the Trainer, configuration changed between steps (recorded, replayed on
resume)."""

from __future__ import annotations

import pytest

from tao_lab import trainer as T
from tao_lab.cli import build_parser
from train_helpers import alternating_reward, one_thread, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# Equal work


def test_work_is_validated_and_an_old_config_without_it_reads_as_equal_rollouts():
    with pytest.raises(ValueError, match="TrainConfig.work='same'"):
        T.TrainConfig(work="same")
    d = T.config_to_dict(tiny_cfg(method="grpo"))
    assert T.config_from_dict(d).work == "equal_groups"
    del d["work"]
    assert T.config_from_dict(d).work == "equal_rollouts"


@pytest.mark.parametrize("method, work, refill", [
    ("grpo", "equal_groups", "subsample"), ("simpletir", "equal_groups", "subsample"),
    ("grpo", "equal_rollouts", "none"), ("tao", "equal_groups", "duplicate"), ("tao", "equal_rollouts", "duplicate"),
    ("dapo", "equal_groups", "dynamic")])
def test_the_step_filter_config_trims_an_arm_without_refill_to_b_groups_under_equal_groups(method, work, refill):
    cfg = tiny_cfg(f"work={work}", "data.prompts_per_step=3", method=method)
    f1, f2 = T.step_filter_config(cfg, 1), T.step_filter_config(cfg, 2)
    assert (f1.refill, f1.target_groups) == (refill, 3)
    assert f1.seed != f2.seed and f1.seed == T.step_filter_config(cfg, 1).seed   # per step, reproducible


@pytest.mark.parametrize("work, groups", [("equal_groups", 2), ("equal_rollouts", 4)])
def test_grpo_with_oversampling_trains_on_b_groups_only_under_equal_groups(tmp_path, work, groups):
    cfg = tiny_cfg("data.oversample=2", f"work={work}", method="grpo")
    with T.Trainer(cfg, tmp_path, reward_fn=alternating_reward) as tr:
        log = tr.step()
    assert len({t.group_id for t in log.trajs}) == 4                  # ceil(2 x 2) groups rolled out
    assert len(set(log.filter_result.group_ids)) == groups            # groups in the update
    assert log.metrics["refill/subsampled_groups"] == 4 - groups


def test_the_cli_takes_work_on_train_grid_and_compare():
    p = build_parser()
    assert p.parse_args(["train", "--work", "equal_rollouts"]).work == "equal_rollouts"
    assert p.parse_args(["grid", "spec.toml", "--work", "equal_groups"]).work == "equal_groups"
    assert p.parse_args(["compare", "runs/x", "--work", "equal_groups"]).work == "equal_groups"
    with pytest.raises(SystemExit):
        p.parse_args(["train", "--work", "equal"])
