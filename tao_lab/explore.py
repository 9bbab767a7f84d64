"""Recompute filters, advantages and shaping from stored rollouts; tidy frames for the charts.

DESIGN.md §2: filters, advantages and shaping must be recomputable from the run store alone,
without the model, so that a widget can re-run them live. This module is that glue, and the
compute third of "compute / render / UI" (plots.py renders, widgets.py wires):

    recompute(trajs, FilterConfig, ShapingConfig) -> Explored
        filters.apply -> advantages.group_advantages -> advantages.shape_advantages, with the
        results laid out as tidy frames: one row per trajectory, one row per token.
    funnel_frame, reward_spread_frame, entropy_by_offset, heatmap_frame, trace_frame, tool_spans,
    ratio_histogram, advantage_frame, advantage_table, signal_groups, shaped_trace, metrics_long
        each turns those frames into the small (binned, < 5,000 rows) frame one chart needs.

Conventions: `traj` is a trajectory's position in the input list (the run store's row order);
`row` is an advantage row of `FilterResult.index` (a duplicated group repeats trajectories with
fresh group ids). Entropy statistics use sampled tokens only (mask 1, records.py); the shaping
uses the loss mask `mask * filter weight`, so a zero-weight trajectory (overlong, void turn, masked
Filter A) takes part in its group's advantage but has no token in the entropy z statistics.

Covered: the full filter -> advantage -> shaping chain of one step, with both z scopes; micro-batch
composition for z_scope="micro_batch" (rows in order, `micro_batch` rows each; None = all rows in
one micro-batch); the ARPO "entropy after tool output" profile with its first-turn baseline.
Not covered: anything needing the model (re-computing entropy under a new policy, the loss), and
`detach`, which changes only gradients: the value of Ã is identical either way (the panel says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from tao_lab import filters
from tao_lab.advantages import (DEFAULT_STD, ShapingConfig, effective_gate, entropy_zscore, group_advantages,
                                shape_advantages)
from tao_lab.filters import FILTER_B_THRESHOLD, FilterConfig, FilterResult, all_tools_failed, is_degenerate
from tao_lab.metrics import merge_metrics
from tao_lab.records import Trajectory, post_tool_gate, tokens_frame, trajectories_frame

# Where a sampled token sits relative to the tool: the first turn (no tool output seen yet) or a
# turn that starts right after a tool output (the post-tool turn of METHODS.md §1.2).
FIRST_TURN, AFTER_TOOL, OTHER = "first turn", "after tool output", "other turn"


# ----------------------------------------------------------------------------------------------
# Result


@dataclass
class Explored:
    """Everything the charts and the panel show for one (FilterConfig, ShapingConfig) choice."""

    filter_cfg: FilterConfig
    shaping_cfg: ShapingConfig
    result: FilterResult          # filters.apply's decisions, funnel and counts
    trajectories: pd.DataFrame    # one row per input trajectory: facts, filter outcome, advantage A
    tokens: pd.DataFrame          # one row per completion token of every input trajectory (see token_table)
    shaped: pd.DataFrame          # one row per token of every advantage row: gate, z, A, Ã, Ã/A
    metrics: dict[str, float] = field(default_factory=dict)  # filter counts + adv/ + shaping/ metrics


# ----------------------------------------------------------------------------------------------
# Per-token table of the rollouts (independent of filters)


def group_status(rewards: list[float], threshold: float = FILTER_B_THRESHOLD) -> str:
    """'all correct' / 'all wrong' / 'mixed' / 'singleton', with Filter B's test (filters.is_degenerate)."""
    if len(rewards) < 2:
        return "singleton"
    if not is_degenerate(rewards, threshold):
        return "mixed"
    return "all correct" if float(np.mean(rewards)) > 0 else "all wrong"


