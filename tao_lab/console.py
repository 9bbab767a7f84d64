"""The training console (notebook 05): the filter and shaping controls of widgets.py on a live `Trainer`.

"Apply" makes them the config of the next step (Trainer.apply_config: validated, recorded in
config_changes.jsonl) and says what changed in a status line; "Train N more steps" applies what the
controls show, then trains, with a progress bar and learning curves redrawn after every step in the
same output area. Controls that do nothing under the other settings are disabled
(`widgets.inactive_fields`, with the gate kept live when the loss's AEPO anti-clip uses it).
"""

from __future__ import annotations

import html
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import ipywidgets as W
import pandas as pd
from IPython.core.formatters import format_display_data

from tao_lab import config_changes, explore, plots
from tao_lab.widgets import configs_from_controls, filter_controls, shaping_controls, sync_disabled

if TYPE_CHECKING:       # the console must import without torch models loaded; it gets a live Trainer
    from tao_lab.trainer import StepLog, Trainer

# learning curves the console draws, when a step logged them (reward first: plots.learning_curves)
CONSOLE_CURVES = ("reward/mean", "reward/accuracy", "filter/b_drop_rate", "groups/degenerate_rate",
                  "tool/success_rate", "entropy/post_tool_mean", "entropy/other_mean")


def _show(value) -> str:
    """A config value for a status line: 0.05, filter_b, overlong → ..."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def changes_text(changes: list[dict]) -> str:
    """"shaping.coef 0.01 → 0.05; filter.filter_a_mode drop → mask" (HTML-escaped)."""
    return "; ".join(html.escape(f"{c['field']} {_show(c['old'])} → {_show(c['new'])}") for c in changes)


class TrainingConsole:
    """Filter and shaping controls bound to a live Trainer, an Apply button, "Train N more steps",
    a progress bar and learning curves, all in one widget (display it, or make it a cell's last
    expression).

    What a cell can call, the same as the buttons do:
      apply()      the controls -> Trainer.apply_config; the status line says what changed from
                   which step on (or why nothing was applied); returns the changes
      train(n)     apply(), then n more trainer steps (default: the steps box); the bar and the
                   chart follow each step through the Trainer's on_step callback
      pending()    the changes the controls show but the trainer does not run yet
    `applied` lists every change this console applied; `history` the metric rows the chart shows.
    """

    def __init__(self, trainer: "Trainer", steps: int = 1, curves: tuple[str, ...] = CONSOLE_CURVES):
        self.trainer, self.curves = trainer, tuple(curves)
        self.controls: dict[str, W.Widget] = {**filter_controls(trainer.cfg.filter),
                                              **shaping_controls(trainer.cfg.shaping)}
        self.applied: list[dict] = []
        self.history: list[dict] = []
        self.chart_data = None          # the long frame (step, metric, value) the chart last drew
        auto = W.Layout(width="auto")   # a fixed width cut the old label to "apply to the next…"
        self.apply_button = W.Button(description="Apply", icon="check", layout=auto,
                                     tooltip="use these filter and shaping settings from the next training step on")
        self.n_steps = W.BoundedIntText(value=steps, min=1, max=10_000, description="steps",
                                        layout=W.Layout(width="140px"), style={"description_width": "40px"})
        self.train_button = W.Button(button_style="primary", icon="play", layout=auto,
                                     tooltip="apply the settings shown, then train this many more steps")
        self.status = W.HTML()
        self.bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="320px"))
        self.progress = W.HTML()
        self.chart = W.Output()
        for w, cls in ((self.status, "tao-console-status"), (self.chart, "tao-console-chart"),
                       (self.train_button, "tao-console-train"), (self.apply_button, "tao-console-apply"),
                       (self.progress, "tao-console-progress")):
            w.add_class(cls)
        c = self.controls
        for k, w in c.items():
            w.add_class(f"tao-ctl-{k}")   # names for a browser test; the Panel has only .tao-coef
        filters_box = W.VBox([W.HTML("<b>Filters</b> · rules in run order"),
                              *(c[k] for k in ("rules", "filter_a_mode", "filter_a_strength", "min_n"))])
        shaping_box = W.VBox([W.HTML("<b>Entropy shaping</b>"),
                              *(c[k] for k in ("kind", "coef", "gate", "z_scope", "detach", "alpha", "kappa"))])
        self.widget = W.VBox([W.HBox([filters_box, shaping_box]),
                              W.HBox([self.apply_button, self.n_steps, self.train_button]),
                              self.status, W.HBox([self.bar, self.progress]), self.chart])
        self.widget.add_class("tao-console")
        self.apply_button.on_click(self._click_apply)
        self.train_button.on_click(lambda _: self.train())
        self.n_steps.observe(lambda _: self._label(), names="value")
        for w in self.controls.values():
            w.observe(self._on_change, names="value")
        self._label()
        self._disable_idle()
        self.status.value = self._next_text()
        self._history_from_store()
        if self.history:
            self._draw()

    # -- controls
    def _label(self) -> None:
        n = self.n_steps.value
        self.train_button.description = f"Train {n} more step{'s' if n != 1 else ''}"

    def _disable_idle(self) -> None:
        sync_disabled(self.controls, gate_used_by_loss=self.trainer.cfg.loss.anti_clip)

    def _on_change(self, _change) -> None:
        self._disable_idle()
        try:
            waiting = self.pending()
        except ValueError as err:
            self.status.value = f"<b style='color:#d62728'>invalid setting:</b> {html.escape(str(err))}"
            return
        self.status.value = (f"<b>not applied yet:</b> {changes_text(waiting)} (Apply, or Train applies them)"
                             if waiting else self._next_text())

    def _configs(self):
        cfg = self.trainer.cfg
        return configs_from_controls(self.controls, cfg.filter, cfg.shaping)

    def pending(self) -> list[dict]:
        """The fields the controls change against the trainer's config (ValueError if invalid)."""
        fcfg, scfg = self._configs()
        cfg = self.trainer.cfg
        return config_changes.diff({"filter": asdict(cfg.filter), "shaping": asdict(cfg.shaping)},
                                   {"filter": asdict(fcfg), "shaping": asdict(scfg)})

    def _click_apply(self, _button) -> None:
        try:
            self.apply()
        except ValueError:
            pass                          # the status line names the invalid setting

    def _next_text(self) -> str:
        return f"next: step {self.trainer.state.step + 1}, with the settings shown"

    def apply(self) -> list[dict]:
        """The controls' settings become the trainer's from its next step; the status line says so."""
        nxt = self.trainer.state.step + 1
        try:
            fcfg, scfg = self._configs()
            changes = self.trainer.apply_config(replace(self.trainer.cfg, filter=fcfg, shaping=scfg))
        except ValueError as err:
            self.status.value = (f"<b style='color:#d62728'>not applied, invalid setting:</b> "
                                 f"{html.escape(str(err))}")
            raise
        self.applied += changes
        self.status.value = (f"<b>applied from step {nxt} on:</b> {changes_text(changes)} "
                             f"<span style='color:#666'>(recorded in {config_changes.FILE})</span>"
                             if changes else f"nothing to apply: step {nxt} runs with the settings shown")
        return changes

    # -- training
    def train(self, n: int | None = None) -> list["StepLog"]:
        """apply(), then `n` more steps (default: the steps box) with a live bar and chart."""
        n = int(self.n_steps.value if n is None else n)
        if n < 1:
            raise ValueError(f"TrainingConsole.train(n={n}): n must be at least 1")
        try:
            changes = self.apply()
        except ValueError:
            return []                     # the status line says why; nothing trained
        tr, applied_status = self.trainer, self.status.value
        self._history_from_store()
        self.bar.max, self.bar.value, self.bar.bar_style = n, 0, ""
        self.progress.value = f"training {n} step{'s' if n != 1 else ''} from step {tr.state.step + 1}…"
        previous, t0 = tr.on_step, time.perf_counter()

        def on_step(log: "StepLog") -> None:
            self.history.append(log.metrics)
            self.bar.value += 1
            done = self.bar.value
            per_step = (time.perf_counter() - t0) / done
            m = log.metrics
            self.progress.value = html.escape(
                f"step {log.step} ({done}/{n}) · reward {m.get('reward/mean', float('nan')):.3f} · "
                f"{per_step:.0f} s/step" + (f" · about {per_step * (n - done):.0f} s left" if done < n else "")
                + (f" · skipped: {log.skip_reason}" if log.skipped else ""))
            self._draw()
            if previous is not None:
                previous(log)

        for b in (self.apply_button, self.train_button):
            b.disabled = True             # a second click while the kernel is busy would queue a second run
        tr.on_step = on_step
        try:
            logs = tr.train(steps=tr.state.step + n)
            self.bar.bar_style = "success"
            self.status.value = applied_status if changes else self._next_text()
            return logs
        except BaseException:
            self.bar.bar_style = "danger"
            raise
        finally:
            tr.on_step = previous
            for b in (self.apply_button, self.train_button):
                b.disabled = False

    def _history_from_store(self) -> None:
        """The steps the run has logged (also those trained outside the console)."""
        path = self.trainer.store.path / "metrics.jsonl"
        self.history = self.trainer.store.metrics().to_dict("records") if path.exists() else []

    def _draw(self) -> None:
        frame = pd.DataFrame(self.history)
        cols = [c for c in self.curves if c in frame and frame[c].notna().any()]
        if not cols:
            return
        self.chart_data = explore.metrics_long(frame, cols)
        chart = plots.learning_curves(self.chart_data, columns=3, title="Learning curves, one point per step")
        # the output area's content replaced in one assignment: no flicker, and it works from a
        # button callback and from a test alike (`with output:` only captures inside a kernel)
        data, metadata = format_display_data(chart)
        self.chart.outputs = ({"output_type": "display_data", "data": data, "metadata": metadata},)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
