"""One self-contained HTML page for a training run: curves, filter funnel, entropy, evals, episodes.

`write_report(run_dir)` reads the run store only (config.json, metrics.jsonl, steps/*.parquet,
evals/*/) and writes `run_dir/report.html`. The page needs no network: every chart is a Vega-Lite
spec rendered by ONE inlined copy of the vega-embed bundle that vl-convert ships (~0.9 MB, shared
by all charts; altair's own `save(inline=True)` would inline it once per chart), and the
trajectories are tokenview's plain HTML + CSS.

Sections, each answering one question:
    learning curves     is the policy improving, and is the update healthy?  (plots.learning_curves)
    filter funnel       what did the filters drop each step, and why?        (counts per step and reason)
    entropy             is post-tool entropy different from the rest, and how does it move?
                        (means over steps; entropy by distance from the tool output, last step)
    time and memory     where does a step spend its time?
    held-out evaluation Avg@k / Pass@k and tool telemetry of each saved evaluation (before / after)
    episodes            the last step's best and worst episodes as coloured token views

Not covered: comparing several runs on one page (tao_lab/compare.py, `tao-lab compare`, does that);
per-token charts beyond the last step (the run store has them: explore.token_table).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import altair as alt
import pandas as pd

from . import explore, plots
from .filters import RULES
from .records import RunStore
from .runstore_repair import step_file_problem
from .tokenview import token_view_html

# Curves shown in the learning-curve panel, in this order, when the run logged them.
CURVES = ["reward/mean", "reward/accuracy", "tool/used_rate", "tool/success_rate", "tool/void_turn_rate",
          "filter/b_drop_rate", "groups/degenerate_rate", "entropy/post_tool_mean", "entropy/other_mean", "loss/policy",
          "update/grad_norm", "loss/clip_high", "update/logp_rollout_diff_max", "lr"]
# The "{rule}/{reason}" count columns that filters.apply writes (trajectories, or groups for group reasons).
REASON_KEYS = [f"{name}/{reason}" for name, rule in RULES.items() for reason in rule.reasons]


# ----------------------------------------------------------------------------------------------
# Chart frames from the metrics (tidy, small)


def funnel_over_steps(metrics: pd.DataFrame) -> pd.DataFrame:
    """step, rule, reason, n: every non-zero filter count per step (groups for group rules)."""
    cols = [c for c in REASON_KEYS if c in metrics.columns]
    if not cols or metrics.empty:
        return pd.DataFrame(columns=["step", "rule", "reason", "n"])
    long = metrics.melt(id_vars=["step"], value_vars=cols, var_name="key", value_name="n").dropna()
    long = long[long["n"] > 0]
    long["rule"] = long["key"].str.split("/").str[0]
    long["reason"] = long["key"].str.split("/").str[1]
    return long[["step", "rule", "reason", "n"]].reset_index(drop=True)


def funnel_steps_chart(df: pd.DataFrame) -> alt.Chart:
    """What did each filter rule drop or re-weight, step by step (one panel per rule)?"""
    if df.empty:
        raise ValueError("no filter rule dropped or re-weighted anything in this run, or no rule ran")
    return alt.Chart(df, title="Filter decisions per step (trajectories, or groups for group rules)").mark_bar().encode(
        x=alt.X("step:O", title="step"), y=alt.Y("n:Q", title="count"),
        color=alt.Color("reason:N", title="reason", scale=plots.reason_scale(df["reason"])),
        tooltip=["step:O", "rule:N", "reason:N", "n:Q"],
    ).properties(width=220, height=130).facet(facet=alt.Facet("rule:N", title=None), columns=4)


def entropy_steps_chart(metrics: pd.DataFrame) -> alt.Chart:
    """Is the entropy of post-tool tokens different from the other sampled tokens, and does it move?"""
    cols = {"entropy/post_tool_mean": "post-tool tokens", "entropy/other_mean": "other sampled tokens"}
    have = [c for c in cols if c in metrics]
    long = metrics.melt(id_vars=["step"], value_vars=have, var_name="k", value_name="entropy").dropna()
    long["tokens"] = long["k"].map(cols)
    return alt.Chart(long, title="Mean token entropy (nats) at sampling time").mark_line(point=True).encode(
        x=alt.X("step:Q", axis=alt.Axis(format="d", tickMinStep=1)), y=alt.Y("entropy:Q", title="entropy (nats)"),
        color=alt.Color("tokens:N", scale=alt.Scale(domain=list(cols.values()), range=["#d62728", "#7f7f7f"])),
        tooltip=["step:Q", "tokens:N", "entropy:Q"]).properties(width=420, height=180)


def timing_chart(metrics: pd.DataFrame) -> alt.Chart:
    """Where does a step spend its time (seconds per stage)?"""
    cols = [c for c in metrics.columns if c.startswith("time/") and c.endswith("_s") and c != "time/step_s"]
    long = metrics.melt(id_vars=["step"], value_vars=cols, var_name="stage", value_name="seconds").dropna()
    long["stage"] = long["stage"].str.slice(5, -2)
    return alt.Chart(long, title="Seconds per stage").mark_bar().encode(
        x=alt.X("step:O"), y=alt.Y("seconds:Q"), color="stage:N",
        tooltip=["step:O", "stage:N", "seconds:Q"]).properties(width=420, height=180)


def eval_frame(run_dir: Path) -> pd.DataFrame:
    """One row per saved evaluation (run_dir/evals/<label>/metrics.jsonl)."""
    rows = []
    for d in sorted((run_dir / "evals").glob("*")):
        m = RunStore(d).metrics()
        if not m.empty:
            rows.append({"label": d.name, **m.iloc[-1].to_dict()})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Page assembly


def _chart_div(chart, i: int) -> str:
    spec = json.dumps(chart.to_dict()).replace("</", "<\\/")
    return (f'<div id="chart{i}" class="chart"></div>\n<script>vegaEmbed("#chart{i}", {spec}, '
            f'{{"actions": false, "renderer": "svg"}}).catch(e => document.getElementById("chart{i}").innerText = e);</script>')


def _table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df]
    return df[cols].to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0, classes="t")


def _episodes(store: RunStore, tok, k: int = 2) -> str:
    """The last step's k best episodes (correct first, then more valid calls) and its worst one, each
    a different text: refill duplicates and identical samples are shown once."""
    steps = store.steps()
    if not steps or tok is None:
        return "<p>(no stored trajectories, or no tokenizer to show them)</p>"
    readable = [k for k in steps if step_file_problem(store.step_path(k)) is None]
    if not readable:
        return "<p>(no readable step file: see the damage listed at the top)</p>"
    steps = readable
    trajs = store.read_step(steps[-1])
    distinct = list({trajs[i].text: i for i in reversed(range(len(trajs)))}.values())[::-1]
    order = sorted(distinct, key=lambda i: (not trajs[i].correct, -(trajs[i].reward or 0), -trajs[i].n_valid_calls))
    picks = order[:k] + [i for i in order[::-1][:1] if i not in order[:k]]
    parts = []
    for i in picks:
        t = trajs[i]
        verdict = {True: "correct", False: "wrong", None: "not verified"}[t.correct]
        parts.append(f"<h4>step {steps[-1]}, episode {i} of task {html.escape(t.task_id)}: {verdict}, reward "
                     f"{(t.reward or 0):.2f}, {t.n_tool_calls} tool call(s)</h4>"
                     + token_view_html(t, tok, color_by="entropy"))
    return "\n".join(parts)


def eval_label(label: str) -> str:
    """A saved evaluation's label in words: step_000000 -> "before training", step_000006 -> "after step 6"."""
    stem, _, copy = label.partition("-")
    if stem.startswith("step_") and stem[5:].isdigit():
        n = int(stem[5:])
        words = "before training" if n == 0 else f"after step {n}"
        return words + (f" (copy {copy})" if copy else "")
    return label