def token_table(trajs: list[Trajectory]) -> pd.DataFrame:
    """records.tokens_frame plus `offset` (tokens since the turn's first sampled token), `segment`
    (first turn / after tool output / other turn) and the trajectory's reward.

    A turn that follows a tool call starts right after the forced observation, so `offset` of a
    token in that turn is its distance in tokens from the end of the last tool output.
    """
    df = tokens_frame(trajs)
    if df.empty:
        return df.assign(offset=pd.Series(dtype=float), segment=pd.Series(dtype=str),
                         reward=pd.Series(dtype=float))
    sampled = df["mask"] == 1
    df["offset"] = np.nan
    df.loc[sampled, "offset"] = df[sampled].groupby(["traj", "turn"]).cumcount().astype(float)
    # the turn follows a tool call: records.post_tool_gate's rule, asked for every token (mask 1)
    # so that forced tokens of such a turn share its segment
    after = np.concatenate([post_tool_gate([1] * len(t.token_ids), t.turn_idx, t.tool_turns())
                            for t in trajs]).astype(bool)
    df["segment"] = np.where(df["turn"] == 0, FIRST_TURN, np.where(after, AFTER_TOOL, OTHER))
    df["reward"] = df["traj"].map({i: t.reward for i, t in enumerate(trajs)})
    return df


# ----------------------------------------------------------------------------------------------
# recompute: filters -> advantages -> shaping


def _pad(rows: list[list[float]], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T, dtype=torch.float32)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


