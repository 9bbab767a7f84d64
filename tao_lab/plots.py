"""Charts: functions from a small tidy frame to an altair chart, each answering one question.

The frames come from explore.py (compute); these functions only render, so each is tested with
`chart.to_dict()` on a hand-built frame. Per-token data is binned or sampled in explore.py to stay
under altair's 5,000-row default; a frame over the limit raises an error naming the function that
bins it (the limit is never switched off silently).

    funnel_chart              what did each filter drop, and why?            explore.funnel_frame
    reward_spread_chart       which groups are degenerate?                   explore.reward_spread_frame
    advantage_compare_chart   what does a filter setting do to A?            explore.advantage_table
    entropy_trace_chart       where is the policy uncertain along an episode? explore.trace_frame + tool_spans
    entropy_after_tool_chart  does entropy spike right after tool output?    explore.entropy_by_offset
    ratio_chart               how much does shaping rescale A?               explore.ratio_histogram
    advantage_trace_chart     how does Ã move along one episode?             explore.shaped_trace
    entropy_heatmap           entropy of many episodes at a glance           explore.heatmap_frame
    learning_curves           how does each metric move over steps?          explore.metrics_long

Rendering with no network. altair's default renderer writes HTML that loads vega from a CDN, and
its "mimetype" renderer emits `application/vnd.vegalite.v6.json`, which JupyterLab 4.6 does not
render (its built-in vega extension knows Vega-Lite up to v5; altair 6 writes v6 specs). So
`use_offline_renderer()` switches altair to its "svg" renderer: the kernel turns each chart into
SVG with vl-convert (bundled JS engine, ~0.15 s a chart after a ~1 s first call), and the notebook
gets plain SVG that renders in JupyterLab, in an Output widget, in nbclient-executed notebooks and
in exported HTML, with no JavaScript at all. Deviation: tooltips and zoom are lost in that mode;
`use_offline_renderer("html")` keeps them by inlining the vega bundle (~0.9 MB) into each output.
`save_html(chart, path)` writes a self-contained report page (the JS bundle inline, no CDN).
Checked in headless Chromium with off-localhost requests blocked (JupyterLab 4.6.6, altair 6.3.0):
"svg" and "html" inline render; "mimetype" shows only the text "<VegaLite 6 object>"; the
default renderer fails fetching cdn.jsdelivr.net. tests/test_browser.py keeps checking "svg".
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd

MAX_ROWS = 5000  # altair's default; the frames built by explore.py stay below it

# Fixed colours so a meaning keeps its colour across charts.
STATUS_COLOURS = {"all correct": "#2ca02c", "all wrong": "#d62728", "mixed": "#1f77b4", "singleton": "#7f7f7f"}
SEGMENT_COLOURS = {"after tool output": "#d62728", "first turn": "#1f77b4"}
TOKEN_KIND_COLOURS = {"gated": "#d62728", "other": "#7f7f7f"}
ROLE_COLOURS = {"trains": "#1f77b4", "baseline only (weight 0)": "#ff7f0e", "dropped": "#7f7f7f"}
# One colour per filter reason (filters.py's Decision reasons), in every chart and the report, so
# that removing a rule never recolours the others. Red = all correct/wrong groups (Filter B),
# orange = overlong, purple = tool failures (Filter A), grey = what passed.
REASON_COLOURS = {
    "passed": "#c7c7c7", "all_correct": "#2ca02c", "all_wrong": "#d62728", "singleton": "#7f7f7f",
    "overlong": "#ff7f0e", "too_few_not_overlong": "#ffbb78", "void_turn": "#8c564b",
    "dropped": "#9467bd", "masked": "#c5b0d5", "group_too_small": "#e377c2", "group_degenerate": "#f7b6d2",
    "subsampled": "#17becf", "duplicated": "#1f77b4",
}
_SPARE = ["#bcbd22", "#dbdb8d", "#9edae5", "#aec7e8", "#98df8a", "#393b79"]


def reason_scale(present) -> alt.Scale:
    """The fixed reason colours for the reasons present (an unknown reason gets a spare colour
    chosen from its name, so it too keeps its colour between redraws)."""
    import zlib
    domain = [r for r in REASON_COLOURS if r in set(present)]
    extra = sorted(set(present) - set(REASON_COLOURS))
    colours = [REASON_COLOURS[r] for r in domain] + [_SPARE[zlib.crc32(r.encode()) % len(_SPARE)] for r in extra]
    return alt.Scale(domain=domain + extra, range=colours)


def _check(df: pd.DataFrame, fn: str, needs: list[str], binner: str) -> None:
    """Say exactly what is wrong with a frame, before altair does so less helpfully."""
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise ValueError(f"{fn}: the frame lacks column(s) {missing}; build it with {binner}")
    if len(df) > MAX_ROWS:
        raise ValueError(f"{fn}: {len(df)} rows is over altair's {MAX_ROWS}-row limit; "
                         f"bin or sample it first with {binner} (the limit is not disabled here)")


def _scale(colours: dict[str, str], present) -> alt.Scale:
    domain = [k for k in colours if k in set(present)] or list(colours)
    return alt.Scale(domain=domain, range=[colours[k] for k in domain])


# ----------------------------------------------------------------------------------------------
# Filters


def funnel_chart(funnel: pd.DataFrame, title: str = "What each filter rule did, in run order") -> alt.Chart:
    """What did each filter rule drop or re-weight, and why (trajectories per rule, coloured by reason)?"""
    _check(funnel, "funnel_chart", ["stage", "label", "outcome", "reason", "n"], "explore.funnel_frame(result)")
    return alt.Chart(funnel, title=title).mark_bar().encode(
        y=alt.Y("label:N", sort=alt.EncodingSortField("stage", op="min"), title=None,
                axis=alt.Axis(labelLimit=400)),
        x=alt.X("n:Q", title="trajectories entering the rule"),
        color=alt.Color("reason:N", scale=reason_scale(["passed", *funnel["reason"]]), title="reason"),
        order=alt.Order("outcome:N", sort="descending"),
        tooltip=["label:N", "outcome:N", "reason:N", "n:Q"],
    ).properties(width=420)


def reward_spread_chart(spread: pd.DataFrame, title: str = "Reward spread per group") -> alt.Chart:
    """Which groups are degenerate (all correct / all wrong) and which carry a learning signal (mixed)?

    Dot size = members with that reward; black tick = the group's mean reward (its GRPO baseline).
    """
    _check(spread, "reward_spread_chart", ["group_id", "reward", "n", "group_status", "mean_reward"],
           "explore.reward_spread_frame(trajectories)")
    x = alt.X("group_id:O", title="group (prompt)", axis=alt.Axis(labelAngle=0))
    n_max = int(spread["n"].max()) if len(spread) else 1
    dots = alt.Chart().mark_circle(opacity=0.85).encode(
        x=x, y=alt.Y("reward:Q", title="reward"),
        size=alt.Size("n:Q", title="members", scale=alt.Scale(domain=[1, max(n_max, 2)], range=[40, 400]),
                      legend=alt.Legend(values=sorted({1, max(1, n_max // 2), n_max}), format="d")),
        color=alt.Color("group_status:N", scale=_scale(STATUS_COLOURS, spread["group_status"]), title="group"),
        tooltip=["group_id:O", "reward:Q", "n:Q", "group_status:N", "mean_reward:Q"])
    mean = alt.Chart().mark_tick(color="black", thickness=2).encode(x=x, y="mean_reward:Q")
    return alt.layer(dots, mean, data=spread, title=title).properties(
        width=max(160, 22 * spread["group_id"].nunique()), height=160)


def advantage_compare_chart(table: pd.DataFrame, title: str = "Group advantage A per member, by filter setting"):
    """What does each filter setting (e.g. Filter A drop vs mask) do to the group advantages?"""
    _check(table, "advantage_compare_chart", ["setting", "group_id", "member", "advantage", "role",
                                              "all_tools_failed"], "explore.advantage_table(trajs, settings)")
    df = table.assign(who="g" + table["group_id"].astype(str) + " · #" + table["member"].astype(str),
                      tools=table["all_tools_failed"].map({True: "all calls failed", False: "ok / no call"}),
                      shown=table["advantage"].fillna(0.0))
    y = alt.Y("who:N", title="group · member", sort=alt.EncodingSortField("traj", op="min"))
    points = alt.Chart().transform_filter("datum.role != 'dropped'").mark_point(filled=True, size=70).encode(
        x=alt.X("shown:Q", title="advantage A"), y=y,
        color=alt.Color("role:N", scale=_scale(ROLE_COLOURS, df["role"]), title="in the update"),
        shape=alt.Shape("tools:N", title="tool calls"),
        tooltip=["setting:N", "who:N", "reward:Q", "advantage:Q", "role:N", "outcome:N"])
    dropped = alt.Chart().transform_filter("datum.role == 'dropped'").mark_text(color="#7f7f7f").encode(
        x="shown:Q", y=y, text=alt.value("dropped"))
    zero = alt.Chart().mark_rule(color="#bbbbbb").encode(x=alt.datum(0))
    return alt.layer(zero, points, dropped, data=df).properties(width=220, height=alt.Step(14)).facet(
        column=alt.Column("setting:N", title=None)).properties(title=title)


# ----------------------------------------------------------------------------------------------
# Entropy


def entropy_trace_chart(trace: pd.DataFrame, spans: pd.DataFrame,
                        title: str = "Token entropy along the episode") -> alt.VConcatChart:
    """Where along an episode is the policy uncertain, and where do tool calls and outputs sit?

    Grey bands: forced tool-output tokens; red dots: post-tool (gated) tokens; one panel per episode.
    """
    _check(trace, "entropy_trace_chart", ["traj", "pos", "entropy", "turn", "post_tool"],
           "explore.trace_frame(tokens, trajs)")
    _check(spans, "entropy_trace_chart", ["traj", "start", "end"], "explore.tool_spans(tokens, trajs)")
    panels = []
    for tr in sorted(trace["traj"].unique()):
        d, s = trace[trace["traj"] == tr], spans[spans["traj"] == tr]
        x = alt.X("pos:Q", title="token position in the completion")
        bands = alt.Chart(s).mark_rect(color="#bbbbbb", opacity=0.45).encode(
            x="start:Q", x2="end:Q", tooltip=[alt.Tooltip("start:Q", title="tool output from"), "end:Q"])
        line = alt.Chart(d).mark_line(color="#444444", strokeWidth=1).encode(
            x=x, y=alt.Y("entropy:Q", title="entropy (nats)"), detail="turn:N")
        gated = alt.Chart(d).transform_filter("datum.post_tool == 1").mark_circle(color="#d62728", size=18).encode(
            x=x, y="entropy:Q", tooltip=["pos:Q", "entropy:Q", "turn:Q"])
        panels.append(alt.layer(bands, line, gated).properties(width=640, height=110, title=f"trajectory {tr}"))
    return alt.vconcat(*panels).properties(title=title)


def entropy_after_tool_chart(profile: pd.DataFrame,
                             title: str = "Entropy by distance from the turn start") -> alt.VConcatChart:
    """Does entropy spike right after tool output (ARPO), compared with first-turn tokens at the same offset?

    Top: mean entropy with a 95% band per offset; bottom: how many tokens each mean rests on.
    """
    _check(profile, "entropy_after_tool_chart", ["segment", "offset", "mean", "lo", "hi", "n"],
           "explore.entropy_by_offset(tokens)")
    colour = alt.Color("segment:N", scale=_scale(SEGMENT_COLOURS, profile["segment"]), title="tokens")
    x = alt.X("offset:Q", title="tokens since the end of the tool output (first turn: since its start)")
    base = alt.Chart(profile)
    band = base.mark_area(opacity=0.2).encode(x=x, y="lo:Q", y2="hi:Q", color=colour)
    line = base.mark_line(point=True).encode(x=x, y=alt.Y("mean:Q", title="mean entropy (nats)"), color=colour,
                                             tooltip=["segment:N", "offset:Q", "mean:Q", "n:Q"])
    counts = base.mark_line(interpolate="step-after", opacity=0.8).encode(
        x=x, y=alt.Y("n:Q", title="tokens"), color=colour)
    return alt.vconcat(alt.layer(band, line).properties(width=560, height=200),
                       counts.properties(width=560, height=70)).properties(title=title)


def ratio_chart(hist: pd.DataFrame, title: str = "Ã / A on gated versus other tokens"):
    """How much does the shaping rescale the advantage, on gated (post-tool) versus other tokens?"""
    _check(hist, "ratio_chart", ["tokens", "bin_start", "bin_end", "frac"], "explore.ratio_histogram(shaped)")
    colour = alt.Color("tokens:N", scale=_scale(TOKEN_KIND_COLOURS, hist["tokens"]), legend=None)
    bars = alt.Chart().mark_bar().encode(
        x=alt.X("bin_start:Q", title="Ã / A  (1 = unchanged)", scale=alt.Scale(zero=False)), x2="bin_end:Q",
        y=alt.Y("frac:Q", title="share of tokens"), y2=alt.datum(0), color=colour,
        tooltip=["tokens:N", "bin_start:Q", "bin_end:Q", "n:Q", "frac:Q"])
    one = alt.Chart().mark_rule(color="black", strokeDash=[3, 3]).encode(x=alt.datum(1.0))
    return alt.layer(bars, one, data=hist).properties(width=480, height=110).facet(
        row=alt.Row("tokens:N", title=None)).resolve_scale(y="independent").properties(title=title)


def advantage_trace_chart(trace: pd.DataFrame, title: str | None = None) -> alt.LayerChart:
    """How does the shaping change the advantage token by token along one episode (A flat, Ã moving)?"""
    _check(trace, "advantage_trace_chart", ["row", "traj", "pos", "gate", "piece", "which", "value"],
           "explore.shaped_trace(shaped)")
    traj = int(trace["traj"].iloc[0]) if len(trace) else -1
    title = title or f"A and Ã along trajectory {traj} (dots: gated tokens)"
    colour = alt.Color("which:N", scale=alt.Scale(domain=["A", "Ã"], range=["#333333", "#d62728"]), title=None)
    dash = alt.StrokeDash("which:N", scale=alt.Scale(domain=["A", "Ã"], range=[[4, 3], [1, 0]]), legend=None)
    x = alt.X("pos:Q", title="token position in the completion")
    y = alt.Y("value:Q", title="advantage", scale=alt.Scale(zero=False))
    # Ã first, A (dashed) on top, so A stays visible where the two coincide; one line per piece.
    shaped = alt.Chart().transform_filter("datum.which == 'Ã'").mark_line(strokeWidth=1.2).encode(
        x=x, y=y, color=colour, strokeDash=dash, detail="piece:N")
    plain = alt.Chart().transform_filter("datum.which == 'A'").mark_line(strokeWidth=1.2).encode(
        x=x, y=y, color=colour, strokeDash=dash, detail="piece:N")
    dots = alt.Chart().transform_filter("datum.gate == 1 && datum.which == 'Ã'").mark_circle(size=16).encode(
        x=x, y="value:Q", color=colour, tooltip=["pos:Q", "value:Q"])
    return alt.layer(shaped, plain, dots, data=trace).properties(width=560, height=140, title=title)


def entropy_heatmap(heat: pd.DataFrame, title: str | None = None) -> alt.HConcatChart:
    """How does entropy vary across many episodes and along them (trajectory × position bins)?

    Rows are ordered by reward (lowest at the top), and the column left of the heatmap shows each
    row's reward as a colour and, up to 40 rows, as a number, so that the order can be read off the
    chart (tooltips are lost in the offline SVG renderer); grey cells hold only tool output.
    """
    _check(heat, "entropy_heatmap", ["traj", "rank", "pos_start", "pos_end", "entropy", "reward"],
           "explore.heatmap_frame(tokens)")
    width = int(heat["width"].iloc[0]) if "width" in heat and len(heat) else 1
    total = int(heat["n_trajs_total"].iloc[0]) if "n_trajs_total" in heat and len(heat) else heat["traj"].nunique()
    n_rows = heat["traj"].nunique()
    title = title or (f"Entropy per token bin ({width} token{'s' if width > 1 else ''} a cell; "
                      f"{n_rows} of {total} trajectories, sorted by reward)")
    height = max(120, min(12 * n_rows, 480))
    sort = alt.EncodingSortField("rank", op="min")
    # the reward column carries the row labels; the heatmap beside it shares its y scale
    y_label = alt.Y("traj:O", sort=sort, title="trajectory (sorted by reward)",
                    axis=alt.Axis(labels=n_rows <= 40, labelFontSize=9))
    y = alt.Y("traj:O", sort=sort, axis=None)
    x = alt.X("pos_start:Q", title="token position in the completion")
    rows = heat.groupby("traj", as_index=False).agg(rank=("rank", "min"), reward=("reward", "first"))
    rows["column"] = "reward"
    head = alt.X("column:N", title=None, axis=alt.Axis(orient="top", labelAngle=0, ticks=False, domain=False))
    lo, hi = float(rows["reward"].min()), float(rows["reward"].max())
    strip = alt.Chart().mark_rect().encode(
        x=head, y=y_label, tooltip=["traj:O", "reward:Q"],
        color=alt.Color("reward:Q", title="reward", scale=alt.Scale(domain=[lo, hi if hi > lo else lo + 1],
                                                                     range=["#f7f7f7", "#2ca02c"]),
                        # the numbers are printed in the cells up to 40 rows; beyond, a legend on the left
                        legend=None if n_rows <= 40 else alt.Legend(orient="left")))
    layers = [strip]
    if n_rows <= 40:
        layers.append(alt.Chart().mark_text(fontSize=9).encode(x=head, y=y_label,
                                                               text=alt.Text("reward:Q", format=".2f")))
    reward_column = alt.layer(*layers, data=rows).properties(width=40, height=height)
    forced = alt.Chart().transform_filter("!isValid(datum.entropy)").mark_rect(color="#d9d9d9").encode(
        x=x, x2="pos_end:Q", y=y)
    cells = alt.Chart().transform_filter("isValid(datum.entropy)").mark_rect().encode(
        x=x, x2="pos_end:Q", y=y, color=alt.Color("entropy:Q", scale=alt.Scale(scheme="inferno", reverse=True),
                                                    title="entropy (nats)"),
        tooltip=["traj:O", "pos_start:Q", "entropy:Q", "frac_forced:Q", "reward:Q"])
    grid = alt.layer(forced, cells, data=heat).properties(width=640, height=height)
    return alt.hconcat(reward_column, grid, spacing=4).resolve_scale(y="shared", color="independent").properties(
        title=title)


# ----------------------------------------------------------------------------------------------
# Training


# Plain panel titles (with units) for the metric keys people look at most; reward comes first.
METRIC_TITLES = {
    "reward/mean": "mean reward", "reward/accuracy": "accuracy (verifier)",
    "eval/avg@4": "held-out Avg@4", "tool/calls_per_traj": "tool calls per episode",
    "tool/success_rate": "tool success rate", "tool/all_failed_rate": "share of episodes whose calls all failed",
    "tool/void_turn_rate": "void-turn rate", "tool/truncated_rate": "overlong rate",
    "groups/all_wrong_rate": "all-wrong groups (share)", "groups/all_correct_rate": "all-correct groups (share)",
    "filter/b_drop_rate": "Filter B drop rate", "entropy/post_tool_mean": "entropy after tool output (nats)",
    "entropy/other_mean": "entropy elsewhere (nats)", "entropy/sampled_mean": "entropy, sampled tokens (nats)",
    "loss/policy": "policy loss", "loss/kl": "KL to the reference", "grad/norm": "gradient norm",
    "rollout/sampled_len_mean": "sampled tokens per episode", "time/step_s": "step time (s)",
    "lr": "learning rate",
}


def metric_title(key: str) -> str:
    """A metric key's plain title ("tool/success_rate" -> "tool success rate")."""
    return METRIC_TITLES.get(key, key.replace("/", " · ").replace("_", " "))