def _duration(seconds: float) -> str:
    """12.3 s / 4.5 min / 2.1 h; "?" when unknown (a tiny run's steps take well under a tenth of a minute)."""
    if seconds != seconds:
        return "?"
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def headline(train_cfg: dict, metrics: pd.DataFrame, evals: pd.DataFrame) -> dict[str, str]:
    """What the run was and what it did, in one line of facts: method, model, tasks, steps, wall time,
    and the held-out accuracy before -> after with its sample size."""
    last = metrics.iloc[-1]
    wall = float(metrics["time/step_s"].sum()) if "time/step_s" in metrics else float("nan")
    head = {"method": train_cfg.get("method", "?"), "model": train_cfg.get("model", {}).get("name", "?"),
            "tasks": train_cfg.get("data", {}).get("tasks", "?"), "steps": str(int(last["step"])),
            "skipped steps": str(int(metrics.get("skipped", pd.Series([0])).sum())),
            "training time": _duration(wall)}
    avg = [c for c in evals.columns if c.startswith("eval/avg@")] if not evals.empty else []
    if avg and len(evals) >= 1:
        col = avg[0]
        first, final = evals.iloc[0], evals.iloc[-1]
        n = int(final.get("eval/n_tasks", 0)) * int(final.get("eval/k", 1) or 1)
        if len(evals) > 1:
            head[f"held-out {col[5:]}"] = (f"{first[col]:.3f} → {final[col]:.3f} ({n} samples; "
                                           f"{eval_label(first['label'])} → {eval_label(final['label'])})")
        else:
            head[f"held-out {col[5:]}"] = f"{final[col]:.3f} ({n} samples; {eval_label(final['label'])})"
    return head


