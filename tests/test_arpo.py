"""ARPO (methods/arpo.py): forks at tool junctures by entropy, the budget, per-batch H_0, the
attribution of shared tokens, and the arm in the Trainer.

Scripted policies (tests/fakes.py, tests/e2e_policy.py) decide what is written, so junctures
happen on purpose in the real sandbox; tiny random Llamas and the embedded model check that forked
rows carry exact records (a teacher-forced forward of the whole sequence)."""

from __future__ import annotations

import math

import pytest
import torch

from fakes import ByteTokenizer, ScriptedPolicy
from tao_lab import filters
from tao_lab.branches import Fork
from tao_lab.hooks import PromptBatch
from tao_lab.methods.arpo import (ArpoAdvantage, ArpoBranching, ArpoConfig, ArpoSource, arpo_branch_probability,
                                  build_hooks, topk_entropy, tree_token_advantages)
from tao_lab.records import ToolCall, Trajectory, post_tool_gate
from tao_lab.episode import Episode
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.sandbox import SandboxConfig, SandboxPool
from tao_lab.update import compute_advantages
from test_rollout import T, teacher_forced_check
from train_helpers import one_thread  # noqa: F401

CODE = "```python\nprint(6 * 7)\n```"
PROMPT = "Q: 6*7?\n"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(max_workers=2, config=SandboxConfig(timeout_s=2.0)) as p:
        yield p


def scripted_rollout(pool, arpo: ArpoConfig, M: int):
    """M rows of one prompt that call the tool once and then answer; the policy writes the script
    whatever is sampled, so every row meets exactly one juncture (the turn after the call)."""
    tok = ByteTokenizer()
    policy = ScriptedPolicy(tok, {PROMPT: [CODE, " so \\boxed{42}."]})
    cfg = RolloutConfig(group_size=M, backend="recompute", seed=0, max_new_tokens=120)
    branching = ArpoBranching(arpo, seed=[0, 1])
    trajs, stats = generate(policy, tok, [T("t", PROMPT)], cfg, pool=pool, prompts=[PROMPT],
                            branch_policy=branching, max_rows=arpo.total_rollouts)
    return trajs, stats, branching


def test_branch_probability_is_clipped_alpha_plus_beta_delta_h():
    assert arpo_branch_probability(1.0, 0.5, 0.2) == pytest.approx(0.7)
    assert arpo_branch_probability(-1.0, 0.5, 0.2) == pytest.approx(0.3)
    assert arpo_branch_probability(5.0, 0.5, 0.2) == 1.0 and arpo_branch_probability(-5.0, 0.5, 0.2) == 0.0
    got = arpo_branch_probability(torch.tensor([-3.0, 0.0, 1.0, 3.0]), 0.5, 0.2)
    assert torch.allclose(got, torch.tensor([0.0, 0.5, 0.7, 1.0]))


def test_a_fork_starts_at_the_juncture_and_keeps_masks_and_gate_on_both_sides(pool):
    trajs, stats, br = scripted_rollout(pool, ArpoConfig(total_rollouts=4, k_tokens=3, alpha=1.0, beta=0.0), M=2)
    assert len(trajs) == 4 and stats.n_branches == 2 and stats.fresh_rows == 0 and stats.branch_refused == 0
    children = [t for t in trajs if t.parent is not None]
    assert len(children) == 2
    for c in children:
        par = next(t for t in trajs if t.sample_idx == c.parent)
        pos = c.branch_pos
        # the juncture: the first token after the observation, i.e. the start of turn 1
        assert par.turn_idx[pos] == 1 and par.turn_idx[pos - 1] == 0 and par.mask[pos - 1] == 0
        assert par.mask[pos] == 1 and par.post_tool[pos] == 1
        assert c.token_ids[:pos] == par.token_ids[:pos] and c.mask[:pos] == par.mask[:pos]
        assert c.post_tool[:pos] == par.post_tool[:pos] and c.tool_calls[0].code == par.tool_calls[0].code
        assert c.text == par.text and c.finish_reason == "boxed"        # the script re-writes turn 1
    for t in trajs:
        assert t.post_tool == post_tool_gate(t.mask, t.turn_idx, t.tool_turns())
        assert sum(t.post_tool) == sum(t.mask[t.turn_idx.index(1):])   # every sampled token of turn 1
    # only the two initial rows decided; the children never re-decided the juncture they came from
    m = br.metrics()
    assert m["junctures"] == 2 and m["branches"] == 2 and m["branch_rate"] == 1.0
    src = ArpoSource(ArpoConfig(), [], seed=0)
    obs = src.observe(1, PromptBatch([], branch_policy=br), trajs)
    assert obs["arpo/tool_calls_per_traj"] == 1.0 and obs["arpo/own_tool_calls_per_traj"] == 0.5
    assert {(j.sample_idx, j.turn) for j in br.junctures} == {(0, 1), (1, 1)}


