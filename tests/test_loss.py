"""Policy loss: hand-computed examples, aggregation variants, and TRL 1.16's loss as the reference."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from tao_lab.loss import LossConfig, policy_loss

# One row, four tokens; hand-computed with ε_low 0.2, ε_high 0.28, c = 3:
#   A=+1 ρ=1.5  -> max(-1.5, -1.28) = -1.28   (clip high, no gradient)
#   A=-1 ρ=0.5  -> max( 0.5,  0.8 ) =  0.8    (clip low, no gradient)
#   A=-1 ρ=5.0  -> max( 5.0,  1.28) =  5.0 -> min(5.0, 3) = 3   (dual clip)
#   A=+1 ρ=1.0  -> -1
HAND_RATIO = [1.5, 0.5, 5.0, 1.0]
HAND_ADV = [1.0, -1.0, -1.0, 1.0]
HAND_TOKENS = [-1.28, 0.8, 3.0, -1.0]


def hand_inputs():
    old = torch.full((1, 4), -2.0)
    logp = (old + torch.tensor([HAND_RATIO]).log()).requires_grad_()
    return logp, old, torch.tensor([HAND_ADV]), torch.ones(1, 4)


def test_hand_example_token_losses_with_clip_higher_and_dual_clip():
    logp, old, adv, mask = hand_inputs()
    loss, _ = policy_loss(logp, old, adv, mask)
    assert loss.item() == pytest.approx(sum(HAND_TOKENS) / 4)


def test_clipped_tokens_get_no_gradient_and_unclipped_ones_do():
    logp, old, adv, mask = hand_inputs()
    policy_loss(logp, old, adv, mask)[0].backward()
    # d/dlogp of -A·ρ is -A·ρ; only the unclipped fourth token (ρ=1, A=+1) has one: -1/4.
    assert logp.grad.tolist()[0] == pytest.approx([0.0, 0.0, 0.0, -0.25])


def test_clip_fractions_count_one_token_each_in_the_hand_example():
    _, m = policy_loss(*hand_inputs())
    assert (m["loss/clip_high"], m["loss/clip_low"], m["loss/clip_dual"]) == (0.25, 0.25, 0.25)


def test_dual_clip_off_leaves_the_large_ratio_loss():
    logp, old, adv, mask = hand_inputs()
    loss, _ = policy_loss(logp, old, adv, mask, LossConfig(dual_clip=None))
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 5.0 - 1.0) / 4)


def test_anti_clip_keeps_the_forward_value_and_restores_the_gradient_on_gated_tokens():
    logp, old, adv, mask = hand_inputs()
    gate = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    loss, m = policy_loss(logp, old, adv, mask, LossConfig(anti_clip=True), gate=gate)
    assert loss.item() == pytest.approx(sum(HAND_TOKENS) / 4) and m["loss/anti_clip"] == 0.25
    loss.backward()
    # -(1+ε_high)·ρ/sg(ρ): gradient -(1.28)·1 / 4 tokens on the gated clip-high token
    assert logp.grad[0, 0].item() == pytest.approx(-1.28 / 4)


def test_seq_mean_token_mean_averages_each_sequence_first():
    loss_tok = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    # A = -loss at ρ = 1 (no clipping): token losses are exactly loss_tok
    logp = torch.zeros(2, 4)
    cfg = LossConfig(agg="seq_mean_token_mean", dual_clip=None)
    assert policy_loss(logp, logp, -loss_tok, mask, cfg)[0].item() == pytest.approx((1 + 3) / 2)
    assert policy_loss(logp, logp, -loss_tok, mask)[0].item() == pytest.approx((4 + 3) / 5)


def test_drgrpo_divides_by_batch_times_max_length():
    logp = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    loss, _ = policy_loss(logp, logp, -torch.ones(2, 4), mask, LossConfig(agg="drgrpo", max_len=10))
    assert loss.item() == pytest.approx(3 / (2 * 10))


def test_scaling_every_weight_leaves_the_token_mean_unchanged():
    g = torch.Generator().manual_seed(0)
    logp, old, adv = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    mask = torch.ones(3, 5)
    a = policy_loss(logp, old, adv, mask)[0]
    b = policy_loss(logp, old, adv, 0.5 * mask)[0]
    torch.testing.assert_close(a, b)


def test_zero_weight_rows_do_not_change_the_loss():
    g = torch.Generator().manual_seed(1)
    logp, old, adv = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(2, generator=g)
    mask = torch.tensor([[1.0] * 5, [0.0] * 5])
    for agg in ("token_mean", "seq_mean_token_mean"):
        cfg = LossConfig(agg=agg)
        torch.testing.assert_close(policy_loss(logp, old, adv, mask, cfg)[0],
                                   policy_loss(logp[:1], old[:1], adv[:1], mask[:1], cfg)[0])


def test_non_finite_log_probs_on_masked_positions_do_not_poison_the_loss():
    logp, old, adv, mask = hand_inputs()
    logp2 = torch.cat([logp.detach(), torch.tensor([[math.inf]])], 1)
    old2 = torch.cat([old, torch.tensor([[-math.inf]])], 1)
    loss, _ = policy_loss(logp2, old2, torch.cat([adv, torch.ones(1, 1)], 1), torch.cat([mask, torch.zeros(1, 1)], 1))
    assert loss.item() == pytest.approx(sum(HAND_TOKENS) / 4)


def test_kl_term_is_zero_when_the_policy_equals_the_reference():
    logp, old, adv, mask = hand_inputs()
    a = policy_loss(logp, old, adv, mask)[0]
    b, m = policy_loss(logp, old, adv, mask, LossConfig(beta=0.1), ref_logp=logp.detach())
    assert b.item() == pytest.approx(a.item()) and m["loss/kl_ref"] == pytest.approx(0.0)


def test_beta_without_reference_log_probs_raises_an_error_saying_what_is_missing():
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(*hand_inputs(), LossConfig(beta=0.1))


def test_mismatched_shapes_raise_an_error_with_the_shapes():
    logp, old, adv, mask = hand_inputs()
    with pytest.raises(ValueError, match=r"\(1, 3\)"):
        policy_loss(logp, old[:, :3], adv, mask)


# ------------------------------------------------------------------------------------------------
# Reference: TRL 1.16 GRPOTrainer._compute_loss, run as-is on our tensors.
#
# What is compared: the scalar loss and its gradient w.r.t. the per-token log-probs, for the
# aggregations both libraries share — TRL "dapo" and "bnpo" vs our "token_mean", "grpo" vs
# "seq_mean_token_mean", "dr_grpo" vs "drgrpo" — with clip-higher (0.2 / 0.28), and with the k3 KL
# term (beta 0.04). TRL has no dual clip, so ours is turned off (dual_clip=None) here; the dual
# clip is covered by the hand example above. How: `_compute_loss` is called unbound on a namespace
# holding the attributes it reads (one accumulation step, one process, train mode), and its
# `_get_per_token_logps_and_entropies` hands back our log-prob tensor instead of running a model —
# the loss arithmetic is TRL's own code, untouched.

TRL_PAIRS = [("dapo", "token_mean"), ("bnpo", "token_mean"), ("grpo", "seq_mean_token_mean"),
             ("dr_grpo", "drgrpo")]


def trl_compute_loss(loss_type: str, logp, old, adv, mask, beta=0.0, ref=None, max_len=None):
    from trl.trainer.grpo_trainer import GRPOTrainer

    B, T = logp.shape
    metrics: dict = {"train": defaultdict(list)}
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.28, use_vllm=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=max_len or T, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics=metrics,
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction="sum": x,
                                    gather=lambda x: x, gather_for_metrics=lambda x: x),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "num_items_in_batch": mask.sum(),
        "ref_per_token_logps": ref,
    }
    return GRPOTrainer._compute_loss(trainer, None, inputs), metrics["train"]


def random_batch(seed: int, B: int = 4, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    logp = old + 0.4 * torch.randn(B, T, generator=g)  # ratios on both sides of the clip range
    adv = torch.randn(B, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()  # every row has >= 1 token
    ref = old + 0.3 * torch.randn(B, T, generator=g)
    return logp, old, adv, mask, ref


@pytest.mark.parametrize("trl_type,agg", TRL_PAIRS)
def test_loss_and_gradient_match_trl_compute_loss(trl_type, agg):
    logp, old, adv, mask, _ = random_batch(seed=3)
    a = logp.clone().requires_grad_()
    b = logp.clone().requires_grad_()
    ours, _ = policy_loss(a, old, adv, mask, LossConfig(agg=agg, dual_clip=None, max_len=12))
    theirs, _ = trl_compute_loss(trl_type, b, old, adv, mask, max_len=12)
    torch.testing.assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("trl_type,agg", TRL_PAIRS)
def test_loss_with_k3_kl_term_matches_trl_compute_loss(trl_type, agg):
    logp, old, adv, mask, ref = random_batch(seed=4)
    ours, _ = policy_loss(logp, old, adv, mask, LossConfig(agg=agg, dual_clip=None, beta=0.04), ref_logp=ref)
    theirs, _ = trl_compute_loss(trl_type, logp, old, adv, mask, beta=0.04, ref=ref)
    torch.testing.assert_close(ours, theirs)


def test_clip_fractions_and_kl_metric_match_trl():
    logp, old, adv, mask, ref = random_batch(seed=5, B=6, T=12)
    _, ours = policy_loss(logp, old, adv, mask, LossConfig(dual_clip=None, beta=0.04), ref_logp=ref)
    _, theirs = trl_compute_loss("dapo", logp, old, adv, mask, beta=0.04, ref=ref)
    assert ours["loss/clip_low"] == pytest.approx(theirs["clip_ratio/low_mean"][0])
    assert ours["loss/clip_high"] == pytest.approx(theirs["clip_ratio/high_mean"][0])
    assert ours["loss/kl_ref"] == pytest.approx(theirs["kl"][0], rel=1e-5)