def learning_curves(metrics: pd.DataFrame, columns: int = 3, title: str = "Metrics over training steps"):
    """How does each metric change over training steps (one panel per metric, own y scale)?

    Takes the long frame of explore.metrics_long (step, metric, value). Panels get plain titles
    (METRIC_TITLES), reward panels come first, constant metrics are left out (a flat panel says
    nothing) and the step axis shows whole steps.
    """
    _check(metrics, "learning_curves", ["step", "metric", "value"], "explore.metrics_long(store.metrics())")
    spread = metrics.groupby("metric")["value"].agg(lambda v: v.max() - v.min())
    varying = [m for m in dict.fromkeys(metrics["metric"]) if spread.get(m, 0) > 0] or list(dict.fromkeys(metrics["metric"]))
    order = sorted(varying, key=lambda m: (not m.startswith("reward/"), varying.index(m)))
    df = metrics[metrics["metric"].isin(order)].assign(panel=lambda d: d["metric"].map(metric_title))
    panels = [metric_title(m) for m in order]
    # vega ignores tickMinStep here and puts ticks at 1.5, 2.5 (drawn "2", "3" twice by format "d"):
    # a short run gets one tick per step, a long one whole-number ticks of vega's choosing
    steps = sorted(df["step"].unique().tolist())
    axis = alt.Axis(format="d", values=steps) if len(steps) <= 12 else alt.Axis(format="d", tickMinStep=1)
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("step:Q", title="step", axis=axis),
        y=alt.Y("value:Q", title=None), tooltip=["panel:N", "step:Q", "value:Q"],
    ).properties(width=200, height=120).facet(
        facet=alt.Facet("panel:N", title=None, sort=panels), columns=min(columns, len(panels)),
    ).resolve_scale(y="independent").properties(title=title)


# ----------------------------------------------------------------------------------------------
# Rendering without a network


def use_offline_renderer(mode: str = "svg") -> str:
    """Make altair render in notebooks with no network; returns the renderer name now active.

    "svg": charts become static SVG in the kernel (vl-convert); robust everywhere, no tooltips.
    "html": each output inlines the vega JS bundle (~0.9 MB), keeps tooltips; needs a trusted
    notebook (outputs made in the current session are).
    """
    if mode == "svg":
        alt.renderers.enable("svg")
    elif mode == "html":
        alt.renderers.enable("html", template="inline")  # no CDN: vega + vega-lite + embed inline
    else:
        raise ValueError(f"use_offline_renderer(mode={mode!r}); use 'svg' (static) or 'html' (interactive)")
    return alt.renderers.active


def to_svg(chart) -> str:
    """The chart as an SVG string (vl-convert, offline)."""
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_dict())


def save_html(chart, path: str | Path, inline: bool = True) -> Path:
    """Write the chart as a standalone HTML page; inline=True embeds the JS (works offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.save(str(path), format="html", inline=inline)
    return path