def test_the_budget_g_is_filled_exactly_with_fresh_rows_when_the_prompt_is_done(pool):
    trajs, stats, br = scripted_rollout(pool, ArpoConfig(total_rollouts=3, k_tokens=3, alpha=1.0, beta=0.0), M=1)
    assert len(trajs) == 3 and stats.n_branches == 1 and stats.fresh_rows == 1 and stats.branch_refused == 0
    fresh = trajs[2]
    assert fresh.parent is None and fresh.branch_pos is None and fresh.finish_reason == "boxed"
    # the fresh row met its juncture with no free row left: decided, not branched
    assert br.metrics()["skipped_full"] == 1 and br.metrics()["junctures"] == 1


def test_alpha_and_beta_zero_give_only_fresh_rows(pool):
    trajs, stats, br = scripted_rollout(pool, ArpoConfig(total_rollouts=4, k_tokens=3, alpha=0.0, beta=0.0), M=2)
    assert len(trajs) == 4 and stats.n_branches == 0 and stats.fresh_rows == 2
    assert all(t.parent is None and t.finish_reason == "boxed" for t in trajs)
    m = br.metrics()
    assert m["junctures"] == 2 and m["branches"] == 0 and m["fresh_rows"] == 2 and m["p_mean"] == 0.0


# ----------------------------------------------------------------------------------------------
# Decisions on hand-made episodes


def episode(h0: float, h1: float, k: int = 4, sample_idx: int = 0, obs: int = 3, done: bool = True) -> Episode:
    """Turn 0: k sampled tokens of entropy h0 then a call's observation (obs forced tokens); turn 1:
    k sampled tokens of entropy h1."""
    n0 = k + obs
    tr = Trajectory(task_id="t", group_id=0, prompt_ids=[1], token_ids=[5] * (n0 + k),
                    mask=[1] * k + [0] * obs + [1] * k, logprobs=[-1.0] * (n0 + k),
                    entropies=[h0] * k + [0.0] * obs + [h1] * k, turn_idx=[0] * n0 + [1] * k,
                    post_tool=[0] * n0 + [1] * k, n_turns=2, sample_idx=sample_idx,
                    tool_calls=[ToolCall(turn=0, protocol="fenced", code="", status="ok", stdout="1", stderr="",
                                         duration_s=0.0, tier="t", observation="1", valid=True)])
    ep = Episode(tr, 3, 0, [0, n0])
    ep.done = done
    return ep


def test_the_k_token_window_waits_while_the_turn_is_open_and_reads_delta_h():
    cfg = ArpoConfig(total_rollouts=2, k_tokens=4, alpha=0.5, beta=0.2)
    br = ArpoBranching(cfg, seed=0)
    open_ep = episode(1.0, 2.0, done=False)
    open_ep.traj.mask[-1] = 0                                # only 3 of the k=4 tokens sampled yet
    assert br([[open_ep]], [1]) == [] and br.junctures == []
    br([[episode(1.0, 2.5)]], [1])
    (j,) = br.junctures
    assert j.delta_h == pytest.approx(1.5) and j.p == pytest.approx(0.8) and j.pos == 7 and j.turn == 1


def test_the_code_reading_decides_at_the_result_from_the_turn_that_made_the_call():
    cfg = ArpoConfig(total_rollouts=2, k_tokens=4, measure="previous_turn")
    br = ArpoBranching(cfg, seed=0)
    ep = episode(1.0, 9.0, done=False)
    del ep.traj.mask[-3:]                                    # turn 1 has just begun: 1 token
    br([[ep]], [1])
    (j,) = br.junctures
    assert j.delta_h == 0.0 and j.p == 0.5                   # the first call's ΔH is exactly 0 [code]


