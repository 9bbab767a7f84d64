"""Forced prefixes and branching for rollout.generate (issue 16 §4) [recon].

A *prefix* is a forced start of a completion: its tokens are fed to the model and recorded with
mask 0 (logprob / entropy 0), so they never enter the loss or the entropy statistics, but they keep
their turn structure: `turn_idx` per token, the tool calls they contain (recorded in
Trajectory.tool_calls with `in_prefix=True`) and where each turn starts. Decisions:
  - prefix turns count towards `max_turns` (the policy continues the prefix's open turn); a prefix
    may raise the budget with `extra_turns` (ET-Agent hint injection: +4 in the code);
  - prefix tokens count towards `max_new_tokens` (the KV cache is sized by it);
  - prefix tool calls count in Trajectory.n_tool_calls (they are in the sequence the reward sees);
    `in_prefix` tells them apart;
  - the post-tool gate (records.post_tool_gate) is 0 on prefix tokens (mask 0); if the prefix ends
    with a call + observation, the policy's next turn follows a call and is post-tool.
Builders: `prefix_from_trajectory` (cut a stored trajectory at a token position or after k tool
calls, optionally append a hint: ET-Agent) and `prefix_from_text` (expert text split at its tool
calls: E3-TIR anchors).

A *branch policy* is called once per decode step with the live episodes and returns `Fork`s: copy
an episode at completion position `pos` into a spare row of the same task (KV cache copied and
truncated, no re-prefill). pos = 0 starts a fresh row from the prompt (no parent, no prefix).
A policy with an attribute `topk_logprobs = k > 0` (ARPO's top-10 entropy proxy) makes the rollout
also record, per sampled position, `Episode.topk_entropy[pos]` (methods.arpo.topk_entropy); forks
copy it. Without that attribute nothing extra is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence

from .records import ToolCall, Trajectory
from .toolcall import find_tool_call


@dataclass
class Prefix:
    """Forced leading completion tokens of one row, with their turn structure."""

    token_ids: list[int]
    turn_idx: list[int]                       # assistant turn of each token
    tool_calls: list[ToolCall] = field(default_factory=list)  # calls inside the prefix (in_prefix)
    turn_starts: list[int] = field(default_factory=lambda: [0])  # start index of each started turn;
    #                                           the last one is the turn the policy continues
    extra_turns: int = 0                      # raise this row's max_turns (ET-Agent hint: +4)
    source: str = ""                          # provenance, e.g. "expert:k=1" or "cut:pos=40"

    def __post_init__(self):
        if len(self.turn_idx) != len(self.token_ids):
            raise ValueError(f"Prefix.turn_idx has {len(self.turn_idx)} entries for "
                             f"{len(self.token_ids)} tokens")
        if not self.turn_starts or self.turn_starts[0] != 0 or self.turn_starts != sorted(self.turn_starts) \
                or self.turn_starts[-1] > len(self.token_ids):
            raise ValueError(f"Prefix.turn_starts={self.turn_starts} must start at 0, increase, "
                             f"and stay <= {len(self.token_ids)}")
        if self.turn_idx and max(self.turn_idx) > len(self.turn_starts) - 1:
            raise ValueError("Prefix.turn_idx names a turn that turn_starts does not start")
        if self.extra_turns < 0:
            raise ValueError(f"Prefix.extra_turns={self.extra_turns} must be >= 0")

    @property
    def n_turns(self) -> int:
        return len(self.turn_starts)

    def key(self) -> tuple[int, ...]:
        return tuple(self.token_ids)

    def with_hint(self, hint_ids: Sequence[int], extra_turns: int = 0) -> "Prefix":
        """Append forced hint tokens to the open turn (ET-Agent: "Wait, let me check this with
        Python.") and raise the turn budget."""
        turn = self.n_turns - 1
        return replace(self, token_ids=self.token_ids + list(hint_ids),
                       turn_idx=self.turn_idx + [turn] * len(hint_ids),
                       extra_turns=self.extra_turns + extra_turns, source=self.source + "+hint")


def _open_turn(traj: Trajectory, pos: int) -> int:
    """The turn a policy continuing at completion position `pos` writes in."""
    if pos < len(traj.token_ids):
        return traj.turn_idx[pos]
    if pos == 0:
        return 0
    last = traj.turn_idx[pos - 1]
    ends_observation = traj.mask[pos - 1] == 0 and last in traj.tool_turns()
    return last + 1 if ends_observation else last


def prefix_from_trajectory(traj: Trajectory, pos: int | None = None, *, after_calls: int | None = None,
                           hint_ids: Sequence[int] = (), extra_turns: int = 0) -> Prefix:
    """Cut `traj` at completion position `pos`, or right after the observation of its
    `after_calls`-th tool call; every kept token becomes forced (mask 0)."""
    if (pos is None) == (after_calls is None):
        raise ValueError("prefix_from_trajectory: give exactly one of pos or after_calls")
    if after_calls is not None:
        if not 1 <= after_calls <= len(traj.tool_calls):
            raise ValueError(f"after_calls={after_calls} must be in [1, {len(traj.tool_calls)}]")
        turn = traj.tool_calls[after_calls - 1].turn + 1
        pos = next((i for i, k in enumerate(traj.turn_idx) if k >= turn), len(traj.token_ids))
    if not 0 <= pos <= len(traj.token_ids):
        raise ValueError(f"pos={pos} must be in [0, {len(traj.token_ids)}]")
    open_turn = _open_turn(traj, pos)
    starts = [traj.turn_idx.index(k) if k in traj.turn_idx[:pos] else pos for k in range(open_turn + 1)]
    calls = [replace(c, in_prefix=True) for c in traj.tool_calls if c.turn < open_turn]
    p = Prefix(token_ids=list(traj.token_ids[:pos]), turn_idx=list(traj.turn_idx[:pos]), tool_calls=calls,
               turn_starts=starts, source=f"cut:{traj.task_id}/{traj.sample_idx}@{pos}")
    return p.with_hint(hint_ids, extra_turns) if hint_ids or extra_turns else p


def _observation_end(text: str, protocol: str) -> int:
    """Length of the observation at the start of `text` (0 if there is none). Fenced observations
    are read as one line (the marker's line), as the scripted tests write them."""
    marker, end = ("\nCode execution result:", "\n") if protocol == "fenced" else ("\n<result>", "</result>\n")
    if not text.startswith(marker):
        return 0
    i = text.find(end, len(marker))
    return len(text) if i < 0 else i + len(end)


def prefix_from_text(tokenizer, text: str, protocol: str = "fenced", steps: int | None = None,
                     extra_turns: int = 0) -> Prefix:
    """An expert completion (prose, tool calls, their observations) as a prefix cut after its
    `steps`-th observation (None: the whole text). Model text and observations are tokenised
    separately, so the turn structure is exact; the calls are recorded with the observation the
    text shows (tier "expert")."""
    ids, turns, calls, starts = [], [], [], [0]
    rest, turn = text, 0

    def add(piece_text: str) -> None:
        piece = tokenizer.encode(piece_text, add_special_tokens=False)
        ids.extend(piece)
        turns.extend([turn] * len(piece))

    while rest and (steps is None or len(calls) < steps):
        call = find_tool_call(rest, protocol)
        add(rest if call is None else rest[:call.end])
        if call is None:
            break
        rest = rest[call.end:]
        n_obs = _observation_end(rest, protocol)
        obs, rest = rest[:n_obs], rest[n_obs:]
        add(obs)
        calls.append(ToolCall(turn=turn, protocol=protocol, code=call.code, status="ok", stdout=obs,
                              stderr="", duration_s=0.0, tier="expert", observation=obs,
                              valid="Traceback" not in obs and bool(obs.strip()), in_prefix=True))
        turn += 1
        starts.append(len(ids))
    if steps is not None and len(calls) < steps:
        raise ValueError(f"prefix_from_text: steps={steps} but the text has {len(calls)} tool calls")
    return Prefix(token_ids=ids, turn_idx=turns, tool_calls=calls, turn_starts=starts,
                  extra_turns=extra_turns, source=f"expert:steps={steps}")


@dataclass(frozen=True)
class Fork:
    """Copy episode (task, sample_idx) at completion position pos into a new row of that task."""

    task: int          # index of the task in generate's `tasks`
    sample_idx: int    # the source episode's Trajectory.sample_idx
    pos: int           # completion position to continue from; 0 = a fresh row from the prompt


class BranchPolicy(Protocol):
    """Called once per decode step. `episodes[task]` lists that task's episodes (episode.Episode:
    .traj records so far, .turn_starts, .done, .waiting, .can_fork(pos)); `free[task]` is how many
    rows that task still has. Returns the forks to make now (those over budget are refused and
    counted in RolloutStats.branch_refused)."""

    def __call__(self, episodes: list[list], free: list[int]) -> list[Fork]: ...
