"""Charts from tidy frames: each checked through chart.to_dict() on a small hand-built frame."""

from __future__ import annotations

import altair as alt
import pandas as pd
import pytest

from tao_lab import plots


def datasets(chart) -> list[list[dict]]:
    """The inline data sets of a chart spec (altair hoists them into a top-level dict)."""
    return list(chart.to_dict()["datasets"].values())


def only_rows(chart) -> list[dict]:
    ds = datasets(chart)
    assert len(ds) == 1, f"expected one data set, got {len(ds)}"
    return ds[0]


def layers(spec: dict) -> list[dict]:
    """Every unit spec (one with a mark) inside a possibly layered / faceted / concatenated spec."""
    if "mark" in spec:
        return [spec]
    out = []
    for key in ("layer", "vconcat", "hconcat", "concat"):
        for sub in spec.get(key, []):
            out += layers(sub)
    if "spec" in spec:
        out += layers(spec["spec"])
    return out


def mark_type(unit: dict) -> str:
    return unit["mark"]["type"] if isinstance(unit["mark"], dict) else unit["mark"]


@pytest.fixture()
def funnel():
    return pd.DataFrame({
        "stage": [1, 1, 2, 2, 2], "rule": ["overlong", "overlong", "filter_b", "filter_b", "filter_b"],
        "label": ["1. overlong: 8 → 8", "1. overlong: 8 → 8", "2. filter_b: 8 → 4", "2. filter_b: 8 → 4",
                  "2. filter_b: 8 → 4"],
        "outcome": ["passed", "re-weighted", "passed", "dropped", "dropped"],
        "reason": ["passed", "overlong", "passed", "all_correct", "all_wrong"], "n": [7, 1, 4, 2, 2]})


def test_funnel_chart_has_one_bar_per_rule_and_reason_with_passed_in_grey(funnel):
    chart = plots.funnel_chart(funnel)
    spec = chart.to_dict()
    assert len(only_rows(chart)) == 5
    enc = spec["encoding"]
    assert enc["y"]["field"] == "label" and enc["x"]["field"] == "n" and enc["color"]["field"] == "reason"
    assert enc["color"]["scale"]["domain"][0] == "passed" and enc["color"]["scale"]["range"][0] == "#c7c7c7"


def test_funnel_chart_orders_rules_by_stage_not_alphabetically(funnel):
    sort = plots.funnel_chart(funnel).to_dict()["encoding"]["y"]["sort"]
    assert sort == {"field": "stage", "op": "min"}


def test_reward_spread_chart_colours_each_group_status_with_its_fixed_colour():
    spread = pd.DataFrame({"group_id": [0, 0, 1, 2], "reward": [0.0, 1.0, 1.0, 0.0], "n": [2, 2, 4, 4],
                           "group_status": ["mixed", "mixed", "all correct", "all wrong"],
                           "mean_reward": [0.5, 0.5, 1.0, 0.0]})
    chart = plots.reward_spread_chart(spread)
    assert len(only_rows(chart)) == 4
    dots = next(u for u in layers(chart.to_dict()) if mark_type(u) == "circle")
    scale = dots["encoding"]["color"]["scale"]
    assert dict(zip(scale["domain"], scale["range"])) == {
        "all correct": "#2ca02c", "all wrong": "#d62728", "mixed": "#1f77b4"}


def test_advantage_compare_chart_facets_settings_and_writes_dropped_members_as_text():
    table = pd.DataFrame({"setting": ["drop", "drop", "mask", "mask"], "traj": [0, 1, 0, 1],
                          "group_id": [0, 0, 0, 0], "member": [0, 1, 0, 1], "reward": [1.0, 0.0, 1.0, 0.0],
                          "all_tools_failed": [False, True, False, True], "outcome": ["kept", "dropped", "kept", "kept"],
                          "weight": [1.0, 1.0, 1.0, 0.0], "advantage": [0.0, float("nan"), 0.7, -0.7],
                          "role": ["trains", "dropped", "trains", "baseline only (weight 0)"]})
    spec = plots.advantage_compare_chart(table).to_dict()
    assert spec["facet"]["column"]["field"] == "setting"
    text = next(u for u in layers(spec) if mark_type(u) == "text")
    assert text["transform"] == [{"filter": "datum.role == 'dropped'"}]


def test_entropy_trace_chart_draws_one_panel_per_trajectory_with_tool_output_bands():
    trace = pd.DataFrame({"traj": [3] * 4 + [5] * 4, "pos": [0, 1, 2, 3] * 2,
                          "entropy": [1.0, None, 2.0, 1.5, 0.5, 0.7, None, 2.2],
                          "turn": [0, 0, 1, 1, 0, 0, 0, 1], "post_tool": [0, 0, 1, 1, 0, 0, 0, 1],
                          "mask": [1, 0, 1, 1, 1, 1, 0, 1], "width": 1})
    spans = pd.DataFrame({"traj": [3, 5], "start": [1, 2], "end": [2, 3], "turn": [0, 0]})
    spec = plots.entropy_trace_chart(trace, spans).to_dict()
    assert len(spec["vconcat"]) == 2
    marks = [mark_type(u) for u in layers(spec["vconcat"][0])]
    assert marks == ["rect", "line", "circle"]
    line = layers(spec["vconcat"][0])[1]
    assert line["encoding"]["detail"]["field"] == "turn"  # the line breaks at each tool output