def test_the_top10_proxy_is_a_sum_over_the_k_positions():
    br = ArpoBranching(ArpoConfig(total_rollouts=2, k_tokens=4, entropy="top10_proxy"), seed=0)
    ep = episode(0.0, 0.0)
    ep.topk_entropy = {i: (0.1 if i < 4 else 0.3) for i, m in enumerate(ep.traj.mask) if m}
    br([[ep]], [1])
    assert br.junctures[0].delta_h == pytest.approx(4 * 0.3 - 4 * 0.1)


def test_the_seeded_branch_rate_matches_p():
    cfg = ArpoConfig(total_rollouts=2, k_tokens=4, alpha=0.5, beta=0.2)
    n = 3000
    br = ArpoBranching(cfg, seed=[0, 7])
    forks = br([[episode(1.0, 2.0)] for _ in range(n)], [1] * n)          # ΔH = 1 -> p = 0.7
    rate = br.metrics()["branch_rate"]
    assert abs(rate - 0.7) < 4 * math.sqrt(0.7 * 0.3 / n)
    assert sum(f.pos > 0 for f in forks) == br.metrics()["branches"]
    again = ArpoBranching(cfg, seed=[0, 7])
    again([[episode(1.0, 2.0)] for _ in range(n)], [1] * n)
    assert [j.branched for j in again.junctures] == [j.branched for j in br.junctures]


def test_the_initial_entropy_is_reset_per_batch():
    src = ArpoSource(ArpoConfig(total_rollouts=2, k_tokens=4, alpha=0.5, beta=0.2), [T("a", "x"), T("b", "y")], seed=0)
    b1 = src.next_batch(1, 1)
    b1.branch_policy([[episode(5.0, 5.0)]], [1])                 # batch 1: row 0 starts at H_0 = 5
    b2 = src.next_batch(2, 1)
    assert b2.branch_policy is not b1.branch_policy and b2.max_rows == 2
    b2.branch_policy([[episode(1.0, 2.0)]], [1])                 # batch 2: row 0 starts at H_0 = 1
    (j,) = b2.branch_policy.junctures
    # the code's never-reset dictionary would compare with batch 1's H_0: ΔH = -3, p = 0
    assert j.delta_h == pytest.approx(1.0) and j.p == pytest.approx(0.7)
    m = src.observe(2, b2, [])
    assert m["arpo/junctures"] == 1 and "arpo/delta_h_branched" in m
    assert src.state_dict() == {"cursor": 2}
    src.load_state_dict({"cursor": 1})
    assert src.next_batch(2, 1).tasks == b2.tasks             # a resumed step draws the same prompt


def test_config_is_validated_and_the_hooks_refuse_g_below_m():
    from tao_lab.presets import make_config

    with pytest.raises(ValueError, match="entropy"):
        ArpoConfig(entropy="top5")
    with pytest.raises(ValueError, match="attribution"):
        ArpoConfig(attribution="medium")
    with pytest.raises(ValueError, match="measure"):
        ArpoConfig(measure="later")
    cfg = make_config("test_tiny", "arpo", ["rollout.group_size=4", "arpo.total_rollouts=2"])
    assert cfg.method == "arpo" and cfg.filter.rules == () and cfg.shaping.kind == "none"
    with pytest.raises(ValueError, match="total_rollouts=2.*group_size=4"):
        build_hooks(cfg, [], None)


# ----------------------------------------------------------------------------------------------
# Advantage attribution


def node(sample_idx, n, parent=None, pos=None, reward=0.0, group=0):
    return Trajectory(task_id="t", group_id=group, prompt_ids=[1], token_ids=list(range(n)), mask=[1] * n,
                      logprobs=[0.0] * n, entropies=[0.0] * n, turn_idx=[0] * n, post_tool=[0] * n,
                      sample_idx=sample_idx, parent=parent, branch_pos=pos, reward=reward)


