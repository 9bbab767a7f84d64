"""Forced prefixes and branches: records, masks, the post-tool gate, the tree in the run store."""

import pytest

from fakes import ByteTokenizer, ScriptedPolicy
from tao_lab.branches import Fork, prefix_from_text, prefix_from_trajectory
from tao_lab.records import RunStore, post_tool_gate, tree_frame
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.sandbox import SandboxConfig, SandboxPool
from test_rollout import T, teacher_forced_check


CODE = "```python\nprint(6 * 7)\n```"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(max_workers=2, config=SandboxConfig(timeout_s=1.0)) as p:
        yield p


class ForkOnce:
    """Fork sample 0 of every task once at `pos` (after it has written past it)."""

    def __init__(self, pos):
        self.pos, self.done = pos, set()

    def __call__(self, episodes, free):
        out = []
        for t, eps in enumerate(episodes):
            src = eps[0]
            if t not in self.done and free[t] and len(src.traj.token_ids) > self.pos:
                self.done.add(t)
                out.append(Fork(task=t, sample_idx=src.traj.sample_idx, pos=self.pos))
        return out


@pytest.mark.parametrize("backend", ["kv", "recompute"])
def test_branched_rows_records_equal_a_teacher_forced_forward(tiny, backend):
    model, tok = tiny
    cfg = RolloutConfig(group_size=2, max_new_tokens=20, temperature=0.8, seed=0, tools=False, backend=backend)
    trajs, stats = generate(model, tok, [T("a", "x"), T("b", "y")], cfg, prompts=["Hello there, how", "Compute 12"],
                            branch_policy=ForkOnce(5), max_rows=3)
    children = [t for t in trajs if t.parent is not None]
    assert stats.n_branches == 2 and len(children) == 2
    for c in children:
        par = next(t for t in trajs if t.group_id == c.group_id and t.sample_idx == c.parent)
        assert c.branch_pos == 5 and c.token_ids[:5] == par.token_ids[:5] and c.logprobs[:5] == par.logprobs[:5]
    teacher_forced_check(model, trajs, 0.8, 1e-4)


def test_forced_prefix_tokens_have_mask_zero_and_the_next_turn_is_post_tool(pool):
    tok = ByteTokenizer()
    prompt = "Q: 6*7?\n"
    expert = CODE + "\nCode execution result: 42\n" + " so \\boxed{42}."
    prefix = prefix_from_text(tok, expert, steps=1)
    policy = ScriptedPolicy(tok, {prompt: [CODE, " so \\boxed{42}."]})
    cfg = RolloutConfig(group_size=2, backend="recompute", seed=0)
    (a, b), _ = generate(policy, tok, [T("t", prompt)], cfg, pool=pool, prompts=[prompt],
                         prefixes=[[prefix, None]])
    n = len(prefix.token_ids)
    assert a.prefix_len == n and a.mask[:n] == [0] * n and a.post_tool[:n] == [0] * n
    assert all(lp == 0.0 and h == 0.0 for lp, h in zip(a.logprobs[:n], a.entropies[:n]))
    assert a.finish_reason == "boxed" and a.tool_calls[0].in_prefix and a.n_turns == 2
    assert a.post_tool[n:] == [1] * (len(a.token_ids) - n)        # the continuation follows a call
    assert a.post_tool == post_tool_gate(a.mask, a.turn_idx, a.tool_turns())
    assert b.prefix_len == 0 and a.text == b.text               # same episode, forced vs sampled


def test_scripted_branches_go_through_every_exit_and_keep_the_gate(pool):
    tok = ByteTokenizer()
    scripts = {"Q: a\n": [CODE, "\\boxed{42}"], "Q: b\n": ["no tool"], "Q: c\n": ["x" * 100]}
    policy = ScriptedPolicy(tok, scripts)
    cfg = RolloutConfig(group_size=1, backend="recompute", seed=0, max_new_tokens=80)
    tasks = [T(f"t{i}", p) for i, p in enumerate(scripts)]
    trajs, stats = generate(policy, tok, tasks, cfg, pool=pool, prompts=list(scripts),
                            branch_policy=ForkOnce(3), max_rows=2)
    assert stats.n_branches == 3
    assert sorted(t.finish_reason for t in trajs) == sorted(["boxed", "void_turn", "token_budget"] * 2)
    for t in trajs:
        assert t.post_tool == post_tool_gate(t.mask, t.turn_idx, t.tool_turns())


def test_a_fork_inside_a_tool_observation_is_refused_and_counted(pool):
    tok = ByteTokenizer()
    policy = ScriptedPolicy(tok, {"Q\n": [CODE, "\\boxed{42}"]})
    obs_pos = len(CODE.encode()) + 3
    cfg = RolloutConfig(group_size=1, backend="recompute", seed=0)
    trajs, stats = generate(policy, tok, [T("t", "Q\n")], cfg, pool=pool, prompts=["Q\n"],
                            branch_policy=ForkOnce(obs_pos), max_rows=2)
    assert stats.branch_refused == 1 and len(trajs) == 1


def test_prefix_cut_from_a_trajectory_after_a_call_continues_in_the_next_turn(pool):
    tok = ByteTokenizer()
    policy = ScriptedPolicy(tok, {"Q\n": [CODE, "\\boxed{42}"]})
    cfg = RolloutConfig(group_size=1, backend="recompute", seed=0)
    (tr,), _ = generate(policy, tok, [T("t", "Q\n")], cfg, pool=pool, prompts=["Q\n"])
    p = prefix_from_trajectory(tr, after_calls=1)
    assert p.n_turns == 2 and p.turn_starts[-1] == len(p.token_ids) and p.tool_calls[0].in_prefix


def test_run_store_round_trip_keeps_the_tree(tiny, tmp_path):
    model, tok = tiny
    cfg = RolloutConfig(group_size=1, max_new_tokens=12, seed=0, tools=False)
    trajs, _ = generate(model, tok, [T("a", "x")], cfg, prompts=["Hello"], branch_policy=ForkOnce(4), max_rows=2)
    store = RunStore(tmp_path)
    store.write_step(1, trajs)
    back = store.read_step(1)
    assert tree_frame(back).equals(tree_frame(trajs))
    assert [(t.parent, t.branch_pos, t.prefix_len) for t in back] == [(None, None, 0), (0, 4, 0)]
