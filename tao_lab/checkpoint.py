"""Atomic training checkpoints: a crash at any moment leaves the last complete checkpoint loadable.

Layout, inside a run folder:

    run_dir/checkpoints/step_000004/
        adapter/               peft adapter (adapter_config.json + adapter_model.safetensors):
                               loadable on its own with peft.PeftModel.from_pretrained
        optimizer.pt           optimizer.state_dict()
        scheduler.pt           lr scheduler state_dict()
        rng.pt                 python / numpy / torch (CPU + CUDA) RNG states
        state.json             step, the prompt source's state (data cursor), the full TrainConfig as a dict, time
        MANIFEST.json          size and sha256 of every file above, so a damaged file is noticed on load
        COMPLETE               written last, before the rename

How it stays atomic: everything is written (and fsynced) into a hidden sibling folder
`.tmp-step_000004-<pid>-<random>`, the COMPLETE marker is written last, and only then is the folder
renamed to `step_000004` (a rename within one file system is atomic on POSIX). Readers only look at
folders named exactly `step_NNNNNN` that hold COMPLETE, so a half-written temp folder left by a
kill is ignored, and it is removed (and counted) by the next save. Older checkpoints beyond `keep`
are deleted only after the new one is in place.

Damage after the fact (a disk filling up, a copy cut short, a file truncated by hand) is caught by
`verify` against MANIFEST.json; `newest_intact` and `latest_path` skip a damaged checkpoint for the
newest older one that verifies and say which one they used. Every loader names the file it could not
read (`CheckpointError`). Checkpoints written before the manifest existed are checked for presence only.

Not covered: checkpoints across machines with different CUDA RNG layouts (the CUDA RNG state is
restored only when the device count matches); network file systems without atomic rename.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .models import file_sha256

_NAME = re.compile(r"^step_(\d{6,})$")
MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"
REQUIRED = ("adapter", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or damaged; the message names the file."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped for an older intact one (the message says which)."""


def _dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """Every RNG the loop may touch (python, numpy, torch CPU and CUDA)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if st.get("cuda") and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def complete_steps(run_dir) -> list[int]:
    """Steps that have a complete checkpoint, oldest first (temp folders and partial ones ignored)."""
    d = _dir(run_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / MARKER).exists():
            out.append(int(m.group(1)))
    return sorted(out)


def latest(run_dir) -> int | None:
    steps = complete_steps(run_dir)
    return steps[-1] if steps else None


def latest_path(run_dir) -> Path | None:
    """The newest checkpoint that verifies; each damaged newer one is skipped with a CheckpointWarning."""
    import warnings

    path, notes = newest_intact(run_dir)
    for note in notes:
        warnings.warn(note + (f"; using {path.name}" if path else "; no intact checkpoint left"),
                      CheckpointWarning, stacklevel=2)
    return path


def save(run_dir, step: int, *, model, optimizer, scheduler, rng: dict, state: dict, config: dict,
         keep: int = 2) -> Path:
    """Write a checkpoint of `step` atomically and prune older ones; returns its folder.

    If a complete checkpoint of this step exists already it is kept as it is (saving twice is a
    no-op: e.g. an interrupt right after a periodic save).
    """
    d = _dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step_{step:06d}"
    if (final / MARKER).exists() and verify(final) is None:
        return final
    stale = [p for p in d.iterdir() if p.name.startswith(".tmp-")]
    for p in stale:   # left by a crash mid-write: never read, safe to remove
        shutil.rmtree(p, ignore_errors=True)
    tmp = d / f".tmp-step_{step:06d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(
            {"step": step, "state": state, "config": config, "saved_at": time.time(),
             "stale_temp_dirs_removed": len(stale)}, indent=2, default=str))
        (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1))
        (tmp / MARKER).write_text("ok\n")
        _fsync_tree(tmp)
        if final.exists():       # an incomplete or damaged folder of the same name: replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for s in complete_steps(run_dir)[:-keep]:
        shutil.rmtree(d / f"step_{s:06d}", ignore_errors=True)
    return final


def read_state(path: Path) -> dict:
    with _reading(Path(path) / "state.json") as f:
        return json.loads(f.read_text())


def read_rng(path: Path) -> dict:
    with _reading(Path(path) / "rng.pt") as f:
        return torch.load(f, weights_only=False)


def load_adapter(model, path: Path) -> None:
    """Copy a checkpoint's adapter weights into a peft model that has the same adapter layout."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with _reading(Path(path) / "adapter" / "adapter_model.safetensors") as f:
        weights = load_file(str(f))
    result = set_peft_model_state_dict(model, weights)
    unknown = list(getattr(result, "unexpected_keys", None) or [])
    if unknown:
        raise RuntimeError(f"checkpoint {path} has adapter weights the model does not know: {unknown[:5]}; "
                           "was it saved with a different ModelConfig (lora_r, target_modules)?")


def load_into(path: Path, *, model, optimizer=None, scheduler=None) -> None:
    """Restore adapter (and optimizer / scheduler when given) from a checkpoint folder."""
    load_adapter(model, path)
    for obj, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt")):
        if obj is not None:
            with _reading(Path(path) / name) as f:
                st = torch.load(f, weights_only=False)
            obj.load_state_dict(st)


# ----------------------------------------------------------------------------------------------
# Verifying: a manifest written before COMPLETE, checked on load


def _manifest(folder: Path) -> dict:
    """{relative path: {size, sha256}} of every file in a checkpoint folder being written."""
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def verify(path) -> str | None:
    """Why the checkpoint folder `path` is not intact (naming the file), or None if it is."""
    path = Path(path)
    if not (path / MARKER).exists():
        return f"{path}: no {MARKER} marker (the write was cut short)"
    if not (path / MANIFEST).exists():     # written before manifests existed: presence only
        missing = [name for name in REQUIRED if not (path / name).exists()]
        return f"{path / missing[0]}: missing" if missing else None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"{path / MANIFEST}: unreadable ({e})"
    for name, want in manifest.items():
        f = path / name
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != want["size"]:
            return f"{f}: {f.stat().st_size} bytes, the manifest says {want['size']} (truncated or overwritten)"
        if file_sha256(f) != want["sha256"]:
            return f"{f}: contents differ from the manifest (sha256 mismatch)"
    return None


def newest_intact(run_dir) -> tuple[Path | None, list[str]]:
    """(newest checkpoint folder that verifies or None, one note per damaged newer one skipped)."""
    notes = []
    for s in reversed(complete_steps(run_dir)):
        path = _dir(run_dir) / f"step_{s:06d}"
        problem = verify(path)
        if problem is None:
            return path, notes
        notes.append(f"checkpoint step {s} is damaged: {problem}")
    return None, notes


@contextmanager
def _reading(path: Path):
    """Turn whatever a damaged file makes a reader raise into a CheckpointError naming the file."""
    try:
        yield path
    except CheckpointError:
        raise
    except Exception as e:    # safetensors, zip (torch.load), JSON, OS errors: each has its own type
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e}); the checkpoint is "
                              f"damaged: `tao-lab resume` falls back to the newest intact one") from e
