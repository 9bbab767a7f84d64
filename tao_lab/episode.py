"""One episode while it is generated: its records, its turns, and the episode rules.

rollout.generate keeps one Episode per engine row. After each sampled token `after_sample` applies
the rules that can end a turn there (end-of-sequence, a complete tool call, the token budget); when
a row's tool call has finished, `finish_call` appends the observation as forced tokens and applies
the turn-end rules (METHODS.md §0; the list is in rollout.py's docstring). An episode can also start
from a forced prefix (branches.Prefix) and fork a copy of its records at a position (branch
policies): `Episode.start`, `can_fork`, `fork`.
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import replace
from typing import TYPE_CHECKING

from .branches import Prefix
from .records import ToolCall, Trajectory, post_tool_gate
from .toolcall import find_tool_call, format_observation, has_boxed, is_valid_call

if TYPE_CHECKING:       # annotations only: rollout imports this module
    from .rollout import RolloutConfig, RolloutStats


class Episode:
    """The state of one episode while it is generated: its records so far and where its turns are."""

    def __init__(self, traj: Trajectory, max_turns: int, task: int, turn_starts: list[int] | None = None):
        self.traj = traj
        self.task = task                        # index of its task in generate's `tasks`
        self.max_turns = max_turns              # cfg.max_turns + the prefix's extra_turns
        self.turn_starts = turn_starts or [0]   # index in traj.token_ids where each turn began
        self.tool_turns = traj.tool_turns()     # turns that made a call (for the post-tool gate)
        self.future: cf.Future | None = None    # pending tool call
        self.call_code = ""
        self.boxed_in_turn = False              # the turn that made the pending call wrote \boxed{
        self.done = False
        self.topk_entropy: dict[int, float] = {}  # position -> top-k entropy proxy, only when a
        #                                           branch policy asks (topk_logprobs; ARPO's code)

    @classmethod
    def start(cls, traj: Trajectory, cfg: "RolloutConfig", task: int, prefix: Prefix | None) -> "Episode":
        if prefix is None:
            return cls(traj, cfg.max_turns, task)
        if len(prefix.token_ids) >= cfg.max_new_tokens:
            raise ValueError(f"a prefix of {len(prefix.token_ids)} tokens leaves no room in "
                             f"max_new_tokens={cfg.max_new_tokens}")
        n = len(prefix.token_ids)
        traj.token_ids, traj.turn_idx = list(prefix.token_ids), list(prefix.turn_idx)
        traj.mask, traj.logprobs, traj.entropies, traj.post_tool = [0] * n, [0.0] * n, [0.0] * n, [0] * n
        traj.tool_calls, traj.n_turns, traj.prefix_len = list(prefix.tool_calls), prefix.n_turns, n
        return cls(traj, cfg.max_turns + prefix.extra_turns, task, list(prefix.turn_starts))

    @property
    def turn_start(self) -> int:
        return self.turn_starts[-1]

    @property
    def waiting(self) -> bool:
        return self.future is not None

    def record(self, token: int, mask: int, logprob: float, entropy: float) -> None:
        tr, turn = self.traj, self.traj.n_turns - 1
        tr.token_ids.append(token)
        tr.mask.append(mask)
        tr.logprobs.append(logprob if mask else 0.0)
        tr.entropies.append(entropy if mask else 0.0)
        tr.turn_idx.append(turn)
        tr.post_tool.append(post_tool_gate((mask,), (turn,), self.tool_turns)[0])

    def end(self, reason: str) -> None:
        self.done = True
        self.traj.finish_reason = reason
        self.traj.truncated = reason == "token_budget"

    def next_turn(self) -> None:
        self.traj.n_turns += 1
        self.turn_starts.append(len(self.traj.token_ids))

    def can_fork(self, pos: int, max_new_tokens: int) -> bool:
        """May a new row continue from completion position pos? Only where the policy would sample
        next: the prompt (0), a turn start, or after a sampled token of a live turn; never inside a
        prefix, a tool call's observation, or after the episode's last token."""
        tr, n = self.traj, len(self.traj.token_ids)
        if pos == 0:
            return True
        if not tr.prefix_len <= pos <= n or pos >= max_new_tokens:
            return False
        if pos in self.turn_starts:
            return True
        if pos < n:
            return tr.mask[pos - 1] == 1 and tr.mask[pos] == 1
        return tr.mask[pos - 1] == 1 and not self.done and not self.waiting

    def fork(self, pos: int, sample_idx: int, fresh_max_turns: int) -> "Episode":
        """A copy of this episode's records up to pos (pos 0: a fresh episode from the prompt)."""
        tr = self.traj
        k = max(i for i, s in enumerate(self.turn_starts) if s <= pos) if pos else 0
        child = replace(
            tr, token_ids=tr.token_ids[:pos], mask=tr.mask[:pos], logprobs=tr.logprobs[:pos],
            entropies=tr.entropies[:pos], turn_idx=tr.turn_idx[:pos], post_tool=tr.post_tool[:pos],
            tool_calls=[c for c in tr.tool_calls if c.turn < k] if pos else [], n_turns=k + 1,
            finish_reason="", truncated=False, void_turn=False, reward=None, text="",
            sample_idx=sample_idx, parent=tr.sample_idx if pos else None,
            branch_pos=pos if pos else None, prefix_len=tr.prefix_len if pos else 0)
        ep = Episode(child, self.max_turns if pos else fresh_max_turns, self.task, self.turn_starts[:k + 1])
        ep.topk_entropy = {i: h for i, h in self.topk_entropy.items() if i < pos}
        return ep


