"""The live panel (widgets.py), headless: build it on a stored run, move controls, check what was
recomputed; the training console (console.py) on a live trainer."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest

from runstore_fixture import make_run_store
from tao_lab import config_changes, widgets
from tao_lab.advantages import ShapingConfig
from tao_lab.console import TrainingConsole
from tao_lab.filters import FilterConfig
from train_helpers import alternating_reward, one_thread, pool, tiny_cfg  # noqa: F401


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    return make_run_store(tmp_path_factory.mktemp("run")).read_step(0)


@pytest.fixture()
def panel(stored):
    return widgets.Panel(stored)


def spec(chart) -> str:
    return json.dumps(chart.to_dict(), sort_keys=True)


def test_every_control_is_named_after_a_config_field():
    names = {f.name for f in fields(FilterConfig)} | {f.name for f in fields(ShapingConfig)}
    controls = widgets.filter_controls() | widgets.shaping_controls()
    assert set(controls) <= names


def test_controls_start_at_the_given_config_values():
    c = widgets.shaping_controls(ShapingConfig(coef=0.05, gate="all_tokens"))
    assert c["coef"].value == pytest.approx(0.05) and c["gate"].value == "all_tokens"


def test_configs_from_controls_round_trip_the_defaults(panel):
    assert panel.configs() == (FilterConfig(), ShapingConfig())


def test_moving_the_coefficient_slider_recomputes_shaped_advantages_and_redraws_the_ratio_chart(panel):
    before_adv = panel.state.shaped["adv_shaped"].to_numpy().copy()
    before_chart, before_summary = spec(panel.charts["ratio"]), panel.summary.value
    panel.controls["coef"].value = 0.5
    assert panel.state.shaping_cfg.coef == pytest.approx(0.5)
    assert not np.allclose(panel.state.shaped["adv_shaped"], before_adv)
    assert spec(panel.charts["ratio"]) != before_chart and panel.summary.value != before_summary


def test_removing_filter_b_from_the_rules_brings_degenerate_groups_back(panel):
    rows = len(panel.state.result.index)
    panel.controls["rules"].value = ["overlong", "void_turn", "filter_a"]
    assert len(panel.state.result.index) > rows
    assert "filter_b" not in panel.state.filter_cfg.rules


def test_reordering_rules_changes_the_run_order_in_the_funnel(panel):
    panel.controls["rules"].value = ["filter_a", "filter_b", "void_turn", "overlong"]
    assert panel.state.result.funnel["rule"].tolist()[1:] == ["filter_a", "filter_b", "void_turn", "overlong"]


def test_switching_filter_a_to_mask_mode_keeps_failed_members_with_weight_zero(panel):
    panel.controls["filter_a_mode"].value = "mask"
    t = panel.state.trajectories
    assert (t.loc[t["all_tools_failed"] & t["advantage"].notna(), "weight"] == 0).all()
    panel.controls["filter_a_strength"].value = 0.5
    assert 0.5 in panel.state.result.weights


def test_all_tokens_gate_reshapes_every_trainable_token(panel):
    panel.controls["gate"].value = "all_tokens"
    s = panel.state.shaped
    assert (s.loc[s["loss_mask"] > 0, "gate"] == 1).all()


def test_detach_toggle_changes_no_value_and_says_so(panel):
    before = panel.state.shaped["adv_shaped"].to_numpy().copy()
    panel.controls["detach"].value = False
    assert np.array_equal(panel.state.shaped["adv_shaped"].to_numpy(), before)
    assert "gradient" in panel.summary.value


def test_additive_kind_uses_alpha_and_kappa_sliders(panel):
    panel.controls["kind"].value = "additive"
    a = panel.state.shaped["adv_shaped"].to_numpy().copy()
    panel.controls["alpha"].value = 0.05
    assert panel.state.shaping_cfg.alpha == pytest.approx(0.05)
    assert not np.allclose(panel.state.shaped["adv_shaped"], a)


def test_an_invalid_setting_is_reported_in_the_summary_and_keeps_the_last_charts(panel):
    charts, refreshes = panel.charts, panel.n_refreshes
    panel.controls["kind"].value = "additive"
    charts, refreshes = panel.charts, panel.n_refreshes
    panel.controls["kappa"].min = 0.5  # the slider itself stops at 1.1; a script can go lower
    panel.controls["kappa"].value = 0.8
    assert "invalid setting" in panel.summary.value and "kappa" in panel.summary.value
    assert panel.charts is charts and panel.n_refreshes == refreshes


def test_filters_left_with_nothing_to_train_on_say_why(stored):
    p = widgets.Panel([t for t in stored if t.group_id in (1, 2)])
    assert "nothing to train on" in p.summary.value and "ratio" not in p.charts


def test_panel_rejects_unscored_trajectories_with_a_fix(stored):
    from dataclasses import replace
    with pytest.raises(ValueError, match="rewards.score"):
        widgets.Panel([replace(t, reward=None) for t in stored])


def test_filter_only_panel_has_no_shaping_controls(stored):
    p = widgets.Panel(stored, sections=("filters",), charts=("funnel", "advantages"))
    assert "coef" not in p.controls and set(p.charts) == {"funnel", "advantages"}


def test_unknown_chart_name_is_rejected_with_the_known_names(stored):
    with pytest.raises(ValueError, match="ratio"):
        widgets.Panel(stored, charts=("sparkline",))


def test_filter_only_panel_summary_leaves_out_the_shaping_numbers(stored):
    p = widgets.Panel(stored, sections=("filters",), charts=("funnel",))
    assert "advantage rows" in p.summary.value and "gated" not in p.summary.value


def _disabled(panel) -> set[str]:
    return {name for name, w in panel.controls.items() if getattr(w, "disabled", False)}


def test_controls_the_chosen_shaping_kind_ignores_are_disabled_and_come_back(panel):
    # tao (default): a, gate, z scope, detach act; the additive α and κ do not
    assert _disabled(panel) & {"coef", "gate", "z_scope", "detach", "alpha", "kappa"} == {"alpha", "kappa"}
    panel.controls["kind"].value = "none"           # no shaping: every shaping control does nothing
    assert {"coef", "gate", "z_scope", "detach", "alpha", "kappa"} <= _disabled(panel)
    assert not panel.controls["kind"].disabled
    panel.controls["kind"].value = "additive"       # A + g·min(αH, |A|/κ): no a, no z, always detached
    assert _disabled(panel) & {"coef", "gate", "z_scope", "detach", "alpha", "kappa"} == {"coef", "z_scope", "detach"}
    panel.controls["kind"].value = "tao"
    assert not panel.controls["coef"].disabled and panel.controls["alpha"].disabled


def test_filter_controls_of_a_rule_that_is_off_or_a_mode_that_ignores_them_are_disabled(panel):
    assert panel.controls["filter_a_strength"].disabled     # drop mode: the strength does nothing
    panel.controls["filter_a_mode"].value = "mask"
    assert not panel.controls["filter_a_strength"].disabled
    panel.controls["rules"].value = ["overlong", "void_turn", "filter_b"]      # Filter A off
    assert panel.controls["filter_a_mode"].disabled and panel.controls["filter_a_strength"].disabled
    assert not panel.controls["min_n"].disabled
    panel.controls["rules"].value = ["void_turn", "filter_b", "filter_a"]      # overlong off
    assert panel.controls["min_n"].disabled and not panel.controls["filter_a_mode"].disabled
# ----------------------------------------------------------------------------------------------
# The training console (notebook 05) on the tiny random model: real steps, no browser


@pytest.fixture()
def console(tmp_path, one_thread, pool):  # noqa: F811
    from tao_lab.trainer import Trainer

    tr = Trainer(tiny_cfg(), tmp_path / "run", reward_fn=alternating_reward, pool=pool)
    yield TrainingConsole(tr, steps=1)
    tr.close()


def test_the_train_button_trains_n_more_steps_and_the_chart_grows_with_each(console):
    console.train_button.click()
    assert console.trainer.state.step == 1 and sorted(console.chart_data["step"].unique()) == [1]
    console.n_steps.value = 2
    assert console.train_button.description == "Train 2 more steps"
    drawn = []
    console.trainer.on_step = lambda log: drawn.append(len(console.chart_data))  # the console chains it
    console.train_button.click()
    assert console.trainer.state.step == 3 and len(console.history) == 3
    assert sorted(console.chart_data["step"].unique()) == [1, 2, 3]
    assert drawn[0] < drawn[1], "the chart's data grows after every step, not only at the end"
    assert (console.bar.value, console.bar.max) == (2, 2) and "step 3 (2/2)" in console.progress.value
    # the chart is drawn in the console's own output area
    assert console.chart.outputs and console.chart.outputs[0]["data"]


def test_apply_says_what_changed_from_which_step_and_records_it(console):
    console.controls["coef"].value = 0.05
    assert "not applied yet" in console.status.value and console.pending()
    console.apply_button.click()
    assert "applied from step 1 on" in console.status.value and "shaping.coef 0.01 → 0.05" in console.status.value
    assert console.trainer.cfg.shaping.coef == pytest.approx(0.05) and not console.pending()
    recorded = config_changes.read(console.trainer.store.path)
    assert [(c["step"], c["field"], c["new"]) for c in recorded] == [(1, "shaping.coef", 0.05)]
    log = console.train(1)[0]
    assert log.metrics["config/changes"] == 1
    assert len(config_changes.read(console.trainer.store.path)) == 1, "the step must not record it twice"
    console.apply_button.click()
    assert "nothing to apply: step 2" in console.status.value


def test_train_applies_what_the_controls_show_and_an_invalid_setting_trains_nothing(console):
    console.controls["filter_a_mode"].value = "mask"
    console.train(1)
    assert console.trainer.cfg.filter.filter_a_mode == "mask"
    assert [c["field"] for c in console.applied] == ["filter.filter_a_mode"]
    console.controls["kind"].value = "additive"
    console.controls["kappa"].min = 0.5       # the slider stops at 1.1; a script can go lower
    console.controls["kappa"].value = 0.8
    assert console.train(1) == [] and console.trainer.state.step == 1
    assert "invalid setting" in console.status.value and "kappa" in console.status.value
    assert console.trainer.cfg.shaping.kind == "tao"


def test_controls_that_do_nothing_for_the_chosen_variant_are_disabled(console):
    c = console.controls
    assert c["alpha"].disabled and c["kappa"].disabled and not c["coef"].disabled   # tao: A(1 + a·g·z)
    assert c["filter_a_strength"].disabled                                          # drop mode
    c["kind"].value = "none"
    assert all(c[k].disabled for k in ("coef", "gate", "z_scope", "detach", "alpha", "kappa"))
    c["kind"].value = "additive"
    assert c["coef"].disabled and not c["alpha"].disabled and not c["kappa"].disabled
    c["rules"].value = ["filter_b"]
    assert c["filter_a_mode"].disabled and c["min_n"].disabled
    c["rules"].value = ["filter_b", "filter_a"]
    c["filter_a_mode"].value = "mask"
    assert not c["filter_a_mode"].disabled and not c["filter_a_strength"].disabled


def test_inactive_fields_keeps_the_gate_when_the_loss_anti_clip_uses_it():
    assert "gate" in widgets.inactive_fields({"kind": "none", "gate": "post_tool"})
    assert "gate" not in widgets.inactive_fields({"kind": "none", "gate": "post_tool"}, gate_used_by_loss=True)
