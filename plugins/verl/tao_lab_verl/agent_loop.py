"""verl agent loop "tao_tool_agent": a TAO-RL episode (episode.py) on verl's LLM server.

Config (actor_rollout_ref.rollout.agent / the dataset's `agent_name` column = "tao_tool_agent");
the episode rules are read from the top-level `tao` key (see examples/verl_tao.yaml): `tao.episode.*`
(fields of EpisodeConfig; response_length comes from actor_rollout_ref.rollout) and `tao.filter_a_mode`.

Filter A [paper][code], mask mode (authors' code): a trajectory whose tool calls all failed
(tao_lab.filters.filter_a_traj) gets response_mask 0 everywhere. It still counts in its group's
GRPO mean/std (verl's GRPO reads the scores, not the mask), and none of its tokens is trained on --
the authors' order. Only strength 1 is reachable (verl's response_mask is a 0/1 mask). Drop mode
(remove before the advantage) is not reachable in verl 0.9.1 without a custom ReplayBuffer.

What the reward function and the trainer hook need travels in `extra_fields`:
    tao_episode   JSON: text, tool calls, finish reason (reward.py rebuilds the Trajectory)
    tao_post_tool per response token, tao_lab's post-tool gate (trainer.py)
    tao_filter_a  1.0 if Filter A masked this trajectory (counted by the trainer hook)
"""

from __future__ import annotations

import json
from uuid import uuid4
from dataclasses import asdict
from typing import Any

from tao_lab.filters import FilterConfig, filter_a_traj
from tao_lab.sandbox import SandboxConfig, run_code
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from tao_lab_verl import AGENT_NAME
from tao_lab_verl.episode import EpisodeConfig, run_episode, stop_strings

FILTER_A_MODES = ("mask", "off")  # drop mode: not reachable in verl 0.9.1 (module docstring)


def episode_config(config) -> tuple[EpisodeConfig, str]:
    """EpisodeConfig + filter_a_mode from verl's whole config (`tao.episode`, `tao.filter_a_mode`)."""
    tao = config.get("tao", None) or {}
    mode = tao.get("filter_a_mode", "mask")
    if mode not in FILTER_A_MODES:
        raise ValueError(f"tao.filter_a_mode={mode!r}; choose from {list(FILTER_A_MODES)} "
                         "(drop mode needs a custom ReplayBuffer in verl 0.9.1)")
    episode = dict(tao.get("episode", None) or {})
    if "response_length" in episode:
        raise ValueError("tao.episode.response_length: set actor_rollout_ref.rollout.response_length instead")
    length = int(config.actor_rollout_ref.rollout.response_length)
    return EpisodeConfig(response_length=length, **episode), mode


def filter_a_weight(traj, mode: str) -> float:
    """Loss weight of Filter A in mask mode at strength 1, from tao_lab.filters (1.0 = kept)."""
    if mode == "off":
        return 1.0
    return filter_a_traj(traj, FilterConfig(filter_a_mode="mask", filter_a_strength=1.0)).weight


def episode_extra_fields(traj, weight: float) -> dict[str, Any]:
    return {
        "tao_episode": json.dumps({"text": traj.text, "finish_reason": traj.finish_reason,
                                   "tool_calls": [asdict(c) for c in traj.tool_calls]}),
        "tao_post_tool": list(traj.post_tool),
        "tao_filter_a": float(weight == 0.0),
    }


@register(AGENT_NAME)
class TaoToolAgentLoop(AgentLoopBase):
    """Multi-turn fenced-Python (or tags) tool use with tao_lab's sandbox and rules."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.episode_cfg, self.filter_a_mode = episode_config(self.config)
        self.sandbox_cfg = SandboxConfig(timeout_s=self.episode_cfg.tool_timeout_s)
        self.eos_ids = {i for i in [getattr(self.tokenizer, "eos_token_id", None)] if i is not None}

    def _run_tool(self, code: str):
        return self.loop.run_in_executor(None, lambda: run_code(code, config=self.sandbox_cfg))

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        prompt_ids = await self.ct_build_initial_tokens(list(kwargs["raw_prompt"]))
        params = dict(sampling_params, stop=stop_strings(self.episode_cfg.protocol),
                      include_stop_str_in_output=True)
        request_id = uuid4().hex  # one id per episode: verl routes it to the same server (prefix cache)

        async def generate(ids: list[int], room: int):
            out = await self.server_manager.generate(
                request_id=request_id, prompt_ids=ids,
                sampling_params=dict(params, max_tokens=room))
            return out.token_ids, out.log_probs

        traj = await run_episode(generate, self.tokenizer, prompt_ids, self.episode_cfg, self._run_tool,
                                 eos_ids=self.eos_ids)
        weight = filter_a_weight(traj, self.filter_a_mode)
        mask = [int(m * weight) for m in traj.mask]  # Filter A, mask mode, on the response mask
        has_lp = any(traj.logprobs)
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=traj.token_ids, response_mask=mask,
            response_logprobs=traj.logprobs if has_lp else None, num_turns=2 * traj.n_turns,
            metrics=AgentLoopMetrics(),
            extra_fields=episode_extra_fields(traj, weight))