def test_hard_attribution_gives_a_shared_token_the_mean_advantage_of_the_rows_sharing_it():
    A = node(0, 10)                      # root, not trained
    B = node(1, 10, parent=0, pos=4)     # copies A[:4]
    C = node(2, 9, parent=1, pos=7)      # copies B[:7] (so A[:4] too)
    D = node(3, 6)                       # a fresh row
    out = tree_token_advantages([B, C, D], torch.tensor([2.0, 3.0, -1.0]), [A, B, C, D])
    assert torch.equal(out[0], torch.tensor([2.5] * 7 + [2.0] * 3))
    assert torch.equal(out[1], torch.tensor([2.5] * 7 + [3.0] * 2))
    assert torch.equal(out[2], torch.tensor([-1.0] * 6))
    # a shared token's advantage summed over its copies is what soft gives it
    assert float(out[0][:7].sum() + out[1][:7].sum()) == pytest.approx(7 * (2.0 + 3.0))
    # separate groups never share, even with the same sample indices
    B2 = node(1, 10, parent=0, pos=4, group=1)
    out = tree_token_advantages([B, B2], torch.tensor([1.0, -1.0]), [A, B, B2])
    assert torch.equal(out[0], torch.ones(10)) and torch.equal(out[1], -torch.ones(10))


def test_soft_is_grpo_and_hard_only_adds_token_advantages():
    trajs = [node(0, 8, reward=1.0), node(1, 8, parent=0, pos=3), node(2, 5, reward=1.0), node(3, 8, parent=0, pos=5)]
    fres = filters.apply(trajs, filters.FilterConfig(rules=(), refill="none", min_n=1))
    ref, ref_all, _ = compute_advantages(trajs, fres, "unbiased")
    soft, soft_all, _ = ArpoAdvantage("soft")(trajs, fres, "unbiased")
    hard, hard_all, m = ArpoAdvantage("hard")(trajs, fres, "unbiased")
    assert torch.equal(soft.adv, ref.adv) and soft.token_adv is None and torch.equal(hard.adv, ref.adv)
    assert torch.equal(hard_all, ref_all) and m["arpo/hard_changed_tokens"] > 0
    a = ref.adv
    assert float(hard.token_adv[1][0]) == pytest.approx(float((a[0] + a[1] + a[3]) / 3))   # 3 rows share pos 0
    assert float(hard.token_adv[3][4]) == pytest.approx(float((a[0] + a[3]) / 2))          # 2 rows share pos 4


def test_on_policy_hard_and_soft_give_the_same_gradient_on_a_real_tree(tiny):
    from tao_lab.advantages import ShapingConfig
    from tao_lab.loss import LossConfig
    from tao_lab.models import ModelConfig, finish_policy
    from tao_lab.update import UpdateConfig, update_policy

    model, tok = tiny
    model = finish_policy(model, ModelConfig(lora_r=4))

    def tree(episodes, free):               # 3 levels: row 2 forks row 0 at 5, row 3 forks row 2 at 8
        eps = episodes[0]
        if free[0] and len(eps) == 2 and len(eps[0].traj.token_ids) > 8:
            return [Fork(0, 0, 5)]
        if free[0] and len(eps) == 3 and len(eps[2].traj.token_ids) > 9:
            return [Fork(0, 2, 8)]
        return []

    cfg = RolloutConfig(group_size=2, max_new_tokens=14, temperature=1.0, seed=0, tools=False)
    trajs, stats = generate(model.eval(), tok, [T("a", "x")], cfg, prompts=["Hello there"], branch_policy=tree,
                            max_rows=4)
    assert stats.n_branches == 2 and [t.parent for t in trajs] == [None, None, 0, 2]
    teacher_forced_check(model, trajs, 1.0, 1e-4)          # forked KV caches gave exact records
    for t, r in zip(trajs, [1.0, 0.0, 0.0, 1.0]):
        t.reward = r
    fres = filters.apply(trajs, filters.FilterConfig(rules=(), refill="none", min_n=1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for attribution in ("soft", "hard"):
        batch, _, _ = ArpoAdvantage(attribution)(trajs, fres, "unbiased")

        class Capture(torch.optim.SGD):
            def step(self, closure=None):
                grads[attribution] = [p.grad.clone() for p in params]

        update_policy(model, Capture(params, lr=0.0), batch, params, tok.pad_token_id or 0,
                      cfg=UpdateConfig(micro_batch_size=2), shaping=ShapingConfig(kind="none"), loss=LossConfig(),
                      grad_clip=0.0, temperature=1.0, max_new_tokens=14)
    assert any(g.abs().sum() > 0 for g in grads["soft"])
    for a, b in zip(grads["soft"], grads["hard"]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Real forward passes


def test_the_top10_proxy_is_recorded_only_when_asked_and_equals_a_teacher_forced_recompute(tiny):
    model, tok = tiny
    seen = {}

    class Recorder(ArpoBranching):
        def __call__(self, episodes, free):
            seen.update({id(e): e for eps in episodes for e in eps})
            return []

    cfg = RolloutConfig(group_size=2, max_new_tokens=10, temperature=0.9, seed=0, tools=False)
    generate(model, tok, [T("a", "x")], cfg, prompts=["Hello there"],
             branch_policy=Recorder(ArpoConfig(entropy="top10_proxy"), seed=0))
    for ep in seen.values():
        tr = ep.traj
        assert sorted(ep.topk_entropy) == [i for i, m in enumerate(tr.mask) if m]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tr.full_ids()])).logits[0, len(tr.prompt_ids) - 1:-1]
        want = topk_entropy(logits, 0.9, 10)
        got = torch.tensor([ep.topk_entropy[i] for i in range(len(tr.token_ids))])
        assert torch.allclose(got, want, atol=1e-4) and (got > 0).all() and (got < 1).all()
    seen.clear()

    class Plain(Recorder):
        topk_logprobs = 0

    generate(model, tok, [T("a", "x")], cfg, prompts=["Hello there"], branch_policy=Plain(ArpoConfig(), seed=0))
    assert seen and all(ep.topk_entropy == {} for ep in seen.values())