def config_table(train_cfg: dict) -> str:
    """The TrainConfig as a two-column table (section.field, value), one row per field."""
    rows = []
    for section, value in train_cfg.items():
        if isinstance(value, dict):
            rows += [(f"{section}.{k}", v) for k, v in value.items()]
        else:
            rows.append((section, value))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='t cfg'><tr><th>field</th><th>value</th></tr>{body}</table>"


def _safe(fn, *args):
    """A chart that cannot be drawn from this run's data is replaced by a note, never a crash."""
    try:
        return fn(*args), None
    except (ValueError, KeyError, TypeError) as e:
        return None, f"no chart: {e}"


def eval_table_html(evals: pd.DataFrame) -> str:
    """The held-out table: one row per saved evaluation, labels in words, short column titles."""
    if evals.empty:
        return "<p>(no evaluation saved under evals/)</p>"
    k_cols = [c for c in evals.columns if c.startswith(("eval/avg@", "eval/pass@"))]
    shown = evals.assign(label=evals["label"].map(eval_label))
    cols = {"label": "evaluation", **{c: c[5:] for c in k_cols}, "eval/n_tasks": "tasks",
            "tool/used_rate": "used tool", "tool/success_rate": "tool success",
            "tool/calls_per_traj": "calls / episode", "reward/no_answer_rate": "no answer",
            "behaviour/effi": "Effi", "behaviour/redundant_rate": "redundant calls"}
    return _table(shown.rename(columns=cols), list(cols.values()))


