"""Model-free recompute from stored rollouts, and the small frames the charts are drawn from."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from runstore_fixture import make_run_store, make_trajectories
from tao_lab import explore
from tao_lab.advantages import ShapingConfig, group_advantages
from tao_lab.filters import FilterConfig


@pytest.fixture(scope="module")
def trajs():
    return make_trajectories()


def test_recompute_on_a_run_store_read_back_equals_recompute_on_the_originals(tmp_path, trajs):
    stored = make_run_store(tmp_path / "run").read_step(0)
    a, b = explore.recompute(trajs), explore.recompute(stored)
    pd.testing.assert_frame_equal(a.shaped, b.shaped)
    pd.testing.assert_frame_equal(a.trajectories, b.trajectories)


def test_dropped_trajectories_have_no_advantage_and_say_which_rule_dropped_them(trajs):
    t = explore.recompute(trajs).trajectories
    assert t.loc[t["group_id"] == 1, "outcome"].eq("dropped: filter_b/all_correct").all()
    assert t.loc[t["outcome"].str.startswith("dropped"), "advantage"].isna().all()
    assert t.loc[t["outcome"] == "kept", "advantage"].notna().all()


def test_kept_advantages_equal_group_advantages_of_the_surviving_members(trajs):
    t = explore.recompute(trajs).trajectories
    g0 = t[(t["group_id"] == 0) & t["advantage"].notna()]  # member 3 dropped by Filter A (drop mode)
    expect, _ = group_advantages(torch.tensor(g0["reward"].tolist()), torch.zeros(len(g0), dtype=torch.long))
    assert g0["advantage"].tolist() == pytest.approx(expect.tolist())


def test_mask_mode_keeps_the_failed_member_in_the_group_statistics_with_weight_zero(trajs):
    t = explore.recompute(trajs, FilterConfig(filter_a_mode="mask")).trajectories
    m3 = t[(t["group_id"] == 0) & (t["sample_idx"] == 3)].iloc[0]
    assert m3["weight"] == 0 and not math.isnan(m3["advantage"]) and m3["outcome"] == "weight 0: filter_a/masked"
    g0 = t[t["group_id"] == 0]
    expect, _ = group_advantages(torch.tensor(g0["reward"].tolist()), torch.zeros(4, dtype=torch.long))
    assert g0["advantage"].tolist() == pytest.approx(expect.tolist())


def test_post_tool_gate_leaves_the_advantage_of_ungated_tokens_unchanged(trajs):
    s = explore.recompute(trajs, shaping_cfg=ShapingConfig(coef=0.5)).shaped
    other = s[(s["gate"] == 0) & s["ratio"].notna()]
    assert len(other) and np.allclose(other["ratio"], 1.0)
    assert not np.allclose(s.loc[s["gate"] == 1, "ratio"].dropna(), 1.0)


def test_zero_weight_tokens_are_outside_the_gate_and_have_no_ratio(trajs):
    s = explore.recompute(trajs, FilterConfig(filter_a_mode="mask"), ShapingConfig(gate="all_tokens")).shaped
    zero = s[s["loss_mask"] == 0]
    assert len(zero) and (zero["gate"] == 0).all() and zero["ratio"].isna().all()


def test_micro_batch_z_scope_makes_shaped_advantages_depend_on_micro_batch_size(trajs):
    cfg = ShapingConfig(coef=0.2, z_scope="micro_batch")
    one = explore.recompute(trajs, FilterConfig(rules=()), cfg).shaped["adv_shaped"]
    split = explore.recompute(trajs, FilterConfig(rules=()), cfg, micro_batch=4).shaped["adv_shaped"]
    assert not np.allclose(one, split)


def test_trajectory_z_scope_does_not_depend_on_micro_batch_size(trajs):
    cfg = ShapingConfig(coef=0.2, z_scope="trajectory")
    one = explore.recompute(trajs, FilterConfig(rules=()), cfg).shaped["adv_shaped"]
    split = explore.recompute(trajs, FilterConfig(rules=()), cfg, micro_batch=4).shaped["adv_shaped"]
    assert np.allclose(one, split)


def test_micro_batch_metrics_add_up_gated_tokens_over_micro_batches(trajs):
    one = explore.recompute(trajs, FilterConfig(rules=())).metrics
    split = explore.recompute(trajs, FilterConfig(rules=()), micro_batch=3).metrics
    assert split["shaping/gated_tokens"] == one["shaping/gated_tokens"] and split["shaping/micro_batches"] == 7


def test_first_sampled_token_after_tool_output_has_offset_zero_in_the_after_tool_segment(trajs):
    tok = explore.token_table(trajs)
    t0 = tok[tok["traj"] == 0]
    first_after = t0[(t0["mask"] == 1) & (t0["turn"] == 1)].iloc[0]
    last_forced = t0[t0["mask"] == 0]["pos"].max()
    assert first_after["pos"] == last_forced + 1
    assert first_after["offset"] == 0 and first_after["segment"] == explore.AFTER_TOOL


def test_forced_tokens_have_no_offset(trajs):
    tok = explore.token_table(trajs)
    assert tok.loc[tok["mask"] == 0, "offset"].isna().all()


def test_funnel_frame_counts_every_trajectory_entering_each_rule(trajs):
    res = explore.recompute(trajs).result
    f = explore.funnel_frame(res)
    per_rule = f.groupby("rule")["n"].sum()
    trajs_in = res.funnel.set_index("rule")["trajs_in"]
    assert all(per_rule[r] == trajs_in[r] for r in per_rule.index)


def test_funnel_frame_shows_refill_duplicates_as_added(trajs):
    res = explore.recompute(trajs, FilterConfig(target_groups=4)).result
    added = explore.funnel_frame(res).query("outcome == 'added'")
    assert added["n"].sum() == res.funnel.set_index("rule").loc["refill", "trajs_out"] - \
        res.funnel.set_index("rule").loc["refill", "trajs_in"] > 0


def test_reward_spread_frame_labels_degenerate_groups(trajs):
    spread = explore.reward_spread_frame(explore.recompute(trajs).trajectories)
    status = spread.groupby("group_id")["group_status"].first().to_dict()
    assert status == {0: "mixed", 1: "all correct", 2: "all wrong", 3: "mixed", 4: "mixed"}


def test_entropy_by_offset_reports_the_spike_after_tool_output_in_the_fixture(trajs):
    prof = explore.entropy_by_offset(explore.token_table(trajs), max_offset=4).set_index(["segment", "offset"])
    assert prof.loc[(explore.AFTER_TOOL, 0), "mean"] > prof.loc[(explore.FIRST_TURN, 0), "mean"] + 0.5
    assert prof["n"].min() > 0


def test_entropy_spike_is_the_after_tool_minus_first_turn_mean_over_the_window(trajs):
    tok = explore.token_table(trajs)
    sp = explore.entropy_spike(tok, window=4)
    s = tok[(tok["mask"] == 1) & (tok["offset"] < 4)]
    want = {seg: s.loc[s["segment"] == seg, "entropy"].mean() for seg in (explore.AFTER_TOOL, explore.FIRST_TURN)}
    assert sp["after_tool"] == pytest.approx(want[explore.AFTER_TOOL]) and sp["spike"] > 0.5   # the fixture spikes
    assert sp["spike"] == pytest.approx(want[explore.AFTER_TOOL] - want[explore.FIRST_TURN])
    no_tools = explore.entropy_spike(tok[tok["segment"] == explore.FIRST_TURN])
    assert math.isnan(no_tools["after_tool"]) and math.isnan(no_tools["spike"])
    with pytest.raises(ValueError, match="window"):
        explore.entropy_spike(tok, window=0)


def test_heatmap_frame_widens_bins_to_stay_under_max_cells(trajs):
    heat = explore.heatmap_frame(explore.token_table(trajs), max_cells=200)
    assert len(heat) <= 200 and heat["width"].iloc[0] > 1


def test_heatmap_frame_shows_an_even_subset_beyond_max_trajs_and_says_of_how_many(trajs):
    heat = explore.heatmap_frame(explore.token_table(trajs), max_trajs=5)
    assert heat["traj"].nunique() == 5 and heat["n_trajs_total"].iloc[0] == 20


def test_trace_frame_bins_long_traces_and_rejects_unknown_trajectories(trajs):
    tok = explore.token_table(trajs)
    assert explore.trace_frame(tok, [0, 1], max_rows=40)["width"].iloc[0] > 1
    with pytest.raises(ValueError, match=r"\[99\]"):
        explore.trace_frame(tok, [0, 99])


def test_tool_spans_cover_exactly_the_forced_tokens(trajs):
    tok = explore.token_table(trajs)
    spans = explore.tool_spans(tok)
    covered = sum(spans["end"] - spans["start"])
    assert covered == int((tok["mask"] == 0).sum())


def test_ratio_histogram_fractions_sum_to_one_per_token_kind(trajs):
    hist = explore.ratio_histogram(explore.recompute(trajs, shaping_cfg=ShapingConfig(coef=0.3)).shaped)
    assert hist.groupby("tokens")["frac"].sum().tolist() == pytest.approx([1.0, 1.0])


def test_shaped_trace_picks_a_row_with_gated_tokens_by_default(trajs):
    tr = explore.shaped_trace(explore.recompute(trajs).shaped)
    assert tr["gate"].sum() > 0 and set(tr["which"]) == {"A", "Ã"}


def test_advantage_table_stacks_one_block_per_setting(trajs):
    tab = explore.advantage_table(trajs, {"drop": FilterConfig(), "mask": FilterConfig(filter_a_mode="mask")})
    assert tab.groupby("setting").size().to_dict() == {"drop": 20, "mask": 20}
    assert set(tab.loc[tab["setting"] == "mask", "role"]) >= {"trains", "baseline only (weight 0)"}


DROP_VS_MASK = {"drop": FilterConfig(min_n=2), "mask": FilterConfig(min_n=2, filter_a_mode="mask")}


def test_drop_and_mask_differ_exactly_in_the_mixed_groups_holding_a_flagged_episode(trajs):
    table = explore.advantage_table(trajs, DROP_VS_MASK)
    assert explore.differing_groups(table) == [0, 4]          # fixture: members (0, 3) and (4, 0)
    shown = explore.signal_groups(table, max_groups=2, first=[4])
    assert shown["group_id"].drop_duplicates().tolist() == [0, 4] and 3 not in set(shown["group_id"])


def test_a_sample_where_drop_and_mask_coincide_gets_a_what_if_where_they_differ(trajs):
    # issue 17: notebook 03 §4 showed two identical panels at smoke size: the only flagged episode
    # sat in an all-wrong group, which Filter B drops in both readings
    from dataclasses import replace
    flagged = replace(trajs[3], group_id=2, sample_idx=4, reward=0.0)      # (0, 3) moved to all-wrong group 2
    sample = [t for t in trajs if t.group_id in (1, 2, 3)] + [flagged]
    assert explore.differing_groups(explore.advantage_table(sample, DROP_VS_MASK)) == []
    case, gid, src = explore.flagged_member_what_if(sample)
    assert gid == 3 and src == len(sample) - 1 and len(case) == len(sample) + 1
    assert case[-1].group_id == 3 and case[-1].sample_idx == 4 and case[-1].reward == flagged.reward
    assert explore.differing_groups(explore.advantage_table(case, DROP_VS_MASK)) == [3]
    assert explore.flagged_member_what_if([t for t in trajs if t.group_id in (1, 3)]) is None   # nothing flagged


def test_metrics_long_melts_numeric_columns_and_rejects_a_missing_step_column():
    m = pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "label": ["a", "b"]})
    assert explore.metrics_long(m)["metric"].unique().tolist() == ["loss"]
    with pytest.raises(ValueError, match="step"):
        explore.metrics_long(m.drop(columns="step"))


def test_recompute_with_no_surviving_group_returns_empty_shaped_frame_and_the_skip_reason(trajs):
    degenerate = [t for t in trajs if t.group_id in (1, 2)]
    ex = explore.recompute(degenerate)
    assert ex.shaped.empty and ex.result.skip and "no group survived" in ex.result.skip_reason


def test_entropy_by_offset_leaves_out_bins_with_too_few_tokens_and_keeps_the_band_non_negative(trajs):
    tok = explore.token_table(trajs)
    prof = explore.entropy_by_offset(tok, max_offset=200, min_count=5)
    assert (prof["n"] >= 5).all() and (prof["lo"] >= 0).all()
    assert prof["offset"].max() < explore.entropy_by_offset(tok, max_offset=200, min_count=1)["offset"].max()



def test_shaped_trace_skips_rows_whose_advantage_is_zero_and_warns_when_every_row_is_flat():
    # row 0: gated but A = 0 (an all-equal group): the a-slider could never move it; row 1 moves
    rows = []
    for row, adv in ((0, 0.0), (1, 0.8)):
        for pos in range(4):
            rows.append({"row": row, "traj": row, "pos": pos, "gate": int(pos >= 2), "loss_mask": 1.0,
                         "adv": adv, "adv_shaped": adv * (1.1 if pos >= 2 else 1.0)})
    shaped = pd.DataFrame(rows)
    assert set(explore.shaped_trace(shaped)["row"]) == {1}
    with pytest.warns(UserWarning, match="flat"):
        assert set(explore.shaped_trace(shaped[shaped["row"] == 0])["row"]) == {0}
