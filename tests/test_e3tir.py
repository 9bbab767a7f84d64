"""E3-TIR (methods/e3tir.py, methods/e3tir_experts.py): experts built in the real sandbox, anchor
prefixes through a real rollout and collate, mixed advantages, the detach rule's zero gradient
through update_policy, the dynamic boundary, the source's resume, and `--method e3tir`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from fakes import ByteTokenizer
from tao_lab import filters
from tao_lab import update as U
from tao_lab.methods.e3tir import (E3TIRAdvantage, E3TIRConfig, E3TIRSource, expert_share, mixed_advantage,
                                   pick_anchors, roi, shared_prefix_rule, tree_keys, trie_nodes)
from tao_lab.methods.e3tir_experts import (anchor_cuts, arith_code, build_experts, expert_from_demo,
                                           expert_text)
from tao_lab.presets import make_config
from tao_lab.records import Trajectory
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.sandbox import SandboxConfig, SandboxPool
from tao_lab.tasks import Task, load_demos, load_tasks
from train_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

ARITH = [t for lv in (1, 2, 3, 4) for t in load_tasks(f"arith-L{lv}", split="train")]


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(max_workers=2, config=SandboxConfig(timeout_s=2.0)) as p:
        yield p


def row(gid, k, reward, tokens, prefix_len=0, parent=None):
    n = len(tokens)
    return Trajectory(task_id=f"t{gid}", group_id=gid, prompt_ids=[1, 2, 3], token_ids=list(tokens),
                      mask=[0] * prefix_len + [1] * (n - prefix_len), logprobs=[0.0] * n, entropies=[0.0] * n,
                      turn_idx=[0] * n, post_tool=[0] * n, reward=reward, correct=reward > 0, sample_idx=k,
                      parent=parent, prefix_len=prefix_len)


# ----------------------------------------------------------------------------------------------
# Experts


def test_arith_code_solves_every_bundled_arithmetic_training_prompt():
    assert len(ARITH) == 800
    for t in ARITH:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(arith_code(t), {})           # the parser's check; the sandbox runs the experts below
        assert out.getvalue().strip() == t.answer, t.prompt


def test_build_experts_runs_the_code_in_the_sandbox_and_keeps_only_verified_ones(pool):
    one_per_kind = list({(t.meta["level"], t.meta["kind"]): t for t in ARITH}.values())
    wrong = Task("bad", ARITH[0].prompt, "1", dict(ARITH[0].meta))          # gold disagrees with the code
    word = load_tasks("word-L1", split="train", limit=1)[0]                  # no expert code
    experts, counts = build_experts(one_per_kind + [wrong, word], pool=pool)
    assert counts == {"made": len(one_per_kind), "no_solution": 1, "wrong_output": 1}
    assert set(experts) == {t.id for t in one_per_kind}
    for t in one_per_kind:
        e = experts[t.id]
        assert f"Code execution result: {t.answer}\n" in e.text and e.text.endswith(f"\\boxed{{{t.answer}}}.")
    tags, _ = build_experts(one_per_kind[:1], protocol="tags", pool=pool)
    e = tags[one_per_kind[0].id]
    assert f"</python>\n<result>\n{one_per_kind[0].answer}\n</result>\n<answer>\\boxed{{" in e.text
    # the same text the bundled demonstrations show, in both protocols
    for d in load_demos():
        if d.meta["family"] == "arith":
            obs = f"\nCode execution result: {d.steps[0]['output']}\n" if d.protocol == "fenced" \
                else f"\n<result>\n{d.steps[0]['output']}\n</result>\n"
            assert expert_text(d.steps[0]["code"], obs, d.answer, d.protocol) == d.completion


def test_demos_are_experts_and_anchor_cuts_are_shortest_first_mask_zero_prefixes(smol_tokenizer):
    demos = load_demos(protocol="fenced")
    assert all(expert_from_demo(d) is not None for d in demos)
    two_calls = next(expert_from_demo(d) for d in demos if len(d.steps) == 2)
    cuts = anchor_cuts(smol_tokenizer, two_calls, cuts="calls+prose")
    assert [len(c.tool_calls) for c in cuts] == [0, 1, 2]
    assert [len(c.token_ids) for c in cuts] == sorted(len(c.token_ids) for c in cuts)
    assert "```" not in smol_tokenizer.decode(cuts[0].token_ids)                # prose only
    assert smol_tokenizer.decode(cuts[1].token_ids).endswith(two_calls.text.split("\n")[4] + "\n")
    assert cuts[2].n_turns == 3 and all(c.in_prefix for c in cuts[2].tool_calls)
    assert len(anchor_cuts(smol_tokenizer, two_calls, cuts="calls")) == 2
    assert anchor_cuts(smol_tokenizer, two_calls, max_tokens=len(cuts[1].token_ids) + 8) == cuts[:2]
    tags = next(expert_from_demo(d) for d in load_demos(protocol="tags") if len(d.steps) == 2)
    cut = anchor_cuts(smol_tokenizer, tags, protocol="tags")[1]
    assert smol_tokenizer.decode(cut.token_ids).endswith("</result>\n") and len(cut.tool_calls) == 1


# ----------------------------------------------------------------------------------------------
# Anchor rows through a real rollout and collate


def test_anchor_prefix_is_mask_zero_and_out_of_loss_entropy_and_gate(tiny, pool):
    model, tok = tiny
    tasks = load_tasks("arith-L2", split="train", limit=2)
    src = E3TIRSource(tasks, tok, E3TIRConfig(anchors=2, continuations=1), seed=0, group_size=3,
                      max_new_tokens=64, pool=pool)
    batch = src.next_batch(1, 2)
    assert batch.info["e3tir/prefix_rows"] == 4 and batch.info["e3tir/self_rows"] == 2
    cfg = RolloutConfig(group_size=3, max_new_tokens=64, max_turns=2, template="zero_shot", seed=0)
    trajs, stats = generate(model, tok, batch.tasks, cfg, pool=pool, prefixes=batch.prefixes)
    anchored = [t for t in trajs if t.prefix_len > 0]
    assert len(anchored) == 4 and stats.prefix_tokens == sum(t.prefix_len for t in anchored)
    for t, p in zip(anchored, [p for rows in batch.prefixes for p in rows if p is not None]):
        n = t.prefix_len
        assert t.token_ids[:n] == p.token_ids and n < len(t.token_ids)          # the policy continued
        assert t.mask[:n] == [0] * n and t.logprobs[:n] == [0.0] * n and t.entropies[:n] == [0.0] * n
        assert t.post_tool[:n] == [0] * n and any(t.mask[n:])
        if p.tool_calls:                       # after the expert's call the policy's turn is post-tool
            assert t.tool_calls[0].in_prefix and all(t.post_tool[i] == t.mask[i] for i in range(n, len(t.mask))
                                                     if t.turn_idx[i] == 1)
    mb = U.collate(anchored, [1.0] * 4, pad_id=0, device="cpu", row_adv=torch.ones(4))
    for i, t in enumerate(anchored):
        c0, n = len(t.prompt_ids) - mb.start - 1, t.prefix_len     # the column of completion token 0
        assert mb.mask[i, c0:c0 + n].sum() == 0 and mb.gate[i, c0:c0 + n].sum() == 0
        assert mb.old_logp[i, c0:c0 + n].abs().sum() == 0
        assert mb.mask[i, c0 + n] == 1                              # the first sampled token trains


# ----------------------------------------------------------------------------------------------
# Mixed advantage and the shared-prefix rule


def _group():
    """One prompt: 2 self rows, 2 rows of anchor A, 3 rows of anchor B; shared generated prefixes."""
    return [row(0, 0, 1.0, [5, 6, 7]), row(0, 1, 0.0, [5, 6, 8]),
            row(0, 2, 1.0, [9, 9, 5, 6], 2), row(0, 3, 0.0, [9, 9, 5, 7], 2),
            row(0, 4, 1.0, [9, 3, 1], 1), row(0, 5, 1.0, [9, 3, 2], 1), row(0, 6, 0.0, [9, 4, 4], 1),
            row(1, 0, 1.0, [5, 6]), row(1, 1, 0.0, [5, 7])]


def test_lambda_one_equals_grpo_and_tree_advantages_sum_to_zero_per_anchor():
    trajs = _group()
    fres = filters.apply(trajs, filters.FilterConfig(rules=(), refill="none"))
    grpo, adv_grpo, _ = U.compute_advantages(trajs, fres)
    for rule in ("none", "detach"):
        mine, adv, _ = E3TIRAdvantage(E3TIRConfig(lam=1.0, detach=rule))(trajs, fres)
        assert torch.equal(mine.adv, grpo.adv) and torch.equal(adv, adv_grpo)
    assert mine.token_adv is None and mine.token_weight is not None
    trees = tree_keys(trajs, [t.group_id for t in trajs])
    assert trees.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    g = torch.rand(50, generator=torch.Generator().manual_seed(0)).round()
    tid = torch.randint(0, 7, (50,), generator=torch.Generator().manual_seed(1))
    a, a_global, a_tree = mixed_advantage(g, tid // 3, tid, lam=0.3)
    for k in tid.unique():
        assert abs(float(a_tree[tid == k].sum())) < 1e-5
    assert torch.allclose(a, 0.3 * a_global + 0.7 * a_tree)


def test_trie_marks_shared_tokens_and_the_rules_detach_or_average_disagreeing_ones():
    trajs = _group()[:7]
    trees = tree_keys(trajs, [0] * 7)
    nodes = trie_nodes([t.token_ids for t in trajs], [t.prefix_len for t in trajs], trees.tolist())
    assert nodes[0][:2].tolist() == nodes[1][:2].tolist() and nodes[0][2] != nodes[1][2]
    assert nodes[2][:2].tolist() == [-1, -1] and nodes[2][2] == nodes[3][2] != -1 and nodes[2][3] != nodes[3][3]
    assert nodes[0][0] != nodes[2][2]                 # same tokens, different anchors: not shared
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.5, 0.5, -1.0])
    owner = torch.cat([torch.full((len(x),), i) for i, x in enumerate(nodes)])
    a, w = shared_prefix_rule(torch.cat(nodes), owner, adv, "detach")
    w = w.split([len(x) for x in nodes])
    assert w[0].tolist() == [0, 0, 1] and w[1].tolist() == [0, 0, 1]
    assert w[2].tolist() == [1, 1, 0, 1] and w[3].tolist() == [1, 1, 0, 1]
    assert w[4].tolist() == [1, 1, 1] and w[5].tolist() == [1, 1, 1] and w[6].tolist() == [1, 1, 1]
    assert torch.equal(a, adv[owner])
    m, w = shared_prefix_rule(torch.cat(nodes), owner, adv, "mean")
    m = m.split([len(x) for x in nodes])
    assert torch.all(w == 1) and m[0].tolist() == [0, 0, 1] and m[4].tolist() == [0.5, 0.5, 0.5]
    assert m[6].tolist() == [-1, -1, -1] and torch.equal(shared_prefix_rule(torch.cat(nodes), owner, adv, "none")[0],
                                                       adv[owner])


class ForkOnce:
    """Fork sample 0 of every task once at `pos`: the child shares its first `pos` generated tokens."""

    def __init__(self, pos):
        self.pos, self.done = pos, False

    def __call__(self, episodes, free):
        src = episodes[0][0]
        if self.done or not free[0] or len(src.traj.token_ids) <= self.pos:
            return []
        self.done = True
        from tao_lab.branches import Fork
        return [Fork(task=0, sample_idx=src.traj.sample_idx, pos=self.pos)]


def test_detach_gives_exactly_zero_gradient_on_shared_disagreeing_tokens(tiny):
    model, tok = tiny
    cfg = RolloutConfig(group_size=2, max_new_tokens=12, temperature=1.0, seed=0, tools=False, template="zero_shot")
    trajs, _ = generate(model, tok, [Task("a", "Compute 12 * 34.", "408")], cfg, branch_policy=ForkOnce(5), max_rows=3)
    child = trajs[2]
    assert child.parent == 0 and child.token_ids[:5] == trajs[0].token_ids[:5]
    for t, r in zip(trajs, (1.0, 0.0, 0.0)):
        t.reward = r                     # parent right, its fork wrong: the shared 5 tokens disagree
    fres = filters.apply(trajs, filters.FilterConfig(rules=(), refill="none"))
    tc = make_config("test_tiny", "e3tir", ["update.share_prompt=false", "update.micro_batch_size=4"])
    grads = {}
    for rule in ("detach", "none"):
        batch, _, metrics = E3TIRAdvantage(E3TIRConfig(lam=0.5, detach=rule))(trajs, fres)
        seen = []

        def keep_grad(module, args, out):     # returns None: the output is not replaced
            out.register_hook(seen.append)

        h = model.lm_head.register_forward_hook(keep_grad)
        try:
            U.update_policy(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, list(model.parameters()),
                            pad_id=0, cfg=tc.update, shaping=tc.shaping, loss=tc.loss, grad_clip=0.0,
                            temperature=1.0, max_new_tokens=12)
        finally:
            h.remove()
        grads[rule] = seen[0].abs().sum(-1)   # (rows, columns): column j predicts completion token j
        if rule == "detach":
            assert metrics["e3tir/detached_tokens"] == 10
    for i in (0, 2):
        assert torch.all(grads["detach"][i, :5] == 0) and torch.all(grads["none"][i, :5] > 0)
        assert torch.all(grads["detach"][i, 5:12] > 0)          # after the fork they diverge and train
    assert torch.all(grads["detach"][1, :12] > 0)


# ----------------------------------------------------------------------------------------------
# Dynamic boundary, resume, ROI, the arm


def test_expert_share_and_the_source_plan_shrink_as_the_pass_rate_rises(pool, smol_tokenizer):
    assert [expert_share(p, 0.5) for p in (0.0, 0.25, 0.5, 0.9)] == [1.0, 0.5, 0.0, 0.0]
    assert pick_anchors(3, 1.0, 2) == [1, 2] and pick_anchors(3, 0.5, 2) == [0, 1]
    assert pick_anchors(3, 0.3, 2) == [0] and pick_anchors(3, 0.0, 2) == []
    task = load_tasks("arith-L3", split="train", limit=1)
    src = E3TIRSource(task, smol_tokenizer, E3TIRConfig(stop=0.5, ema=0.5), seed=0, group_size=6, pool=pool)
    plans = []
    for solved in (0, 1, 4):      # self rows the verifier passed: p = 0, then 0.25, then 0.625
        b = src.next_batch(len(plans) + 1, 1)
        plans.append(src.schedule[-1])
        rows = [row(0, k, 0.0, [1]) for k in range(plans[-1]["self_rows"])] + [row(0, 9, 1.0, [1, 2], 1)]
        for k, t in enumerate(rows):
            t.task_id, t.correct = task[0].id, k < solved or t.prefix_len > 0   # anchored rows never count
        src.observe(len(plans), b, rows)
    assert [p["share"] for p in plans] == [1.0, 1.0, pytest.approx(0.5)]
    assert [p["prefix_rows"] for p in plans] == [4, 4, 2]
    assert plans[2]["anchor_tokens"][0] < plans[0]["anchor_tokens"][1]          # fewer and shorter
    b = src.next_batch(4, 1)
    assert src.schedule[-1]["prefix_rows"] == 0 and b.prefixes == [[None] * 6] and b.info["e3tir/plain_rl_prompts"] == 1


def test_source_resumes_from_its_json_state_and_counts_expert_data_once(pool, smol_tokenizer):
    tasks = load_tasks("arith-L1", split="train", limit=5)
    make = lambda: E3TIRSource(tasks, smol_tokenizer, E3TIRConfig(expert_tasks=3), seed=7, group_size=4, pool=pool)
    a = make()
    for s in (1, 2, 3):
        b = a.next_batch(s, 2)
        a.observe(s, b, [])
        a.pass_rate[b.tasks[0].id] = 0.4 * s
    state = json.loads(json.dumps(a.state_dict()))
    assert len(a.used) <= 3 and a.state_dict()["used"] == a.used          # only the budgeted tasks
    assert b.info["e3tir/expert_tokens"] == sum(a.used.values())
    c = make()
    c.load_state_dict(state)
    for s in (4, 5):
        x, y = a.next_batch(s, 2), c.next_batch(s, 2)
        assert [t.id for t in x.tasks] == [t.id for t in y.tasks] and x.info == y.info
        assert [[p and p.key() for p in r] for r in x.prefixes] == [[p and p.key() for p in r] for r in y.prefixes]


def test_the_expert_budget_goes_to_the_first_drawn_tasks_or_a_random_subset(smol_tokenizer):
    from tao_lab.hooks import seeded_order
    tasks = load_tasks("arith-L1", split="train", limit=40)
    drawn = E3TIRSource(tasks, smol_tokenizer, E3TIRConfig(expert_tasks=4), seed=5, group_size=4)
    first = {tasks[i].id for i in seeded_order(len(tasks), 0, 4, 5)[0]}
    assert drawn.allowed == first                      # the run's first 4 prompts are the budgeted ones
    rand = E3TIRSource(tasks, smol_tokenizer, E3TIRConfig(expert_tasks=4, budget_order="random"), seed=5, group_size=4)
    assert len(rand.allowed) == 4 and rand.allowed != first
    with pytest.raises(ValueError, match="budget_order"):
        E3TIRConfig(budget_order="first")


def test_roi_and_config_checks_name_the_field():
    assert roi(6.0, 1800.0, 0.0, 0.01) == pytest.approx(12.0) and roi(6.0, 1800.0, 180000, 0.01) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="roi"):
        roi(1.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="detach"):
        E3TIRConfig(detach="soft")
    with pytest.raises(ValueError, match="self_rows"):
        E3TIRSource([], ByteTokenizer(), E3TIRConfig(self_rows=4), seed=0, group_size=4)


def test_trainer_runs_method_e3tir_on_test_tiny(tmp_path):
    from tao_lab.cli import main
    from tao_lab.records import RunStore

    out = tmp_path / "run"
    assert main(["train", "--preset", "test_tiny", "--method", "e3tir", "--steps", "1", "--out", str(out),
                 "--quiet-bar", "--set", "rollout.group_size=4", "rollout.max_new_tokens=56"]) == 0
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert m["e3tir/prefix_rows"] == 6 and m["e3tir/expert_tokens"] > 0 and m["skipped"] == 0
    assert m["e3tir/expert_rows"] == 2 and m["update/rows"] == 10          # 2 x G = 4 rollout rows + 2 expert rows
    trajs = RunStore(out).read_step(1)
    assert sum(t.prefix_len > 0 for t in trajs) == 6


def test_the_e3tir_grid_spec_builds_a_config_for_every_arm(tmp_path):
    from tao_lab.grid import load_spec, make_cell_config

    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments" / "e3tir_vs_grpo.toml")
    cfgs = {a.name: make_cell_config(spec, a, 0, tmp_path / a.name) for a in spec.arms}
    assert cfgs["grpo"].method == "grpo" and cfgs["e3tir"].method == "e3tir"
    assert cfgs["e3tir_lam1"].e3tir.lam == 1.0 and cfgs["e3tir_nodetach"].e3tir.detach == "none"
    assert cfgs["e3tir"].e3tir.expert_tasks == 20 and cfgs["e3tir"].filter.rules == ()


def test_the_offpolicy_expert_row_joins_its_group_and_lambda_one_is_grpo_over_the_union(pool, smol_tokenizer):
    tasks = load_tasks("arith-L2", split="train", limit=2)
    src = E3TIRSource(tasks, smol_tokenizer, E3TIRConfig(), seed=0, group_size=4, pool=pool)
    src.load_state_dict({"cursor": 0, "pass_rate": {tasks[1].id: 0.9}})      # tasks[1]: plain RL now
    b = src.next_batch(1, 2)
    assert set(src.guided) == {t.id for t in b.tasks if t.id != tasks[1].id}
    trajs = [row(g, k, float(k % 2), [7, 8, 9], prefix_len=1 if k < 2 else 0) for g in range(2) for k in range(4)]
    for t in trajs:
        t.task_id = b.tasks[t.group_id].id
    fres = filters.apply(trajs, filters.FilterConfig(rules=(), refill="none"))
    batch, adv, metrics = E3TIRAdvantage(E3TIRConfig(lam=1.0, detach="none"), src)(trajs, fres)
    assert metrics["e3tir/expert_rows"] == 1 and len(batch.trajs) == 9
    e = batch.trajs[-1]
    g = b.tasks.index(next(t for t in b.tasks if t.id in src.guided))
    assert e.group_id == g and e.prompt_ids == trajs[4 * g].prompt_ids and e.reward == 1.0
    assert smol_tokenizer.decode([x for x, m in zip(e.token_ids, e.mask) if not m]) == \
        f"\nCode execution result: {b.tasks[g].answer}\n"                       # the observation: mask 0
    assert smol_tokenizer.decode([x for x, m in zip(e.token_ids, e.mask) if m]).startswith("I'll compute")
    assert all(lp == 0.0 for lp in e.logprobs)                                   # behaviour prob 1
    union = trajs + [e]
    grpo, _, _ = U.compute_advantages(union, filters.apply(union, filters.FilterConfig(rules=(), refill="none")))
    key = lambda ub: {(t.group_id, t.sample_idx): float(a) for t, a in zip(ub.trajs, ub.adv)}   # noqa: E731
    assert key(batch) == key(grpo) and len(key(grpo)) == 9
