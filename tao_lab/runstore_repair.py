"""Checking and repairing a run store after a crash: metrics.jsonl lines and parquet step files.

A run can be killed at any byte. What that can leave behind, and what happens to it here:

    metrics.jsonl ends in half a line      reading drops it with a warning; repair() removes it
    a line appears twice for one step      (a step redone after a crash) repair() keeps the last one
    a step file is cut short or garbled    problems() names it; repair() renames it to
                                           step_N.parquet.corrupt and records the step in
                                           lost_steps.json (the trajectories are gone, the run goes on)
    lines / step files after the resume    repair(step) removes them, so the resumed run writes each
    step                                   step exactly once

Metric lines are written as strict JSON (nan and inf become null) so any JSON reader takes them;
files written before that, with bare `NaN` literals, still read (Python's json accepts them).

`problems(store)` only reads; `repair(store, step)` is what `Trainer.resume` (through
tao_lab/rundir.py) and `RunStore.truncate_after` call. RunStore's methods of the same names
delegate here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

LOST_FILE = "lost_steps.json"


class RunStoreError(ValueError):
    """A run store file cannot be read; the message names it and the repair."""


class RunStoreWarning(UserWarning):
    """Something in a run store was damaged and skipped while reading (the message says what)."""


# ----------------------------------------------------------------------------------------------
# metrics.jsonl


def _plain(value: Any) -> Any:
    """A metric value as strict-JSON-able data: non-finite floats -> None, numpy scalars unwrapped."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()          # numpy / torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def metrics_line(metrics: dict[str, Any]) -> str:
    """One metrics.jsonl line (with its newline) that strict JSON readers accept."""
    return json.dumps(_plain(metrics), allow_nan=False, default=lambda v: _plain(float(v))) + "\n"


def read_metrics_lines(path: Path) -> tuple[list[dict], list[str]]:
    """(rows, notes) of a metrics.jsonl. A last line without its newline that does not parse is a
    write cut short by a kill: dropped and noted. Any other bad line raises ValueError naming it."""
    if not path.exists():
        return [], []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    rows, notes = [], []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as e:            # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if i == len(lines) and not complete:
                notes.append(f"{path}:{i}: partial last line ({len(raw)} bytes, cut off by a crash) ignored")
                continue
            raise ValueError(f"{path}:{i}: not a JSON object ({e}); run `tao-lab resume` to repair "
                             f"the store, or remove the line") from None
        rows.append(row)
    return rows, notes


def _step_counts(rows: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for r in rows:
        if isinstance(r.get("step"), int):
            counts[r["step"]] = counts.get(r["step"], 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------
# step files


def step_file_problem(path: Path) -> str | None:
    """Why a parquet step file cannot be read (footer and schema checked), or None if it can."""
    import pyarrow.parquet as pq

    try:
        if path.stat().st_size < 12 or path.read_bytes()[-4:] != b"PAR1":
            return "truncated (no parquet footer)"
        pq.read_metadata(path)
    except Exception as e:                 # pyarrow raises several types for damaged files
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def lost_steps(store) -> dict[str, str]:
    p = Path(store.path) / LOST_FILE
    return json.loads(p.read_text()) if p.exists() else {}


# ----------------------------------------------------------------------------------------------
# problems / repair


def problems(store) -> list[str]:
    """What is wrong with a run store, one sentence each; reads only (an empty list: all is well)."""
    path = Path(store.path) / "metrics.jsonl"
    out = []
    try:
        rows, notes = read_metrics_lines(path)
        out += notes
        out += [f"{path}: step {s} logged {n} times" for s, n in sorted(_step_counts(rows).items()) if n > 1]
    except ValueError as e:
        out.append(str(e))
    for s in store.steps():
        why = step_file_problem(store.step_path(s))
        if why:
            out.append(f"{store.step_path(s)}: {why}")
    out += [f"step {s} was lost: {why}" for s, why in lost_steps(store).items()]
    return out


def _repair_metrics(path: Path, step: int | None) -> list[str]:
    """Keep the good lines up to `step`, the last one of a step logged twice; rewrite atomically."""
    from .records import _atomic_write_bytes

    if not path.exists():
        return []
    notes, rows = [], []
    lines = path.read_bytes().split(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError:
            row = None
        if not isinstance(row, dict):
            notes.append(f"{path}:{i}: dropped a line that is not a JSON object"
                         + (" (partial last line, cut off by a crash)" if i == len(lines) else ""))
            continue
        rows.append(row)
    if step is not None:
        later = sorted({r["step"] for r in rows if isinstance(r.get("step"), int) and r["step"] > step})
        rows = [r for r in rows if not (isinstance(r.get("step"), int) and r["step"] > step)]
        if later:
            notes.append(f"{path}: dropped the lines of steps {later} (after step {step}; they are redone)")
    last = {r["step"]: i for i, r in enumerate(rows) if isinstance(r.get("step"), int)}
    dup = sorted(s for s, n in _step_counts(rows).items() if n > 1)
    if dup:
        rows = [r for i, r in enumerate(rows) if not isinstance(r.get("step"), int) or last[r["step"]] == i]
        notes.append(f"{path}: steps {dup} were logged more than once; kept the last line of each")
    new = "".join(metrics_line(r) for r in rows).encode()
    if new != path.read_bytes():
        _atomic_write_bytes(path, new)
    return notes


def repair(store, step: int | None = None) -> list[str]:
    """Make the store consistent (and, with `step`, end at that step); returns what it did.

    Metric lines: partial / garbled ones dropped, later steps dropped, duplicates reduced to the
    last. Step files: those after `step` removed; a damaged one renamed to *.parquet.corrupt and
    recorded as lost in lost_steps.json.
    """
    from .records import _atomic_write_bytes

    notes = _repair_metrics(Path(store.path) / "metrics.jsonl", step)
    lost = lost_steps(store)
    for s in store.steps():
        p = store.step_path(s)
        if step is not None and s > step:
            p.unlink()
            continue
        why = step_file_problem(p)
        if why:
            os.replace(p, p.with_name(p.name + ".corrupt"))
            lost[str(s)] = why
            notes.append(f"{p}: {why}; moved to {p.name}.corrupt, step {s}'s trajectories are lost")
    if step is not None:
        removed = [s for s in lost if int(s) > step]     # a lost step after `step` is redone
        for s in removed:
            del lost[s]
    if lost != lost_steps(store):
        _atomic_write_bytes(Path(store.path) / LOST_FILE, json.dumps(lost, indent=1).encode())
    return notes
