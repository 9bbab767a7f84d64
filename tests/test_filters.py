"""Filters of TAO-RL stage 1: each rule, both Filter A readings, refill, dynamic sampling."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tao_lab import filters
from tao_lab.filters import FilterConfig, apply
from tao_lab.methods.dapo import dynamic_sampling, need_more
from tao_lab.records import RunStore, ToolCall, Trajectory


def call(turn: int, valid: bool) -> ToolCall:
    return ToolCall(turn=turn, protocol="fenced", code="print(1)", status="ok" if valid else "error",
                    stdout="1\n" if valid else "", stderr="" if valid else "NameError: x",
                    duration_s=0.01, tier="rlimits", observation="Code execution result: 1",
                    valid=valid)


def traj(gid: int, reward: float, *, k: int = 0, truncated: bool = False, void: bool = False,
         calls: tuple[bool, ...] = ()) -> Trajectory:
    n = 4
    return Trajectory(task_id=f"t{gid}", group_id=gid, prompt_ids=[1, 2], token_ids=list(range(n)),
                      mask=[1] * n, logprobs=[-1.0] * n, entropies=[1.0] * n, turn_idx=[0] * n,
                      post_tool=[0] * n, tool_calls=[call(0, v) for v in calls], truncated=truncated,
                      void_turn=void, reward=reward, sample_idx=k)


def group(gid: int, rewards, **kw_per_member) -> list[Trajectory]:
    return [traj(gid, r, k=k, **{key: v[k] for key, v in kw_per_member.items()}) for k, r in enumerate(rewards)]


def test_default_rule_order_is_the_authors_code_order():
    assert FilterConfig().rules == ("overlong", "void_turn", "filter_b", "filter_a")


def test_unknown_rule_name_raises_an_error_naming_the_known_rules():
    with pytest.raises(ValueError, match="filter_b"):
        FilterConfig(rules=("filter_c",))


def test_filter_b_drops_all_correct_and_all_wrong_groups_with_separate_reasons():
    trajs = group(0, [1, 1, 1, 1]) + group(1, [0, 0, 0, 0]) + group(2, [1, 0, 0, 0])
    res = apply(trajs, FilterConfig(rules=("filter_b",)))
    assert res.counts["filter_b/all_correct"] == 1 and res.counts["filter_b/all_wrong"] == 1
    assert set(res.group_ids) == {2} and res.index == [8, 9, 10, 11]


def test_never_called_trajectory_is_not_flagged_by_filter_a():
    d = filters.filter_a_traj(traj(0, 0.0, calls=()), FilterConfig())
    assert d.keep and d.reason == "ok"


def test_filter_a_flags_only_when_every_call_failed():
    cfg = FilterConfig()
    assert filters.filter_a_traj(traj(0, 0.0, calls=(False, True)), cfg).reason == "ok"
    assert filters.filter_a_traj(traj(0, 0.0, calls=(False, False)), cfg).reason == "dropped"


def test_filter_a_mask_mode_keeps_the_trajectory_in_its_group_with_weight_zero():
    trajs = group(0, [1, 0, 0, 0], calls=[(), (False,), (), ()])
    res = apply(trajs, FilterConfig(rules=("filter_a",), filter_a_mode="mask"))
    assert res.index == [0, 1, 2, 3]          # still counts in the group mean/std
    assert res.weights == [1.0, 0.0, 1.0, 1.0]
    assert res.counts["filter_a/masked"] == 1


def test_filter_a_mask_strength_scales_the_weight_by_one_minus_strength():
    trajs = group(0, [1, 0], calls=[(), (False,)])
    res = apply(trajs, FilterConfig(rules=("filter_a",), filter_a_mode="mask", filter_a_strength=0.25))
    assert res.weights == [1.0, 0.75]


def test_filter_a_drop_mode_removes_the_trajectory_before_the_advantage():
    trajs = group(0, [1, 0, 0, 0], calls=[(), (False,), (), ()])
    res = apply(trajs, FilterConfig(rules=("filter_a",)))
    assert res.index == [0, 2, 3] and res.counts["filter_a/dropped"] == 1


def test_filter_a_drop_mode_drops_a_group_left_degenerate():
    # The only wrong answer failed all its tools: after dropping it the group is all-correct.
    trajs = group(0, [1, 1, 1, 0], calls=[(), (), (), (False,)])
    res = apply(trajs, FilterConfig(rules=("filter_b", "filter_a")))
    assert res.index == [] and res.counts["filter_a/group_degenerate"] == 1
    assert res.skip and "filter_a/group_degenerate" in res.skip_reason


def test_filter_a_drop_mode_drops_a_group_left_with_one_member():
    trajs = group(0, [1, 0], calls=[(), (False,)])
    res = apply(trajs, FilterConfig(rules=("filter_a",)))
    assert res.index == [] and res.counts["filter_a/group_too_small"] == 1


def test_void_turn_trajectory_keeps_its_place_in_the_group_with_weight_zero():
    trajs = group(0, [1, 0, 0, 0], void=[False, True, False, False])
    res = apply(trajs, FilterConfig(rules=("void_turn",)))
    assert res.index == [0, 1, 2, 3] and res.weights == [1.0, 0.0, 1.0, 1.0]


def test_overlong_group_with_too_few_complete_members_is_dropped():
    trajs = group(0, [1, 0, 0, 0], truncated=[False, True, False, False])
    res = apply(trajs, FilterConfig(rules=("overlong",), min_n=4))
    assert res.index == [] and res.counts["overlong/too_few_not_overlong"] == 1


def test_overlong_trajectory_in_a_large_enough_group_gets_weight_zero():
    trajs = group(0, [1, 0, 0, 0, 1], truncated=[False, True, False, False, False])
    res = apply(trajs, FilterConfig(rules=("overlong",), min_n=4))
    assert res.weights == [1.0, 0.0, 1.0, 1.0, 1.0] and res.counts["overlong/overlong"] == 1


def test_group_smaller_than_min_n_without_overlong_members_is_kept():
    res = apply(group(0, [1, 0]), FilterConfig(rules=("overlong",), min_n=4))
    assert res.index == [0, 1]


def test_every_input_trajectory_has_a_decision_row_for_the_first_rule():
    trajs = group(0, [1, 0]) + group(1, [1, 1])
    res = apply(trajs)
    first = res.decisions[res.decisions.rule == "overlong"]
    assert sorted(first.traj) == [0, 1, 2, 3]


def test_dropped_trajectories_carry_the_reason_in_the_decisions_frame():
    trajs = group(0, [1, 0]) + group(1, [1, 1])
    res = apply(trajs)
    rows = res.decisions[(res.decisions.rule == "filter_b") & ~res.decisions.kept]
    assert sorted(rows.traj) == [2, 3] and set(rows.reason) == {"all_correct"}


def test_funnel_lists_rows_in_and_out_per_rule_in_order():
    trajs = group(0, [1, 0, 0, 0]) + group(1, [1, 1, 1, 1])
    f = apply(trajs).funnel
    assert list(f.rule) == ["input", "overlong", "void_turn", "filter_b", "filter_a"]
    b = f[f.rule == "filter_b"].iloc[0]
    assert (b.trajs_in, b.trajs_out, b.groups_in, b.groups_out) == (8, 4, 2, 1)


def test_counts_have_the_same_keys_whatever_was_dropped():
    a = apply(group(0, [1, 0]))
    b = apply(group(0, [1, 1]))
    assert a.counts.keys() == b.counts.keys()


def test_refill_duplicates_survivors_with_fresh_group_ids_up_to_target():
    trajs = group(0, [1, 0]) + group(1, [1, 1]) + group(2, [0, 1])
    res = apply(trajs, FilterConfig(target_groups=4))
    assert res.n_groups == 4 and res.counts["refill/duplicated_groups"] == 2
    assert {0, 2} <= set(res.group_ids) and len(set(res.group_ids)) == 4
    assert [d for d in res.duplicate_of if d is not None] and set(res.duplicate_of) - {None} <= {0, 2}


def test_refill_keeps_every_surviving_group_at_least_once():
    trajs = [t for g in range(3) for t in group(g, [1, 0])]
    for seed in range(10):
        res = apply(trajs, FilterConfig(target_groups=4, seed=seed))
        assert {0, 1, 2} <= set(res.group_ids)


def test_refill_subsamples_to_target_and_records_the_dropped_groups():
    trajs = [t for g in range(5) for t in group(g, [1, 0])]
    res = apply(trajs, FilterConfig(target_groups=3))
    assert res.n_groups == 3 and res.counts["refill/subsampled_groups"] == 2
    assert (res.groups.reason == "subsampled").sum() == 2


def test_select_gives_duplicated_rows_their_fresh_group_id():
    trajs = group(0, [1, 0])
    res = apply(trajs, FilterConfig(target_groups=2))
    assert [t.group_id for t in res.select(trajs)] == res.group_ids


def test_no_surviving_group_skips_the_update_and_says_why():
    res = apply(group(0, [0, 0, 0, 0]), FilterConfig(target_groups=2))
    assert res.skip and "all_wrong" in res.skip_reason and res.counts["filter/skipped"] == 1


def test_missing_reward_raises_an_error_that_says_to_score_first():
    t = traj(0, 0.0)
    t.reward = None
    with pytest.raises(ValueError, match="rewards.score"):
        apply([t, traj(0, 1.0)])


def test_need_more_counts_the_missing_informative_groups():
    res = apply(group(0, [1, 0]) + group(1, [0, 0]))
    assert need_more(res, 3) == 2


def test_dynamic_sampling_collects_target_groups_from_several_rounds():
    supply = iter(range(100))

    def sample(k: int) -> list[Trajectory]:
        out = []
        for _ in range(k):
            g = next(supply)
            out += group(g, [1, 0] if g % 2 else [0, 0])  # every other group is informative
        return out

    pool, res = dynamic_sampling(sample, FilterConfig(target_groups=3))
    assert res.n_groups == 3 and res.counts["dynamic/short_by"] == 0
    assert res.counts["dynamic/rounds"] >= 2 and res.counts["refill/duplicated_groups"] == 0


def test_dynamic_sampling_reports_how_many_groups_it_is_short_when_rounds_run_out():
    supply = iter(range(100))
    res = dynamic_sampling(lambda k: group(next(supply), [0, 0]), FilterConfig(target_groups=2), max_rounds=3)[1]
    assert res.counts["dynamic/short_by"] == 2 and res.skip


def test_filters_recompute_identically_from_the_run_store(tmp_path):
    trajs = (group(0, [1, 0, 0, 0], calls=[(True,), (False,), (), ()])
             + group(1, [1, 1, 1, 1]) + group(2, [0, 1, 0, 1], void=[False, True, False, False]))
    store = RunStore(tmp_path / "run")
    store.write_step(1, trajs)
    cfg = FilterConfig(filter_a_mode="mask")
    a, b = apply(trajs, cfg), apply(store.read_step(1), cfg)
    assert (a.index, a.group_ids, a.weights, a.counts) == (b.index, b.group_ids, b.weights, b.counts)


def test_rules_can_be_reordered_without_code_changes():
    trajs = group(0, [1, 0, 0, 0], calls=[(), (False,), (), ()])
    res = apply(trajs, replace(FilterConfig(), rules=("filter_a", "filter_b")))
    assert list(res.funnel.rule) == ["input", "filter_a", "filter_b"]


def test_mask_mode_trajectory_counts_in_the_group_mean_but_gets_no_loss():
    # The contract with advantages/loss: rows -> group advantages; weights -> token mask afterwards.
    import torch

    from tao_lab.advantages import group_advantages
    trajs = group(0, [1, 1, 0, 0], calls=[(), (False,), (), ()])
    masked = apply(trajs, FilterConfig(rules=("filter_a",), filter_a_mode="mask"))
    dropped = apply(trajs, FilterConfig(rules=("filter_a",), filter_a_mode="drop"))
    adv_m, _ = group_advantages(torch.tensor(masked.rewards(trajs)), torch.tensor(masked.group_ids))
    adv_d, _ = group_advantages(torch.tensor(dropped.rewards(trajs)), torch.tensor(dropped.group_ids))
    assert adv_m[0].item() == pytest.approx(0.866, abs=1e-3)   # mean 0.5 over all four members
    assert adv_d[0].item() == pytest.approx(1.155, abs=1e-3)   # mean 1/3 over the three kept
    token_mask = torch.tensor(masked.weights)[:, None] * torch.ones(4, 3)
    assert token_mask[1].sum() == 0


def test_a_trajectory_dropped_by_filter_a_keeps_its_own_reason_when_its_group_goes_too():
    trajs = group(0, [1, 0], calls=[(), (False,)])
    d = apply(trajs, FilterConfig(rules=("filter_a",))).decisions.set_index("traj").reason
    assert (d[0], d[1]) == ("group_too_small", "dropped")


# ----------------------------------------------------------------------------------------------
# The authors'-code switches and the single-source predicates (issue 16)


def test_an_overlong_trajectory_keeps_its_own_reward_by_default():
    trajs = group(0, [1, 1, 0, 0, 1], truncated=[True, False, False, False, False])
    res = apply(trajs, FilterConfig(rules=("overlong", "filter_b"), min_n=1))
    assert res.row_rewards == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_remove_clip_switch_enters_an_overlong_trajectory_with_reward_zero_in_filter_b_and_the_baseline():
    import torch

    from tao_lab.update import compute_advantages
    # all correct, one overlong: with its own reward the group is degenerate; with 0 it is not
    trajs = group(0, [1, 1, 1, 1, 1], truncated=[True, False, False, False, False])
    own = apply(trajs, FilterConfig(rules=("overlong", "filter_b"), min_n=1))
    zero = apply(trajs, FilterConfig(rules=("overlong", "filter_b"), min_n=1, overlong_reward="zero"))
    assert own.skip and own.counts["filter_b/all_correct"] == 1
    assert not zero.skip and zero.row_rewards == [0.0, 1.0, 1.0, 1.0, 1.0]
    batch, adv_all, _ = compute_advantages(trajs, zero)
    assert adv_all[0] < 0 and torch.allclose(batch.adv, adv_all[1:])   # the overlong row: baseline only


def test_filter_a_soft_strength_scales_only_the_loss_weight_by_default():
    from tao_lab.update import compute_advantages
    trajs = group(0, [1, 0, 1, 0], calls=[(False,), (), (), ()])
    cfg = FilterConfig(rules=("filter_a",), filter_a_mode="mask", filter_a_strength=0.75)
    base = apply(trajs, cfg)
    code = apply(trajs, replace(cfg, filter_a_scale_adv=True))
    assert base.weights[0] == code.weights[0] == 0.25
    a_base = compute_advantages(trajs, base)[1]
    a_code = compute_advantages(trajs, code)[1]
    assert a_code[0].item() == pytest.approx(0.25 * a_base[0].item())   # code: token weight (1-s)^2
    assert a_code[1:].tolist() == pytest.approx(a_base[1:].tolist())


@pytest.mark.parametrize("rewards, flat", [([1, 1, 1], True), ([0, 0], True), ([1], True), ([1, 0], False),
                                           ([0.5, 0.5 + 1e-4], True), ([0.5, 0.51], False)])
def test_is_degenerate_is_filter_bs_unbiased_std_test(rewards, flat):
    assert filters.is_degenerate(rewards) is flat


def test_all_tools_failed_flags_only_trajectories_that_called_a_tool():
    assert filters.all_tools_failed(traj(0, 1, calls=(False, False)))
    assert not filters.all_tools_failed(traj(0, 1, calls=(False, True)))
    assert not filters.all_tools_failed(traj(0, 1))