def after_sample(row: Episode, token: int, tok, cfg: RolloutConfig, stops, trigger, pool) -> bool:
    """Apply the episode rules after a sampled token. True = keep decoding this row."""
    tr = row.traj
    if token in stops and not cfg.ignore_eos:
        turn_text = tok.decode(tr.token_ids[row.turn_start:], skip_special_tokens=True)
        if has_boxed(turn_text):
            row.end("boxed")
        else:
            tr.void_turn = True
            row.end("void_turn" if cfg.tools else "eos")
        return False
    if cfg.tools and bool(trigger[token]):
        turn_text = tok.decode(tr.token_ids[row.turn_start:], skip_special_tokens=True)
        call = find_tool_call(turn_text, cfg.protocol)
        if call is not None:
            row.call_code = call.code
            row.future = pool.submit(call.code)
            row.boxed_in_turn = has_boxed(turn_text[:call.start])
            return False
    if len(tr.token_ids) >= cfg.max_new_tokens:
        row.end("token_budget")
        return False
    return True


def finish_call(row: Episode, tok, cfg: RolloutConfig, stats: RolloutStats) -> list[int]:
    """Turn a completed tool call into forced observation tokens and apply the turn-end rules."""
    tr = row.traj
    res = row.future.result()
    row.future = None
    obs = format_observation(res, cfg.protocol, max_chars=cfg.obs_max_chars)
    ids = tok.encode(obs, add_special_tokens=False)
    if len(ids) > cfg.obs_max_tokens:       # head + tail, as the character truncation
        h = cfg.obs_max_tokens // 2
        ids = ids[:h] + ids[-(cfg.obs_max_tokens - h):]
        stats.obs_truncated += 1
    room = cfg.max_new_tokens - len(tr.token_ids)
    cut = len(ids) > room
    ids = ids[:max(room, 0)]
    valid = is_valid_call(res, silent_is_failure=cfg.silent_is_failure)
    tr.tool_calls.append(ToolCall(
        turn=tr.n_turns - 1, protocol=cfg.protocol, code=row.call_code, status=res.status,
        stdout=res.stdout, stderr=res.stderr, duration_s=res.duration_s, tier=res.tier,
        observation=tok.decode(ids), valid=valid))
    row.tool_turns.add(tr.n_turns - 1)
    stats.n_tool_calls += 1
    stats.n_valid_calls += int(valid)
    stats.forced_tokens += len(ids)
    for t in ids:
        row.record(t, 0, 0.0, 0.0)
    if cut:
        row.end("token_budget")
    elif row.boxed_in_turn or has_boxed(res.stdout):
        row.end("boxed")
    elif tr.n_turns >= row.max_turns:
        row.end("max_turns")
    else:
        row.next_turn()                     # the next turn starts after the observation
        # the call's closing token was sampled but never fed to the model: feed it first
        return [tr.token_ids[-len(ids) - 1]] + ids if ids else [tr.token_ids[-1]]
    return []
