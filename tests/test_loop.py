"""The loop's own switches on test_tiny: equal work per update across arms (TrainConfig.work),
DAPO dynamic sampling from the Trainer, configuration changed between steps (recorded, replayed on
resume)."""

from __future__ import annotations

import zlib
from dataclasses import replace

import pytest

from tao_lab import config_changes
from tao_lab import train_config as C
from tao_lab import trainer as T
from tao_lab.records import RunStore
from tao_lab.cli import build_parser
from train_helpers import alternating_reward, one_thread, pool, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# Equal work


def test_work_is_validated_and_an_old_config_without_it_reads_as_equal_rollouts():
    with pytest.raises(ValueError, match="TrainConfig.work='same'"):
        C.TrainConfig(work="same")
    d = C.config_to_dict(tiny_cfg(method="grpo"))
    assert C.config_from_dict(d).work == "equal_groups"
    del d["work"]
    assert C.config_from_dict(d).work == "equal_rollouts"


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
def test_grpo_with_oversampling_trains_on_b_groups_only_under_equal_groups(tmp_path, work, groups, pool):
    cfg = tiny_cfg("data.oversample=2", f"work={work}", method="grpo")
    with T.Trainer(cfg, tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
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


# ----------------------------------------------------------------------------------------------
# DAPO dynamic sampling from the Trainer


def half_degenerate(trajs, step):
    """Alternating rewards for tasks whose id hashes odd; all-zero (degenerate) groups otherwise."""
    r = [float(t.sample_idx % 2) if zlib.crc32(t.task_id.encode()) % 2 else 0.0 for t in trajs]
    for t, x in zip(trajs, r):
        t.reward = x
    return r, {"reward/mean": sum(r) / len(r)}


def all_zero(trajs, step):
    for t in trajs:
        t.reward = 0.0
    return [0.0] * len(trajs), {"reward/mean": 0.0}


@pytest.fixture(scope="module")
def dapo_step(tmp_path_factory, pool):
    """Step 1 of the dapo arm and of the same config with ordinary refill: (dapo log, plain log)."""
    out = []
    for refill in ("dynamic", "duplicate"):
        cfg = tiny_cfg("filter.rules=filter_b", f"filter.refill={refill}", "data.prompts_per_step=3", method="dapo")
        with T.Trainer(cfg, tmp_path_factory.mktemp(refill), pool=pool, reward_fn=half_degenerate) as tr:
            out.append(tr.step())
    return out


def test_dynamic_sampling_rolls_out_fresh_prompts_until_b_informative_groups_survive(dapo_step):
    log, plain = dapo_step
    m, pool, fres = log.metrics, log.trajs, log.filter_result
    groups = sorted({t.group_id for t in pool})
    assert m["dynamic/rounds"] >= 2 and m["dynamic/short_by"] == 0
    assert m["dynamic/sampled_groups"] == len(groups) == groups[-1] + 1      # fresh ids, round after round
    assert len(set(fres.group_ids)) == 3 and not log.skipped                 # B groups in the update
    kept = {g: [pool[i].reward for i in fres.index if pool[i].group_id == g] for g in set(fres.group_ids)}
    assert all(len(set(r)) > 1 for r in kept.values())                       # none of them degenerate
    assert m["rollout/n_episodes"] == len(pool)                              # counters summed over rounds
    assert m["reward/mean"] == pytest.approx(sum(t.reward for t in pool) / len(pool))   # means weighted
    assert m["data/cursor"] == len(groups)                                   # the source read every round


def test_round_zero_of_dynamic_sampling_is_exactly_the_batch_without_it(dapo_step):
    log, plain = dapo_step
    first = [t for t in log.trajs if t.group_id < 3]
    assert [(t.task_id, t.token_ids) for t in first] == [(t.task_id, t.token_ids) for t in plain.trajs]
    later = [t for t in log.trajs if t.group_id >= 3]
    assert later and {t.task_id for t in later}.isdisjoint({t.task_id for t in first})


def test_dynamic_sampling_that_runs_out_of_rounds_says_how_many_groups_are_missing(tmp_path, pool):
    cfg = tiny_cfg("filter.rules=filter_b", "filter.max_rounds=2", method="dapo")
    with T.Trainer(cfg, tmp_path, pool=pool, reward_fn=all_zero) as tr:
        log = tr.step()
    m = log.metrics
    assert (m["dynamic/rounds"], m["dynamic/sampled_groups"], m["dynamic/short_by"]) == (2, 4, 2)
    assert log.skipped and tr.state.source["cursor"] == 4


# ----------------------------------------------------------------------------------------------
# Configuration changed between steps


def crash_at_3(trajs, step):
    if step == 3:
        raise RuntimeError("the machine went away")
    return alternating_reward(trajs, step)


def test_config_changed_between_steps_is_recorded_reaches_the_optimizer_and_survives_a_resume(tmp_path, pool):
    cfg = tiny_cfg("run.steps=3", "run.save_every=1", "optim.lr=0.01", "shaping.coef=0.01")
    with T.Trainer(cfg, tmp_path, pool=pool, reward_fn=crash_at_3) as tr:
        tr.step()
        tr.cfg = replace(tr.cfg, shaping=replace(tr.cfg.shaping, coef=0.05), optim=replace(tr.cfg.optim, lr=0.005))
        log2 = tr.step()
        assert log2.metrics["lr"] == 0.005 and log2.metrics["config/changes"] == 2
        assert [g["lr"] for g in tr.optimizer.param_groups] == [0.005]
        tr.cfg.optim.lr = 0.002                      # in place, as a widget may; after checkpoint 2
        with pytest.raises(RuntimeError, match="went away"):
            tr.step()                                # step 3 recorded the change, then crashed
    lines = config_changes.read(tmp_path)
    assert [(c["step"], c["field"], c["old"], c["new"]) for c in lines] == [
        (2, "shaping.coef", 0.01, 0.05), (2, "optim.lr", 0.01, 0.005), (3, "optim.lr", 0.005, 0.002)]
    with T.Trainer.resume(tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 2
        assert (tr.cfg.shaping.coef, tr.cfg.optim.lr) == (0.05, 0.002)     # replayed up to step 3
        assert [g["lr"] for g in tr.optimizer.param_groups] == [0.002]
        log3 = tr.step()
    assert log3.metrics["lr"] == 0.002 and log3.metrics["config/changes"] == 0
    assert config_changes.read(tmp_path) == lines                          # nothing recorded twice
    assert list(RunStore(tmp_path).metrics()["lr"]) == [0.01, 0.005, 0.002]


def test_a_bad_or_frozen_change_between_steps_is_refused_naming_the_field(tmp_path, pool):
    with T.Trainer(tiny_cfg("run.steps=3"), tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        tr.cfg.shaping.coef = -1.0
        with pytest.raises(ValueError, match="coef"):
            tr.step()
        tr.cfg.shaping.coef = 0.01
        tr.cfg.model.lora_r = 8
        with pytest.raises(ValueError, match=r"model.lora_r.*new run"):
            tr.step()
    assert not config_changes.read(tmp_path)


def test_a_change_made_after_the_last_step_is_not_carried_over_and_the_resume_says_so(tmp_path, pool):
    cfg = tiny_cfg("run.steps=3", "run.save_every=5")
    with T.Trainer(cfg, tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        tr.step()
        tr.cfg.shaping.coef = 0.2                    # never ran: no step started after it
        tr.save_checkpoint()                         # as an interrupt would (its config holds 0.2)
    with pytest.warns(UserWarning, match=r"\['shaping.coef'\] were changed after the last step"):
        tr = T.Trainer.resume(tmp_path, pool=pool, reward_fn=alternating_reward)
    assert tr.cfg.shaping.coef == 0.01 and not config_changes.read(tmp_path)
    tr.close()


def test_a_config_edited_in_place_through_the_callers_reference_still_counts(tmp_path, pool):
    cfg = tiny_cfg("run.steps=3")
    with T.Trainer(cfg, tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        tr.step()
        cfg.optim.lr = 0.003                          # the notebook's own `cfg`, not tr.cfg
        assert tr.step().metrics["lr"] == 0.003
    assert [(c["step"], c["field"]) for c in config_changes.read(tmp_path)] == [(2, "optim.lr")]


def test_an_lr_change_under_the_exponential_schedule_keeps_the_decay_so_far():
    import torch

    from tao_lab.optim import OptimConfig, make_optimizer
    opt, sched = make_optimizer([torch.nn.Parameter(torch.zeros(2))],
                                OptimConfig(lr=0.1, schedule="exponential", gamma=0.5, optimizer="adamw"))
    for _ in range(2):
        opt.step()
        sched.step()                                  # lr 0.1 -> 0.05 -> 0.025
    config_changes.apply_optim_changes([{"field": "optim.lr", "old": 0.1, "new": 0.2},
                                        {"field": "optim.gamma", "old": 0.5, "new": 0.25}], opt, sched)
    assert sched.get_last_lr() == pytest.approx([0.05]) and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.0125])   # 0.2 · 0.5² · 0.25: the new γ from now on


def test_a_run_lengthened_on_resume_keeps_its_new_length_on_the_next_resume(tmp_path, pool):
    with T.Trainer(tiny_cfg("run.steps=1"), tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        tr.train()
    with T.Trainer.resume(tmp_path, steps=3, pool=pool, reward_fn=alternating_reward) as tr:
        tr.step()                                     # step 2 of 3, then "interrupted"
        tr.save_checkpoint()
    with T.Trainer.resume(tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        assert tr.cfg.run.steps == 3
        tr.train()
    assert list(RunStore(tmp_path).metrics()["step"]) == [1, 2, 3]


def test_a_changes_file_cut_short_by_a_crash_reads_up_to_its_last_whole_line(tmp_path):
    (tmp_path / config_changes.FILE).write_text('{"step": 2, "field": "optim.lr", "old": 0.01, "new": 0.005}\n'
                                                '{"step": 3, "field": "shaping.co')
    assert config_changes.read(tmp_path) == [{"step": 2, "field": "optim.lr", "old": 0.01, "new": 0.005}]
    assert config_changes.replay({"optim": {"lr": 0.01}}, config_changes.read(tmp_path), 2) == {"optim": {"lr": 0.005}}
    assert config_changes.replay({"optim": {"lr": 0.01}}, config_changes.read(tmp_path), 1) == {"optim": {"lr": 0.01}}


def test_apply_config_records_a_change_at_once_for_the_next_step_and_a_resume_keeps_it(tmp_path, pool):
    with T.Trainer(tiny_cfg("run.steps=3", "run.save_every=5"), tmp_path, pool=pool,
                   reward_fn=alternating_reward) as tr:
        tr.step()
        old = tr.cfg
        with pytest.raises(ValueError, match=r"model.lora_r.*new run"):
            tr.apply_config(replace(tr.cfg, model=replace(tr.cfg.model, lora_r=8)))
        assert tr.cfg is old and not config_changes.read(tmp_path)
        got = tr.apply_config(replace(tr.cfg, shaping=replace(tr.cfg.shaping, coef=0.2)))
        assert got == [{"step": 2, "field": "shaping.coef", "old": 0.01, "new": 0.2}]
        assert config_changes.read(tmp_path) == got               # written before step 2 runs
        tr.save_checkpoint()                                      # as an interrupt would, before step 2
    with T.Trainer.resume(tmp_path, pool=pool, reward_fn=alternating_reward) as tr:
        assert tr.cfg.shaping.coef == 0.2                         # applied for step 2: carried over
        assert tr.step().metrics["config/changes"] == 0           # recorded once, by the first run
    assert config_changes.read(tmp_path) == got
