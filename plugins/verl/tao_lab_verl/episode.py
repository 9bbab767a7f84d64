"""One TAO-RL episode against any token generator (no verl import: testable with a scripted one).

`run_episode(generate, tokenizer, prompt_ids, cfg, run_tool)` drives the multi-turn tool protocol
of tao_lab.rollout [code] on a remote engine: the engine samples a segment (it stops at EOS, at a
closing fence / `</python>` -- the stop strings of `stop_strings(cfg.protocol)` -- or at the token
budget); tao_lab.toolcall decides whether the turn now holds a complete call; the call runs in
tao_lab.sandbox; its observation is appended as forced tokens (mask 0). The result is a
tao_lab.records.Trajectory, so every rule downstream (tool success, post-tool gate, Filter A,
answer extraction) is tao_lab's own function applied to the same record a notebook would store.

Differences from tao_lab.rollout, each forced by a remote engine:
  - a stop string can fire on an *opening* unlabeled fence (three backticks + newline); no call is
    complete then, so the episode asks the engine to continue the same turn (one more request);
  - entropies are 0 in the record: verl recomputes the old-policy entropy in its own forward
    (trainer.py reads that one), the engine does not return it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Awaitable, Callable

from tao_lab.records import post_tool_gate
from tao_lab.records import ToolCall, Trajectory
from tao_lab.sandbox import ExecResult
from tao_lab.toolcall import PROTOCOLS, find_tool_call, format_observation, has_boxed, is_valid_call

# Generator: (ids so far, max new tokens) -> (new token ids, their logprobs or None)
Generate = Callable[[list[int], int], Awaitable[tuple[list[int], list[float] | None]]]


@dataclass
class EpisodeConfig:
    """The episode rules (defaults = tao_lab.rollout.RolloutConfig's, i.e. TAO-RL's code)."""

    protocol: str = "fenced"        # "fenced" (```python) or "tags" (<python>)
    max_turns: int = 5              # assistant turns per episode
    response_length: int = 1024     # completion budget, sampled + forced tokens (verl rollout.response_length)
    obs_max_chars: int = 512        # observation text, head+tail truncated (TAO-RL code: 512)
    obs_max_tokens: int = 256       # ... and to this many tokens
    tool_timeout_s: float = 3.0     # wall-clock limit per call (TAO-RL code: 3 s)
    silent_is_failure: bool = True  # a call that prints nothing has failed (TAO-RL code)
    max_segments: int = 64          # engine requests per episode, a guard against a stop-string loop

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"EpisodeConfig.protocol={self.protocol!r}; choose from {list(PROTOCOLS)}")
        for name, low in (("max_turns", 1), ("response_length", 1), ("obs_max_tokens", 8), ("max_segments", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"EpisodeConfig.{name}={getattr(self, name)} must be >= {low}")
        if not self.tool_timeout_s > 0:
            raise ValueError(f"EpisodeConfig.tool_timeout_s={self.tool_timeout_s} must be > 0")


def stop_strings(protocol: str) -> list[str]:
    """Stop strings for the engine: where a tool call may have just been completed."""
    return ["```\n"] if protocol == "fenced" else ["</python>"]


def _append(tr: Trajectory, ids: list[int], logprobs: list[float] | None, mask: int) -> None:
    tr.token_ids += ids
    tr.mask += [mask] * len(ids)
    tr.logprobs += list(logprobs) if (mask and logprobs) else [0.0] * len(ids)
    tr.entropies += [0.0] * len(ids)
    tr.turn_idx += [tr.n_turns - 1] * len(ids)


def _end(tr: Trajectory, reason: str) -> Trajectory:
    tr.finish_reason = reason
    tr.truncated = reason == "token_budget"
    tr.post_tool = post_tool_gate(tr.mask, tr.turn_idx, tr.tool_turns())  # tao_lab's one gate
    return tr


def _observation_ids(res: ExecResult, tok, cfg: EpisodeConfig) -> list[int]:
    ids = tok.encode(format_observation(res, cfg.protocol, max_chars=cfg.obs_max_chars), add_special_tokens=False)
    if len(ids) > cfg.obs_max_tokens:  # head + tail, as tao_lab.episode.finish_call
        h = cfg.obs_max_tokens // 2
        ids = ids[:h] + ids[-(cfg.obs_max_tokens - h):]
    return ids


async def _call(run_tool, code: str) -> ExecResult:
    res = run_tool(code)
    return await res if inspect.isawaitable(res) else res


async def run_episode(generate: Generate, tok, prompt_ids: list[int], cfg: EpisodeConfig,
                      run_tool: Callable[[str], ExecResult | Awaitable[ExecResult]], *,
                      eos_ids: set[int] = frozenset(), task_id: str = "", answer: str = "") -> Trajectory:
    """Sample one episode; returns the Trajectory with per-token records and its tool calls."""
    tr = Trajectory(task_id=task_id, group_id=0, prompt_ids=list(prompt_ids), token_ids=[], mask=[],
                    logprobs=[], entropies=[], turn_idx=[], post_tool=[], answer=answer, n_turns=1)
    turn_start = 0
    for _ in range(cfg.max_segments):
        room = cfg.response_length - len(tr.token_ids)
        ids, lps = await generate(tr.full_ids(), room)
        ids = list(ids)[:room]
        _append(tr, ids, lps, 1)
        tr.text = tok.decode(tr.token_ids, skip_special_tokens=True)
        turn_text = tok.decode(tr.token_ids[turn_start:], skip_special_tokens=True)
        call = find_tool_call(turn_text, cfg.protocol)
        if call is None:
            if len(tr.token_ids) >= cfg.response_length:
                return _end(tr, "token_budget")
            if ids and ids[-1] not in eos_ids and any(turn_text.endswith(s) for s in stop_strings(cfg.protocol)):
                continue  # a stop string that closed no call: the same turn goes on
            if has_boxed(turn_text):
                return _end(tr, "boxed")
            tr.void_turn = True
            return _end(tr, "void_turn")
        res = await _call(run_tool, call.code)
        obs = _observation_ids(res, tok, cfg)
        cut = len(obs) > cfg.response_length - len(tr.token_ids)
        obs = obs[:max(cfg.response_length - len(tr.token_ids), 0)]
        tr.tool_calls.append(ToolCall(
            turn=tr.n_turns - 1, protocol=cfg.protocol, code=call.code, status=res.status, stdout=res.stdout,
            stderr=res.stderr, duration_s=res.duration_s, tier=res.tier, observation=tok.decode(obs),
            valid=is_valid_call(res, silent_is_failure=cfg.silent_is_failure)))
        _append(tr, obs, None, 0)
        tr.text = tok.decode(tr.token_ids, skip_special_tokens=True)
        if cut:
            return _end(tr, "token_budget")
        if has_boxed(turn_text[:call.start]) or has_boxed(res.stdout):
            return _end(tr, "boxed")
        if tr.n_turns >= cfg.max_turns:
            return _end(tr, "max_turns")
        tr.n_turns += 1
        turn_start = len(tr.token_ids)
    return _end(tr, "token_budget")  # max_segments guard hit: counted as truncated
