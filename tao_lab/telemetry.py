"""Per-step telemetry of the training loop (METHODS.md §7): what one step's rollouts and filters did.

    telemetry(trajs, filter_result)            group outcomes (the verifier's verdicts), tool use,
                                               Filter-B drops, entropy around tool calls, lengths
    trajectory_columns(trajs, fres, adv)       per-trajectory filter decisions for the run store

Used by trainer.Trainer after every step and by evaluate (held-out telemetry).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import filters as filters_mod
from .records import Trajectory, is_correct


def telemetry(trajs: list[Trajectory], fres: filters_mod.FilterResult) -> dict[str, float]:
    """Tool and filter telemetry of one step's rollouts."""
    n = max(len(trajs), 1)
    calls = sum(t.n_tool_calls for t in trajs)
    valid = sum(t.n_valid_calls for t in trajs)
    mask = np.concatenate([np.asarray(t.mask, dtype=bool) for t in trajs]) if trajs else np.zeros(0, bool)
    gate = np.concatenate([np.asarray(t.post_tool, dtype=bool) for t in trajs]) if trajs else np.zeros(0, bool)
    ent = np.concatenate([np.asarray(t.entropies, dtype=float) for t in trajs]) if trajs else np.zeros(0)
    other = mask & ~gate
    groups = max(fres.counts.get("filter/groups_in", 0), 1)
    lengths = [t.n_sampled for t in trajs]
    rewards: dict[int, list[float]] = {}
    verdicts: dict[int, list[bool]] = {}
    for t in trajs:
        rewards.setdefault(t.group_id, []).append(float(t.reward or 0.0))
        verdicts.setdefault(t.group_id, []).append(is_correct(t))
    n_groups = max(len(rewards), 1)
    return {
        # every group of the step, whatever the filters do. all-correct / all-wrong are the verifier's
        # verdicts; "degenerate" is Filter B's reward-std test (under a shaped reward they differ)
        "groups/all_correct_rate": sum(all(v) for v in verdicts.values()) / n_groups,
        "groups/all_wrong_rate": sum(not any(v) for v in verdicts.values()) / n_groups,
        "groups/degenerate_rate": sum(filters_mod.is_degenerate(r) for r in rewards.values()) / n_groups,
        "tool/calls_per_traj": calls / n,
        "tool/used_rate": sum(t.n_tool_calls > 0 for t in trajs) / n,
        "tool/success_rate": valid / calls if calls else float("nan"),
        "tool/all_failed_rate": sum(filters_mod.all_tools_failed(t) for t in trajs) / n,
        "tool/void_turn_rate": sum(t.void_turn for t in trajs) / n,
        "tool/truncated_rate": sum(t.truncated for t in trajs) / n,
        "filter/b_drop_rate": (fres.counts.get("filter_b/all_correct", 0) + fres.counts.get("filter_b/all_wrong", 0)) / groups,
        "filter/b_all_correct_rate": fres.counts.get("filter_b/all_correct", 0) / groups,
        "filter/b_all_wrong_rate": fres.counts.get("filter_b/all_wrong", 0) / groups,
        "entropy/gate_coverage": float(gate.sum()) / max(float(mask.sum()), 1.0),
        "entropy/post_tool_mean": float(ent[gate].mean()) if gate.any() else float("nan"),
        "entropy/other_mean": float(ent[other].mean()) if other.any() else float("nan"),
        "entropy/sampled_mean": float(ent[mask].mean()) if mask.any() else float("nan"),
        "rollout/sampled_len_mean": float(np.mean(lengths)) if lengths else 0.0,
    }


def trajectory_columns(trajs: list[Trajectory], fres: filters_mod.FilterResult,
                       adv_all: torch.Tensor) -> dict[str, list]:
    """Per-trajectory filter decisions for the run store: keep, reason, loss weight, rows, advantage."""
    n = len(trajs)
    reason = ["ok"] * n
    for r in fres.decisions.itertuples():
        if reason[r.traj] == "ok" and r.reason != "ok":
            reason[r.traj] = f"{r.rule}:{r.reason}"
    rows = [0] * n
    weight = [0.0] * n
    adv = [float("nan")] * n
    for k, (i, w) in enumerate(zip(fres.index, fres.weights)):
        rows[i] += 1
        weight[i] = w
        if math.isnan(adv[i]) and k < len(adv_all):
            adv[i] = float(adv_all[k])
    return {"keep": [r > 0 for r in rows], "filter_reason": reason, "loss_weight": weight,
            "n_rows": rows, "advantage": adv}
