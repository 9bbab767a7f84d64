"""Trajectory records, the mask convention, and the run store.

Everything downstream of a rollout (rewards, filters, advantages, the loss, plots, widgets) reads
the dataclasses defined here, and everything that must survive a kernel restart goes through the
run store at the bottom of this file.

The mask convention (defined once, here):

    mask[t] = 1  token t was *sampled* by the policy       -> trainable, counted in entropy stats
    mask[t] = 0  token t is prompt, forced tool output, or padding -> never trained on

A `Trajectory` stores only the *completion* (everything after the prompt); the prompt ids are kept
alongside, so the full sequence is `prompt_ids + token_ids` and its full mask is
`[0] * len(prompt_ids) + mask`. Masks are built from positions and lengths, never from token
identity (a pad id equal to the eos id would otherwise mask the real end of sequence).

Run store layout (one folder per run):

    run_dir/config.json            the config the run was made with (+ seeds, versions, git rev)
    run_dir/metrics.jsonl          one JSON object per step
    run_dir/steps/step_000001.parquet   trajectories of that step, per-token data as list columns
    run_dir/lost_steps.json        steps whose file a crash damaged (runstore_repair.py: problems / repair)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

# ----------------------------------------------------------------------------------------------
# Records

# How an episode ended. Kept as plain strings so they survive parquet and read well in tables.
FINISH_REASONS = (
    "boxed",         # a \boxed{...} answer appeared in model text or in tool stdout
    "eos",           # the model emitted end-of-sequence outside a tool call
    "void_turn",     # a turn with neither a tool call nor a boxed answer (METHODS.md §0)
    "max_turns",     # the turn budget ran out
    "token_budget",  # the completion token budget ran out (the trajectory is `truncated`)
)


@dataclass
class ToolCall:
    """One executed tool call inside a trajectory."""

    turn: int                 # index of the assistant turn that wrote the call (0-based)
    protocol: str             # "fenced" or "tags"
    code: str                 # the code that was run
    status: str               # ExecResult.status: ok / error / timeout / memory / killed
    stdout: str               # ExecResult.stdout (already capped by the sandbox)
    stderr: str               # ExecResult.stderr (already capped by the sandbox)
    duration_s: float         # wall time of the call
    tier: str                 # isolation tier that ran it (bubblewrap / rlimits / ...)
    observation: str          # exact text fed back to the model (forced tokens)
    valid: bool               # tool success per METHODS.md §0 (empty stderr, non-empty stdout)
    in_prefix: bool = False   # part of a forced prefix (rollout.Prefix): the policy did not write it


@dataclass
class Trajectory:
    """One sampled episode: per-token records of the completion plus per-episode facts."""

    task_id: str              # id of the task this episode answers
    group_id: int             # episodes of the same prompt in the same step share a group id
    prompt_ids: list[int]     # prompt token ids (mask 0, not part of the per-token lists below)
    token_ids: list[int]      # completion token ids: sampled and forced, in order
    mask: list[int]           # 1 sampled by the policy, 0 forced tool output (see module doc)
    logprobs: list[float]     # log pi(token) at sampling temperature; 0.0 on forced tokens
    entropies: list[float]    # full-vocabulary entropy of the sampling distribution; 0.0 on forced
    turn_idx: list[int]       # assistant turn each token belongs to (tool output: the turn it ends)
    post_tool: list[int]      # 1 on sampled tokens of the turn right after a tool call (METHODS §1.2)
    text: str = ""            # decoded completion text (for people; never re-tokenised)
    answer: str = ""          # gold answer of the task
    prompt_text: str = ""     # decoded prompt text
    tool_calls: list[ToolCall] = field(default_factory=list)
    n_turns: int = 0          # number of assistant turns started
    finish_reason: str = ""   # one of FINISH_REASONS
    truncated: bool = False   # hit the completion token budget
    void_turn: bool = False   # some turn had neither a tool call nor a boxed answer
    reward: float | None = None  # set by rewards.score (or a method's reward_fn: may be shaped)
    correct: bool | None = None  # the verifier's verdict alone (rewards.score / mark_correct); None = not checked
    sample_idx: int = 0       # index of this episode within its group
    parent: int | None = None      # sample_idx of the trajectory this one branched from (same group)
    branch_pos: int | None = None  # index into token_ids where it diverged; earlier tokens are copies
    prefix_len: int = 0            # leading completion tokens that were a forced prefix (mask 0)

    @property
    def n_tool_calls(self) -> int:
        return len(self.tool_calls)

    @property
    def n_valid_calls(self) -> int:
        return sum(c.valid for c in self.tool_calls)

    @property
    def n_sampled(self) -> int:
        return int(sum(self.mask))

    def full_ids(self) -> list[int]:
        return list(self.prompt_ids) + list(self.token_ids)

    def full_mask(self) -> list[int]:
        return [0] * len(self.prompt_ids) + list(self.mask)

    def tool_turns(self) -> set[int]:
        """Turns that made a tool call (prefix calls included: their observation is what the next
        turn of the policy reads)."""
        return {c.turn for c in self.tool_calls}


class LegacyCorrectnessWarning(UserWarning):
    """A run stored before Trajectory.correct existed: correctness falls back to reward > 0."""


def is_correct(t: Trajectory) -> bool:
    """THE correctness predicate: the verifier's verdict (Trajectory.correct), never a shaped reward.
    Runs stored before the field existed fall back to reward > 0, with a LegacyCorrectnessWarning."""
    if t.correct is not None:
        return bool(t.correct)
    import warnings
    warnings.warn("trajectory without a verifier verdict (an old run): counting reward > 0 as correct",
                  LegacyCorrectnessWarning, stacklevel=2)
    return (t.reward or 0.0) > 0


def correct_column(df: pd.DataFrame) -> pd.Series:
    """is_correct over a trajectories frame (a `correct` column, else reward > 0 for old runs)."""
    if "correct" in df and df["correct"].notna().all():
        return df["correct"].astype(bool)
    import warnings
    warnings.warn("run store without a `correct` column (an old run): counting reward > 0 as correct",
                  LegacyCorrectnessWarning, stacklevel=2)
    fallback = df["reward"].fillna(0) > 0
    return df["correct"].fillna(fallback).astype(bool) if "correct" in df else fallback


def post_tool_gate(mask: list[int], turn_idx: list[int], tool_turns: set[int]) -> list[int]:
    """THE post-tool gate (METHODS.md §1.2) [code]: 1 on sampled tokens (mask 1) whose turn directly
    follows a turn that made a tool call, else 0. The only definition; rollout fills
    Trajectory.post_tool with it, explore and the tests read or recompute it from here.

    Forced tokens (tool output, a forced prefix) have mask 0 and are never gated. A row that starts
    from a forced prefix ending with a call + observation continues in the next turn, which IS
    post-tool because the prefix's call is in `tool_turns`. A branched row copies its parent's turn
    structure up to the fork, so the same rule holds on both sides of the fork.
    mask, turn_idx: per completion token (same length); tool_turns: turns with a call.
    """
    return [int(m == 1 and (k - 1) in tool_turns) for m, k in zip(mask, turn_idx)]


# ----------------------------------------------------------------------------------------------
# Serialisation: Trajectory <-> flat dict (one parquet row)

_LIST_FIELDS = ("prompt_ids", "token_ids", "mask", "logprobs", "entropies", "turn_idx", "post_tool")


def trajectory_to_row(traj: Trajectory, **extra: Any) -> dict[str, Any]:
    row = asdict(traj)
    row["tool_calls"] = json.dumps(row["tool_calls"])  # nested records as JSON text: schema-stable
    row["n_tool_calls"] = traj.n_tool_calls
    row["n_valid_calls"] = traj.n_valid_calls
    row["n_tokens"] = len(traj.token_ids)
    row["n_sampled"] = traj.n_sampled
    row.update(extra)
    return row


def trajectory_from_row(row: dict[str, Any]) -> Trajectory:
    names = {f.name for f in fields(Trajectory)}
    kw = {k: row[k] for k in names if k in row}
    for k in _LIST_FIELDS:
        kw[k] = [x.item() if hasattr(x, "item") else x for x in list(kw[k])]
    calls = json.loads(row["tool_calls"]) if isinstance(row["tool_calls"], str) else row["tool_calls"]
    kw["tool_calls"] = [ToolCall(**c) for c in calls]
    if kw.get("reward") is not None and pd.isna(kw["reward"]):
        kw["reward"] = None
    for k in ("parent", "branch_pos"):    # parquet stores a column with missing ints as floats
        v = kw.get(k)
        kw[k] = None if v is None or pd.isna(v) else int(v)
    c = kw.get("correct")
    kw["correct"] = None if c is None or pd.isna(c) else bool(c)
    if "prefix_len" in kw:
        kw["prefix_len"] = int(kw["prefix_len"])
    return Trajectory(**kw)


def trajectories_frame(trajs: Iterable[Trajectory]) -> pd.DataFrame:
    """One row per trajectory with the scalar facts (no per-token lists)."""
    rows = []
    for t in trajs:
        r = trajectory_to_row(t)
        for k in _LIST_FIELDS:
            r.pop(k)
        r.pop("tool_calls")
        rows.append(r)
    return pd.DataFrame(rows)


def tree_frame(trajs: Iterable[Trajectory]) -> pd.DataFrame:
    """The rollout tree, one row per trajectory: group_id, sample_idx, parent, branch_pos,
    prefix_len, depth (0 = a root), n_tokens, n_tool_calls, reward. Rebuilds from the run store
    (RunStore.read_step) because parent / branch_pos / prefix_len are stored per trajectory."""
    trajs = list(trajs)
    by_key = {(t.group_id, t.sample_idx): t for t in trajs}

    def depth(t: Trajectory) -> int:
        d = 0
        while t.parent is not None and (t.group_id, t.parent) in by_key and d <= len(trajs):
            t, d = by_key[(t.group_id, t.parent)], d + 1
        return d

    return pd.DataFrame([{
        "group_id": t.group_id, "sample_idx": t.sample_idx, "parent": t.parent,
        "branch_pos": t.branch_pos, "prefix_len": t.prefix_len, "depth": depth(t),
        "n_tokens": len(t.token_ids), "n_tool_calls": t.n_tool_calls, "reward": t.reward,
    } for t in trajs], columns=["group_id", "sample_idx", "parent", "branch_pos", "prefix_len",
                                "depth", "n_tokens", "n_tool_calls", "reward"])


def tokens_frame(trajs: Iterable[Trajectory], traj_index: Iterable[int] | None = None) -> pd.DataFrame:
    """Tidy per-token frame: one row per completion token (traj, pos, token_id, mask, ...)."""
    trajs = list(trajs)
    idx = list(traj_index) if traj_index is not None else list(range(len(trajs)))
    parts = []
    for i, t in zip(idx, trajs):
        n = len(t.token_ids)
        parts.append(pd.DataFrame({
            "traj": i, "task_id": t.task_id, "group_id": t.group_id, "pos": range(n),
            "token_id": t.token_ids, "mask": t.mask, "logprob": t.logprobs,
            "entropy": t.entropies, "turn": t.turn_idx, "post_tool": t.post_tool,
        }))
    if not parts:
        return pd.DataFrame(columns=["traj", "task_id", "group_id", "pos", "token_id", "mask",
                                     "logprob", "entropy", "turn", "post_tool"])
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# Run store


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_atomic_write_bytes = atomic_write_bytes   # the name runstore_repair.py imports


class RunStore:
    """A run folder on disk: config, per-step trajectories (parquet), metrics (JSONL)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)   # nothing is created until something is written (readers never write)

    # -- config
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / "config.json",
                            json.dumps(config, indent=2, default=str).encode())

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    # -- trajectories
    def step_path(self, step: int) -> Path:
        return self.path / "steps" / f"step_{step:06d}.parquet"

    def write_step(self, step: int, trajs: list[Trajectory], **extra_columns: list[Any]) -> Path:
        """Store one step's trajectories; `extra_columns` adds per-trajectory columns (e.g. keep)."""
        rows = [trajectory_to_row(t) for t in trajs]
        for name, values in extra_columns.items():
            if len(values) != len(rows):
                raise ValueError(f"extra column {name!r} has {len(values)} values for {len(rows)} trajectories")
            for r, v in zip(rows, values):
                r[name] = v
        df = pd.DataFrame(rows)
        path = self.step_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:    # on disk before the rename, so a crash never leaves half a file
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def steps(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "steps").glob("step_*.parquet"))

    def read_step_frame(self, step: int) -> pd.DataFrame:
        """One step's trajectories; a damaged file raises RunStoreError naming it (not a raw arrow error)."""
        from .runstore_repair import RunStoreError, step_file_problem
        try:
            return pd.read_parquet(self.step_path(step))
        except FileNotFoundError:
            raise
        except Exception as e:
            why = step_file_problem(self.step_path(step)) or f"{type(e).__name__}: {e}"
            raise RunStoreError(f"{self.step_path(step)}: {why}; RunStore({str(self.path)!r}).repair() marks "
                                f"the step lost (`tao-lab resume` does it too)") from e

    def read_step(self, step: int) -> list[Trajectory]:
        return [trajectory_from_row(r) for r in self.read_step_frame(step).to_dict("records")]

    def trajectories(self, steps: Iterable[int] | None = None) -> pd.DataFrame:
        """Scalar per-trajectory frame over the given steps (all by default), with a `step` column."""
        frames = []
        for s in (self.steps() if steps is None else steps):
            df = self.read_step_frame(s).drop(columns=list(_LIST_FIELDS) + ["tool_calls"])
            df.insert(0, "step", s)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def tokens(self, step: int) -> pd.DataFrame:
        return tokens_frame(self.read_step(step))

    def truncate_after(self, step: int) -> list[str]:
        """Drop the metric lines and step files of steps after `step` (a crashed run's tail, before a
        resume redoes them), and repair what a crash damaged; returns what was done."""
        return self.repair(step)

    def problems(self) -> list[str]:
        """What is damaged in this store (partial lines, repeated steps, unreadable step files)."""
        from .runstore_repair import problems
        return problems(self)

    def repair(self, step: int | None = None) -> list[str]:
        """See runstore_repair.repair: drop partial lines, mark damaged steps lost, end at `step`."""
        from .runstore_repair import repair
        return repair(self, step)

    # -- metrics
    def append_metrics(self, metrics: dict[str, Any]) -> None:
        """One strict-JSON line (nan/inf written as null) per call, fsynced."""
        from .runstore_repair import metrics_line
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(metrics_line(metrics))
            f.flush()
            os.fsync(f.fileno())

    def metrics(self) -> pd.DataFrame:
        """All metric lines; a partial last line (a crash mid-write) is skipped with a RunStoreWarning."""
        import warnings
        from .runstore_repair import RunStoreWarning, read_metrics_lines
        rows, notes = read_metrics_lines(self.path / "metrics.jsonl")
        for note in notes:
            warnings.warn(note, RunStoreWarning, stacklevel=2)
        return pd.DataFrame(rows)
