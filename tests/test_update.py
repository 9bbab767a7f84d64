"""update.update_policy on a tiny random Llama + LoRA: the gate, per-token advantages, merged metrics."""

from __future__ import annotations

import pytest
import torch

from tao_lab import update as U
from tao_lab.advantages import ShapingConfig
from tao_lab.loss import LossConfig
from tao_lab.records import Trajectory


@pytest.fixture()
def lora(tiny):
    from tao_lab.models import ModelConfig, finish_policy

    model, tok = tiny
    return finish_policy(model, ModelConfig(lora_r=4)), tok


def _trajs(tok, post_tool: bool, old_logp: float = -50.0, lens=(6, 9)) -> list[Trajectory]:
    """Two rows of one prompt; old log-probs far below the model's, so every ratio is huge."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, len(tok), (7,), generator=g).tolist()
    out = []
    for k, L in enumerate(lens):
        ids = torch.randint(0, len(tok), (L,), generator=g).tolist()
        mask = [1] * L
        mask[2] = 0                                   # one forced token
        post = [int(post_tool and j >= 3) for j in range(L)]
        out.append(Trajectory("t", 0, prompt, ids, mask, [old_logp] * L, [0.0] * L, [0] * L, post, sample_idx=k))
    return out


def _run(model, tok, trajs, shaping, loss, adv=(1.0, -1.0), mb=4, **batch_kw):
    params = [p for p in model.parameters() if p.requires_grad]
    batch = U.UpdateBatch(trajs, torch.tensor(adv), [1.0] * len(trajs), 0, **batch_kw)
    return U.update_policy(model, torch.optim.SGD(params, lr=0.0), batch, params, tok.pad_token_id,
                           cfg=U.UpdateConfig(micro_batch_size=mb), shaping=shaping, loss=loss, grad_clip=0.0,
                           temperature=1.0, max_new_tokens=16)


def test_anti_clip_acts_on_every_token_when_shaping_gates_all_tokens(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=False)                     # no post-tool token anywhere
    m = _run(model, tok, trajs, ShapingConfig(gate="all_tokens"), LossConfig(anti_clip=True))
    n_train = sum(t.n_sampled for t in trajs)
    assert m["loss/anti_clip_tokens"] == n_train and m["loss/anti_clip"] == 1.0


def test_anti_clip_follows_the_empty_gate_fallback_of_the_code(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=False)
    m = _run(model, tok, trajs, ShapingConfig(empty_gate_fallback=True), LossConfig(anti_clip=True))
    assert m["shaping/empty_gate_fallback"] == 1.0
    assert m["loss/anti_clip_tokens"] == sum(t.n_sampled for t in trajs)


def test_anti_clip_acts_only_on_post_tool_tokens_with_the_paper_gate(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=True)
    m = _run(model, tok, trajs, ShapingConfig(), LossConfig(anti_clip=True))
    assert m["loss/anti_clip_tokens"] == sum(sum(t.post_tool) for t in trajs) == m["shaping/gated_tokens"]


def test_step_counts_are_summed_over_micro_batches(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=True)
    one, two = (_run(model, tok, trajs, ShapingConfig(), LossConfig(), mb=k) for k in (4, 1))
    for key in ("loss/tokens", "shaping/gated_tokens", "shaping/sign_flips"):
        assert one[key] == two[key]
    assert one["loss/tokens"] == sum(t.n_sampled for t in trajs)
    assert one["loss/total"] == pytest.approx(two["loss/total"], rel=1e-4)   # fp32 sums in another order
    assert one["loss/ratio_max"] == pytest.approx(two["loss/ratio_max"], rel=1e-4)


def test_token_advantages_replace_the_row_advantage(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=False, old_logp=0.0)
    tok_adv = [torch.full((len(t.token_ids),), 2.0) for t in trajs]
    flat = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig(dual_clip=None), adv=(2.0, 2.0))
    per_tok = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig(dual_clip=None), adv=(-5.0, 9.0),
                   token_adv=tok_adv)
    assert per_tok["loss/total"] == pytest.approx(flat["loss/total"], rel=1e-6)


def test_a_row_without_token_advantages_keeps_its_row_advantage(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=False, old_logp=0.0)
    base = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig(), adv=(1.0, 3.0))
    mixed = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig(), adv=(1.0, 3.0),
                 token_adv=[None, torch.full((len(trajs[1].token_ids),), 3.0)])
    assert mixed["loss/total"] == pytest.approx(base["loss/total"], rel=1e-6)


def test_token_weight_multiplies_the_loss_mask(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=False, old_logp=0.0)
    w = [torch.zeros(len(t.token_ids)) for t in trajs]
    w[0][:2] = 1.0                                           # only the first two tokens of row 0 train
    m = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig(), token_weight=w)
    assert m["loss/tokens"] == 2.0


def test_a_token_advantage_of_the_wrong_length_is_refused_naming_the_row():
    t = Trajectory("t", 0, [1], [2, 3, 4], [1, 1, 1], [0.0] * 3, [0.0] * 3, [0] * 3, [0] * 3)
    with pytest.raises(ValueError, match=r"token_adv\[0\].*\(3,\)"):
        U.UpdateBatch([t], torch.tensor([1.0]), [1.0], 0, token_adv=[torch.zeros(2)])


def test_entropy_coeff_subtracts_the_aggregated_entropy_from_the_loss(lora):
    model, tok = lora
    trajs = _trajs(tok, post_tool=False, old_logp=0.0)
    off = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig())
    on = _run(model, tok, trajs, ShapingConfig(kind="none"), LossConfig(entropy_coeff=0.5))
    assert on["loss/entropy_bonus"] > 0
    assert on["loss/total"] == pytest.approx(off["loss/total"] - 0.5 * on["loss/entropy_bonus"], rel=1e-5)


def test_every_loss_aggregation_has_its_own_micro_batch_share_rule():
    from tao_lab.loss import AGGREGATIONS

    assert set(U._AGG_SHARES) == set(AGGREGATIONS)
    with pytest.raises(ValueError, match="agg='mean'"):
        U._agg_share(torch.ones(1, 2), {"weight": 2.0, "seqs": 1, "rows": 1}, "mean")
