"""TAO-RL stage 1: trajectory filters that say what they dropped and why (METHODS.md §1.1).

Input: the trajectories of one step, already scored (`traj.reward` set), e.g. read back from the
run store. Output: a `FilterResult` that the advantage and the loss stages consume, plus tidy
frames and counts for charts and step metrics. Pure: no model, no I/O, deterministic given a seed.

The rules, each a small function returning a `Decision(keep, reason, weight)`:

    overlong   [code, SimpleTIR/DAPO companion]  truncated trajectory -> loss weight 0; the group is
               dropped if fewer than `min_n` members are not overlong.
    void_turn  [code, SimpleTIR companion]       a void turn -> loss weight 0.
    filter_b   [paper][code] degenerate group (std(rewards) < 1e-3) -> group dropped, reason split
               "all_correct" / "all_wrong".
    filter_a   [paper][code] all tool calls failed (`n_tool_calls > 0 and n_valid_calls == 0`; a
               trajectory that never called a tool is not flagged):
                 mode="drop" (paper, default): removed BEFORE the advantage, its group re-checked;
                 mode="mask" (authors' code): loss weight 1-strength, applied AFTER the advantage;
                 `filter_a_scale_adv=True` (code) scales the advantage by 1-strength too, so a
                 token weighs (1-s)^2; default False (loss weight only, METHODS §1.1).
    overlong_reward  "own" (default) | "zero" (code's remove_clip): the reward an overlong trajectory
               enters Filter B and the group baseline with (FilterResult.row_rewards).

Single-source predicates: `all_tools_failed(traj)`, `is_degenerate(rewards)`, `FILTER_B_THRESHOLD`.

They run in the order of `FilterConfig.rules` (default = the authors' code: overlong -> void_turn
-> filter_b -> filter_a), chosen by name in ONE place: the `RULES` dict literal below.

How filters interact with advantages (the one thing to get right):

    * A row of `FilterResult.index` is a trajectory that takes part in the group advantage; its
      group is `FilterResult.group_ids[row]` (fresh ids for duplicated groups). Trajectories that
      were *dropped* (Filter A drop mode, Filter B, overlong group rule, refill subsampling) are not
      rows: they do not count in any group mean/std.
    * `FilterResult.weights[row]` multiplies that row's token loss mask AFTER the advantages are
      computed. Overlong (0), void turn (0) and mask-mode Filter A (1-strength) act here, so those
      trajectories still count in their group's mean/std, exactly as in the authors' code.
    * A row with weight 0 needs no forward pass in the update; it is still needed for the advantage.

Batch refill [code]: with `target_groups=B`, surviving groups are duplicated with fresh group ids
up to B (`refill="duplicate"`) or subsampled to B (seeded). If no group survives, `skip=True` and
`skip_reason` says why; the trainer must skip the update. DAPO-style dynamic sampling is the
alternative (refill="dynamic", methods/dapo.py): the Trainer keeps sampling fresh prompts until B
informative groups are collected.

Covered: every rule above, both Filter A readings, refill by duplication/subsampling,
per-trajectory and per-group decisions with reasons, counts with a stable key set, a
funnel frame.
Not covered / deviations:
    * Overlong group rule: a group with no overlong member is never dropped by it. The authors' code
      drops any group with fewer than `min_n` non-overlong members, which also drops every group
      smaller than `min_n` (e.g. G=2 on a CPU); with G=16 the two readings agree.
    * Refill by duplication keeps every surviving group once and duplicates a seeded random choice
      of them; the authors' code repeats all groups k times and then subsamples, which can lose a
      surviving group entirely.
    * Filter B reason: "all_correct" means the (equal) rewards are positive, "all_wrong" otherwise.
      A group with a single scored member is dropped as "singleton" (its advantage would be 0).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Callable

import pandas as pd

from tao_lab.records import Trajectory

# ----------------------------------------------------------------------------------------------
# Config

FILTER_B_THRESHOLD = 1e-3   # [paper][code] std(rewards) below this = a degenerate group


REFILLS = ("duplicate", "subsample", "none", "dynamic")

# How much work an update gets, so that arms compare fairly (TrainConfig.work, issue 16):
#   equal_groups    every arm trains on B = data.prompts_per_step groups per update: an arm without a
#                   refill (grpo, simpletir) has its ceil(B x oversample) groups trimmed to B, seeded,
#                   as the authors' code does [code] (trainer.step_filter_config). Comparisons' default.
#   equal_rollouts  every arm rolls out the same ceil(B x oversample) groups per step and trains on
#                   whatever its filters keep (an arm without refill then trains on up to 2-3x B).
#                   What runs made before this switch did (train_config.config_from_dict reads them so).
WORK_MODES = ("equal_groups", "equal_rollouts")


@dataclass
class FilterConfig:
    """Which filters run, in which order, and how the batch is refilled afterwards."""

    rules: tuple[str, ...] = ("overlong", "void_turn", "filter_b", "filter_a")  # order of the authors' code
    filter_a_mode: str = "drop"      # "drop" = paper (remove before the advantage); "mask" = authors' code
    filter_a_strength: float = 1.0   # mask mode only: loss weight becomes 1 - strength (code default 1.0)
    min_n: int = 4                   # overlong: drop a group with an overlong member if < min_n are not overlong
    std_threshold: float = FILTER_B_THRESHOLD  # Filter B: a group whose reward std (unbiased) is below this is degenerate
    target_groups: int | None = None  # B groups per update; None = keep whatever survives (no refill)
    refill: str = "duplicate"        # "duplicate" (code: up to B) | "subsample" (only trim to B) | "none"
                                     # | "dynamic" (DAPO: the Trainer samples fresh prompts, methods/dapo.py;
                                     # apply() alone then trims like "subsample")
    max_rounds: int = 10             # "dynamic": sampling rounds per step at most (DAPO max_num_gen_batches [code])
    seed: int = 0                    # seeds the refill choice (duplication / subsampling)
    overlong_reward: str = "own"     # "own" (default: an overlong row keeps its reward) | "zero" (code's
                                     # remove_clip: it enters Filter B and the group baseline with 0)
    filter_a_scale_adv: bool = False  # mask mode, 0<s<1: False = (1-s) on the loss weight only (default);
                                      # True = code, (1-s) also scales the advantage, a token weighs (1-s)^2

    def __post_init__(self) -> None:
        from tao_lab import checks

        self.rules = tuple(self.rules)
        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise ValueError(f"FilterConfig.rules has unknown rule(s) {unknown}; choose from {list(RULES)}")
        if len(set(self.rules)) != len(self.rules):
            raise ValueError(f"FilterConfig.rules lists a rule twice: {list(self.rules)}")
        checks.choice(self, "filter_a_mode", _FILTER_A_ACTIONS)    # 'drop' (paper) or 'mask' (code)
        checks.number(self, "filter_a_strength", lo=0, hi=1)
        checks.number(self, "min_n", lo=1, integer=True)
        checks.number(self, "std_threshold", lo=0, hi=1)
        checks.number(self, "target_groups", lo=1, integer=True, none_ok=True)
        checks.choice(self, "refill", REFILLS)
        checks.number(self, "max_rounds", lo=1, integer=True)
        checks.number(self, "seed", integer=True)
        checks.choice(self, "overlong_reward", ("own", "zero"))   # 'zero' = the code's remove_clip
        checks.flag(self, "filter_a_scale_adv")


# ----------------------------------------------------------------------------------------------
# Decisions and the rules


@dataclass(frozen=True)
class Decision:
    keep: bool            # stays in the advantage set (False = dropped before the advantage)
    reason: str           # "ok", or why it was dropped / re-weighted
    weight: float = 1.0   # multiplier on the loss weight, applied after the advantage


OK = Decision(True, "ok")


def all_tools_failed(t: Trajectory) -> bool:
    """Filter A's predicate [paper][code]: it called a tool and no call was valid (never-called is
    NOT flagged, METHODS §1.1). The one definition: filters, explore and telemetry use it."""
    return t.n_tool_calls > 0 and t.n_valid_calls == 0


def is_degenerate(rewards, threshold: float = FILTER_B_THRESHOLD) -> bool:
    """Filter B's predicate [paper][code]: fewer than 2 rewards, or their unbiased std (torch.std in
    the code) below `threshold` — the group advantage carries no signal. The one definition."""
    r = [float(x) for x in rewards]
    if len(r) < 2:
        return True
    mean = sum(r) / len(r)
    return math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1)) < threshold


def _reward(t: Trajectory) -> float:
    if t.reward is None:
        raise ValueError(f"trajectory of task {t.task_id!r} (group {t.group_id}) has no reward; "
                         "score the step with rewards.score(...) before filtering")
    return float(t.reward)


def baseline_reward(t: Trajectory, cfg: FilterConfig) -> float:
    """The reward a trajectory enters Filter B and the group baseline with: its own, or 0 when it is
    overlong and cfg.overlong_reward="zero" (the code's remove_clip zeroes the response before scoring)."""
    r = _reward(t)
    return 0.0 if cfg.overlong_reward == "zero" and t.truncated else r


def _degenerate(members: list[Trajectory], cfg: FilterConfig) -> Decision:
    """Filter B's test on a set of group members: fewer than 2, or rewards (almost) all equal."""
    r = [baseline_reward(t, cfg) for t in members]
    if len(r) < 2:
        return Decision(False, "singleton")
    if is_degenerate(r, cfg.std_threshold):
        return Decision(False, "all_correct" if sum(r) / len(r) > 0 else "all_wrong")
    return OK


def overlong_traj(t: Trajectory, cfg: FilterConfig) -> Decision:
    # [code] loss weight 0, but it still counts in its group's advantage statistics.
    return Decision(True, "overlong", 0.0) if t.truncated else OK


def overlong_group(members: list[Trajectory], n_removed: int, cfg: FilterConfig) -> Decision:
    n_long = sum(t.truncated for t in members)
    if n_long and len(members) - n_long < cfg.min_n:  # deviation: only groups with an overlong member
        return Decision(False, "too_few_not_overlong")
    return OK


def void_turn_traj(t: Trajectory, cfg: FilterConfig) -> Decision:
    # [code] SimpleTIR: a turn with neither a code block nor \boxed{} zeroes the trajectory's loss.
    return Decision(True, "void_turn", 0.0) if t.void_turn else OK


def filter_b_group(members: list[Trajectory], n_removed: int, cfg: FilterConfig) -> Decision:
    # [paper][code] answer discriminability: a group with no reward variance carries no signal.
    return _degenerate(members, cfg)


# Filter A's two readings, chosen by FilterConfig.filter_a_mode.
_FILTER_A_ACTIONS: dict[str, Callable[[FilterConfig], Decision]] = {
    "drop": lambda cfg: Decision(False, "dropped"),                          # paper: discard
    "mask": lambda cfg: Decision(True, "masked", 1.0 - cfg.filter_a_strength),  # code: loss mask
}


def filter_a_traj(t: Trajectory, cfg: FilterConfig) -> Decision:
    return _FILTER_A_ACTIONS[cfg.filter_a_mode](cfg) if all_tools_failed(t) else OK


def filter_a_group(members: list[Trajectory], n_removed: int, cfg: FilterConfig) -> Decision:
    # Drop mode changed the group, so re-check it: < 2 members can't form a baseline, and (when
    # Filter B is in use) a group left with equal rewards is now degenerate.
    if n_removed == 0:
        return OK
    if len(members) < 2:
        return Decision(False, "group_too_small")
    if "filter_b" in cfg.rules and not _degenerate(members, cfg).keep:
        return Decision(False, "group_degenerate")
    return OK


@dataclass(frozen=True)
class Rule:
    traj: Callable[[Trajectory, FilterConfig], Decision] | None  # per-trajectory decision
    group: Callable[[list[Trajectory], int, FilterConfig], Decision] | None  # per-group, after `traj`
    reasons: tuple[str, ...]  # every non-"ok" reason it can give (stable metric keys)


# THE place where rule names map to code. Add a rule here and nowhere else.
RULES: dict[str, Rule] = {
    "overlong": Rule(overlong_traj, overlong_group, ("overlong", "too_few_not_overlong")),
    "void_turn": Rule(void_turn_traj, None, ("void_turn",)),
    "filter_b": Rule(None, filter_b_group, ("all_correct", "all_wrong", "singleton")),
    "filter_a": Rule(filter_a_traj, filter_a_group, ("dropped", "masked", "group_too_small", "group_degenerate")),
}


# ----------------------------------------------------------------------------------------------
# Result


@dataclass
class FilterResult:
    """What survived, with which loss weight, and a reason for everything else."""

    index: list[int]          # advantage rows: positions in the input list (a duplicated group repeats them)
    group_ids: list[int]      # group id per row, fresh ids on duplicated groups -> advantages.group_advantages
    weights: list[float]      # loss weight per row: multiply the token mask AFTER the advantages
    decisions: pd.DataFrame   # one row per (trajectory, rule it met): traj, group_id, rule, kept, weight, reason...
    groups: pd.DataFrame      # one row per (group, rule with a group stage, or refill): group_id, rule, kept, reason
    counts: dict[str, float]  # step metrics: "{rule}/{reason}" (trajs for traj reasons, groups for group reasons)
    funnel: pd.DataFrame      # stage, rule, trajs_in, trajs_out, groups_in, groups_out, trajs_weighted_out
    n_groups_survived: int    # distinct input groups that survived the rules (before refill)
    skip: bool = False        # True when nothing is left to train on: skip the update
    skip_reason: str = ""     # why, in words
    duplicate_of: list[int | None] = field(default_factory=list)  # per row: source group id if duplicated
    row_rewards: list[float] = field(default_factory=list)  # per row: reward for the baseline (baseline_reward)
    adv_scale: list[float] = field(default_factory=list)    # per row: advantage multiplier (filter_a_scale_adv)

    @property
    def n_groups(self) -> int:
        return len(set(self.group_ids))

    def select(self, trajs: list[Trajectory]) -> list[Trajectory]:
        """The advantage rows as trajectories (copies with the fresh group id on duplicated groups)."""
        return [trajs[i] if trajs[i].group_id == g else replace(trajs[i], group_id=g)
                for i, g in zip(self.index, self.group_ids)]

    def rewards(self, trajs: list[Trajectory]) -> list[float]:
        return [_reward(trajs[i]) for i in self.index]


# ----------------------------------------------------------------------------------------------
# apply


def _groups_in_order(trajs: list[Trajectory], alive: list[bool]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, t in enumerate(trajs):
        if alive[i]:
            out.setdefault(t.group_id, []).append(i)
    return out


def _funnel_row(stage: int, rule: str, trajs_in: int, groups_in: int, alive: list[bool],
                weight: list[float], trajs: list[Trajectory]) -> dict:
    return {"stage": stage, "rule": rule, "trajs_in": trajs_in, "groups_in": groups_in,
            "trajs_out": sum(alive), "groups_out": len(_groups_in_order(trajs, alive)),
            "trajs_weighted_out": sum(a and w > 0 for a, w in zip(alive, weight))}


def apply(trajs: list[Trajectory], cfg: FilterConfig | None = None) -> FilterResult:
    """Run the configured rules in order, then refill; every drop and re-weighting has a reason."""
    cfg = cfg or FilterConfig()
    n = len(trajs)
    alive, weight, scale = [True] * n, [1.0] * n, [1.0] * n
    rows: list[dict] = []
    group_rows: list[dict] = []
    counts: dict[str, float] = {f"{name}/{r}": 0 for name in cfg.rules for r in RULES[name].reasons}
    funnel = [_funnel_row(0, "input", n, len(_groups_in_order(trajs, alive)), alive, weight, trajs)]

    for stage, name in enumerate(cfg.rules, start=1):
        funnel.append(_run_rule(stage, name, trajs, cfg, alive, weight, scale, rows, group_rows, counts))

    survived = _groups_in_order(trajs, alive)
    result_groups, duplicate_of, refill_counts = _refill(survived, trajs, cfg, rows, group_rows, alive, weight)
    index = [i for members, _ in result_groups for i in members]
    group_ids = [gid for members, gid in result_groups for _ in members]
    dup_rows = [src for (members, _), src in zip(result_groups, duplicate_of) for _ in members]
    if cfg.target_groups is not None:
        funnel.append({"stage": len(cfg.rules) + 1, "rule": "refill", "trajs_in": sum(len(m) for m in survived.values()),
                       "groups_in": len(survived), "trajs_out": len(index), "groups_out": len(result_groups),
                       "trajs_weighted_out": sum(weight[i] > 0 for i in index)})

    skip_reason = ""
    if not index:
        dropped = {k: v for k, v in counts.items() if v}
        skip_reason = (f"no group survived the filters ({n} trajectories in, "
                       f"{funnel[0]['groups_in']} groups); drops by rule/reason: {dropped or 'none (empty input)'}")
    elif sum(weight[i] for i in index) == 0:
        skip_reason = "every surviving trajectory has loss weight 0 (overlong / void turn / masked Filter A)"

    counts.update(refill_counts)
    counts.update({
        "filter/trajs_in": n, "filter/groups_in": funnel[0]["groups_in"],
        "filter/trajs_out": len(index), "filter/groups_out": len(result_groups),
        "filter/groups_survived": len(survived),
        "filter/trajs_zero_weight": sum(weight[i] == 0 for i in index),
        "filter/skipped": int(bool(skip_reason)),
    })
    return FilterResult(
        index=index, group_ids=group_ids, weights=[weight[i] for i in index],
        decisions=pd.DataFrame(rows, columns=["traj", "group_id", "rule", "kept", "weight", "reason",
                                              "traj_reason", "group_reason"]),
        groups=pd.DataFrame(group_rows, columns=["group_id", "rule", "kept", "reason", "n_members",
                                                 "n_removed_by_traj_rule"]),
        counts=counts, funnel=pd.DataFrame(funnel), n_groups_survived=len(survived),
        skip=bool(skip_reason), skip_reason=skip_reason, duplicate_of=dup_rows,
        row_rewards=[baseline_reward(trajs[i], cfg) for i in index], adv_scale=[scale[i] for i in index],
    )


def _run_rule(stage: int, name: str, trajs: list[Trajectory], cfg: FilterConfig, alive: list[bool],
              weight: list[float], scale: list[float], rows: list[dict], group_rows: list[dict],
              counts: dict[str, float]) -> dict:
    """One rule over the trajectories still alive: its per-trajectory then per-group decisions update
    alive / weight / scale in place and append their reasons; returns the rule's funnel row."""
    rule = RULES[name]
    at_start = _groups_in_order(trajs, alive)
    trajs_in = sum(alive)
    traj_reason: dict[int, str] = {}
    removed: dict[int, int] = {}
    dropped_here: set[int] = set()
    if rule.traj is not None:
        for members in at_start.values():
            for i in members:
                d = rule.traj(trajs[i], cfg)
                weight[i] *= d.weight
                if name == "filter_a" and d.reason == "masked" and cfg.filter_a_scale_adv:
                    scale[i] *= d.weight   # code: A·response_mask, the advantage scaled by 1-s too
                traj_reason[i] = d.reason
                if d.reason != "ok":
                    counts[f"{name}/{d.reason}"] += 1
                if not d.keep:
                    alive[i] = False
                    dropped_here.add(i)
                    removed[trajs[i].group_id] = removed.get(trajs[i].group_id, 0) + 1
    group_reason: dict[int, str] = {}
    if rule.group is not None:
        for gid, members in at_start.items():
            still = [i for i in members if alive[i]]
            if not still and removed.get(gid, 0) == 0:
                continue
            d = rule.group([trajs[i] for i in still], removed.get(gid, 0), cfg)
            group_reason[gid] = d.reason
            group_rows.append({"group_id": gid, "rule": name, "kept": d.keep, "reason": d.reason,
                               "n_members": len(still), "n_removed_by_traj_rule": removed.get(gid, 0)})
            if d.reason != "ok":
                counts[f"{name}/{d.reason}"] += 1
            if not d.keep:
                for i in still:
                    alive[i] = False
    for members in at_start.values():
        for i in members:
            tr, gr = traj_reason.get(i, "ok"), group_reason.get(trajs[i].group_id, "ok")
            # Effective reason: its own drop first, then its group's verdict, then a re-weighting.
            own_drop = i in dropped_here
            rows.append({"traj": i, "group_id": trajs[i].group_id, "rule": name, "kept": alive[i],
                         "weight": weight[i], "reason": tr if own_drop or gr == "ok" else gr,
                         "traj_reason": tr, "group_reason": gr})
    return _funnel_row(stage, name, trajs_in, len(at_start), alive, weight, trajs)


def _refill(survived: dict[int, list[int]], trajs: list[Trajectory], cfg: FilterConfig,
            rows: list[dict], group_rows: list[dict], alive: list[bool], weight: list[float]):
    """Bring the surviving groups to `cfg.target_groups`: duplicate (fresh ids) or subsample (seeded)."""
    groups = [(members, gid) for gid, members in survived.items()]
    sources: list[int | None] = [None] * len(groups)
    counts = {"refill/duplicated_groups": 0, "refill/subsampled_groups": 0}
    B = cfg.target_groups
    if B is None or cfg.refill == "none" or not groups:
        return groups, sources, counts
    rng = random.Random(cfg.seed)
    if len(groups) > B:
        keep = sorted(rng.sample(range(len(groups)), B))
        for k in sorted(set(range(len(groups))) - set(keep)):
            members, gid = groups[k]
            group_rows.append({"group_id": gid, "rule": "refill", "kept": False, "reason": "subsampled",
                               "n_members": len(members), "n_removed_by_traj_rule": 0})
            for i in members:
                alive[i] = False
                rows.append({"traj": i, "group_id": gid, "rule": "refill", "kept": False, "weight": weight[i],
                             "reason": "subsampled", "traj_reason": "ok", "group_reason": "subsampled"})
        counts["refill/subsampled_groups"] = len(groups) - B
        return [groups[k] for k in keep], [None] * B, counts
    if len(groups) < B and cfg.refill == "duplicate":
        # Every survivor once, then a seeded random cycle of them until B (code: repeat-all + subsample).
        order = list(range(len(groups)))
        rng.shuffle(order)
        next_id = max(t.group_id for t in trajs) + 1
        for j in range(B - len(groups)):
            members, gid = groups[order[j % len(order)]]
            groups.append((members, next_id + j))
            sources.append(gid)
        counts["refill/duplicated_groups"] = B - len(survived)
    return groups, sources, counts
