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


# Which shaping fields each kind reads (advantages.SHAPERS): "tao" is A(1 + a g z) with the z scope
# and detach; "additive" is A + g min(α H, |A|/κ) (entropy always detached, no z); "none" reads none.
SHAPING_FIELDS_USED = {"none": set(), "tao": {"coef", "gate", "z_scope", "detach"},
                       "additive": {"gate", "alpha", "kappa"}}


def sync_disabled(controls: dict[str, W.Widget]) -> None:
    """Disable each control the chosen variant ignores, so that no control looks live but does nothing.

    Shaping: the fields the kind does not read (SHAPING_FIELDS_USED). Filters: Filter A's mode when
    `filter_a` is not among the rules, its strength unless it runs in mask mode (drop removes the
    episode whatever the strength), and min_n when `overlong` is not among the rules.
    """
    if "kind" in controls:
        used = SHAPING_FIELDS_USED[controls["kind"].value]
        for name in ("coef", "gate", "z_scope", "detach", "alpha", "kappa"):
            if name in controls:
                controls[name].disabled = name not in used
    if "rules" in controls:
        rules = controls["rules"].value
        if "filter_a_mode" in controls:
            controls["filter_a_mode"].disabled = "filter_a" not in rules
        if "filter_a_strength" in controls:
            mask = controls["filter_a_mode"].value == "mask" if "filter_a_mode" in controls else True
            controls["filter_a_strength"].disabled = "filter_a" not in rules or not mask
        if "min_n" in controls:
            controls["min_n"].disabled = "overlong" not in rules


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