def test_entropy_after_tool_chart_compares_both_segments_and_shows_token_counts():
    profile = pd.DataFrame({"segment": ["after tool output"] * 2 + ["first turn"] * 2, "offset": [0, 1, 0, 1],
                            "mean": [2.0, 1.5, 1.0, 1.1], "sem": 0.1, "lo": [1.8, 1.3, 0.8, 0.9],
                            "hi": [2.2, 1.7, 1.2, 1.3], "n": [10, 9, 12, 12]})
    chart = plots.entropy_after_tool_chart(profile)
    assert len(only_rows(chart)) == 4
    units = layers(chart.to_dict())
    assert [u["encoding"]["y"]["field"] for u in units] == ["lo", "mean", "n"]
    assert units[1]["encoding"]["color"]["scale"]["domain"] == ["after tool output", "first turn"]


def test_ratio_chart_has_a_row_per_token_kind_and_a_reference_line_at_one():
    hist = pd.DataFrame({"tokens": ["gated", "gated", "other"], "bin_start": [0.9, 1.0, 1.0],
                         "bin_end": [1.0, 1.1, 1.1], "n": [3, 5, 20], "frac": [0.375, 0.625, 1.0], "total": [8, 8, 20]})
    spec = plots.ratio_chart(hist).to_dict()
    assert spec["facet"]["row"]["field"] == "tokens"
    rule = next(u for u in layers(spec) if mark_type(u) == "rule")
    assert rule["encoding"]["x"]["datum"] == 1.0


def test_advantage_trace_chart_draws_A_and_shaped_A_as_two_lines():
    trace = pd.DataFrame({"row": 0, "traj": 4, "pos": [0, 1, 0, 1], "gate": [0, 1, 0, 1], "piece": 1,
                          "which": ["A", "A", "Ã", "Ã"], "value": [0.5, 0.5, 0.5, 0.52]})
    spec = plots.advantage_trace_chart(trace).to_dict()
    shaped, plain, _ = layers(spec)
    assert shaped["transform"] == [{"filter": "datum.which == 'Ã'"}] and plain["transform"] == [{"filter": "datum.which == 'A'"}]
    assert plain["encoding"]["detail"]["field"] == "piece" and "trajectory 4" in spec["title"]


def test_entropy_heatmap_orders_rows_by_rank_and_greys_cells_with_only_tool_output():
    heat = pd.DataFrame({"traj": [0, 0, 1], "rank": [1, 1, 0], "pos_start": [0, 4, 0], "pos_end": [4, 8, 4],
                         "entropy": [1.0, None, 2.0], "frac_forced": [0.0, 1.0, 0.0], "frac_post_tool": 0.0,
                         "reward": [1.0, 1.0, 0.0], "width": 4, "n_trajs_total": 9})
    chart = plots.entropy_heatmap(heat)
    spec = chart.to_dict()
    _, _, grey, cells = layers(spec)
    assert grey["transform"] == [{"filter": "!isValid(datum.entropy)"}] and grey["mark"]["color"] == "#d9d9d9"
    assert cells["encoding"]["y"]["sort"] == {"field": "rank", "op": "min"}
    assert "2 of 9 trajectories" in spec["title"] and "4 tokens a cell" in spec["title"]


def test_entropy_heatmap_shows_each_rows_reward_beside_it_in_the_same_row_order():
    # issue 17: the title said "sorted by reward" but no reward was visible (tooltips are lost in SVG)
    heat = pd.DataFrame({"traj": [7, 7, 3], "rank": [1, 1, 0], "pos_start": [0, 4, 0], "pos_end": [4, 8, 4],
                         "entropy": [1.0, None, 2.0], "frac_forced": 0.0, "frac_post_tool": 0.0,
                         "reward": [0.75, 0.75, 0.25], "width": 4, "n_trajs_total": 2})
    spec = plots.entropy_heatmap(heat).to_dict()
    strip, numbers, _, cells = layers(spec)
    assert strip["encoding"]["color"]["field"] == "reward" and numbers["encoding"]["text"]["field"] == "reward"
    assert strip["encoding"]["y"]["sort"] == cells["encoding"]["y"]["sort"] and spec["resolve"]["scale"]["y"] == "shared"
    assert "reward" in strip["encoding"]["y"]["title"] and cells["encoding"]["x"]["title"].startswith("token position")
    import vl_convert as vlc
    svg = vlc.vegalite_to_svg(spec)            # what the notebook shows: the numbers are in the picture
    assert ">0.75<" in svg and ">0.25<" in svg and ">reward<" in svg


