"""Live panels: ipywidgets bound to FilterConfig / ShapingConfig fields, redrawing charts on change.

A panel holds stored, scored trajectories (a run-store step) and never re-generates them: moving
a control rebuilds the two config dataclasses from the control values, re-runs
`explore.recompute` (filters -> group advantages -> shaping; ~0.4 s for 320 stored
episodes) and redraws the charts. The three parts are separate functions, as STYLE.md asks:

    controls    filter_controls(cfg) / shaping_controls(cfg): one widget per config field, keyed by
                the field name; configs_from_controls(...) reads them back into dataclasses
    compute     explore.recompute (model-free)
    render      CHARTS: name -> function(Explored) -> altair chart, built from plots.py

`Panel` only wires them: observe -> recompute -> render -> show in an Output widget, plus a
one-line summary (HTML) of the numbers that moved. A config the dataclass rejects (e.g. κ <= 1
for the additive bonus) is shown in the summary, not raised, and the previous charts stay.

Covered: rule toggling and ordering (a TagsInput: drag tags to reorder, delete to switch a rule
off, type a name to add it back), Filter A mode and strength, the overlong group size, the shaping
kind, a, gate, z scope, detach, α and κ; a micro-batch size for z_scope="micro_batch".
Not covered: refill settings and the DAPO dynamic sampler (both need fresh rollouts to mean
anything); `detach` is shown but changes only gradients, so no chart moves with it (said in the
summary).

The same controls on a live Trainer, with Apply / Train buttons and learning curves:
`TrainingConsole` in console.py (notebook 05).
"""

from __future__ import annotations

import html
from dataclasses import fields, replace
from typing import Callable

import ipywidgets as W
from IPython.display import display

from tao_lab import explore, plots
from tao_lab.advantages import GATES, SHAPERS, Z_SCOPES, ShapingConfig
from tao_lab.explore import Explored
from tao_lab.filters import RULES, FilterConfig
from tao_lab.records import Trajectory

_STYLE = {"description_width": "150px"}
_WIDE = W.Layout(width="420px")

# ----------------------------------------------------------------------------------------------
# Controls: one widget per config field, keyed by the field name


def filter_controls(cfg: FilterConfig | None = None) -> dict[str, W.Widget]:
    """Widgets for the FilterConfig fields a panel can change on stored rollouts."""
    cfg = cfg or FilterConfig()
    return {
        "rules": W.TagsInput(value=list(cfg.rules), allowed_tags=list(RULES), allow_duplicates=False,
                             tooltip="run order; drag to reorder, × to switch a rule off, type a name to add it"),
        # filters.py keeps its mode table private; FilterConfig rejects anything but these two.
        "filter_a_mode": W.ToggleButtons(options=["drop", "mask"], value=cfg.filter_a_mode,
                                         description="Filter A mode", style=_STYLE,
                                         tooltips=["paper: remove before the advantage",
                                                   "authors' code: loss weight 1-strength after it"]),
        "filter_a_strength": W.FloatSlider(value=cfg.filter_a_strength, min=0.0, max=1.0, step=0.05,
                                           description="Filter A strength", style=_STYLE, layout=_WIDE,
                                           continuous_update=False),
        "min_n": W.IntSlider(value=cfg.min_n, min=1, max=16, description="overlong min_n", style=_STYLE,
                             layout=_WIDE, continuous_update=False),
    }


def shaping_controls(cfg: ShapingConfig | None = None) -> dict[str, W.Widget]:
    """Widgets for every ShapingConfig field that changes Ã (and `detach`, which does not)."""
    cfg = cfg or ShapingConfig()
    return {
        "kind": W.ToggleButtons(options=list(SHAPERS), value=cfg.kind, description="shaping", style=_STYLE),
        "coef": W.FloatLogSlider(value=cfg.coef, base=10, min=-3, max=0, step=0.05, description="a (coef)",
                                 style=_STYLE, layout=_WIDE, readout_format=".3f", continuous_update=False),
        "gate": W.ToggleButtons(options=list(GATES), value=cfg.gate, description="gate", style=_STYLE),
        "z_scope": W.ToggleButtons(options=list(Z_SCOPES), value=cfg.z_scope, description="z scope", style=_STYLE),
        "detach": W.Checkbox(value=cfg.detach, description="detach entropy (gradient only)", indent=False),
        "alpha": W.FloatSlider(value=cfg.alpha, min=0.0, max=2.0, step=0.05, description="additive α",
                               style=_STYLE, layout=_WIDE, continuous_update=False),
        "kappa": W.FloatSlider(value=cfg.kappa, min=1.1, max=10.0, step=0.1, description="additive κ",
                               style=_STYLE, layout=_WIDE, continuous_update=False),
    }