def test_the_trainer_runs_method_arpo_with_g_rows_per_group_and_logs_the_branching(tmp_path):
    from tao_lab.cli import main
    from tao_lab.records import RunStore

    out = tmp_path / "arpo_run"
    assert main(["train", "--preset", "test_tiny", "--method", "arpo", "--steps", "1", "--out", str(out),
                 "--quiet-bar", "--set", "arpo.total_rollouts=3", "arpo.attribution=hard"]) == 0
    store = RunStore(out)
    trajs = store.read_step(1)
    groups = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    assert len(groups) == 2 and all(len(g) == 3 for g in groups.values())
    # a random tiny model never calls the tool: no junctures, the third row of each prompt is fresh
    m = store.metrics().iloc[-1]
    assert m["arpo/fresh_rows"] == 2 and m["arpo/junctures"] == 0 and m["arpo/rows_per_group"] == 3
    assert m["rollout/fresh_rows"] == 2


@pytest.mark.smoke
def test_embedded_model_forks_at_tool_junctures_match_a_teacher_forced_forward(smol, pool):
    from tao_lab.tasks import load_tasks

    model, tok = smol
    tasks = load_tasks("arith-L1", split="test", limit=1)
    arpo = ArpoConfig(total_rollouts=4, k_tokens=5, alpha=1.0, beta=0.0)
    br = ArpoBranching(arpo, seed=[0, 1])
    cfg = RolloutConfig(group_size=2, max_new_tokens=96, temperature=1.0, seed=0, template="few_shot", max_turns=3)
    trajs, stats = generate(model, tok, tasks, cfg, pool=pool, branch_policy=br, max_rows=arpo.total_rollouts)
    assert len(trajs) == 4 and stats.n_tool_calls > 0
    assert stats.n_branches > 0, "few-shot SmolLM2 (seed 0) reaches a tool juncture in its 2 initial rows"
    for c in (t for t in trajs if t.parent is not None):
        par = next(t for t in trajs if t.group_id == c.group_id and t.sample_idx == c.parent)
        p = c.branch_pos
        assert par.mask[p - 1] == 0 and par.turn_idx[p] == par.turn_idx[p - 1] + 1      # right after a result
        assert c.token_ids[:p] == par.token_ids[:p] and c.post_tool[p] == 1
    for t in trajs:
        assert t.post_tool == post_tool_gate(t.mask, t.turn_idx, t.tool_turns())
    teacher_forced_check(model, trajs, 1.0, 1e-3)        # the forked KV cache gave exact records
