"""Compare runs and grids: held-out Avg@k / Pass@k per arm with bootstrap intervals, paired
differences between arms, learning curves with seed bands, telemetry, and a sentence per comparison.

    tao-lab compare runs/tao_ablation [more grid or run folders] --out runs/tao_ablation
    # -> compare.html (self-contained, offline) and compare.csv (tidy summary)

In a notebook: `data = load_runs(paths)`, `summary = summarise(data)`, `charts(data, summary)`,
`sentences(summary)`; everything reads stored run folders only (records.RunStore files).

Statistics [recon] (the papers report single runs; these are the usual choices):
  - An arm's held-out score per seed is the mean over its evaluation samples (Avg@k) or the mean over
    tasks of unbiased Pass@k (advantages.pass_at_k), at the run's last evaluation. Its interval is a
    percentile bootstrap over seeds (resample seeds with replacement, `n_boot` times, seeded).
  - The paired difference A − B uses the seeds and tasks both arms share: d[seed, task] = score_A −
    score_B (same task, same seed, same evaluation sampling seed: the grid's paired evaluation). Its
    interval is a two-way bootstrap that resamples seeds and tasks independently, so it reflects both
    the seed-to-seed spread of training and the finite held-out set.
  - "Separates" means the interval excludes 0. With 3 seeds the seed bootstrap has few distinct
    resamples; the intervals are then rough and say so by their width.
  - Learning-curve bands are the min..max over seeds at each step (not an interval).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .advantages import pass_at_k
from .records import RunStore, correct_column

# training metrics shown as curves and summarised per arm (mean over a run's steps)
TELEMETRY = {
    "reward/mean": "rollout reward",
    "tool/success_rate": "tool-call validity",
    "tool/calls_per_traj": "tool calls per trajectory",
    "filter/b_all_correct_rate": "Filter-B drop: all correct",
    "filter/b_all_wrong_rate": "Filter-B drop: all wrong",
    "groups/degenerate_rate": "degenerate groups (what Filter B drops)",
    "entropy/post_tool_mean": "post-tool entropy (nats)",
    "entropy/other_mean": "other-token entropy (nats)",
    "time/step_s": "time per step (s)",
    "rollout/sampled_tokens": "rollout tokens sampled per step",
}

# metrics of the held-out evaluations (evals/step_N/metrics.jsonl), summarised before and after:
# the post-training entropy (E3-TIR's "low-entropy collapse" claim) and ET-Agent's behaviour metrics
HELDOUT_METRICS = {
    "entropy/sampled_mean": "held-out token entropy (nats)",
    "tool/calls_per_traj": "held-out tool calls per episode",
    "tool/success_rate": "held-out tool-call validity",
    "behaviour/effi": "Effi (accuracy per call)",
    "behaviour/success_exec_rate": "successful executions",
    "behaviour/redundant_rate": "redundant calls",
    "behaviour/insufficient_rate": "insufficient calls",
    "behaviour/length_per_correct": "tokens per correct answer",
    "behaviour/calls_per_correct": "calls per correct answer",
    # ARPO's question on the held-out samples (explore.entropy_spike), computed here from the stored
    # tokens, so that it is asked of the trained models too, not only the base
    "entropy/after_tool_first8": "entropy of the first 8 tokens after tool output",
    "entropy/first_turn_first8": "entropy of the first 8 tokens of the first turn",
    "entropy/post_tool_spike": "post-tool entropy spike (after tool − first turn, nats)",
}


@dataclass
class RunData:
    """Everything a comparison needs, as tidy frames.

    samples: arm, seed, step, task_id, sample_idx, correct   (one row per held-out sample)
    curves:  arm, seed, step, metric, value                  (training metrics per step)
    runs:    arm, seed, run_dir, method, work, budget        (one row per run; work: TrainConfig.work)
    evals:   arm, seed, step, metric, value                  (HELDOUT_METRICS of each evaluation)
    """

    samples: pd.DataFrame
    curves: pd.DataFrame
    runs: pd.DataFrame
    evals: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["arm", "seed", "step", "metric", "value"]))


# ----------------------------------------------------------------------------------------------
# Reading stored runs


def find_runs(paths: Sequence[str | os.PathLike]) -> list[tuple[str, int, Path]]:
    """(arm, seed, run_dir) for every run under the given grid folders (grid.json) or run folders."""
    found = []
    for p in map(Path, paths):
        if (p / "grid.json").exists():
            spec = json.loads((p / "grid.json").read_text())
            from .grid import GridSpec
            for arm, seed in GridSpec(**spec).cells():
                d = p / arm.name / f"seed_{seed}"
                if (d / "metrics.jsonl").exists():
                    found.append((arm.name, seed, d))
        elif (p / "config.json").exists():
            train = json.loads((p / "config.json").read_text()).get("train", {})
            found.append((train.get("method", p.name), int(train.get("seed", 0)), p))
        else:
            raise FileNotFoundError(f"{p} is neither a grid folder (grid.json) nor a run folder (config.json)")
    return found


def work_mode(train: dict) -> tuple[str, str]:
    """(TrainConfig.work of a run, its budget in words). A stored config without `work` predates the
    switch and ran "equal_rollouts" (train_config.config_from_dict reads it so); no config at all: "?"."""
    if not train:
        return "?", "budget ?"
    work = train.get("work", "equal_rollouts")
    data, rollout, filt = train.get("data", {}), train.get("rollout", {}), train.get("filter", {})
    B, over, G = data.get("prompts_per_step"), data.get("oversample", 1.0), rollout.get("group_size")
    if train.get("method") == "arpo":            # ARPO grows M = group_size rows to G by forks and fresh rows
        G = train.get("arpo", {}).get("total_rollouts", G)
    if not (B and G):
        return work, "budget ?"
    rolled = int(np.ceil(B * over))
    refill = filt.get("refill")
    if work == "equal_groups" or refill not in (None, "none"):
        groups = f"B={B} groups per update"
    else:
        groups = f"up to {rolled} groups per update" if refill == "none" else f"B={B}, refill not recorded"
    return work, f"{groups}, {rolled * G} rollouts per step"


def _arm_work(runs: pd.DataFrame) -> dict[str, str]:
    """arm -> its runs' work mode(s), joined when they differ (a comparison that mixes modes says so)."""
    return runs.groupby("arm", sort=False)["work"].agg(lambda s: "+".join(sorted(set(s)))).to_dict()


