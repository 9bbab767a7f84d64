"""Behaviour metrics of a tool agent (ET-Agent, METHODS.md §3): pure functions over trajectories.

ET-Agent judges an agent not only by its answers but by how it uses the tool: does it call when it
should, do its calls run, does it repeat itself, how much does a correct answer cost. Everything
here reads `records.Trajectory` and nothing else; correctness is `records.is_correct` (the verifier's
verdict, never a shaped reward).

    redundant_calls(traj)    per call: is it redundant, by the rule below [recon]
    behaviour_metrics(trajs) one dict of the metrics below, over a set of trajectories
    behaviour_frame(runs)    {name: trajs} -> one row per run (for tables and charts)
    radar_frame / radar_chart / behaviour_bars   the paper's radar figure, and a plain bar chart

The metrics (a rate over calls is NaN when there are no calls: "no calls" is not "0 % failed"):
    accuracy            share of trajectories the verifier accepts
    effi                Effi [code]: per question acc_q / mean calls_q (acc_q when it made no call),
                        averaged over questions (questions = Trajectory.task_id)
    success_exec_rate   calls that ran cleanly and printed something (ToolCall.valid, METHODS §0)
    aborted_rate        calls whose execution did not finish normally (status error / timeout /
                        memory / killed, i.e. status != "ok")
    redundant_rate      redundant calls / calls (rule below)
    insufficient_rate   trajectories answered wrongly without any tool call / trajectories [paper:
                        "insufficient tool calls"; every bundled task is a computation, so a wrong
                        answer given without a check counts]
    length_per_correct  sampled tokens (mask 1, the policy's own text) over all trajectories / number
                        correct: what one correct answer costs in reasoning length
    calls_per_correct   tool calls over all trajectories / number correct
    calls_mean          tool calls per trajectory

The redundancy rule [recon] (the paper has an LLM judge decide; here a stated rule): call k is
redundant if
  (a) its code, with all whitespace removed, equals an earlier call's code in the same trajectory; or
  (b) it ran validly but the rest of the trajectory never uses its output: none of the numbers it
      printed (or, if it printed no number, none of its non-empty output lines) appears in the
      model's own text after its observation. Output that holds the boxed answer is used (the
      episode ends on it). A failed call is not redundant by (b): it is counted as aborted or
      unsuccessful instead, and its error is what the next turn reacts to.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .records import Trajectory, is_correct

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

METRICS = ("accuracy", "effi", "success_exec_rate", "aborted_rate", "redundant_rate",
           "insufficient_rate", "length_per_correct", "calls_per_correct", "calls_mean")
# for the radar: which way is better (True: higher is better)
HIGHER_IS_BETTER = {"accuracy": True, "effi": True, "success_exec_rate": True, "aborted_rate": False,
                    "redundant_rate": False, "insufficient_rate": False, "length_per_correct": False,
                    "calls_per_correct": False, "calls_mean": False}


# ----------------------------------------------------------------------------------------------
# The redundancy rule


def model_segments(traj: Trajectory) -> list[str]:
    """The model's own text split at the tool observations: len(tool_calls) + 1 strings, segment k
    is what the model wrote between observation k-1 and observation k (segment 0: before the first).

    Observations are found in `traj.text` in order, as rewards.find_answer does; one that cannot be
    found leaves an empty segment (the text after it stays in the following one).
    """
    text, pos, out = traj.text or "", 0, []
    for call in traj.tool_calls:
        i = text.find(call.observation, pos) if call.observation else -1
        if i < 0:
            out.append("")
            continue
        out.append(text[pos:i])
        pos = i + len(call.observation)
    out.append(text[pos:])
    return out


def _squash(code: str) -> str:
    return re.sub(r"\s+", "", code)


def _canon(number: str) -> str:
    """A printed "42.0" and a written "42" are the same value."""
    return number[:-2] if number.endswith(".0") else number


def output_used(stdout: str, later_text: str) -> bool:
    """Rule (b): is anything a call printed used in `later_text` (the model's text after it)?"""
    if "\\boxed{" in stdout:
        return True
    numbers = {_canon(n) for n in _NUMBER.findall(stdout)}
    if numbers:
        return bool(numbers & {_canon(n) for n in _NUMBER.findall(later_text)})
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    return any(ln in later_text for ln in lines)


def redundant_calls(traj: Trajectory) -> list[bool]:
    """Per tool call of `traj`: True when it is redundant by rule (a) or (b) of the module doc."""
    segments = model_segments(traj)
    seen: set[str] = set()
    out = []
    for k, call in enumerate(traj.tool_calls):
        code = _squash(call.code)
        repeat = code in seen
        seen.add(code)
        unused = call.valid and not output_used(call.stdout, "".join(segments[k + 1:]))
        out.append(bool(repeat or unused))
    return out


def first_redundant_call(traj: Trajectory) -> int | None:
    """Index of the first redundant call (the flywheel's cut point), or None."""
    return next((k for k, r in enumerate(redundant_calls(traj)) if r), None)


# ----------------------------------------------------------------------------------------------
# The metrics


def _rate(num: float, den: float) -> float:
    return float(num) / den if den else math.nan


def effi(trajs: Sequence[Trajectory]) -> float:
    """Effi [code]: mean over questions of acc_q / mean tool calls_q (acc_q when it made no call)."""
    by_q: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        by_q[t.task_id].append(t)
    if not by_q:
        return math.nan
    vals = []
    for group in by_q.values():
        acc = float(np.mean([is_correct(t) for t in group]))
        calls = float(np.mean([t.n_tool_calls for t in group]))
        vals.append(acc / calls if calls > 0 else acc)
    return float(np.mean(vals))


def behaviour_metrics(trajs: Iterable[Trajectory]) -> dict[str, float]:
    """Every metric of the module doc over `trajs` (a run's eval set, a step's rollouts)."""
    trajs = list(trajs)
    n = len(trajs)
    correct = [is_correct(t) for t in trajs]
    calls = [c for t in trajs for c in t.tool_calls]
    n_correct = sum(correct)
    n_redundant = sum(sum(redundant_calls(t)) for t in trajs)
    return {
        "n": n,
        "accuracy": _rate(n_correct, n),
        "effi": effi(trajs),
        "success_exec_rate": _rate(sum(c.valid for c in calls), len(calls)),
        "aborted_rate": _rate(sum(c.status != "ok" for c in calls), len(calls)),
        "redundant_rate": _rate(n_redundant, len(calls)),
        "insufficient_rate": _rate(sum(not ok and t.n_tool_calls == 0 for t, ok in zip(trajs, correct)), n),
        "length_per_correct": _rate(sum(t.n_sampled for t in trajs), n_correct),
        "calls_per_correct": _rate(len(calls), n_correct),
        "calls_mean": _rate(len(calls), n),
    }


def calls_histogram(trajs: Iterable[Trajectory]) -> dict[int, int]:
    """{number of tool calls: trajectories with that many} (phase 1's before/after comparison)."""
    out: dict[int, int] = defaultdict(int)
    for t in trajs:
        out[t.n_tool_calls] += 1
    return dict(sorted(out.items()))


def behaviour_frame(runs: Mapping[str, Sequence[Trajectory]]) -> pd.DataFrame:
    """{run name: trajectories} -> one row per run, a column per metric (plus `run`)."""
    return pd.DataFrame([{"run": name, **behaviour_metrics(trajs)} for name, trajs in runs.items()])


# ----------------------------------------------------------------------------------------------
# Charts


def radar_frame(table: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """behaviour_frame -> the radar's polygon points: run, metric, value, score, x, y, order.

    score in [0, 1] and "outward is better": a higher-is-better metric is value / max over runs, a
    lower-is-better one is min over runs / value (so the best run reaches the rim on every axis).
    NaN scores are drawn at 0. Axis 0 points straight up, axes go clockwise, and each run's polygon
    repeats its first point at the end to close.
    """
    rows = []
    k = len(metrics)
    for m_i, m in enumerate(metrics):
        vals = table[m].astype(float)
        for run, v in zip(table["run"], vals):
            if math.isnan(v):
                score = 0.0
            elif HIGHER_IS_BETTER.get(m, True):
                top = np.nanmax(vals)
                score = v / top if top > 0 else 1.0
            else:
                low = np.nanmin(vals)
                score = low / v if v > 0 else 1.0
            angle = 2 * math.pi * m_i / k
            rows.append({"run": run, "metric": m, "value": v, "score": score, "order": m_i,
                         "x": score * math.sin(angle), "y": score * math.cos(angle)})
    df = pd.DataFrame(rows)
    first = df[df["order"] == 0].assign(order=k)
    return pd.concat([df, first], ignore_index=True).sort_values(["run", "order"], ignore_index=True)


def radar_chart(table: pd.DataFrame, metrics: Sequence[str] = METRICS,
                title: str = "Behaviour metrics (outward is better; each axis scaled to the best run)"):
    """The paper's radar figure: one closed polygon per run over the behaviour metrics."""
    import altair as alt

    pts = radar_frame(table, metrics)
    k = len(metrics)
    spokes = pd.DataFrame([{"metric": m, "x": math.sin(2 * math.pi * i / k) * 1.12,
                            "y": math.cos(2 * math.pi * i / k) * 1.12} for i, m in enumerate(metrics)])
    axis = alt.Axis(labels=False, ticks=False, grid=False, title=None, domain=False)
    scale = alt.Scale(domain=[-1.35, 1.35])
    lines = alt.Chart(pts).mark_line(point=True, opacity=0.8).encode(
        x=alt.X("x:Q", axis=axis, scale=scale), y=alt.Y("y:Q", axis=axis, scale=scale),
        order="order:Q", color="run:N", tooltip=["run", "metric", alt.Tooltip("value:Q", format=".3f")])
    labels = alt.Chart(spokes).mark_text(fontSize=10).encode(x="x:Q", y="y:Q", text="metric:N")
    return (lines + labels).properties(width=340, height=340, title=title)


def behaviour_bars(table: pd.DataFrame, metrics: Sequence[str] = METRICS,
                   title: str = "Behaviour metrics per run"):
    """The same numbers as bars, one small panel per metric (raw values, no rescaling)."""
    import altair as alt

    long = table.melt(id_vars="run", value_vars=list(metrics), var_name="metric", value_name="value")
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("run:N", title=None), y=alt.Y("value:Q", title=None), color="run:N",
        tooltip=["run", "metric", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=110, height=110).facet(facet="metric:N", columns=5).resolve_scale(y="independent") \
        .properties(title=title)
