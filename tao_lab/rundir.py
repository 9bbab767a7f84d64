"""The one rule for a training run folder: it either resumes, or it is refused with the command that works.

    folder holds nothing of a run            `train` starts there;  `resume` is refused: "tao-lab train --out DIR"
    folder holds a run (config, metrics,     `train` is refused: "tao-lab resume DIR";  `resume` continues:
    step files or checkpoints)                 - from the newest checkpoint that verifies (checkpoint.verify);
                                                 damaged newer ones are moved aside to checkpoints/.damaged-step_N
                                               - with no intact checkpoint, from step 0 with the run's
                                                 config.json (a kill before / during the first checkpoint)
                                               in both cases the run store is repaired and cut back to that
                                               step first, so every step is logged exactly once.

Without this rule a kill during the first checkpoint write left a folder that `resume` called empty and
`train` called taken, and a `train` into a folder killed before its first checkpoint appended a second
step 1 to the metrics. Everything that resumes a run (tao-lab resume, Trainer.resume, the grid) goes
through `prepare_resume`; everything that starts one goes through `check_fresh`.

Where the notebooks keep their runs — one meaning of the environment variable TAO_LAB_RUN_DIR:

    TAO_LAB_RUN_DIR      the folder that HOLDS the notebooks' run folders (default: runs/ in the
                         working directory, i.e. notebooks/runs/ when JupyterLab runs a notebook, so
                         the file browser shows them; runs/ is git-ignored)
    notebook_run_dir(n)  that folder / n: one named folder (03 and 04 share their rollout store by
                         giving the same name, stored_rollouts.sample_or_load)
    new_run_dir(n)       a fresh folder under it for a new training run (notebook 05):
                         runs/05_training/run_20261207-203600, so a second Run All never trips
                         `check_fresh` on the first run's folder
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint as ckpt


class RunDirError(ValueError):
    """A run folder cannot be used the way it was asked; the message gives the command that works."""


RUN_DIR_ENV = "TAO_LAB_RUN_DIR"


def notebook_run_dir(name: str) -> Path:
    """$TAO_LAB_RUN_DIR/name, else runs/name in the working directory (see the module docstring),
    as an absolute path; not created here."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise RunDirError(f"notebook_run_dir({name!r}): give a plain folder name such as '05_training'")
    return (Path(os.environ.get(RUN_DIR_ENV) or "runs") / name).resolve()


def new_run_dir(name: str) -> Path:
    """A folder for a new run under notebook_run_dir(name), named by the start time; created, empty."""
    parent = notebook_run_dir(name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = parent / (f"run_{stamp}" if i == 0 else f"run_{stamp}_{i}")
        try:
            path.mkdir(parents=True)     # fails if taken: two runs started in the same second
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"no free run folder name under {parent} for run_{stamp}; remove old runs there")


def _traces(run_dir: Path) -> list[str]:
    """What in the folder shows a run was started there (empty: nothing)."""
    found = [name for name in ("config.json", "metrics.jsonl") if (run_dir / name).exists()]
    if any((run_dir / "steps").glob("step_*.parquet*")):
        found.append("steps/")
    cdir = run_dir / "checkpoints"
    if cdir.is_dir() and any(p.name.startswith(("step_", ".tmp-step_")) for p in cdir.iterdir()):
        found.append("checkpoints/")
    return found


def started(run_dir) -> bool:
    """Whether a run was started in `run_dir` (even one killed before its first checkpoint)."""
    return bool(_traces(Path(run_dir)))


def check_fresh(run_dir) -> None:
    """Raise RunDirError if `run_dir` already holds a run: training into it would mix two runs' steps."""
    traces = _traces(Path(run_dir))
    if traces:
        raise RunDirError(f"{run_dir} already holds a run ({', '.join(traces)}); continue it with "
                          f"`tao-lab resume {run_dir}`, or pass --out NEW_DIR to start another")


@dataclass
class ResumePlan:
    """Where a resume starts: a checkpoint (path, its state.json) or step 0 with the run's config."""

    run_dir: Path
    path: Path | None             # checkpoint folder, or None: restart from step 0
    step: int                     # the last completed step the resumed run starts after
    config: dict                  # the TrainConfig as a dict (the checkpoint's, else config.json's)
    saved: dict | None = None     # the checkpoint's state.json (None when restarting)
    notes: list[str] = field(default_factory=list)   # what was found and done, one sentence each


def _set_damaged_aside(run_dir: Path, notes: list[str]) -> Path | None:
    """The newest intact checkpoint; each damaged newer one renamed to .damaged-step_N (kept, never read)."""
    path, problems = ckpt.newest_intact(run_dir)      # problems: one per damaged step, newest first
    damaged = [s for s in ckpt.complete_steps(run_dir) if path is None or s > int(path.name.split("_")[1])]
    for s, problem in zip(reversed(damaged), problems):
        p = run_dir / "checkpoints" / f"step_{s:06d}"
        aside = p.with_name(f".damaged-{p.name}")
        if aside.exists():     # set aside by an earlier resume: the newer damage replaces it
            shutil.rmtree(aside)
        os.replace(p, aside)
        notes.append(f"{problem}; moved aside to {aside}")
    return path


def prepare_resume(run_dir) -> ResumePlan:
    """Decide where `run_dir` resumes and make the run store agree with it (see the module docstring)."""
    from .records import RunStore

    run_dir = Path(run_dir)
    if not started(run_dir):
        raise RunDirError(f"nothing to resume in {run_dir}: no run was started there; start one with "
                          f"`tao-lab train --out {run_dir}`")
    notes: list[str] = []
    path = _set_damaged_aside(run_dir, notes)
    if path is not None:
        saved = ckpt.read_state(path)
        plan = ResumePlan(run_dir, path, int(saved["step"]), saved["config"], saved, notes)
        if notes:
            notes.append(f"resuming from the intact checkpoint {path.name}")
    else:
        store = RunStore(run_dir)
        if not (run_dir / "config.json").exists():
            raise RunDirError(f"{run_dir} holds pieces of a run but neither a checkpoint nor config.json; "
                              f"start afresh with `tao-lab train --out NEW_DIR`")
        config = store.read_config().get("train")
        if config is None:
            raise RunDirError(f"{run_dir}/config.json is not a training run's config (no 'train' section); "
                              f"start one with `tao-lab train --out NEW_DIR`")
        notes.append(f"no intact checkpoint in {run_dir}: restarting from step 0 with its config.json "
                     f"(steps logged before are dropped and redone)")
        plan = ResumePlan(run_dir, None, 0, config, None, notes)
    notes += RunStore(run_dir).repair(plan.step)
    for note in notes:          # said where the user looks, and kept on the plan for callers and tests
        print(f"resume: {note}", file=sys.stderr)
    return plan
