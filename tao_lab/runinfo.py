"""What a run records about itself besides its metrics: stage timings, peak memory, package versions,
the checkout's git revision. Small, model-free helpers shared by the trainer and the SFT stage."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch


class StageTimer:
    """`with timer("rollout"): ...` accumulates seconds per stage name."""

    def __init__(self):
        self.s: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t

    def add(self, name: str, seconds: float) -> None:
        self.s[name] = self.s.get(name, 0.0) + seconds

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.s.items()} | {"time/step_s": sum(self.s.values())}


def memory_metrics(device: torch.device) -> dict[str, float]:
    """Peak resident memory of the process so far (Linux ru_maxrss is KiB) and, on CUDA, the step's peak."""
    out = {"mem/peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["mem/cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        torch.cuda.reset_peak_memory_stats(device)
    return out


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "tao_lab"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_revision(start: Path | None = None) -> str:
    """The checkout's commit id, read from .git without running git ("unknown" outside a clone)."""
    p = (start or Path(__file__)).resolve()
    for d in [p, *p.parents]:
        git = d / ".git"
        if git.is_dir():
            try:
                head = (git / "HEAD").read_text().strip()
                if not head.startswith("ref: "):
                    return head
                ref = head[5:]
                if (git / ref).exists():
                    return (git / ref).read_text().strip()
                for line in (git / "packed-refs").read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
            except OSError:
                return "unknown"
            return "unknown"
    return "unknown"