def _shape_rows(rows: list[Trajectory], weights: list[float], adv: torch.Tensor, cfg: ShapingConfig,
                micro_batch: int | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Ã for the advantage rows, one micro-batch of `micro_batch` rows at a time (None = one).

    Returns (B, T) tensors and the shaping metrics combined over the micro-batches (metrics.merge_metrics)."""
    T = max(len(t.token_ids) for t in rows)
    ent = _pad([t.entropies for t in rows], T)                                    # (B, T)
    loss_mask = _pad([t.mask for t in rows], T) * torch.tensor(weights)[:, None]  # (B, T) mask * weight
    post = _pad([t.post_tool for t in rows], T)                                   # (B, T)
    adv_t, z, gate = torch.zeros(len(rows), T), torch.zeros(len(rows), T), torch.zeros(len(rows), T)
    size = micro_batch or len(rows)
    metrics: list[dict[str, float]] = []
    for s in range(0, len(rows), size):
        sl = slice(s, s + size)
        adv_t[sl], m = shape_advantages(adv[sl], ent[sl], loss_mask[sl], post[sl], cfg)
        gate[sl] = effective_gate(post[sl], loss_mask[sl], cfg)
        z[sl] = entropy_zscore(ent[sl], loss_mask[sl], cfg.z_scope)
        metrics.append(m)
    merged = merge_metrics(metrics)
    merged["shaping/micro_batches"] = float(len(metrics))
    merged["shaping/gate_coverage"] = float(gate.sum()) / max(float((loss_mask > 0).sum()), 1.0)
    return {"entropy": ent, "loss_mask": loss_mask, "post_tool": post, "gate": gate, "z": z,
            "adv_shaped": adv_t}, merged


_SHAPED_COLUMNS = ["row", "traj", "group_id", "pos", "loss_mask", "entropy", "post_tool", "gate", "z",
                   "adv", "adv_shaped", "ratio"]


def _outcomes(result: FilterResult, n: int) -> tuple[list[str], list[float]]:
    """Per input trajectory: the first rule that dropped or re-weighted it, and its final weight."""
    outcome, weight = ["kept"] * n, [1.0] * n
    for d in result.decisions.itertuples(index=False):
        if outcome[d.traj] != "kept" and not outcome[d.traj].startswith("weight"):
            continue  # already dropped by an earlier rule
        weight[d.traj] = d.weight
        if not d.kept:
            outcome[d.traj] = f"dropped: {d.rule}/{d.reason}"
        elif d.traj_reason != "ok" and outcome[d.traj] == "kept":
            outcome[d.traj] = f"weight {d.weight:g}: {d.rule}/{d.traj_reason}"
    return outcome, weight


def recompute(trajs: list[Trajectory], filter_cfg: FilterConfig | None = None,
              shaping_cfg: ShapingConfig | None = None, adv_std: str = DEFAULT_STD,
              micro_batch: int | None = None, tokens: pd.DataFrame | None = None) -> Explored:
    """Filters -> group advantages -> entropy shaping on stored, scored trajectories (no model).

    adv_std: advantages.group_advantages' std mode; micro_batch: rows per micro-batch for the
    shaping (matters for z_scope="micro_batch"); tokens: a precomputed token_table(trajs) to reuse
    (the panel passes it so a slider move does not rebuild it).
    """
    fcfg, scfg = filter_cfg or FilterConfig(), shaping_cfg or ShapingConfig()
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch={micro_batch} must be >= 1, or None for one micro-batch")
    result = filters.apply(trajs, fcfg)
    rows = result.select(trajs)
    metrics: dict[str, float] = dict(result.counts)

    tdf = trajectories_frame(trajs)
    tdf.insert(0, "traj", range(len(trajs)))
    tdf["all_tools_failed"] = [all_tools_failed(t) for t in trajs]
    status = {g: group_status(list(s)) for g, s in tdf.groupby("group_id")["reward"]}
    tdf["group_status"] = tdf["group_id"].map(status)
    tdf["outcome"], tdf["weight"] = _outcomes(result, len(trajs))
    tdf["n_rows"] = tdf["traj"].map(pd.Series(result.index).value_counts()).fillna(0).astype(int)
    tdf["advantage"] = np.nan

    shaped = pd.DataFrame(columns=_SHAPED_COLUMNS)
    if rows:
        rewards = torch.tensor([float(t.reward) for t in rows])
        adv, am = group_advantages(rewards, torch.tensor(result.group_ids), std=adv_std)
        metrics.update(am)
        first = {}
        for r, i in enumerate(result.index):
            first.setdefault(i, float(adv[r]))
        tdf["advantage"] = tdf["traj"].map(first)
        ten, sm = _shape_rows(rows, result.weights, adv, scfg, micro_batch)
        metrics.update(sm)
        lens = [len(t.token_ids) for t in rows]
        keep = torch.arange(ten["entropy"].shape[1])[None, :] < torch.tensor(lens)[:, None]  # (B, T) real tokens
        cols = {k: v[keep].numpy() for k, v in ten.items()}
        B = len(rows)
        a_tok = adv[:, None].expand(B, keep.shape[1])[keep].numpy().astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where((cols["loss_mask"] > 0) & (a_tok != 0), cols["adv_shaped"] / a_tok, np.nan)
        shaped = pd.DataFrame({
            "row": np.repeat(np.arange(B), lens), "traj": np.repeat(result.index, lens),
            "group_id": np.repeat(result.group_ids, lens), "pos": np.concatenate([np.arange(n) for n in lens]),
            "loss_mask": cols["loss_mask"], "entropy": cols["entropy"], "post_tool": cols["post_tool"].astype(int),
            "gate": cols["gate"].astype(int), "z": cols["z"], "adv": a_tok, "adv_shaped": cols["adv_shaped"],
            "ratio": ratio,
        })
    return Explored(filter_cfg=fcfg, shaping_cfg=scfg, result=result, trajectories=tdf,
                    tokens=tokens if tokens is not None else token_table(trajs), shaped=shaped, metrics=metrics)


# ----------------------------------------------------------------------------------------------
# Chart frames (each small: binned or aggregated)


def funnel_frame(result: FilterResult) -> pd.DataFrame:
    """Per rule (in run order) and outcome: how many trajectories passed, were dropped or re-weighted.

    Columns: stage, rule, label (rule with its in -> out counts), outcome (passed / dropped /
    re-weighted / added), reason, n. Duplicated groups of the refill appear as outcome "added".
    """
    funnel = result.funnel.set_index("rule")
    out = []
    for (rule, reason, kept, reweighted), n in (
            result.decisions.assign(reweighted=lambda d: d["kept"] & (d["traj_reason"] != "ok"))
            .groupby(["rule", "reason", "kept", "reweighted"], sort=False).size().items()):
        outcome = "dropped" if not kept else "re-weighted" if reweighted else "passed"
        out.append({"rule": rule, "outcome": outcome, "reason": "passed" if outcome == "passed" else reason,
                    "n": int(n)})
    if "refill" in funnel.index:
        added = int(funnel.loc["refill", "trajs_out"] - funnel.loc["refill", "trajs_in"])
        if added > 0:
            out.append({"rule": "refill", "outcome": "added", "reason": "duplicated", "n": added})
    df = pd.DataFrame(out, columns=["rule", "outcome", "reason", "n"])
    if df.empty:
        return df.assign(stage=pd.Series(dtype=int), label=pd.Series(dtype=str))
    df = df.groupby(["rule", "outcome", "reason"], sort=False, as_index=False)["n"].sum()
    df["stage"] = df["rule"].map(funnel["stage"]).astype(int)
    df["label"] = [f"{funnel.loc[r, 'stage']}. {r}: {funnel.loc[r, 'trajs_in']} → {funnel.loc[r, 'trajs_out']} trajs, "
                   f"{funnel.loc[r, 'groups_in']} → {funnel.loc[r, 'groups_out']} groups" for r in df["rule"]]
    return df.sort_values(["stage", "outcome"]).reset_index(drop=True)[
        ["stage", "rule", "label", "outcome", "reason", "n"]]


def reward_spread_frame(trajectories: pd.DataFrame) -> pd.DataFrame:
    """Per group and reward value: how many members got it, and the group's status.

    Input: Explored.trajectories (needs group_id, reward, group_status). Columns: group_id, reward,
    n, group_status, mean_reward.
    """
    g = trajectories.groupby(["group_id", "reward"], as_index=False).size().rename(columns={"size": "n"})
    g["group_status"] = g["group_id"].map(trajectories.groupby("group_id")["group_status"].first())
    g["mean_reward"] = g["group_id"].map(trajectories.groupby("group_id")["reward"].mean())
    return g


def entropy_by_offset(tokens: pd.DataFrame, max_offset: int = 48, bin_width: int = 1,
                      min_count: int = 3) -> pd.DataFrame:
    """Mean entropy of sampled tokens by distance (tokens) from the start of their turn, split into
    turns that start right after a tool output and first turns (the baseline at the same offset).

    Bins resting on fewer than `min_count` tokens are left out (their mean is noise).
    Columns: segment, offset (bin start), mean, sem, lo, hi (mean ± 1.96 sem, lo >= 0), n.
    """
    if bin_width < 1 or max_offset < 1:
        raise ValueError(f"bin_width={bin_width} and max_offset={max_offset} must be >= 1")
    s = tokens[(tokens["mask"] == 1) & tokens["segment"].isin([FIRST_TURN, AFTER_TOOL])
               & (tokens["offset"] < max_offset)]
    s = s.assign(offset_bin=(s["offset"] // bin_width * bin_width).astype(int))
    g = s.groupby(["segment", "offset_bin"])["entropy"].agg(["mean", "std", "count"]).reset_index()
    g = g.rename(columns={"offset_bin": "offset", "count": "n"})
    g["sem"] = (g["std"] / np.sqrt(g["n"])).fillna(0.0)
    g["lo"], g["hi"] = (g["mean"] - 1.96 * g["sem"]).clip(lower=0.0), g["mean"] + 1.96 * g["sem"]  # H >= 0
    return g.loc[g["n"] >= min_count, ["segment", "offset", "mean", "sem", "lo", "hi", "n"]].reset_index(drop=True)


SPIKE_WINDOW = 8   # tokens after a tool output ARPO's spike is read over; 8 fits 192-token episodes [recon]


def entropy_spike(tokens: pd.DataFrame, window: int = SPIKE_WINDOW) -> dict[str, float]:
    """ARPO's observation as three numbers: mean entropy of the first `window` sampled tokens of
    turns that start right after a tool output, the same for first turns (the baseline at the same
    offsets), and their difference (> 0: entropy rises after tool feedback). NaN where a side has no
    tokens (e.g. no episode called a tool). `tokens`: token_table's frame."""
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    s = tokens[(tokens["mask"] == 1) & (tokens["offset"] < window)] if not tokens.empty else tokens
    after = float(s.loc[s["segment"] == AFTER_TOOL, "entropy"].mean()) if not s.empty else math.nan
    first = float(s.loc[s["segment"] == FIRST_TURN, "entropy"].mean()) if not s.empty else math.nan
    return {"after_tool": after, "first_turn": first, "spike": after - first}


def heatmap_frame(tokens: pd.DataFrame, max_cells: int = 4000, max_trajs: int = 64,
                  order_by: str = "reward") -> pd.DataFrame:
    """Trajectory × position bins: mean entropy of the sampled tokens of each bin.

    The bin width grows until trajectories × bins <= max_cells; beyond `max_trajs` trajectories an
    evenly spaced subset is shown, and `n_trajs_total` says of how many. Columns: traj, rank (row
    order, by `order_by` then traj), pos_start, pos_end, entropy (NaN where a bin holds only tool
    output), frac_forced, frac_post_tool, reward, width, n_trajs_total.
    """
    ids = sorted(tokens["traj"].unique())
    total = len(ids)
    if total > max_trajs:
        ids = [ids[int(i)] for i in np.linspace(0, total - 1, max_trajs)]
    t = tokens[tokens["traj"].isin(ids)]
    max_len = int(t["pos"].max()) + 1 if len(t) else 1
    width = max(1, math.ceil(max_len * len(ids) / max_cells))
    t = t.assign(bin=t["pos"] // width, sampled_h=t["entropy"].where(t["mask"] == 1),
                 forced=(t["mask"] == 0).astype(float))
    g = t.groupby(["traj", "bin"]).agg(entropy=("sampled_h", "mean"), frac_forced=("forced", "mean"),
                                       frac_post_tool=("post_tool", "mean"), reward=("reward", "first"))
    g = g.reset_index()
    g["pos_start"], g["pos_end"] = g["bin"] * width, (g["bin"] + 1) * width
    order = (g.groupby("traj")[order_by].first().reset_index().sort_values([order_by, "traj"])
             if order_by in g else pd.DataFrame({"traj": ids}))
    g["rank"] = g["traj"].map({tr: k for k, tr in enumerate(order["traj"])})
    g["width"], g["n_trajs_total"] = width, total
    return g.drop(columns="bin")


def trace_frame(tokens: pd.DataFrame, trajs: list[int], max_rows: int = 4000) -> pd.DataFrame:
    """Per-token entropy of a few trajectories, binned along the sequence if they exceed max_rows.

    Columns: traj, pos, entropy (NaN on forced tokens), turn, post_tool, mask, width (1 = unbinned).
    """
    t = tokens[tokens["traj"].isin(trajs)]
    missing = sorted(set(trajs) - set(t["traj"]))
    if missing:
        raise ValueError(f"trace_frame: trajectories {missing} are not in the token table "
                         f"(it has {tokens['traj'].nunique()} trajectories, ids 0..{tokens['traj'].max()})")
    width = max(1, math.ceil(len(t) / max_rows))
    t = t.assign(entropy=t["entropy"].where(t["mask"] == 1))
    if width > 1:  # mean over bins of `width` tokens, per turn so a bin never straddles a tool output
        t = (t.assign(pos=t["pos"] // width * width).groupby(["traj", "turn", "pos"], as_index=False)
             .agg(entropy=("entropy", "mean"), post_tool=("post_tool", "max"), mask=("mask", "max")))
    return t.assign(width=width)[["traj", "pos", "entropy", "turn", "post_tool", "mask", "width"]]


def tool_spans(tokens: pd.DataFrame, trajs: list[int] | None = None) -> pd.DataFrame:
    """Contiguous runs of forced (tool output) tokens: traj, start, end (exclusive), turn."""
    t = tokens if trajs is None else tokens[tokens["traj"].isin(trajs)]
    out = []
    for tr, d in t.groupby("traj"):
        forced = d.loc[d["mask"] == 0, ["pos", "turn"]].to_numpy()
        if not len(forced):
            continue
        starts = np.r_[0, np.nonzero(np.diff(forced[:, 0]) != 1)[0] + 1]
        ends = np.r_[starts[1:], len(forced)]
        for a, b in zip(starts, ends):
            out.append({"traj": tr, "start": int(forced[a, 0]), "end": int(forced[b - 1, 0]) + 1,
                        "turn": int(forced[a, 1])})
    return pd.DataFrame(out, columns=["traj", "start", "end", "turn"])


def ratio_histogram(shaped: pd.DataFrame, bins: int = 40) -> pd.DataFrame:
    """Histogram of Ã/A over trainable tokens with A != 0, gated versus other tokens, shared bins.

    Columns: tokens ("gated" / "other"), bin_start, bin_end, n, frac (of that kind's tokens), total.
    """
    s = shaped.dropna(subset=["ratio"])
    cols = ["tokens", "bin_start", "bin_end", "n", "frac", "total"]
    if s.empty:
        return pd.DataFrame(columns=cols)
    lo, hi = float(s["ratio"].min()), float(s["ratio"].max())
    if hi - lo < 1e-6:  # all equal (e.g. a = 0): one visible bar around the value
        lo, hi = lo - 0.005, hi + 0.005
    edges = np.linspace(lo, hi, bins + 1)
    out = []
    for kind, d in (("gated", s[s["gate"] == 1]), ("other", s[s["gate"] == 0])):
        if d.empty:
            continue
        n, _ = np.histogram(d["ratio"], edges)
        for k in np.nonzero(n)[0]:
            out.append({"tokens": kind, "bin_start": edges[k], "bin_end": edges[k + 1], "n": int(n[k]),
                        "frac": n[k] / len(d), "total": len(d)})
    return pd.DataFrame(out, columns=cols)


def advantage_frame(ex: Explored, setting: str = "current") -> pd.DataFrame:
    """The group advantage A of every input trajectory under one Explored's filter setting.

    Columns: setting, traj, group_id, member, reward, group_status, all_tools_failed, outcome, weight,
    advantage (NaN = dropped before the advantage), role ("trains" / "baseline only (weight 0)" / "dropped").
    """
    d = ex.trajectories
    role = np.where(d["advantage"].isna(), "dropped", np.where(d["weight"] > 0, "trains", "baseline only (weight 0)"))
    return d.assign(setting=setting, role=role, member=d["sample_idx"])[
        ["setting", "traj", "group_id", "member", "reward", "group_status", "all_tools_failed", "outcome",
         "weight", "advantage", "role"]]


def signal_groups(table: pd.DataFrame, max_groups: int = 8, first: list[int] | None = None) -> pd.DataFrame:
    """Rows of the first `max_groups` groups with mixed rewards (the only ones whose A is not 0);
    the groups in `first` (e.g. `differing_groups(table)`) come before the others."""
    mixed = table.loc[table["group_status"] == "mixed", "group_id"].drop_duplicates().tolist()
    keep = ([g for g in (first or []) if g in mixed] + [g for g in mixed if g not in (first or [])])[:max_groups]
    return table[table["group_id"].isin(keep)]


def differing_groups(table: pd.DataFrame) -> list[int]:
    """Groups whose advantage or loss weight differs between the settings of an advantage_table.

    Filter A drop and mask differ only in a mixed group that holds an episode whose tool calls all
    failed; in a small sample there may be none, and then the two panels are identical."""
    by = table.assign(advantage=table["advantage"].round(6).fillna(np.inf), weight=table["weight"].round(6))
    wide = by.pivot_table(index=["group_id", "traj"], columns="setting", values=["advantage", "weight"],
                          aggfunc="first")
    differs = wide.groupby(level="group_id").apply(
        lambda g: any(g[col].nunique(axis=1).gt(1).any() for col in ("advantage", "weight")))
    return [int(gid) for gid, d in differs.items() if d]


def flagged_member_what_if(trajs: list[Trajectory]) -> tuple[list[Trajectory], int, int] | None:
    """A what-if for Filter A when no mixed group holds a flagged episode: a copy of a real episode
    whose tool calls all failed joins the first real mixed group as one more member.

    Returns (trajectories with the copy appended, the group it joined, the copied episode's index),
    or None when the sample has no flagged episode or no mixed group. The copy keeps its own reward
    (scored against its own task): only its place in the group is made up, and callers say so.
    """
    from dataclasses import replace

    flagged = [i for i, t in enumerate(trajs) if all_tools_failed(t)]
    groups: dict[int, list[float]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(float(t.reward or 0.0))
    mixed = [g for g, r in groups.items() if not is_degenerate(r)]
    if not flagged or not mixed:
        return None
    src, gid = flagged[0], mixed[0]
    member = max(t.sample_idx for t in trajs if t.group_id == gid) + 1
    return list(trajs) + [replace(trajs[src], group_id=gid, sample_idx=member, parent=None, branch_pos=None)], gid, src


def advantage_table(trajs: list[Trajectory], settings: dict[str, FilterConfig],
                    adv_std: str = DEFAULT_STD) -> pd.DataFrame:
    """advantage_frame under several filter settings (e.g. Filter A drop vs mask), stacked."""
    return pd.concat([advantage_frame(recompute(trajs, cfg, ShapingConfig(kind="none"), adv_std=adv_std), name)
                      for name, cfg in settings.items()], ignore_index=True)


def _informative_row(s: pd.DataFrame) -> int:
    import warnings
    moving = s[s["adv"] != 0]
    gated = moving.loc[moving["gate"] == 1, "row"]
    if len(gated):
        return int(gated.iloc[0])
    if len(moving):
        warnings.warn("no row with A != 0 has a gated (post-tool) token: the shaping leaves this trace unchanged")
        return int(moving["row"].iloc[0])
    warnings.warn("every advantage row has A = 0 (all groups all-correct or all-wrong): the trace is flat "
                  "whatever the coefficient; sample a step with mixed groups")
    return int(s["row"].iloc[0]) if len(s) else 0


def shaped_trace(shaped: pd.DataFrame, row: int | None = None, max_rows: int = 4000) -> pd.DataFrame:
    """A and Ã along one advantage row, long format.

    The default row is an informative one: gated tokens AND A != 0 (a row of an all-equal group has
    A = 0 everywhere, so no coefficient could move its trace); else any row with A != 0, with a
    warning that nothing is gated; else the first row, with a warning that every trace is flat.
    Columns: row, traj, pos, gate, piece (a run of consecutive trainable tokens: lines break
    between pieces, i.e. at tool outputs), which ("A" / "Ã"), value; forced and zero-weight tokens omitted.
    """
    s = shaped[shaped["loss_mask"] > 0]
    if row is None:
        row = _informative_row(s)
    d = s[s["row"] == row]
    d = d.assign(piece=(d["pos"].diff() != 1).cumsum())
    long = pd.concat([d.assign(which="A", value=d["adv"]), d.assign(which="Ã", value=d["adv_shaped"])])
    if len(long) > max_rows:
        raise ValueError(f"shaped_trace: row {row} has {len(d)} tokens; over {max_rows // 2} the chart "
                         "would pass altair's row limit (trim the completion budget or pick another row)")
    return long[["row", "traj", "pos", "gate", "piece", "which", "value"]].reset_index(drop=True)


def metrics_long(metrics: pd.DataFrame, columns: list[str] | None = None, step: str = "step") -> pd.DataFrame:
    """Wide step metrics (RunStore.metrics()) -> long frame: step, metric, value (numeric only)."""
    if step not in metrics:
        raise ValueError(f"metrics frame has no {step!r} column; it has {list(metrics.columns)[:12]}")
    cols = columns or [c for c in metrics.columns if c != step and pd.api.types.is_numeric_dtype(metrics[c])]
    unknown = [c for c in cols if c not in metrics]
    if unknown:
        raise ValueError(f"metrics frame has no column(s) {unknown}")
    return metrics.melt(id_vars=[step], value_vars=cols, var_name="metric", value_name="value").dropna()
