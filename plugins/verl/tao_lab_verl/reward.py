"""verl reward function: tao_lab.rewards on the Trajectory the agent loop recorded.

Set `custom_reward_function.path=<this file>` and `custom_reward_function.name=compute_score`
(verl's naive reward manager calls it once per trajectory). Returns the score (tao_lab.rewards.score
with RewardConfig defaults: 1/0 correctness on the last boxed answer, tool stdout included) and
`acc`, the binary verified correctness. Filter B is then verl's own group filter on it:
`algorithm.filter_groups.enable=True algorithm.filter_groups.metric=acc` (verl evicts a group whose
acc values are all equal -- std == 0, which on 0/1 values is tao_lab's std < 1e-3 -- and refills
with FRESH prompts; TAO-RL's duplicate-refill is not reachable in verl 0.9.1, see the README).

Without the agent loop's `tao_episode` (e.g. verl's single-turn loop) the decoded response is
scored as model text with no tool calls, and `tao_no_episode` = 1 says so.
"""

from __future__ import annotations

import json

from tao_lab.records import ToolCall, Trajectory
from tao_lab.rewards import RewardConfig, score


def trajectory_from_episode(solution_str: str, ground_truth: str, extra_info: dict | None) -> tuple[Trajectory, bool]:
    """(Trajectory with text, tool calls and the gold answer, whether the agent loop's record was found)."""
    raw = (extra_info or {}).get("tao_episode")
    ep = json.loads(raw) if raw else {"text": solution_str, "tool_calls": [], "finish_reason": ""}
    traj = Trajectory(task_id="", group_id=0, prompt_ids=[], token_ids=[], mask=[], logprobs=[], entropies=[],
                      turn_idx=[], post_tool=[], text=ep["text"], answer=str(ground_truth),
                      tool_calls=[ToolCall(**c) for c in ep["tool_calls"]], finish_reason=ep["finish_reason"])
    return traj, raw is not None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict[str, float]:
    traj, found = trajectory_from_episode(solution_str, ground_truth, extra_info)
    rewards, metrics = score([traj], RewardConfig())
    return {"score": rewards[0], "acc": float(metrics["reward/accuracy"]),
            "tao_no_episode": float(not found), "tao_n_tool_calls": float(traj.n_tool_calls),
            "tao_n_valid_calls": float(traj.n_valid_calls)}