def sync_disabled(controls: dict[str, W.Widget], gate_used_by_loss: bool = False) -> None:
    """Disable each control the chosen variant ignores (`inactive_fields`), enable the others, so
    that no control looks live but does nothing."""
    idle = inactive_fields({k: w.value for k, w in controls.items()}, gate_used_by_loss)
    for name, w in controls.items():
        if hasattr(w, "disabled"):
            w.disabled = name in idle


def configs_from_controls(controls: dict[str, W.Widget], filter_cfg: FilterConfig,
                          shaping_cfg: ShapingConfig) -> tuple[FilterConfig, ShapingConfig]:
    """Copies of the two configs with every field that has a control set to the control's value.

    Raises ValueError (from the dataclasses' own checks) when a combination is invalid.
    """
    def pick(cfg):
        names = {f.name for f in fields(cfg)}
        vals = {k: w.value for k, w in controls.items() if k in names}
        if "rules" in vals:
            vals["rules"] = tuple(vals["rules"])
        return replace(cfg, **vals)
    return pick(filter_cfg), pick(shaping_cfg)


def inactive_fields(values: dict, gate_used_by_loss: bool = False) -> set[str]:
    """The control names (of `values`: field -> value) that do nothing under the other values.

    kind="none" shapes nothing: a, gate, z scope, detach, α, κ are idle (the gate still matters
    when the loss's AEPO anti-clip uses it: `gate_used_by_loss`); kind="tao" ignores α, κ;
    kind="additive" (entropy always detached, no z-score) ignores a, z scope, detach. Filter A's mode
    and strength are idle without the filter_a rule, its strength in drop mode, and min_n without
    the overlong rule.
    """
    idle = {"none": {"coef", "gate", "z_scope", "detach", "alpha", "kappa"}, "tao": {"alpha", "kappa"},
            "additive": {"coef", "z_scope", "detach"}}.get(values.get("kind"), set())
    if gate_used_by_loss:
        idle = idle - {"gate"}
    rules = values.get("rules")
    if rules is not None and "filter_a" not in rules:
        idle |= {"filter_a_mode", "filter_a_strength"}
    if rules is not None and "overlong" not in rules:
        idle |= {"min_n"}
    if values.get("filter_a_mode") == "drop":
        idle |= {"filter_a_strength"}
    return idle & set(values)


# ----------------------------------------------------------------------------------------------
# Render: chart name -> chart of an Explored


CHARTS: dict[str, Callable[[Explored], object]] = {
    "funnel": lambda ex: plots.funnel_chart(explore.funnel_frame(ex.result)),
    "advantages": lambda ex: plots.advantage_compare_chart(
        explore.signal_groups(explore.advantage_frame(ex)), title="Group advantage A (mixed groups, first 8)"),
    "ratio": lambda ex: plots.ratio_chart(explore.ratio_histogram(ex.shaped)),
    "advantage_trace": lambda ex: plots.advantage_trace_chart(explore.shaped_trace(ex.shaped)),
    "reward_spread": lambda ex: plots.reward_spread_chart(explore.reward_spread_frame(ex.trajectories)),
}


def render(ex: Explored, names: tuple[str, ...]) -> dict[str, object]:
    """The named charts of CHARTS for one Explored; a chart with nothing to show is left out."""
    unknown = [n for n in names if n not in CHARTS]
    if unknown:
        raise ValueError(f"unknown chart name(s) {unknown}; choose from {list(CHARTS)}")
    skip = {"ratio", "advantage_trace"} if ex.shaped.empty else set()
    if not (ex.trajectories["group_status"] == "mixed").any():
        skip.add("advantages")
    return {n: CHARTS[n](ex) for n in names if n not in skip}