def _spike_metrics(eval_dir: Path) -> dict[str, float]:
    from .explore import SPIKE_WINDOW, entropy_spike, token_table
    store = RunStore(eval_dir)
    if not store.steps():
        return {}
    sp = entropy_spike(token_table(store.read_step(0)), SPIKE_WINDOW)
    return {"entropy/after_tool_first8": sp["after_tool"], "entropy/first_turn_first8": sp["first_turn"],
            "entropy/post_tool_spike": sp["spike"]}


def _eval_metrics(run_dir: Path) -> pd.DataFrame:
    rows = []
    for mfile in sorted((run_dir / "evals").glob("step_*/metrics.jsonl")):
        lines = mfile.read_text().splitlines()
        if lines:
            m, step = json.loads(lines[0]), int(mfile.parent.name.split("_")[1])
            m = {**m, **_spike_metrics(mfile.parent)}
            rows += [{"step": step, "metric": k, "value": float(m[k])} for k in HELDOUT_METRICS
                     if m.get(k) is not None and np.isfinite(m[k])]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def _eval_samples(run_dir: Path) -> pd.DataFrame:
    frames = []
    for mfile in sorted((run_dir / "evals").glob("step_*/metrics.jsonl")):
        store = RunStore(mfile.parent)
        if not store.steps():
            continue
        t = store.trajectories([0])
        t = t.assign(step=int(mfile.parent.name.split("_")[1]), correct=correct_column(t).astype(float))
        frames.append(t[["task_id", "sample_idx", "step", "correct"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_runs(paths: Sequence[str | os.PathLike], work: str | None = None) -> RunData:
    """The runs under `paths`; `work` keeps only the runs made under that TrainConfig.work mode."""
    samples, curves, runs, evals, other_modes = [], [], [], [], set()
    for arm, seed, d in find_runs(paths):
        store = RunStore(d)
        train = store.read_config().get("train", {}) if (d / "config.json").exists() else {}
        mode, budget = work_mode(train)
        if work is not None and mode != work:
            other_modes.add(mode)
            continue
        runs.append({"arm": arm, "seed": seed, "run_dir": str(d), "method": train.get("method", "?"),
                     "work": mode, "budget": budget})
        m = store.metrics()
        cols = [c for c in TELEMETRY if c in m]
        if not m.empty and cols:
            long = m[["step", *cols]].melt(id_vars="step", var_name="metric", value_name="value").dropna()
            curves.append(long.assign(arm=arm, seed=seed))
        s = _eval_samples(d)
        if not s.empty:
            samples.append(s.assign(arm=arm, seed=seed))
        e = _eval_metrics(d)
        if not e.empty:
            evals.append(e.assign(arm=arm, seed=seed))
    if not runs and other_modes:
        raise ValueError(f"no run under {list(map(str, paths))} was made with work={work!r}; "
                         f"they were made with work={sorted(other_modes)}")
    if not runs:
        raise FileNotFoundError(f"no runs with metrics under {list(map(str, paths))}")
    cat = lambda fs, cols: pd.concat(fs, ignore_index=True)[cols] if fs else pd.DataFrame(columns=cols)
    return RunData(samples=cat(samples, ["arm", "seed", "step", "task_id", "sample_idx", "correct"]),
                   curves=cat(curves, ["arm", "seed", "step", "metric", "value"]),
                   runs=pd.DataFrame(runs), evals=cat(evals, ["arm", "seed", "step", "metric", "value"]))


# ----------------------------------------------------------------------------------------------
# Statistics


def task_scores(samples: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per (arm, seed, step, task): avg (mean correct over its samples) and unbiased pass@k."""
    g = samples.groupby(["arm", "seed", "step", "task_id"])["correct"]
    t = g.agg(n="size", c="sum", avg="mean").reset_index()
    t["pass"] = [pass_at_k(int(n), int(c), min(k, int(n))) for n, c in zip(t["n"], t["c"])]
    return t


def bootstrap_mean(values: np.ndarray, n_boot: int, level: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean of `values` (shape (S,), S seeds)."""
    v = np.asarray(values, float)
    idx = rng.integers(0, len(v), size=(n_boot, len(v)))
    boots = v[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def bootstrap_paired(d: np.ndarray, n_boot: int, level: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """(mean, lo, hi) of paired differences d (shape (S, N): S seeds x N tasks), resampling seeds and
    tasks independently."""
    S, N = d.shape
    si = rng.integers(0, S, size=(n_boot, S))
    ti = rng.integers(0, N, size=(n_boot, N))
    boots = np.array([d[np.ix_(s, t)].mean() for s, t in zip(si, ti)])
    a = (1 - level) / 2
    return float(d.mean()), float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def _final_step(scores: pd.DataFrame) -> pd.DataFrame:
    """Each run's last evaluation after training (step > 0): a run still at its first steps has no
    "after" yet and is left out of the after-training numbers, never counted with its "before"."""
    trained = scores[scores["step"] > 0]
    last = trained.groupby(["arm", "seed"])["step"].transform("max")
    return trained[trained["step"] == last]


def summarise(data: RunData, k: int | None = None, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0, baseline: str | None = None) -> pd.DataFrame:
    """The tidy summary: kind (heldout | heldout_before | paired | heldout_metric[_before] | telemetry),
    arm, other, metric,
    step, n_seeds, n_tasks, mean, lo, hi."""
    rng = np.random.default_rng(seed)
    arms = list(dict.fromkeys(data.runs["arm"]))
    if k is None and not data.samples.empty:     # k = samples per task of the evaluations
        k = int(data.samples.groupby(["arm", "seed", "step", "task_id"]).size().max())
    rows = []
    if not data.samples.empty:
        scores = task_scores(data.samples, k)
        for kind, part in (("heldout_before", scores[scores["step"] == 0]), ("heldout", _final_step(scores))):
            for arm in arms:
                g = part[part["arm"] == arm]
                for col in ("avg", "pass"):
                    per_seed = g.groupby("seed")[col].mean()
                    if per_seed.empty:
                        continue
                    mean, lo, hi = bootstrap_mean(per_seed.to_numpy(), n_boot, level, rng)
                    rows.append({"kind": kind, "arm": arm, "metric": f"{col}@{k}", "step": int(g["step"].max()),
                                 "n_seeds": len(per_seed), "n_tasks": g["task_id"].nunique(),
                                 "mean": mean, "lo": lo, "hi": hi})
        rows += _paired_rows(_final_step(scores), arms, baseline or arms[0], k, n_boot, level, rng)
    if not data.evals.empty:
        for kind, part in (("heldout_metric_before", data.evals[data.evals["step"] == 0]),
                           ("heldout_metric", _final_step(data.evals))):
            for (arm, metric), g in part.groupby(["arm", "metric"], sort=False):
                mean, lo, hi = bootstrap_mean(g["value"].to_numpy(), n_boot, level, rng)
                rows.append({"kind": kind, "arm": arm, "metric": metric, "step": int(g["step"].max()),
                             "n_seeds": len(g), "mean": mean, "lo": lo, "hi": hi})
    for arm in arms:
        for metric, g in data.curves[data.curves["arm"] == arm].groupby("metric"):
            per_seed = g.groupby("seed")["value"].mean()
            mean, lo, hi = bootstrap_mean(per_seed.to_numpy(), n_boot, level, rng)
            rows.append({"kind": "telemetry", "arm": arm, "metric": metric, "step": int(g["step"].max()),
                         "n_seeds": len(per_seed), "mean": mean, "lo": lo, "hi": hi})
    out = pd.DataFrame(rows, columns=["kind", "arm", "other", "metric", "step", "n_seeds", "n_tasks", "mean", "lo", "hi"])
    # the work mode beside every number: arms trained under different modes do not compare like for like
    return out.assign(work=out["arm"].map(_arm_work(data.runs)).fillna("?"))


def _paired_rows(final: pd.DataFrame, arms: list[str], baseline: str, k: int, n_boot: int, level: float, rng) -> list[dict]:
    """arm − baseline for every other arm, on the seeds and tasks both have."""
    rows = []
    base = final[final["arm"] == baseline]
    for arm in arms:
        if arm == baseline:
            continue
        mine = final[final["arm"] == arm]
        both = mine.merge(base, on=["seed", "task_id"], suffixes=("", "_b"))
        if both.empty:
            continue
        for col in ("avg", "pass"):
            wide = both.assign(d=both[col] - both[f"{col}_b"]).pivot(index="seed", columns="task_id", values="d")
            wide = wide.dropna(axis=1)      # tasks every shared seed evaluated
            mean, lo, hi = bootstrap_paired(wide.to_numpy(), n_boot, level, rng)
            rows.append({"kind": "paired", "arm": arm, "other": baseline, "metric": f"{col}@{k}",
                         "step": int(mine["step"].max()), "n_seeds": wide.shape[0], "n_tasks": wide.shape[1],
                         "mean": mean, "lo": lo, "hi": hi})
    return rows


def sentences(summary: pd.DataFrame, level: float = 0.95) -> list[str]:
    """One sentence per paired comparison: does the interval separate the arms?"""
    out = []
    for r in summary[summary["kind"] == "paired"].itertuples():
        head = (f"{r.arm} − {r.other} (work={r.work}), held-out {r.metric} after {r.step} steps: "
                f"{r.mean:+.3f}, {level:.0%} CI "
                f"[{r.lo:+.3f}, {r.hi:+.3f}] over {int(r.n_seeds)} paired seeds × {int(r.n_tasks)} tasks: ")
        if r.lo > 0 or r.hi < 0:
            word = "higher" if r.lo > 0 else "lower"
            out.append(head + f"the interval excludes 0, so {r.arm} scores {word} than {r.other} here.")
        else:
            out.append(head + f"the interval includes 0, so these runs do not separate {r.arm} from {r.other}.")
    return out


def markdown_table(summary: pd.DataFrame, extra: Sequence[str] = ("entropy/sampled_mean", "tool/calls_per_traj")) -> str:
    """The headline per arm as a Markdown table (compare.md; what a README quotes): seeds, held-out
    avg@k and pass@k before -> after with the CI of the after value, the paired difference to the
    baseline, and the `extra` held-out metrics after training."""
    def cell(kind, arm, metric, ci=True):
        r = summary[(summary["kind"] == kind) & (summary["arm"] == arm) & (summary["metric"] == metric)]
        if r.empty:
            return "-"
        r = r.iloc[0]
        return f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]" if ci else f"{r['mean']:.3f}"
    held = summary[summary["kind"] == "heldout"]
    metrics = list(dict.fromkeys(held["metric"]))
    paired = summary[summary["kind"] == "paired"]
    base = paired["other"].iloc[0] if not paired.empty else None
    head = ["arm", "seeds", *[f"{m} before -> after [CI]" for m in metrics],
            *([f"{m} - {base} [CI]" for m in metrics] if base else []), *[f"{e} after" for e in extra]]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in dict.fromkeys(held["arm"]):
        n = int(held[held["arm"] == arm]["n_seeds"].max())
        vals = [f"{cell('heldout_before', arm, m, ci=False)} -> {cell('heldout', arm, m)}" for m in metrics]
        if base:
            vals += ["(baseline)" if arm == base else
                     cell("paired", arm, m) for m in metrics]
        vals += [cell("heldout_metric", arm, e, ci=False) for e in extra]
        rows.append("| " + " | ".join([arm, str(n), *vals]) + " |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------------------------
# Charts (tidy frame in, altair out) and the page


def _interval_chart(df: pd.DataFrame, y: str, title: str, zero: bool = False):
    import altair as alt
    base = alt.Chart(df).encode(y=alt.Y(f"{y}:N", title=None, sort=None))
    pts = base.mark_point(filled=True, size=60).encode(x=alt.X("mean:Q", title=None), tooltip=list(df.columns))
    bars = base.mark_rule(strokeWidth=2).encode(x="lo:Q", x2="hi:Q")
    layers = [bars, pts]
    if zero:
        layers.append(alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 3], color="#888").encode(x="x:Q"))
    return alt.layer(*layers).properties(width=260, height=max(40, 22 * df[y].nunique()), title=title)


def charts(data: RunData, summary: pd.DataFrame) -> dict:
    """{"heldout", "paired", "curves", "heldout_curves", "heldout_metrics", "telemetry"}: altair charts
    (None if no data)."""
    import altair as alt
    out = {}
    held = summary[summary["kind"] == "heldout"]
    out["heldout"] = alt.hconcat(*[_interval_chart(g, "arm", f"held-out {m}: mean over seeds, CI")
                                   for m, g in held.groupby("metric")]) if not held.empty else None
    paired = summary[summary["kind"] == "paired"].assign(pair=lambda d: d["arm"] + " − " + d["other"])
    out["paired"] = alt.hconcat(*[_interval_chart(g, "pair", f"paired difference, {m}", zero=True)
                                  for m, g in paired.groupby("metric")]) if not paired.empty else None
    out["curves"] = _band_chart(data.curves, "training metrics: mean over seeds, band = min..max")
    if not data.samples.empty:
        ev = data.samples.groupby(["arm", "seed", "step"])["correct"].mean().reset_index(name="value")
        out["heldout_curves"] = _band_chart(ev.assign(metric="held-out avg@k"), "held-out avg@k over training")
    else:
        out["heldout_curves"] = None
    hm = summary[summary["kind"] == "heldout_metric"]
    out["heldout_metrics"] = alt.vconcat(*[_interval_chart(g, "arm", HELDOUT_METRICS.get(m, m) + " (held-out, after)")
                                           for m, g in hm.groupby("metric")]) if not hm.empty else None
    tel = summary[summary["kind"] == "telemetry"]
    out["telemetry"] = alt.vconcat(*[_interval_chart(g, "arm", TELEMETRY.get(m, m) + " (run mean)")
                                     for m, g in tel.groupby("metric")]) if not tel.empty else None
    return out


def _band_chart(long: pd.DataFrame, title: str):
    import altair as alt
    if long.empty:
        return None
    agg = long.groupby(["arm", "metric", "step"])["value"].agg(mean="mean", lo="min", hi="max").reset_index()
    agg["label"] = agg["metric"].map(lambda m: TELEMETRY.get(m, m))
    base = alt.Chart().encode(x=alt.X("step:Q"), color=alt.Color("arm:N"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("lo:Q", title=None), y2="hi:Q")
    line = base.mark_line(point=True).encode(y="mean:Q", tooltip=["arm", "step", "mean", "lo", "hi"])
    return alt.layer(band, line, data=agg).properties(width=230, height=130).facet(
        facet=alt.Facet("label:N", title=None), columns=3).resolve_scale(y="independent").properties(title=title)


def write_comparison(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, n_boot: int = 2000,
                     level: float = 0.95, seed: int = 0, baseline: str | None = None,
                     work: str | None = None) -> dict:
    """compare.html + compare.csv in `out` (default: the first path); returns their paths and the sentences.
    `work`: only the runs made under that TrainConfig.work mode."""
    import vl_convert as vlc
    from .report import _chart_div, _vl_version

    data = load_runs(paths, work=work)
    summary = summarise(data, n_boot=n_boot, level=level, seed=seed, baseline=baseline)
    words = sentences(summary, level)
    out = Path(out or paths[0])
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "compare.csv"
    summary.to_csv(csv, index=False)
    modes = (data.runs.assign(mode="work=" + data.runs["work"] + " (" + data.runs["budget"] + ")")
             .groupby("arm", sort=False)["mode"].agg(lambda s: "; ".join(sorted(set(s)))))
    blocks = ["<h2>What the intervals say</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words)
              + "</ul>" if words else "<p>(no paired comparison: one arm, or no shared evaluations)</p>",
              "<h2>Work per step</h2><ul>" + "".join(f"<li><b>{html.escape(a)}</b>: {html.escape(m)}</li>"
                                                     for a, m in modes.items()) + "</ul>"]
    titles = {"heldout": "Held-out score per arm", "paired": "Paired differences", "heldout_curves":
              "Held-out evaluations over training", "curves": "Learning curves", "heldout_metrics": "Held-out behaviour and entropy after training",
              "telemetry": "Telemetry per arm"}
    for i, (key, chart) in enumerate(charts(data, summary).items()):
        body = _chart_div(chart, i) if chart is not None else "<p>(no data for this chart)</p>"
        blocks.append(f"<h2>{titles[key]}</h2>{body}")
    table = summary.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="t", na_rep="")
    runs = data.runs.to_html(index=False, border=0, classes="t")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tao_lab comparison</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}}
h2{{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}} table.t{{border-collapse:collapse}}
table.t td,table.t th{{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}}</style>
<script>{vlc.javascript_bundle(vl_version=_vl_version())}</script></head><body>
<h1>tao_lab comparison: {html.escape(", ".join(map(str, paths)))}</h1>
<p>{level:.0%} percentile bootstrap intervals ({n_boot} resamples, seed {seed}): over seeds per arm; over seeds and
tasks for paired differences.</p>
{''.join(blocks)}
<h2>Summary table</h2>{table}<h2>Runs</h2>{runs}
</body></html>"""
    page_path = out / "compare.html"
    page_path.write_text(page, encoding="utf-8")
    (out / "compare.md").write_text(markdown_table(summary) + "\n" + "\n".join(f"- {w}" for w in words) + "\n",
                                    encoding="utf-8")
    print_modes = "\n".join(f"work per step, {a}: {m}" for a, m in modes.items())
    return {"html": page_path, "csv": csv, "md": out / "compare.md", "sentences": "\n".join([print_modes, *words])}
