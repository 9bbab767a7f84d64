"""Hand-built multi-turn trajectories that look like real tool-using rollouts (no model needed).

Five groups of four, chosen so that every filter rule has something to say:

    group 0  rewards 1 0 1 0   mixed; member 3 made only failing tool calls (Filter A)
    group 1  rewards 1 1 1 1   all correct (Filter B)
    group 2  rewards 0 0 0 0   all wrong (Filter B); member 1 ended on a void turn
    group 3  rewards 1 0 0 0   mixed; member 1 hit the token budget (overlong), member 3 never called
    group 4  rewards 0 1 1 0   mixed; member 0 made only failing calls

Each episode: turn 0 writes some tokens and a tool call, the observation follows as forced tokens
(mask 0), then turn 1 writes more (optionally another call and turn 2). Entropy is drawn around
1.0 nats with a spike right after each tool output that decays over ~8 tokens, like ARPO's
observation, so the entropy-after-tool chart has something to show.
"""

from __future__ import annotations

import random

from tao_lab.records import RunStore, ToolCall, Trajectory

GROUP_REWARDS = [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]]
ALL_FAILED = {(0, 3), (4, 0)}     # (group, member) whose every tool call failed
VOID = {(2, 1)}
OVERLONG = {(3, 1)}
NO_TOOL = {(3, 3)}


def _call(turn: int, valid: bool) -> ToolCall:
    return ToolCall(turn=turn, protocol="fenced", code="print(123 * 456)", status="ok" if valid else "error",
                    stdout="56088\n" if valid else "", stderr="" if valid else "NameError: name 'x' is not defined",
                    duration_s=0.02, tier="rlimits",
                    observation="Code execution result: " + ("56088" if valid else "NameError"), valid=valid)


def make_trajectory(gid: int, k: int, reward: float, rng: random.Random) -> Trajectory:
    tr = Trajectory(task_id=f"task-{gid}", group_id=gid, sample_idx=k, prompt_ids=[1, 2, 3],
                    token_ids=[], mask=[], logprobs=[], entropies=[], turn_idx=[], post_tool=[],
                    answer="56088", reward=float(reward), correct=reward > 0)
    n_turns = 1 if (gid, k) in NO_TOOL | VOID else rng.choice([2, 2, 3])
    for turn in range(n_turns):
        n_sampled = rng.randint(12, 30)
        for j in range(n_sampled):
            spike = 1.5 * 0.7 ** j if turn > 0 else 0.0   # entropy spike right after tool output
            h = max(0.02, rng.gauss(1.0, 0.35) + spike)
            tr.token_ids.append(rng.randint(10, 1000))
            tr.mask.append(1)
            tr.logprobs.append(-min(h, rng.expovariate(1.0)))
            tr.entropies.append(h)
            tr.turn_idx.append(turn)
            tr.post_tool.append(int(turn > 0))
        if turn < n_turns - 1:  # this turn made a tool call: forced observation tokens follow
            tr.tool_calls.append(_call(turn, valid=(gid, k) not in ALL_FAILED))
            for _ in range(rng.randint(5, 9)):
                tr.token_ids.append(rng.randint(10, 1000))
                tr.mask.append(0)
                tr.logprobs.append(0.0)
                tr.entropies.append(0.0)
                tr.turn_idx.append(turn)
                tr.post_tool.append(0)
    tr.n_turns = n_turns
    tr.void_turn = (gid, k) in VOID
    tr.truncated = (gid, k) in OVERLONG
    tr.finish_reason = ("void_turn" if tr.void_turn else "token_budget" if tr.truncated else "boxed")
    tr.text = f"episode {gid}.{k}"
    return tr


def make_trajectories(seed: int = 0) -> list[Trajectory]:
    """The 20 trajectories described in the module docstring, deterministic for a seed."""
    rng = random.Random(seed)
    return [make_trajectory(g, k, r, rng) for g, rewards in enumerate(GROUP_REWARDS) for k, r in enumerate(rewards)]


def make_run_store(path, seed: int = 0) -> RunStore:
    """A run store with one step (step 0) holding `make_trajectories(seed)`."""
    store = RunStore(path)
    store.write_config({"source": "tests/runstore_fixture.py", "seed": seed})
    store.write_step(0, make_trajectories(seed))
    return store
