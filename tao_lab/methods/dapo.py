"""DAPO's dynamic sampling [paper][code: verl's DAPO recipe].

What it changes, at which stage: the *filter* stage. Where TAO-RL refills a batch with duplicates of
surviving groups, DAPO keeps rolling out fresh prompts until B groups with a non-zero reward spread
survive (or `max_rounds` rounds have run: the recipe's `max_num_gen_batches`, default 10 [code]),
then trims the pool to B groups. Selected with FilterConfig.refill="dynamic"; the Trainer hands
`dynamic_sampling` a sampler that rolls out, scores and observes a new round of prompts.

In the Trainer [recon where the recipe is silent]: round 0 is exactly the batch a run without
dynamic sampling rolls out (ceil(B x oversample) prompts, the step's rollout seed); round r > 0
rolls out ceil(missing x oversample) new prompts from the prompt source with fresh group ids and its
own seed (trainer.step_seed stream 100 + r). The step's telemetry covers every round's groups, its
rollout counters are summed over rounds and its reward means weighted by trajectories
(`merge_rounds`); `dynamic/rounds`, `dynamic/sampled_groups` and `dynamic/short_by` are logged.
The trim to B is seeded by the step's refill seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..filters import FilterConfig, FilterResult, apply
from ..records import Trajectory


def need_more(result: FilterResult, target_groups: int) -> int:
    """How many more informative groups a dynamic-sampling loop still has to collect (0 = enough)."""
    return max(0, target_groups - result.n_groups_survived)


def dynamic_sampling(sample: Callable[[int], list[Trajectory]], cfg: FilterConfig,
                     max_rounds: int = 10) -> tuple[list[Trajectory], FilterResult]:
    """DAPO's alternative to refill: keep sampling until `cfg.target_groups` groups survive.

    `sample(k)` must roll out and score k new prompts (it may oversample) and return their
    trajectories with group ids not used before. The pool is re-filtered after each round (the
    rules are per group, so earlier decisions do not change); after the last round the pool is
    trimmed to B groups with `refill="subsample"` (never duplicated). If `max_rounds` runs out first,
    the result has fewer groups and `counts["dynamic/short_by"]` says how many are missing.
    Returns the whole pool (index into it with the result) and the final FilterResult.
    """
    if cfg.target_groups is None:
        raise ValueError("dynamic_sampling needs FilterConfig.target_groups (the B groups to collect)")
    if max_rounds < 1:
        raise ValueError(f"max_rounds={max_rounds} must be >= 1")
    pool: list[Trajectory] = []
    seen: set[int] = set()
    collect = replace(cfg, target_groups=None, refill="none")
    need, rounds, sampled = cfg.target_groups, 0, 0
    while need > 0 and rounds < max_rounds:
        new = sample(need)
        ids = {t.group_id for t in new}
        if ids & seen:
            raise ValueError(f"sample() returned group ids already used in an earlier round: {sorted(ids & seen)}; "
                             "give every round's prompts fresh group ids")
        seen |= ids
        pool += new
        rounds, sampled = rounds + 1, sampled + len(ids)
        if not new:
            break  # the sampler has nothing more to give (e.g. the task set is exhausted)
        need = need_more(apply(pool, collect), cfg.target_groups)
    final = apply(pool, replace(cfg, refill="subsample"))
    final.counts.update({"dynamic/rounds": rounds, "dynamic/sampled_groups": sampled,
                         "dynamic/short_by": need_more(final, cfg.target_groups)})
    return pool, final


def merge_rounds(rounds: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """One step's metrics from its sampling rounds, each given as (trajectories, metrics) [recon].

    Rollout counters and times (`rollout/...`, `finish/...`) and the counts of metrics.COUNTS are
    summed (sampled_tokens_per_s is recomputed from the sums); every other metric is a rate or a
    mean over the round's trajectories, so it is weighted by them (a round without trajectories
    weighs nothing; NaN parts are left out).
    """
    import math

    from ..metrics import COUNTS

    keys = list(dict.fromkeys(k for _, m in rounds for k in m))
    out: dict[str, float] = {}
    for key in keys:
        vals = [(n, float(m[key])) for n, m in rounds if isinstance(m.get(key), (int, float))]
        if key.startswith(("rollout/", "finish/")) or key in COUNTS:
            out[key] = float(sum(v for _, v in vals if not math.isnan(v)))
        else:
            parts = [(n, v) for n, v in vals if n > 0 and not math.isnan(v)]
            total = sum(n for n, _ in parts)
            out[key] = sum(n * v for n, v in parts) / total if total else float("nan")
    if out.get("rollout/wall_s"):
        out["rollout/sampled_tokens_per_s"] = out.get("rollout/sampled_tokens", 0.0) / out["rollout/wall_s"]
    return out
