"""End to end through trainer.Trainer: a scripted policy that really calls the tool in the real
sandbox (valid calls, failing calls, all-failed trajectories), trained by the real update.

The policy (tests/e2e_policy.py) is a tiny random Llama + LoRA with a logit bias toward the
scripted byte: rollouts follow the script, the training forward's log-probs and entropies are the
model's own and carry gradient. Asserted with values: Filter A drops the all-failed trajectories;
the update reshapes exactly the post-tool tokens; Ã = A·(1 + a·z) with z from THIS forward's
entropy on those tokens; the anti-clip gets that same gate; the step metrics count them.
"""

from __future__ import annotations

import pytest
import torch

from e2e_policy import BiasedScriptPolicy, ChatByteTokenizer
from tao_lab import update as U
from tao_lab.advantages import effective_gate, entropy_zscore
from tao_lab.presets import make_config
from tao_lab.tasks import Task
from tao_lab.trainer import Trainer


def _turns(key: str, expr: str, answer: str) -> list[str]:
    return [f"{key} ```python\nprint({expr})\n```", f" so \\boxed{{{answer}}}."]


SCRIPTS = {q: {"A": _turns("A", "6 * 7", "42"),         # valid call, right answer
               "B": _turns("B", "6 * 7 / 0", "0"),      # failing call: all tools failed -> Filter A
               "C": _turns("C", "6 * 7 + 1", "43")}     # valid call, wrong answer
           for q in ("Q1: what is 6*7?", "Q2: what is 7*6?")}
TASKS = [Task(id=f"q{i}", prompt=q, answer="42") for i, q in enumerate(SCRIPTS)]


def boxed_42(trajs, step):
    r = [float("\\boxed{42}" in t.text) for t in trajs]
    for t, x in zip(trajs, r):
        t.reward = x
    return r, {}


@pytest.fixture()
def policy():
    from tao_lab.models import ModelConfig, finish_policy, tiny_model

    tok = ChatByteTokenizer()
    inner = finish_policy(tiny_model(vocab_size=len(tok), hidden=32, seed=0), ModelConfig(lora_r=4))
    return BiasedScriptPolicy(inner, tok, SCRIPTS), tok


@pytest.fixture()
def spy(monkeypatch):
    """Record what each micro-batch of update_policy computed and handed on."""
    calls: list[dict] = []
    fwd, shape, loss = U.forward_logprobs, U.shape_advantages, U.policy_loss

    def forward_spy(*a, **k):
        logp, ent = fwd(*a, **k)
        calls.append({"ent_out": ent})
        return logp, ent

    def shape_spy(adv, ent, mask, gate, cfg):
        adv_t, m = shape(adv, ent, mask, gate, cfg)
        calls[-1].update(adv=adv, ent=ent, mask=mask, gate=gate, cfg=cfg, adv_t=adv_t)
        return adv_t, m

    def loss_spy(logp, old_logp, adv, mask, cfg, **k):
        total, m = loss(logp, old_logp, adv, mask, cfg, **k)
        calls[-1].update(loss_gate=k["gate"], logp=logp.detach(), old=old_logp, loss_adv=adv, loss_cfg=cfg, lm=m)
        return total, m

    monkeypatch.setattr(U, "forward_logprobs", forward_spy)
    monkeypatch.setattr(U, "shape_advantages", shape_spy)
    monkeypatch.setattr(U, "policy_loss", loss_spy)
    return calls


def test_scripted_tool_episodes_train_through_filter_a_the_gate_the_shaping_and_the_anti_clip(tmp_path, policy, spy):
    model, tok = policy
    cfg = make_config("test_tiny", "tao", [
        "rollout.group_size=6", "rollout.max_new_tokens=160", "rollout.max_turns=3", "rollout.backend=recompute",
        "rollout.template=zero_shot", "update.share_prompt=false", "merge_for_rollout=false",
        "data.prompts_per_step=2", "shaping.coef=0.2", "loss.anti_clip=true", "run.steps=2", "run.save_every=100"])
    with Trainer(cfg, tmp_path / "run", model=model, tok=tok, tasks=TASKS, reward_fn=boxed_42) as tr:
        logs = tr.train()
    trajs = [t for log in logs for t in log.trajs]
    calls = [c for t in trajs for c in t.tool_calls]
    # the tool really ran: valid calls printed 42 / 43, the failing ones raised ZeroDivisionError
    assert {c.stdout for c in calls if c.valid} <= {"42\n", "43\n"} and any(c.valid for c in calls)
    assert any("ZeroDivisionError" in c.stderr for c in calls if not c.valid)
    assert sum(log.filter_result.counts["filter_a/dropped"] for log in logs) == \
        sum(t.n_tool_calls > 0 and t.n_valid_calls == 0 for t in trajs) > 0
    trained = [log for log in logs if not log.skipped]
    assert trained and spy
    gated_total = 0.0
    for c in spy:
        assert c["ent"] is c["ent_out"]                     # shaping used THIS forward's entropy
        cfg_s, mask = c["cfg"], c["mask"]
        g = effective_gate(c["gate"], mask, cfg_s) > 0
        assert torch.equal(g, (c["gate"] > 0) & (mask > 0))  # paper gate: the post-tool tokens
        gated_total += float(g.sum())
        A = c["adv"]
        z = entropy_zscore(c["ent"], mask, cfg_s.z_scope)
        expected = torch.where(g, A * (1 + cfg_s.coef * z), A)
        assert torch.allclose(c["adv_t"], expected, atol=1e-6)
        assert torch.equal(c["loss_gate"], g.float())       # the anti-clip sees the same gate
        ratio = torch.exp(c["logp"] - c["old"])
        anti = g & (ratio > 1 + c["loss_cfg"].eps_high)
        assert c["lm"]["loss/anti_clip_tokens"] == float(anti.sum())
    assert gated_total > 0
    steps_gated = sum(log.metrics["shaping/gated_tokens"] for log in trained)
    assert steps_gated == gated_total
    assert any(log.metrics["shaping/ratio_gated_max"] != 1.0 for log in trained)   # Ã really differs from A
