"""ET-Agent: behaviour calibration [paper: arXiv 2601.06860; code: asilverlight/ET-Agent].

What it changes, at which stage: the *reward* (efficiency-calibrated: R = correct·f_tool·f_len −
f_fmt, σ annealed over a stage [code]), the *prompt source* (group-wise Pareto sampling of the
questions whose tool counts and correctness vary most [code]) and a *supervised phase* on the
trajectories of a self-evolving data flywheel [paper][code] (et_agent_flywheel.py, then sft.SFTRun).

Reading order (phase 2, behaviour-calibration RL, in `stages` stages of `stage_steps` steps):

    EtAgentConfig         the knobs (TrainConfig section `et_agent`); SIGMA_SETTINGS paper vs code
    calibration, group_zscore, annealed_sigma, et_agent_rewards
                          the reward's pure functions over one group (rewards.score applies them)
    dominates, nondominated_fronts, crowding_distance, pareto_select
                          NSGA-II over per-question objectives, both maximised
    question_objectives   (Var tool-call counts, Var correctness) of one question's G rollouts
    mixed_outcome, select_questions, pareto_frame, pareto_chart
                          the post-filter, the whole selection, as a table and as a scatter
    ParetoSource          the prompt source: per stage probe candidates, select, serve
    StageReward           the reward hook: σ annealed within each stage
    arm, build_hooks      ARMS["et_agent"] and HOOKS["et_agent"] (methods/arms.py)

Each stage starts from the previous stage's adapter because the stages run in one Trainer: the
adapter simply carries on, and each stage's probe rolls out with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


SIGMA_SETTINGS = {
    "paper": (0.2, 0.5),    # σ_tool, σ_len of the paper (and of the code's defaults) [paper]
    "code": (0.0, 0.0),     # the public training scripts pass 0 for both: only the data calibrates [code]
    "config": None,         # RewardConfig.sigma_tool / sigma_len as set (`--set reward.sigma_tool=...`)
}


@dataclass
class EtAgentConfig:
    """ET-Agent's stage knobs (TrainConfig section `et_agent`, `--set et_agent.budget=4`)."""

    stages: int = 3                  # curriculum RL stages [paper][code: 3]; the pipeline runs stages·stage_steps
    stage_steps: int = 4             # trainer steps per stage (σ anneals to 0 within a stage)
    candidates: int = 16             # questions probed at the start of each stage (G rollouts each)
    budget: int = 8                  # questions the Pareto selection keeps per stage (before the post-filter)
    post_filter: bool = True         # keep only mixed-outcome questions after the selection [code]
    sigmas: str = "paper"            # "paper" (0.2 / 0.5, default) | "code" (0 / 0) | "config" (RewardConfig's)
    anneal: bool = True              # σ_eff decays linearly to 0 over each stage [code]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "stages", lo=1, integer=True)
        checks.number(self, "stage_steps", lo=1, integer=True)
        checks.number(self, "candidates", lo=1, integer=True)
        checks.number(self, "budget", lo=1, integer=True)
        checks.choice(self, "sigmas", SIGMA_SETTINGS)
        checks.flag(self, "post_filter", "anneal")


def calibration(x: np.ndarray, sigma: float) -> np.ndarray:
    """f(x) = 2 / (1 + exp(σ · (x − mean(x)))) over one group. x: (G,) -> (G,), values in (0, 2).

    Below the group mean f > 1 (fewer calls / shorter is rewarded), above it f < 1; σ = 0 gives 1.
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.clip(sigma * (x - x.mean()), -700.0, 700.0)  # exp overflows past ~709
    return 2.0 / (1.0 + np.exp(z))


def group_zscore(x: np.ndarray) -> np.ndarray:
    """(x − mean) / std over one group, population std (ddof=0) as in ET-Agent's code; 0 if std = 0."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    return np.zeros_like(x) if std == 0 else (x - x.mean()) / std


def annealed_sigma(sigma: float, step: int, total_steps: int) -> float:
    """σ_eff = σ · max(0, (T − step) / (T − 1)); T = 0 means no annealing.

    Steps count from 1 (the run store's first step is 1): σ_eff = σ at step 1 and 0 from step T on.
    Deviation: the factor is also capped at 1, so step 0 (before training) uses σ, not σ·T/(T−1).
    """
    if total_steps == 0:
        return float(sigma)
    factor = (total_steps - step) / (total_steps - 1)
    return float(sigma) * min(1.0, max(0.0, factor))