def test_learning_curves_draw_one_panel_per_metric_with_independent_y_scales():
    long = pd.DataFrame({"step": [1, 2, 1, 2], "metric": ["loss", "loss", "acc", "acc"], "value": [1.0, 0.5, 0.1, 0.3]})
    spec = plots.learning_curves(long).to_dict()
    assert spec["facet"]["field"] == "panel" and spec["resolve"] == {"scale": {"y": "independent"}}
    assert len(only_rows(plots.learning_curves(long))) == 4


def test_learning_curves_put_reward_first_use_plain_titles_and_drop_constant_panels():
    long = pd.DataFrame({"step": [1, 2] * 3, "metric": ["tool/success_rate"] * 2 + ["reward/mean"] * 2 + ["lr"] * 2,
                         "value": [0.2, 0.5, 0.1, 0.3, 1e-4, 1e-4]})
    spec = plots.learning_curves(long).to_dict()
    assert spec["facet"]["sort"] == ["mean reward", "tool success rate"]       # lr is constant: no panel
    assert spec["spec"]["encoding"]["x"]["axis"]["format"] == "d"


def test_learning_curves_label_each_step_once_on_a_short_run():
    import re

    long = pd.DataFrame({"step": [1, 2, 3], "metric": ["reward/mean"] * 3, "value": [0.1, 0.4, 0.7]})
    ticks = re.findall(r"<text[^>]*>(\d+)</text>", plots.to_svg(plots.learning_curves(long)))
    assert ticks[:3] == ["1", "2", "3"] and len(ticks) == len(set(ticks)), ticks   # was 1, 2, 2, 3, 3


def test_a_reason_keeps_its_colour_whatever_other_reasons_are_present(funnel):
    both = plots.funnel_chart(funnel).to_dict()["encoding"]["color"]["scale"]
    alone = plots.funnel_chart(funnel[funnel["reason"] != "all_correct"]).to_dict()["encoding"]["color"]["scale"]
    colour = lambda s, r: dict(zip(s["domain"], s["range"]))[r]  # noqa: E731
    assert colour(both, "all_wrong") == colour(alone, "all_wrong") == plots.REASON_COLOURS["all_wrong"]
    assert colour(both, "overlong") == colour(alone, "overlong")
    odd = plots.reason_scale(["passed", "a_new_reason"]).to_dict()
    assert odd == plots.reason_scale(["a_new_reason", "passed"]).to_dict()


def test_a_frame_over_altairs_row_limit_raises_an_error_naming_the_binning_function():
    big = pd.DataFrame({"traj": 0, "rank": 0, "pos_start": range(6000), "pos_end": range(1, 6001),
                        "entropy": 1.0, "reward": 0.0})
    with pytest.raises(ValueError, match="explore.heatmap_frame"):
        plots.entropy_heatmap(big)
    assert alt.data_transformers.options.get("max_rows", 5000) == 5000  # the limit itself is untouched


def test_a_frame_missing_a_column_raises_an_error_naming_the_column_and_the_builder():
    with pytest.raises(ValueError, match=r"\['n'\].*explore.funnel_frame"):
        plots.funnel_chart(pd.DataFrame({"stage": [1], "label": ["x"], "outcome": ["passed"], "reason": ["passed"]}))


def test_use_offline_renderer_svg_switches_altair_to_its_svg_renderer():
    before = alt.renderers.active
    try:
        assert plots.use_offline_renderer("svg") == "svg"
        with pytest.raises(ValueError, match="svg"):
            plots.use_offline_renderer("cdn")
    finally:
        alt.renderers.enable(before)


def test_use_offline_renderer_html_inlines_the_javascript_instead_of_a_cdn():
    before = alt.renderers.active
    try:
        assert plots.use_offline_renderer("html") == "html"
        assert alt.renderers.options.get("template") == "inline"
    finally:
        alt.renderers.enable(before)


def test_to_svg_renders_a_chart_without_a_network():
    long = pd.DataFrame({"step": [1, 2], "metric": ["loss", "loss"], "value": [1.0, 0.5]})
    svg = plots.to_svg(plots.learning_curves(long))
    assert svg.lstrip().startswith("<svg") and "loss" in svg


def test_save_html_inline_writes_a_page_that_needs_no_cdn(tmp_path):
    long = pd.DataFrame({"step": [1, 2], "metric": ["loss", "loss"], "value": [1.0, 0.5]})
    page = plots.save_html(plots.learning_curves(long), tmp_path / "report" / "curves.html").read_text()
    assert "vegaEmbed" in page and "cdn.jsdelivr" not in page and "<script src=" not in page
