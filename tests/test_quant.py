"""The int8 rollout copy (quant.py) and its off-policy correction (loss.truncated_is_weights, update)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from tao_lab import trainer as T
from tao_lab import update as U
from tao_lab.loss import LossConfig, policy_loss, truncated_is_weights
from tao_lab.quant import Int8Linear, quantized_copy
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.train_config import check_sampler
from train_helpers import adapter, alternating_reward, one_thread, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# The int8 layer and the quantised copy


def test_int8_linear_is_close_to_the_fp32_layer_and_a_huge_token_spoils_only_itself():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int8Linear(lin.weight, lin.bias)
    x = torch.randn(3, 5, 64)
    x[0, 0] *= 1000.0                            # one "massive activation" token
    with torch.no_grad():
        ref, got = lin(x), q(x)
    assert got.shape == (3, 5, 96)
    rel = (got - ref).norm(dim=-1) / ref.norm(dim=-1)      # per token
    assert float(rel.max()) < 0.02               # per-token scales: every token keeps ~1% error


def test_quantized_copy_folds_the_lora_adapter_and_leaves_the_policy_untouched(tiny):
    from tao_lab.models import ModelConfig, finish_policy
    model, _ = tiny
    model = finish_policy(model, ModelConfig(lora_r=4)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 1000, (2, 12))
    q = quantized_copy(model)
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits, -1)
        got = torch.log_softmax(q(ids).logits, -1)
        with model.disable_adapter():
            base = torch.log_softmax(model(ids).logits, -1)
    n_int8 = sum(isinstance(m, Int8Linear) for m in q.modules())
    assert n_int8 == 2 * 7 + 1                   # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    err = (got - ref).abs().max()
    assert err < 0.1 and err < (base - ref).abs().max() / 3   # the adapter is in the copy
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert any(isinstance(m, torch.nn.Linear) for m in model.modules())   # the policy was not converted


def test_the_int8_rollout_without_the_correction_is_refused():
    # (bad values of the two switches: tests/test_config_checks.py)
    cfg = tiny_cfg("rollout.quantize=int8")                 # either order of the two overrides is fine
    with pytest.raises(ValueError, match="is_correction='tis'"):
        check_sampler(cfg)
    check_sampler(replace(cfg, update=replace(cfg.update, is_correction="tis")))


@pytest.mark.smoke
def test_int8_rollout_runs_on_the_embedded_model_and_stays_near_the_fp32_policy(smol):
    from tao_lab.tasks import load_tasks
    model, tok = smol
    tasks = load_tasks("arith-L2", split="train", limit=1)
    cfg = RolloutConfig(group_size=2, max_new_tokens=16, tools=False, seed=0, quantize="int8")
    trajs, stats = generate(model, tok, tasks, cfg)
    assert stats.sampled_tokens == sum(len(t.token_ids) for t in trajs) > 0 and stats.quantize_s > 0
    assert not any(isinstance(m, Int8Linear) for m in model.modules())
    # the fp32 policy's log-probs of the int8 sampler's tokens: close, not equal
    mb = U.collate(trajs, [1.0] * len(trajs), tok.pad_token_id, "cpu", share_prompt=True)
    with torch.no_grad():
        logp, _ = U.forward_logprobs(model, mb, 1.0, 64, entropy_grad=False)
    m = mb.mask > 0
    gap = (logp - mb.old_logp)[m].abs()
    assert 1e-4 < float(gap.mean()) < 0.3, float(gap.mean())


# ----------------------------------------------------------------------------------------------
# The truncated importance weights and the loss


def test_truncated_weights_on_a_hand_made_case():
    sampler = torch.tensor([[-1.0, -2.0, -3.0, -1.0, 0.0]])
    policy = sampler + torch.tensor([[0.0, math.log(1.5), math.log(4.0), math.log(0.25), 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])             # the last token is not trained
    w, m = truncated_is_weights(policy, sampler, mask, cap=2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 1.5, 2.0, 0.25, 1.0])
    assert m["loss/is_truncated_frac"] == pytest.approx(0.25)
    assert m["loss/is_ratio_max"] == pytest.approx(4.0) and m["loss/is_ratio_min"] == pytest.approx(0.25)
    assert m["loss/is_ratio_mean"] == pytest.approx((1 + 1.5 + 4 + 0.25) / 4)
    assert m["loss/is_weight_mean"] == pytest.approx((1 + 1.5 + 2 + 0.25) / 4)


def test_equal_logprobs_give_weights_of_exactly_one_and_the_uncorrected_loss():
    torch.manual_seed(0)
    logp = (torch.randn(2, 6) - 2).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(2, 6)
    adv, mask = torch.randn(2, 6), (torch.rand(2, 6) > 0.3).float()
    w, _ = truncated_is_weights(logp.detach(), logp.detach().clone(), mask, cap=2.0)
    assert torch.equal(w, torch.ones_like(w))
    plain, _ = policy_loss(logp, old, adv, mask, LossConfig())
    weighted, _ = policy_loss(logp, old, adv, mask, LossConfig(), is_weight=w)
    assert torch.equal(plain, weighted)


def test_a_weight_scales_its_tokens_loss_and_gradient_not_the_denominator():
    logp = torch.full((1, 2), -1.0, requires_grad=True)
    adv, mask = torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, is_weight=torch.tensor([[2.0, 0.5]]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-(2.0 + 0.5) / 2)
    assert logp.grad.tolist()[0] == pytest.approx([-1.0, -0.25])


# ----------------------------------------------------------------------------------------------
# The update and the loop


def test_tis_with_the_policy_as_sampler_is_exactly_the_uncorrected_update(tmp_path):
    cfg = tiny_cfg("run.steps=1", "optim.grad_clip=0")
    with T.Trainer(cfg, tmp_path, reward_fn=alternating_reward) as tr:
        tok, model = tr.tok, tr.model
        trajs, _ = T.rollout_stage(model, tok, tr.tasks[:2], cfg.rollout, tr.pool, seed=3)
    for i, t in enumerate(trajs):
        t.reward = float(i % 2)
    from tao_lab import filters
    batch, _, _ = U.compute_advantages(trajs, filters.apply(trajs, filters.FilterConfig(rules=())))
    ucfg = replace(cfg.update, micro_batch_size=4)
    # make the recorded log-probs the training forward's own, bit for bit: the sampler IS the policy
    model.train()
    for idx in U.plan_micro_batches(batch.trajs, ucfg.micro_batch_size, ucfg.share_prompt):
        rows = [batch.trajs[i] for i in idx]
        mb = U.collate(rows, [1.0] * len(rows), tok.pad_token_id, "cpu", ucfg.share_prompt)
        with torch.no_grad():
            lp, _ = U.forward_logprobs(model, mb, 1.0, ucfg.logit_chunk, entropy_grad=False)
        for r, t in enumerate(rows):
            n = len(t.token_ids)
            t.logprobs = [x if k else 0.0 for x, k in zip(lp[r, :n].tolist(), t.mask)]
    start = adapter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    moved, metrics = [], []
    for corr in ("none", "tis"):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in start:
                    p.copy_(start[n])
        opt = torch.optim.SGD(params, lr=1.0)
        metrics.append(U.update_policy(model, opt, batch, params, tok.pad_token_id,
                                       cfg=replace(ucfg, is_correction=corr), shaping=cfg.shaping, loss=cfg.loss,
                                       grad_clip=0.0, temperature=1.0, max_new_tokens=16))
        moved.append({n: p.detach() - start[n] for n, p in model.named_parameters() if n in start})
    plain, tis = metrics
    assert tis["loss/is_weight_mean"] == 1.0 and tis["loss/is_truncated_frac"] == 0.0
    assert tis["loss/total"] == pytest.approx(plain["loss/total"], abs=1e-7)
    assert all(torch.allclose(moved[0][n], moved[1][n], atol=1e-7) for n in start)
    assert any(moved[0][n].abs().max() > 0 for n in start)


def test_a_trainer_step_with_the_int8_rollout_and_the_correction_runs(tmp_path):
    cfg = tiny_cfg("run.steps=2", "update.is_correction=tis", "rollout.quantize=int8", "update.epochs=2")
    with T.Trainer(cfg, tmp_path, reward_fn=alternating_reward) as tr:
        before = adapter(tr.model)
        logs = tr.train()
        after = adapter(tr.model)
    assert len(logs) == 2 and not any(log.skipped for log in logs)
    for log in logs:
        m = log.metrics
        assert math.isfinite(m["loss/policy"]) and m["rollout/quantize_s"] > 0
        assert 0 < m["loss/is_weight_mean"] <= 2.0 and 0 <= m["loss/is_truncated_frac"] <= 1
        assert m["loss/is_ratio_min"] <= m["loss/is_ratio_mean"] <= m["loss/is_ratio_max"]
        assert m["update/logp_rollout_diff_mean"] > 1e-4          # int8 sampler vs fp32 policy
    assert any(not torch.equal(before[n], after[n]) for n in before)