def write_report(run_dir: str | Path, out: str | Path | None = None, tokenizer=None) -> Path:
    """Write the HTML report of a run; returns its path (default run_dir/report.html)."""
    import vl_convert as vlc

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():   # a read command never writes: check before RunStore
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a training run folder?")
    store = RunStore(run_dir)
    metrics = store.metrics()
    if metrics.empty:
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl; is it a training run folder?")
    config = store.read_config() if (run_dir / "config.json").exists() else {}
    train_cfg = config.get("train", {})
    if tokenizer is None:
        tokenizer = _tokenizer_for(train_cfg)
    charts, notes = [], []
    curves = [c for c in CURVES if c in metrics and metrics[c].notna().any()]
    for fn, args in ((plots.learning_curves, (explore.metrics_long(metrics, curves),)),
                     (funnel_steps_chart, (funnel_over_steps(metrics),)),
                     (entropy_steps_chart, (metrics,)),
                     (timing_chart, (metrics,))):
        chart, note = _safe(fn, *args)
        charts.append(chart)
        notes.append(note)
    damage = store.problems()                      # read-only: listed on the page, never repaired here
    steps = [k for k in store.steps() if step_file_problem(store.step_path(k)) is None]
    offset_chart, note = (None, "no readable stored trajectories")
    if steps:
        tokens = explore.token_table(store.read_step(steps[-1]))
        offset_chart, note = _safe(plots.entropy_after_tool_chart, explore.entropy_by_offset(tokens))
    evals = eval_frame(run_dir)
    eval_html = eval_table_html(evals)

    last = metrics.iloc[-1]
    head = headline(train_cfg, metrics, evals)
    head["git"] = config.get("git_revision", "?")[:12]
    blocks = []
    n = 0

    def section(title: str, chart, note, text: str = "") -> None:
        nonlocal n
        body = _chart_div(chart, n) if chart is not None else f"<p class='note'>({html.escape(note or '')})</p>"
        n += 1
        blocks.append(f"<h2>{title}</h2>{text}{body}")

    section("Is the policy improving?", charts[0], notes[0],
            "<p>Rollout reward and accuracy, tool use, Filter-B drop rate, entropy and update health per step.</p>")
    section("What did the filters drop, and why?", charts[1], notes[1])
    section("Is the policy less certain after tool output?", charts[2], notes[2])
    section("Entropy by distance from the tool output (last step)", offset_chart, note)
    section("Where does a step spend its time?", charts[3], notes[3],
            f"<p>Peak resident memory: {last.get('mem/peak_rss_mb', float('nan')):.0f} MB.</p>")
    blocks.append(f"<h2>Held-out evaluation</h2>{eval_html}")
    blocks.append(f"<h2>Episodes of the last step</h2>{_episodes(store, tokenizer)}")
    damage_html = ("<div class='note'><b>This run store is damaged</b> (shown as found; "
                   "<code>tao-lab resume</code> repairs it):<ul>"
                   + "".join(f"<li>{html.escape(d)}</li>" for d in damage) + "</ul></div>") if damage else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tao_lab run {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}}
h2{{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}} table.t{{border-collapse:collapse}}
table.t td,table.t th{{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}} .note{{color:#a33}}
table.cfg td{{text-align:left;font-family:monospace}} .tl-view{{max-width:100%;overflow-x:auto}}
.kv span{{display:inline-block;margin-right:18px}}</style>
<script>{vlc.javascript_bundle(vl_version=_vl_version())}</script></head><body>
<h1>{html.escape(str(head["method"]))} on {html.escape(str(head["tasks"]))}: {html.escape(run_dir.name)}</h1>
<p class="kv">{''.join(f'<span><b>{k}</b> {html.escape(str(v))}</span>' for k, v in head.items())}</p>
{damage_html}{''.join(blocks)}
<h2>Config</h2><details><summary>TrainConfig: every field of this run</summary>{config_table(train_cfg)}</details>
</body></html>"""
    path = Path(out) if out else run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _vl_version() -> str:
    """vl-convert's name for the Vega-Lite version altair writes ('v6_4' for schema v6.4.1)."""
    return "_".join(alt.SCHEMA_VERSION.split(".")[:2])


def _tokenizer_for(train_cfg: dict):
    """The run's tokenizer (for token views) when it can be loaded offline, else None."""
    from .models import TINY_MODEL, load_tokenizer

    name = train_cfg.get("model", {}).get("name", "smollm2-135m")
    try:
        return load_tokenizer("smollm2-135m" if name == TINY_MODEL else name)
    except (OSError, RuntimeError, ValueError):
        return None