def et_agent_rewards(correct: np.ndarray, n_tool_calls: np.ndarray, lengths: np.ndarray,
                     no_answer: np.ndarray, sigma_tool: float, sigma_len: float,
                     format_penalty: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R = correct · f_tool · f_len − format_penalty · no_answer, over one group. All arrays (G,).

    f_tool = calibration(n_tool_calls, σ_tool); f_len = calibration(zscore(lengths), σ_len) (the
    mean of z-scores is 0, so this is f applied to z). Returns (R, f_tool, f_len).
    """
    correct = np.asarray(correct, dtype=np.float64)
    f_tool = calibration(n_tool_calls, sigma_tool)
    f_len = calibration(group_zscore(lengths), sigma_len)
    r = correct * f_tool * f_len - format_penalty * np.asarray(no_answer, dtype=np.float64)
    return r, f_tool, f_len


# ----------------------------------------------------------------------------------------------
# Group-wise Pareto sampling [code]: NSGA-II over per-question objectives (both maximised)


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a dominates b (maximisation): a >= b on every objective and > on at least one. a, b: (M,)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(a >= b) and np.any(a > b))


def nondominated_fronts(points: np.ndarray) -> list[list[int]]:
    """NSGA-II's fast non-dominated sort. points: (N, M) -> fronts, each a sorted list of row indices;
    front 0 is dominated by nobody, front f+1 only by members of fronts <= f."""
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    beaten_by = [0] * n                          # how many points dominate i
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j and dominates(points[i], points[j]):
                beats[i].append(j)
                beaten_by[j] += 1
    fronts, current = [], [i for i in range(n) if beaten_by[i] == 0]
    while current:
        fronts.append(sorted(current))
        nxt = []
        for i in current:
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    nxt.append(j)
        current = nxt
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within one front. points: (n, M) -> (n,).

    Per objective: sort, the two boundary points get inf, an inner point adds the gap between its
    neighbours divided by the objective's range; an objective with zero range is skipped [code], so
    a front whose points are equal everywhere has distance 0 inside (and inf at its two ends only
    when some objective has a range).
    """
    points = np.asarray(points, dtype=np.float64)
    n, m = points.shape if points.ndim == 2 else (len(points), 0)
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(points[:, k], kind="stable")
        v = points[order, k]
        span = v[-1] - v[0]
        if span == 0:
            continue
        d[order[0]] = d[order[-1]] = np.inf
        d[order[1:-1]] += (v[2:] - v[:-2]) / span
    return d


def pareto_select(points: np.ndarray, budget: int) -> list[int]:
    """NSGA-II environmental selection: whole fronts while they fit in `budget`, then the last front's
    most crowding-distant points (ties by index). points: (N, M) -> sorted selected row indices."""
    chosen: list[int] = []
    for front in nondominated_fronts(points):
        room = budget - len(chosen)
        if room <= 0:
            break
        if len(front) <= room:
            chosen += front
            continue
        cd = crowding_distance(np.asarray(points, dtype=np.float64)[front])
        order = sorted(range(len(front)), key=lambda i: (-cd[i], front[i]))
        chosen += [front[i] for i in order[:room]]
    return sorted(chosen)


def question_objectives(calls: list[int], correct: list[bool]) -> tuple[float, float]:
    """(Var of tool-call counts, Var of correctness) over one question's G rollouts, population
    variance (ddof=0) [code]."""
    return float(np.var(np.asarray(calls, dtype=np.float64))), float(np.var(np.asarray(correct, dtype=np.float64)))


def mixed_outcome(correct: list[bool]) -> bool:
    """The post-filter [code]: at least one rollout right and one wrong (a group GRPO can learn from)."""
    return 0 < sum(bool(c) for c in correct) < len(correct)


def select_questions(stats: dict[str, dict[str, list]], budget: int, post_filter: bool = True) -> list[str]:
    """stats {question id: {"calls": [...], "correct": [...]}} -> the stage's question ids: Pareto
    selection on (Var calls, Var correct) up to `budget`, then (post_filter) mixed outcomes only."""
    ids = sorted(stats)
    if not ids:
        return []
    points = np.array([question_objectives(stats[q]["calls"], stats[q]["correct"]) for q in ids])
    chosen = [ids[i] for i in pareto_select(points, budget)]
    return [q for q in chosen if mixed_outcome(stats[q]["correct"])] if post_filter else chosen


def pareto_frame(stats: dict[str, dict[str, list]], budget: int, post_filter: bool = True):
    """The selection as a table (one row per question): var_calls, var_correct, front, crowding
    (within its front), pareto (kept by the budget), mixed, selected (after the post-filter)."""
    import pandas as pd

    ids = sorted(stats)
    points = np.array([question_objectives(stats[q]["calls"], stats[q]["correct"]) for q in ids]).reshape(-1, 2)
    front_of, crowd = {}, {}
    for f, front in enumerate(nondominated_fronts(points)):
        for i, c in zip(front, crowding_distance(points[front])):
            front_of[i], crowd[i] = f, float(c)
    kept = set(pareto_select(points, budget))
    selected = set(select_questions(stats, budget, post_filter))
    return pd.DataFrame([{
        "task_id": q, "var_calls": points[i, 0], "var_correct": points[i, 1], "front": front_of[i],
        "crowding": crowd[i], "pareto": i in kept, "mixed": mixed_outcome(stats[q]["correct"]),
        "selected": q in selected} for i, q in enumerate(ids)])


def pareto_chart(frame, title: str = "Pareto sampling: each question's spread in tool calls and correctness"):
    """Scatter of pareto_frame: x Var(calls), y Var(correct), colour = front, filled = selected."""
    import altair as alt

    return alt.Chart(frame).mark_point(size=90).encode(
        x=alt.X("var_calls:Q", title="Var(tool-call counts)"),
        y=alt.Y("var_correct:Q", title="Var(correctness)"),
        color=alt.Color("front:O", title="front"),
        shape=alt.Shape("selected:N", title="selected"),
        fill=alt.condition("datum.selected", alt.Color("front:O"), alt.value("white")),
        tooltip=["task_id", "front", alt.Tooltip("crowding:Q", format=".2f"), "pareto", "mixed", "selected"],
    ).properties(width=360, height=260, title=title)


# ----------------------------------------------------------------------------------------------
# Phase 2's prompt source: per stage, probe candidates, select, serve


class ParetoSource:
    """hooks.PromptSource of behaviour-calibration RL: stage s = (step − 1) // stage_steps.

    At a stage's start it draws `candidates` questions (a seeded stream over the training tasks, so
    every stage probes fresh ones), serves them k per step (the probe: the Trainer's usual G rollouts
    with the current adapter, so each stage selects with the previous stage's policy [paper]), and
    records each question's tool-call counts and correctness from `observe`. Once every candidate is
    probed it selects (select_questions) and serves the selection in a seeded order until the stage
    ends. [recon] The probe's rollouts are ordinary training rollouts: they are rewarded and trained
    on like any other step (a separate probing pass would cost G more rollouts per candidate,
    which one small machine cannot spare). If no candidate has mixed outcomes, the stage serves
    the candidates instead and says so (`source/fallback`).
    """

    def __init__(self, tasks, cfg: EtAgentConfig, seed: int):
        self.tasks, self.cfg, self.seed = list(tasks), cfg, int(seed)
        if not self.tasks:
            raise ValueError("ParetoSource: no training tasks (check DataConfig.tasks / split / limit)")
        self.index = {t.id: i for i, t in enumerate(self.tasks)}
        self.state = self._fresh_stage(-1)

    def _fresh_stage(self, stage: int) -> dict:
        from ..hooks import seeded_order

        n = min(self.cfg.candidates, len(self.tasks))
        cands = seeded_order(len(self.tasks), max(stage, 0) * n, n, self.seed)[0] if stage >= 0 else []
        return {"stage": stage, "candidates": cands, "probed": 0, "stats": {}, "selected": None,
                "cursor": 0, "fallback": False}

    def stage_of(self, step: int) -> int:
        return (step - 1) // self.cfg.stage_steps

    def next_batch(self, step: int, k: int):
        from ..hooks import PromptBatch, seeded_order

        st = self.state
        if self.stage_of(step) != st["stage"]:
            st = self.state = self._fresh_stage(self.stage_of(step))
        if st["selected"] is None:                        # probing: the next k candidates (wrapping)
            c = st["candidates"]
            idx = [c[(st["probed"] + j) % len(c)] for j in range(k)]
            info = {"source/probe": 1.0}
        else:
            pool = st["selected"]
            pos, st["cursor"] = seeded_order(len(pool), st["cursor"], k, self.seed + 7919 * st["stage"])
            idx = [pool[i] for i in pos]
            info = {"source/probe": 0.0}
        info.update({"source/stage": float(st["stage"]), "source/fallback": float(st["fallback"]),
                     "source/n_selected": float(len(st["selected"] or []))})
        return PromptBatch([self.tasks[i] for i in idx], info=info)

    def observe(self, step: int, batch, trajs) -> dict[str, float]:
        st = self.state
        if st["selected"] is not None or not batch.info.get("source/probe"):
            return {}
        self.record(trajs)
        st["probed"] += len(batch.tasks)
        if st["probed"] < len(st["candidates"]):
            return {}
        return self.select()

    def record(self, trajs) -> None:
        """Add rollouts to the current stage's probe statistics (a caller may probe in its own loop)."""
        from ..records import is_correct

        for t in trajs:
            s = self.state["stats"].setdefault(t.task_id, {"calls": [], "correct": []})
            s["calls"].append(int(t.n_tool_calls))
            s["correct"].append(bool(is_correct(t)))

    def select(self) -> dict[str, float]:
        """Close the probe: Pareto-select the stage's questions from the recorded statistics."""
        st = self.state
        chosen = select_questions(st["stats"], self.cfg.budget, self.cfg.post_filter)
        st["fallback"] = not chosen
        st["selected"] = [self.index[q] for q in chosen] if chosen else list(st["candidates"])
        return {"source/selected": float(len(chosen)), "source/fallback": float(st["fallback"]),
                "source/probed_questions": float(len(st["stats"]))}

    def state_dict(self) -> dict:
        import json
        return json.loads(json.dumps(self.state))          # a deep, JSON-able copy

    def load_state_dict(self, state: dict) -> None:
        import json
        self.state = json.loads(json.dumps(state))


# ----------------------------------------------------------------------------------------------
# Phase 2's reward: rewards.score with the efficiency terms, σ annealed within each stage


class StageReward:
    """hooks.RewardFn: R = raw·f_tool·f_len + f_fmt (rewards.score, efficiency on) with σ annealed
    over each stage: the stage's local step (1 .. stage_steps) drives annealed_sigma, so σ returns
    to its full value when the next stage begins [code]. σ values by EtAgentConfig.sigmas."""

    def __init__(self, reward_cfg, cfg: EtAgentConfig):
        from dataclasses import replace

        sig = SIGMA_SETTINGS[cfg.sigmas] or (reward_cfg.sigma_tool, reward_cfg.sigma_len)
        T = cfg.stage_steps if cfg.anneal and cfg.stage_steps >= 2 else 0   # T=1: one step, nothing to anneal
        self.cfg = replace(reward_cfg, efficiency=True, sigma_tool=sig[0], sigma_len=sig[1], anneal_steps=T)
        self.stage_steps = cfg.stage_steps

    def local_step(self, step: int) -> int:
        return (step - 1) % self.stage_steps + 1

    def sigmas(self, step: int) -> tuple[float, float]:
        """(σ_tool_eff, σ_len_eff) at trainer step `step`."""
        s, T = self.local_step(step), self.cfg.anneal_steps
        return annealed_sigma(self.cfg.sigma_tool, s, T), annealed_sigma(self.cfg.sigma_len, s, T)

    def __call__(self, trajs, step: int):
        import math

        from ..behaviour import behaviour_metrics
        from ..rewards import score

        rewards, metrics = score(trajs, self.cfg, step=self.local_step(step))
        metrics["reward/stage_step"] = float(self.local_step(step))
        # the step's behaviour telemetry (a rate over no calls is NaN there: left out, not logged as 0)
        metrics.update({f"behaviour/{k}": v for k, v in behaviour_metrics(trajs).items()
                        if k != "n" and not math.isnan(v)})
        return rewards, metrics


# ----------------------------------------------------------------------------------------------
# The arm


def arm(cfg):
    """ET-Agent's switches: GRPO's loop (no filter, no shaping: the data and the reward calibrate),
    efficiency reward with f_fmt = −1 for an unanswered trajectory [code]."""
    from dataclasses import replace

    return replace(cfg, method="et_agent", filter=replace(cfg.filter, rules=(), refill="none"),
                   shaping=replace(cfg.shaping, kind="none"),
                   reward=replace(cfg.reward, efficiency=True, format_penalty=1.0))


def build_hooks(cfg, tasks, tok):
    """methods.arms.HOOKS["et_agent"]: the Pareto prompt source and the stage reward."""
    from ..hooks import MethodHooks

    return MethodHooks(prompt_source=ParetoSource(tasks, cfg.et_agent, cfg.seed),
                       reward_fn=StageReward(cfg.reward, cfg.et_agent))