def summary_html(ex: Explored, shaping: bool = True) -> str:
    """One line of the numbers a control can move; data-driven, so a change is visible as text."""
    m, r = ex.metrics, ex.result
    if r.skip:
        return f"<b>nothing to train on:</b> {html.escape(r.skip_reason)}"
    rows = (f"{int(m['filter/trajs_in'])} trajectories → <b>{int(m['filter/trajs_out'])}</b> advantage rows in "
            f"<b>{int(m['filter/groups_out'])}</b> groups ({int(m['filter/trajs_zero_weight'])} with loss weight 0)")
    if not shaping:
        return f"<span class='tao-summary-text'>{rows}</span>"
    cov = m.get("shaping/gate_coverage", 0.0)
    gated = (f"Ã/A on gated tokens: mean <b>{m.get('shaping/ratio_gated_mean', 1.0):.4f}</b> "
             f"(min {m.get('shaping/ratio_gated_min', 1.0):.3f}, max {m.get('shaping/ratio_gated_max', 1.0):.3f})")
    detach = ("" if ex.shaping_cfg.detach else
              " · detach off: same Ã values, but the loss gradient also flows through z")
    return (f"<span class='tao-summary-text'>{rows} · gated tokens {int(m.get('shaping/gated_tokens', 0))} "
            f"({cov:.0%} of trainable) · {gated} · sign flips {int(m.get('shaping/sign_flips', 0))}{detach}</span>")


# ----------------------------------------------------------------------------------------------
# The panel: wiring only


class Panel:
    """Controls for the filter and shaping configs over stored trajectories, with live charts.

    `panel.controls[field].value = x` (or a person moving the widget) triggers a refresh;
    `panel.state` is the latest Explored, `panel.charts` the latest charts (name -> altair chart).
    """

    def __init__(self, trajs: list[Trajectory], filter_cfg: FilterConfig | None = None,
                 shaping_cfg: ShapingConfig | None = None,
                 charts: tuple[str, ...] = ("ratio", "advantage_trace", "funnel"),
                 sections: tuple[str, ...] = ("filters", "shaping"), micro_batch: int | None = None,
                 adv_std: str = "unbiased"):
        if not trajs:
            raise ValueError("Panel needs at least one stored trajectory (read a step with RunStore.read_step)")
        if any(t.reward is None for t in trajs):
            raise ValueError("Panel needs scored trajectories: run rewards.score(trajs) first")
        self.trajs, self.chart_names, self.micro_batch, self.adv_std = trajs, tuple(charts), micro_batch, adv_std
        self.sections = tuple(sections)
        self.filter_cfg, self.shaping_cfg = filter_cfg or FilterConfig(), shaping_cfg or ShapingConfig()
        self.tokens = explore.token_table(trajs)  # built once; a control change never needs it again
        self.controls: dict[str, W.Widget] = {}
        boxes = []
        if "filters" in sections:
            fc = filter_controls(self.filter_cfg)
            self.controls.update(fc)
            boxes.append(W.VBox([W.HTML("<b>Filters</b> (stage 1) · rules in run order "
                                        "(drag, ×, or type a rule name)"), *fc.values()]))
        if "shaping" in sections:
            sc = shaping_controls(self.shaping_cfg)
            self.controls.update(sc)
            boxes.append(W.VBox([W.HTML("<b>Entropy shaping</b> (stage 2)"), *sc.values()]))
        self.summary = W.HTML()
        self.output = W.Output()
        self.summary.add_class("tao-summary")
        self.output.add_class("tao-charts")
        if "coef" in self.controls:
            self.controls["coef"].add_class("tao-coef")
        self.widget = W.VBox([W.HBox(boxes), self.summary, self.output])
        self.widget.add_class("tao-panel")
        self.state: Explored | None = None
        self.charts: dict[str, object] = {}
        self.n_refreshes = 0
        self.error = ""
        for w in self.controls.values():
            w.observe(self._on_change, names="value")
        sync_disabled(self.controls)
        self.refresh()

    def _on_change(self, change) -> None:
        sync_disabled(self.controls)
        self.refresh()

    def configs(self) -> tuple[FilterConfig, ShapingConfig]:
        return configs_from_controls(self.controls, self.filter_cfg, self.shaping_cfg)

    def refresh(self) -> None:
        """Recompute on the stored trajectories and redraw; an invalid config is reported, not raised."""
        try:
            fcfg, scfg = self.configs()
        except ValueError as err:
            self.error = str(err)
            self.summary.value = f"<b style='color:#d62728'>invalid setting:</b> {html.escape(self.error)}"
            return
        self.error = ""
        self.state = explore.recompute(self.trajs, fcfg, scfg, adv_std=self.adv_std,
                                       micro_batch=self.micro_batch, tokens=self.tokens)
        self.charts = render(self.state, self.chart_names)
        self.n_refreshes += 1
        self.summary.value = summary_html(self.state, shaping="shaping" in self.sections)
        self.output.clear_output(wait=True)
        with self.output:
            for chart in self.charts.values():
                display(chart)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def panel(trajs: list[Trajectory], **kwargs) -> Panel:
    """Build a Panel (see its docstring); display it by making it a cell's last expression."""
    return Panel(trajs, **kwargs)
