"""Typed hooks that open the Trainer's loop to every method (issue 16 §4).

One step of `trainer.Trainer` asks three replaceable parts, in this order:

    prompt_source.next_batch(step, k)    which tasks, rendered how, with which forced prefixes and
                                         which branch policy -> PromptBatch
    reward_fn(trajs, step)               set traj.reward -> (rewards, metrics); correctness is always
                                         the verifier's (rewards.mark_correct runs after it)
    prompt_source.observe(step, batch, trajs)   sees the scored rollouts (hardness checks, pass-rate
                                         EMAs, Pareto probes) -> metrics for the step
    advantage_fn(trajs, filter_result, std)      -> (update.UpdateBatch, adv over all rows, metrics);
                                         may fill UpdateBatch.token_adv / token_weight (tree advantages)

Defaults: `SeededStream` (a seeded permutation per epoch read by a cursor: today's data order),
`rewards.score`, `update.compute_advantages` (GRPO). A method supplies a `MethodHooks` through
`methods.arms.HOOKS[name](cfg, tasks, tok)`; anything handed to the Trainer directly wins.

A prompt source is checkpointed: `state_dict()` must return JSON-able data and `load_state_dict`
must restore it so that a resumed run draws exactly what the uninterrupted run would have drawn.
The Trainer keeps a deep copy of the state after every committed step and loads it back when a step
fails or is interrupted before its commit, so a retried step draws the same prompts.

Under DAPO dynamic sampling (filter.refill="dynamic") one step may call next_batch and observe
several times, once per sampling round; a batch's `info` of the last round is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from .branches import BranchPolicy, Prefix
    from .filters import FilterResult
    from .records import Trajectory
    from .update import UpdateBatch
    import torch


@dataclass
class PromptBatch:
    """What one step rolls out. Only `tasks` is required; the rest reaches rollout.generate as is."""

    tasks: list                                    # tasks.Task objects, one group each
    prompts: list[str] | None = None               # rendered prompts (None: the rollout's template)
    prefixes: list[list["Prefix | None"]] | None = None   # per task, G entries (branches.Prefix)
    branch_policy: "BranchPolicy | None" = None    # forks live rows (ARPO, E3-TIR)
    max_rows: int | None = None                    # rows per task (>= G) when a policy forks
    info: dict[str, float] = field(default_factory=dict)  # logged into the step's metrics

    def __post_init__(self):
        if self.prompts is not None and len(self.prompts) != len(self.tasks):
            raise ValueError(f"PromptBatch: {len(self.prompts)} prompts for {len(self.tasks)} tasks")
        if self.prefixes is not None and len(self.prefixes) != len(self.tasks):
            raise ValueError(f"PromptBatch: {len(self.prefixes)} prefix lists for {len(self.tasks)} tasks")


class PromptSource(Protocol):
    def next_batch(self, step: int, k: int) -> PromptBatch: ...
    def observe(self, step: int, batch: PromptBatch, trajs: list["Trajectory"]) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# (trajs, step) -> (rewards, metrics); must set traj.reward on every trajectory
RewardFn = Callable[[Sequence["Trajectory"], int], tuple[list[float], dict[str, float]]]
# (trajs, filter_result, std_mode) -> (UpdateBatch, adv over all advantage rows, metrics)
AdvantageFn = Callable[[list["Trajectory"], "FilterResult", str],
                       tuple["UpdateBatch", "torch.Tensor", dict[str, float]]]


@dataclass
class MethodHooks:
    """A method's replacements for the loop's defaults (None = keep the default)."""

    prompt_source: PromptSource | None = None
    reward_fn: RewardFn | None = None
    advantage_fn: AdvantageFn | None = None


def seeded_order(n_items: int, cursor: int, k: int, seed: int) -> tuple[list[int], int]:
    """k indices read from position `cursor` of an endless stream; returns (indices, new cursor).

    The stream is a fresh seeded permutation of range(n_items) per epoch, so every item is seen once
    per epoch and what a step reads depends only on (seed, cursor): a resumed run that restores the
    cursor reads exactly what the uninterrupted run would have read.
    """
    if n_items < 1:
        raise ValueError("no training tasks: check DataConfig.tasks / split / limit")
    out = []
    for pos in range(cursor, cursor + k):
        epoch, i = divmod(pos, n_items)
        perm = np.random.default_rng([seed, epoch]).permutation(n_items)
        out.append(int(perm[i]))
    return out, cursor + k


class SeededStream:
    """The default prompt source: the tasks in `seeded_order`, rendered by the rollout's template."""

    def __init__(self, tasks: Sequence, seed: int):
        self.tasks, self.seed, self.cursor = list(tasks), int(seed), 0

    def next_batch(self, step: int, k: int) -> PromptBatch:
        idx, self.cursor = seeded_order(len(self.tasks), self.cursor, k, self.seed)
        return PromptBatch([self.tasks[i] for i in idx],
                           info={"data/cursor": self.cursor, "data/epoch": self.cursor / len(self.tasks)})

    def observe(self, step: int, batch: PromptBatch, trajs: list) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])
