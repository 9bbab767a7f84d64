"""Atomic training checkpoints: a crash at any moment leaves the last complete checkpoint loadable.

Layout, inside a run folder:

    run_dir/checkpoints/step_000004/
        adapter/               peft adapter (adapter_config.json + adapter_model.safetensors):
                               loadable on its own with peft.PeftModel.from_pretrained
        optimizer.pt           optimizer.state_dict()
        scheduler.pt           lr scheduler state_dict()
        rng.pt                 python / numpy / torch (CPU + CUDA) RNG states
        state.json             step, the prompt source's state (data cursor), the full TrainConfig as a dict, time
        COMPLETE               written last, before the rename

How it stays atomic: everything is written (and fsynced) into a hidden sibling folder
`.tmp-step_000004-<pid>-<random>`, the COMPLETE marker is written last, and only then is the folder
renamed to `step_000004` (a rename within one file system is atomic on POSIX). Readers only look at
folders named exactly `step_NNNNNN` that hold COMPLETE, so a half-written temp folder left by a
kill is ignored, and it is removed (and counted) by the next save. Older checkpoints beyond `keep`
are deleted only after the new one is in place.

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
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^step_(\d{6,})$")
MARKER = "COMPLETE"


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
    s = latest(run_dir)
    return None if s is None else _dir(run_dir) / f"step_{s:06d}"


def save(run_dir, step: int, *, model, optimizer, scheduler, rng: dict, state: dict, config: dict,
         keep: int = 2) -> Path:
    """Write a checkpoint of `step` atomically and prune older ones; returns its folder.

    If a complete checkpoint of this step exists already it is kept as it is (saving twice is a
    no-op: e.g. an interrupt right after a periodic save).
    """
    d = _dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"step_{step:06d}"
    if (final / MARKER).exists():
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
        (tmp / MARKER).write_text("ok\n")
        _fsync_tree(tmp)
        if final.exists():       # an incomplete folder of the same name (no marker): replace it
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
    return json.loads((Path(path) / "state.json").read_text())


def read_rng(path: Path) -> dict:
    return torch.load(Path(path) / "rng.pt", weights_only=False)


def load_adapter(model, path: Path) -> None:
    """Copy a checkpoint's adapter weights into a peft model that has the same adapter layout."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(path) / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unknown = list(getattr(result, "unexpected_keys", None) or [])
    if unknown:
        raise RuntimeError(f"checkpoint {path} has adapter weights the model does not know: {unknown[:5]}; "
                           "was it saved with a different ModelConfig (lora_r, target_modules)?")


def load_into(path: Path, *, model, optimizer=None, scheduler=None) -> None:
    """Restore adapter (and optimizer / scheduler when given) from a checkpoint folder."""
    load_adapter(model, path)
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", weights_only=False))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(Path(path) / "scheduler.pt", weights_only=False))
