"""Configuration changed between steps: recorded with the step it took effect, replayed on resume.

A notebook may change `Trainer.cfg` between two steps (notebook 05's widgets replace its filter and
shaping sections; a user may lower the learning rate). So that the run store says what each step
ran with, and a resumed run continues with what the interrupted one used:

    RUN_DIR/config_changes.jsonl    one line per changed field:
                                    {"step": 3, "field": "optim.lr", "old": 0.01, "new": 0.005}
                                    `step` is the first step that ran with `new`.

  - `ConfigLog.check(cfg, step)` runs when a step starts: it validates the config (every section's
    __post_init__, so a bad widget value fails with the field's name), compares it with the last
    recorded one and appends one line per changed field. Fields that cannot change mid-run (the
    model, the optimizer kind, the schedule kind, the method: they are built once) are refused.
  - `apply_optim_changes` makes an optimizer change reach the optimizer: a new lr_0 becomes the
    scheduler's base lr and each param group's lr times the schedule's factor so far (lr_t = lr_0'·γ^t),
    a new γ the scheduler's, betas and weight decay the param groups'.
  - `replay(cfg, changes, step)` applies the changes that took effect up to `step`; Trainer.resume
    starts from the run's first config (config.json) and replays up to the step it resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FILE = "config_changes.jsonl"
# built once when the Trainer starts: a change would silently not happen
FROZEN_PREFIXES = ("model.", "optim.optimizer", "optim.schedule", "method")


def flatten(d: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; tuples become lists (as JSON stores them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def diff(old: dict, new: dict) -> list[dict]:
    """The fields (dotted names) whose values differ between two config dicts: field, old, new."""
    a, b = flatten(old), flatten(new)
    return [{"field": k, "old": a.get(k), "new": b.get(k)} for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def read(run_dir: str | os.PathLike) -> list[dict]:
    """The recorded changes; a last line cut short by a crash mid-append is left out."""
    p = Path(run_dir) / FILE
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def replay(cfg_dict: dict, changes: list[dict], up_to_step: int) -> dict:
    """cfg_dict with every change whose step <= up_to_step applied, in the order recorded."""
    out = json.loads(json.dumps(cfg_dict, default=str))
    for c in changes:
        if c["step"] > up_to_step:
            continue
        *path, name = c["field"].split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[name] = c["new"]
    return out


class ConfigLog:
    """The run's config_changes.jsonl and the last config it recorded."""

    def __init__(self, run_dir: str | os.PathLike, cfg_dict: dict):
        self.path = Path(run_dir) / FILE
        self.last = json.loads(json.dumps(cfg_dict, default=str))

    def check(self, cfg_dict: dict, step: int) -> list[dict]:
        """Record (and return) the fields changed since the last check; they take effect at `step`."""
        now = json.loads(json.dumps(cfg_dict, default=str))
        changes = diff(self.last, now)
        frozen = [c["field"] for c in changes if c["field"].startswith(FROZEN_PREFIXES)]
        if frozen:
            raise ValueError(f"TrainConfig fields {frozen} cannot change during a run (they are built once "
                             "when the Trainer starts); start a new run to change them")
        if changes:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                for c in changes:
                    f.write(json.dumps({"step": step, **c}) + "\n")
            self.last = now
        return changes

    def truncate_after(self, step: int) -> None:
        """Drop lines of steps after `step` (written by a run that did not get there)."""
        from .records import atomic_write_bytes

        if self.path.exists():
            keep = [c for c in read(self.path.parent) if c["step"] <= step]
            atomic_write_bytes(self.path, "".join(json.dumps(c) + "\n" for c in keep).encode())


def apply_optim_changes(changes: list[dict], optimizer, scheduler) -> None:
    """Make changed optim.* fields reach the optimizer and the scheduler (see the module docstring)."""
    for c in changes:
        name = c["field"]
        if name == "optim.lr":
            for i, g in enumerate(optimizer.param_groups):
                factor = g["lr"] / scheduler.base_lrs[i] if scheduler.base_lrs[i] else 1.0
                g["lr"], g["initial_lr"] = c["new"] * factor, c["new"]
                scheduler.base_lrs[i] = c["new"]
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]   # what get_last_lr() reports
        elif name == "optim.gamma" and hasattr(scheduler, "gamma"):
            scheduler.gamma = c["new"]
        elif name in ("optim.betas", "optim.weight_decay"):
            key = name.split(".")[1]
            for g in optimizer.param_groups:
                g[key] = tuple(c["new"]) if key == "betas" else c["new"]
