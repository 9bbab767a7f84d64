"""Group advantages, entropy, the post-tool gate, shaping, ARPO branching, Pass@k."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from tao_lab.methods.arpo import arpo_branch_probability

from tao_lab.advantages import (
    ShapingConfig, additive_bonus, avg_at_k, entropy_zscore, group_advantages,
    pass_at_k, pass_at_k_mean, reshape_multiplicative, shape_advantages, token_entropy, token_logprobs,
    token_logprobs_and_entropy,
)
from tao_lab.records import ToolCall, Trajectory, post_tool_gate


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- group advantages


def test_hand_example_one_correct_of_four_gives_1_5_and_minus_0_5():
    adv, _ = group_advantages(torch.tensor([1.0, 0, 0, 0]), torch.tensor([7, 7, 7, 7]))
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)


def test_singleton_group_gets_zero_advantage():
    adv, m = group_advantages(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 1, 1]))
    assert adv[0] == 0 and m["adv/singleton_groups"] == 1


def test_equal_rewards_give_exactly_zero_advantage():
    adv, _ = group_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0, 0, 0]))
    assert adv.tolist() == [0.0, 0.0, 0.0]


def test_std_none_is_the_group_centred_reward():
    adv, _ = group_advantages(torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long), std="none")
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_biased_std_divides_by_the_population_std():
    adv, _ = group_advantages(torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long), std="biased")
    assert adv[0].item() == pytest.approx(0.75 / math.sqrt(0.1875), rel=1e-5)


def test_group_advantages_match_trl_formula_with_its_nanstd():
    # TRL 1.16 GRPOTrainer._generate_and_score_completions, scale_rewards="group":
    #   (r - mean_group) / (nanstd_group + 1e-4), groups contiguous of size num_generations.
    from trl.trainer.utils import nanstd
    r = torch.rand(6 * 4, generator=_g(1)).round()
    view = r.view(-1, 4)
    ref = (r - view.mean(1).repeat_interleave(4)) / (nanstd(view, dim=1).repeat_interleave(4) + 1e-4)
    ours, _ = group_advantages(r, torch.arange(6).repeat_interleave(4), std="unbiased", eps=1e-4)
    torch.testing.assert_close(ours, ref)


def test_batch_std_matches_trl_scale_rewards_batch():
    from trl.trainer.utils import nanstd
    r = torch.rand(3 * 4, generator=_g(2))
    ref = (r - r.view(-1, 4).mean(1).repeat_interleave(4)) / (nanstd(r) + 1e-4)
    ours, _ = group_advantages(r, torch.arange(3).repeat_interleave(4), std="batch", eps=1e-4)
    torch.testing.assert_close(ours, ref)


def test_group_advantages_match_verl_loop_on_interleaved_groups():
    # verl compute_grpo_outcome_advantage, re-implemented from reading it: per-uid torch.mean /
    # torch.std (unbiased), (score - mean) / (std + 1e-6). Groups here are NOT contiguous.
    r = torch.rand(15, generator=_g(3))
    gid = torch.tensor([2, 0, 1] * 5)
    by = defaultdict(list)
    for i in range(15):
        by[int(gid[i])].append(r[i])
    stats = {k: (torch.stack(v).mean(), torch.stack(v).std()) for k, v in by.items()}
    ref = torch.stack([(r[i] - stats[int(gid[i])][0]) / (stats[int(gid[i])][1] + 1e-6) for i in range(15)])
    ours, _ = group_advantages(r, gid)
    torch.testing.assert_close(ours, ref)


def test_unknown_std_mode_raises_with_the_choices():
    with pytest.raises(ValueError, match="unbiased"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), std="median")


# ---------------------------------------------------------------------------------- entropy / logprobs


def test_entropy_equals_a_naive_softmax_computation():
    logits = torch.randn(2, 5, 11, generator=_g(4)) * 3
    p = torch.softmax(logits / 0.7, -1)
    naive = -(p * p.log()).sum(-1)
    torch.testing.assert_close(token_entropy(logits, temperature=0.7), naive)


def test_chunked_entropy_and_logprobs_equal_unchunked():
    logits = torch.randn(3, 7, 13, generator=_g(5))
    ids = torch.randint(0, 13, (3, 7), generator=_g(6))
    a = token_logprobs_and_entropy(logits, ids, chunk=2)
    b = token_logprobs_and_entropy(logits, ids, chunk=10_000)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_entropy_matches_trl_entropy_from_logits():
    from trl.trainer.utils import entropy_from_logits
    logits = torch.randn(2, 6, 17, generator=_g(7))
    torch.testing.assert_close(token_entropy(logits), entropy_from_logits(logits))


def test_logprobs_match_trl_selective_log_softmax_at_a_temperature():
    from trl.trainer.utils import selective_log_softmax
    logits = torch.randn(2, 6, 17, generator=_g(8))
    ids = torch.randint(0, 17, (2, 6), generator=_g(9))
    torch.testing.assert_close(token_logprobs(logits, ids, temperature=0.6),
                               selective_log_softmax(logits, ids, temperature=0.6))


def test_bf16_logits_give_float32_results_close_to_float32_input():
    logits = torch.randn(2, 4, 50, generator=_g(10))
    h = token_entropy(logits.bfloat16())
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, token_entropy(logits.bfloat16().float()))


def test_entropy_has_no_gradient_unless_asked():
    logits = torch.randn(1, 3, 5, requires_grad=True)
    logp, h = token_logprobs_and_entropy(logits, torch.zeros(1, 3, dtype=torch.long))
    assert logp.requires_grad and not h.requires_grad
    assert token_entropy(logits, grad=True).requires_grad


# ---------------------------------------------------------------------------------- post-tool gate


def _call(turn: int, valid: bool) -> ToolCall:
    return ToolCall(turn=turn, protocol="fenced", code="x", status="ok", stdout="1" if valid else "",
                    stderr="" if valid else "Error", duration_s=0.0, tier="rlimits", observation="o",
                    valid=valid)


def _tool_traj() -> Trajectory:
    # turn 0: 3 sampled + 2 tool-output tokens; turn 1 (post-tool): 2 sampled + 2 tool output;
    # turn 2 (post-tool, after a FAILED call): 2 sampled.
    mask = [1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]
    turn = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    post = [0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]
    n = len(mask)
    return Trajectory(task_id="t", group_id=0, prompt_ids=[1], token_ids=list(range(n)), mask=mask,
                      logprobs=[0.0] * n, entropies=[0.0] * n, turn_idx=turn, post_tool=post,
                      tool_calls=[_call(0, True), _call(1, False)], reward=1.0)


def test_post_tool_gate_marks_the_turns_after_a_call_even_after_a_failed_one():
    t = _tool_traj()
    assert post_tool_gate(t.mask, t.turn_idx, t.tool_turns()) == t.post_tool


def test_tool_output_tokens_are_never_gated():
    t = _tool_traj()
    gate = post_tool_gate(t.mask, t.turn_idx, t.tool_turns())
    assert all(g == 0 for g, m in zip(gate, t.mask) if m == 0)


def test_a_turn_after_a_turn_without_a_call_is_not_gated():
    # turn 1 follows a call; turn 2 follows turn 1, which made no call (e.g. a forced hint turn)
    assert post_tool_gate([1, 1, 1], [0, 1, 2], {0}) == [0, 1, 0]


# ---------------------------------------------------------------------------------- shaping


def _batch(B=3, T=20, seed=11):
    g = _g(seed)
    ent = torch.rand(B, T, generator=g) * 3
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    gate = ((torch.rand(B, T, generator=g) > 0.5).float() * mask)
    adv = torch.randn(B, generator=g)
    return adv, ent, mask, gate


def test_hand_example_positive_advantage_z_two_a_0_01_gives_1_02():
    ent = torch.tensor([[0.0, 0.0, 0.0, 0.0, 5.0]])  # mean 1, population std 2 -> z(last) = 2
    ones = torch.ones(1, 5)
    assert entropy_zscore(ent, ones)[0, -1].item() == pytest.approx(2.0)
    adv_t, _ = reshape_multiplicative(torch.tensor([1.0]), ent, ones, ones, coef=0.01)
    assert adv_t[0, -1].item() == pytest.approx(1.02)


def test_hand_example_additive_bonus_halves_a_negative_advantage_at_high_entropy():
    adv_t, _ = additive_bonus(torch.tensor([-1.0]), torch.tensor([[10.0]]), torch.ones(1, 1),
                              torch.ones(1, 1), alpha=0.4, kappa=2.0)
    assert adv_t.item() == pytest.approx(-0.5)


def test_additive_bonus_never_flips_a_negative_advantage():
    adv, ent, mask, _ = _batch()
    adv_t, _ = additive_bonus(-adv.abs(), ent * 100, mask, mask)
    assert (adv_t[mask > 0] < 0).all()


def test_small_coefficient_preserves_the_advantage_sign():
    adv, ent, mask, gate = _batch(T=50)
    adv_t, m = reshape_multiplicative(adv, ent, mask, gate, coef=0.01)
    a = adv[:, None].expand_as(adv_t)
    assert (torch.sign(adv_t) == torch.sign(a)).all() and m["shaping/sign_flips"] == 0


def test_gate_off_tokens_keep_their_advantage():
    adv, ent, mask, gate = _batch()
    adv_t, m = reshape_multiplicative(adv, ent, mask, gate, coef=0.2)
    off = (gate == 0)
    assert torch.equal(adv_t[off], adv[:, None].expand_as(adv_t)[off])
    assert m["shaping/ratio_other_mean"] == 1.0


def test_masked_tokens_are_untouched_even_with_all_tokens_gate():
    adv, ent, mask, _ = _batch()
    adv_t, _ = shape_advantages(adv, ent, mask, None, ShapingConfig(gate="all_tokens", coef=0.2))
    off = mask == 0
    assert torch.equal(adv_t[off], adv[:, None].expand_as(adv_t)[off])


def test_z_statistics_ignore_masked_tokens():
    ent = torch.tensor([[1.0, 2.0, 3.0, 1000.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    z = entropy_zscore(ent, mask)
    torch.testing.assert_close(z[:, :3], entropy_zscore(ent[:, :3], mask[:, :3]))  # 1000 plays no part
    assert z[0, 3].item() == 0.0


def test_micro_batch_z_changes_with_the_split_but_per_trajectory_z_does_not():
    adv, ent, mask, gate = _batch(B=4, T=16, seed=12)
    for scope, should_match in (("trajectory", True), ("micro_batch", False)):
        cfg = ShapingConfig(coef=0.2, z_scope=scope)
        whole = shape_advantages(adv, ent, mask, gate, cfg)[0]
        split = torch.cat([shape_advantages(adv[s], ent[s], mask[s], gate[s], cfg)[0]
                           for s in (slice(0, 2), slice(2, 4))])
        assert torch.allclose(whole, split) == should_match, scope


def test_detached_shaping_has_no_gradient_and_code_mode_does():
    adv, ent, mask, gate = _batch()
    ent = ent.requires_grad_()
    detached = shape_advantages(adv, ent, mask, gate, ShapingConfig())[0]
    assert not detached.requires_grad
    live = shape_advantages(adv, ent, mask, gate, ShapingConfig(detach=False))[0]
    live.sum().backward()
    assert ent.grad is not None and ent.grad.abs().sum() > 0


def test_post_tool_gate_is_required_for_the_paper_gate():
    adv, ent, mask, _ = _batch()
    with pytest.raises(ValueError, match="post_tool_gate"):
        shape_advantages(adv, ent, mask, None, ShapingConfig())


def test_empty_gate_fallback_reshapes_all_tokens_like_the_code():
    adv, ent, mask, _ = _batch()
    empty = torch.zeros_like(mask)
    off, m_off = shape_advantages(adv, ent, mask, empty, ShapingConfig(coef=0.2))
    on, m_on = shape_advantages(adv, ent, mask, empty, ShapingConfig(coef=0.2, empty_gate_fallback=True))
    assert torch.equal(off, adv[:, None].expand_as(off)) and m_off["shaping/empty_gate_fallback"] == 0
    assert not torch.equal(on, off) and m_on["shaping/empty_gate_fallback"] == 1


def test_shaping_metrics_report_gate_coverage():
    adv, ent, mask, gate = _batch()
    _, m = shape_advantages(adv, ent, mask, gate, ShapingConfig())
    assert m["shaping/gate_coverage"] == pytest.approx(float(gate.sum() / mask.sum()))


def test_none_shaping_returns_the_broadcast_advantage():
    adv, ent, mask, gate = _batch()
    out, _ = shape_advantages(adv, ent, mask, gate, ShapingConfig(kind="none"))
    assert torch.equal(out, adv[:, None].expand_as(out))


# ---------------------------------------------------------------------------------- ARPO, Pass@k


def test_arpo_branch_probability_is_clipped_to_zero_one():
    assert arpo_branch_probability(1.0) == pytest.approx(0.7)
    assert arpo_branch_probability(10.0) == 1.0 and arpo_branch_probability(-10.0) == 0.0
    assert arpo_branch_probability(torch.tensor([-10.0, 0.0, 10.0])).tolist() == [0.0, 0.5, 1.0]


def test_pass_at_k_equals_the_binomial_formula():
    for n, c, k in [(16, 3, 4), (10, 0, 2), (10, 10, 5), (8, 5, 4), (20, 1, 1)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k_mean([16, 16], [4, 8], 1) == pytest.approx(0.375)


def test_avg_at_k_is_the_mean_accuracy():
    assert avg_at_k([[1, 0, 0, 1], [1, 1, 1, 1]]) == 0.75


def test_pass_at_k_rejects_k_larger_than_n():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
