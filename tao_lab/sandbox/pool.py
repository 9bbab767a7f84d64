"""Tier selection (probe once per tier), one-shot `run_code` and the warm `SandboxPool`."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import queue
import shutil
import sys
import threading
import time
import warnings
import weakref
from dataclasses import replace

from .common import TIER_CAVEATS, TIERS, ExecResult, SandboxConfig, SandboxError, SandboxWarning, last_line
from .http import run_http
from .runner import Proc, execute
from .uids import UidLease, drops_root


# ----------------------------------------------------------------------------------------------
# Tier selection


_probe_cache: dict[tuple, tuple[str, float]] = {}  # key -> (verdict, time.monotonic() of the probe)
_PROBE_CODE = "import fractions\nprint(6 * 7)\n"
_PROBE_RETRY_S = 30.0  # a failed probe is tried again once its verdict is older than this
_warned_rlimits = False


def tier_status(config: SandboxConfig | None = None) -> dict[str, str]:
    """For each tier: "ok", or why it cannot run here (and how to fix that). A working tier is
    probed once per process; a failing one again after `_PROBE_RETRY_S` (a service that was down
    may be up now), never more often, so a broken tier does not cost a probe per call."""
    cfg = config or SandboxConfig()
    report = {}
    for tier in TIERS:
        key = (tier, cfg.interpreter, cfg.site_packages, cfg.http_url, cfg.hidden, os.geteuid())
        verdict, when = _probe_cache.get(key, (None, 0.0))
        if verdict is None or (verdict != "ok" and time.monotonic() - when > _PROBE_RETRY_S):
            _probe_cache[key] = (_probe(tier, cfg), time.monotonic())
        report[tier] = _probe_cache[key][0]
    return report


def available_tiers(config: SandboxConfig | None = None) -> list[str]:
    """Tiers that work on this machine (a probe call returned 42), best first."""
    return [t for t, why in tier_status(config).items() if why == "ok"]


def _probe(tier: str, cfg: SandboxConfig) -> str:
    if tier == "http":
        if not cfg.http_url:
            return "no http_url configured"
        try:
            res = run_http(_PROBE_CODE, replace(cfg, tier="http"))
        except SandboxError as e:
            return str(e)
        return "ok" if res.ok and res.stdout.strip() == "42" else f"probe call failed: {res.stderr!r:.200}"
    if tier == "bubblewrap" and shutil.which("bwrap") is None:
        return "bwrap not found on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
    if sys.platform == "win32":
        return "needs a POSIX system"
    lease = UidLease() if drops_root() else None
    try:
        res = execute(Proc(replace(cfg, timeout_s=max(cfg.timeout_s, 10.0)), tier,
                             lease.uid if lease else -1), _PROBE_CODE)
    except SandboxError as e:
        return str(e)
    finally:
        if lease:
            lease.release()
    if res.ok and res.stdout.strip() == "42":
        return "ok"
    why = last_line(res.stderr) or res.status
    if lease and tier == "rlimits":
        why += (f" -- as root the code runs as uid {lease.uid if lease else ''}, which cannot read "
                f"{cfg.interpreter}'s installation; set SandboxConfig(python=...) to a system Python "
                "(e.g. /usr/bin/python3), install bubblewrap, or run as a normal user")
    return f"probe call failed: {why}"


def resolve_tier(config: SandboxConfig) -> str:
    """The tier a config will use: the requested one if it works, else the first available.
    Choosing the rlimits tier warns once per process (`SandboxWarning`): it protects far less."""
    status = tier_status(config)
    if config.tier != "auto":
        if status[config.tier] != "ok":
            raise SandboxError(f"sandbox tier {config.tier!r} cannot run here: {status[config.tier]}")
        return _warn_if_weak(config.tier)
    for tier in ("bubblewrap", "rlimits") + (("http",) if config.http_url else ()):
        if status[tier] == "ok":
            return _warn_if_weak(tier)
    raise SandboxError("no sandbox tier works on this machine: "
                       + "; ".join(f"{t}: {why}" for t, why in status.items()))


def _warn_if_weak(tier: str) -> str:
    global _warned_rlimits
    if tier == "rlimits" and not _warned_rlimits:
        _warned_rlimits = True
        warnings.warn(f"model code runs on the rlimits sandbox tier: {TIER_CAVEATS['rlimits']}"
                      " (install bubblewrap for isolation)", SandboxWarning, stacklevel=3)
    return tier


# ----------------------------------------------------------------------------------------------
# Public entry points


def _make_config(config: SandboxConfig | None, overrides: dict) -> SandboxConfig:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return replace(config or SandboxConfig(), **overrides) if overrides else (config or SandboxConfig())


def run_code(code: str, *, timeout_s: float | None = None, memory_mb: int | None = None,
             config: SandboxConfig | None = None, **overrides) -> ExecResult:
    """Run `code` once in a fresh sandbox. Limits come from `config` (default `SandboxConfig()`),
    then `timeout_s`, `memory_mb` and any other `SandboxConfig` field given as a keyword.
    Never raises for anything the code does; raises `SandboxError` if no sandbox can run."""
    cfg = _make_config(config, dict(overrides, timeout_s=timeout_s, memory_mb=memory_mb))
    tier = resolve_tier(cfg)
    if tier == "http":
        return run_http(code, cfg)
    lease = UidLease() if drops_root() else None
    try:
        return execute(Proc(cfg, tier, lease.uid if lease else -1), code)
    finally:
        if lease:
            lease.release()


class _Slot:
    """One pool worker: a sandbox uid (as root) and the next runner, already started."""

    def __init__(self, cfg: SandboxConfig, tier: str):
        self.cfg, self.tier = cfg, tier
        self.lease = UidLease() if tier != "http" and drops_root() else None
        self.next: Proc | None = None
        self.closed = False
        self.warm()

    def warm(self):
        if self.tier != "http" and not self.closed:
            self.next = Proc(self.cfg, self.tier, self.lease.uid if self.lease else -1)

    def run(self, code: str, count) -> ExecResult:
        if self.tier == "http":
            return run_http(code, self.cfg)
        proc, self.next = self.next, None
        if proc is None or not proc.alive():
            count("cold_starts")  # the waiting runner was gone (or none yet): start one now
            if proc is not None:
                proc.kill()
            proc = Proc(self.cfg, self.tier, self.lease.uid if self.lease else -1)
        try:
            return execute(proc, code)
        finally:
            if proc.zombies and self.lease:
                # The code left orphans that init has not reaped yet; they still count against
                # RLIMIT_NPROC of this uid, so move to a fresh uid rather than inherit the debt.
                count("uid_rotations")
                self.lease.release()
                self.lease = UidLease()
            self.warm()

    def close(self):
        self.closed = True
        if self.next is not None:
            self.next.kill()
            self.next = None
        if self.lease:
            self.lease.release()


def _close_slots(slots: list[_Slot], executor: concurrent.futures.ThreadPoolExecutor):
    executor.shutdown(wait=True, cancel_futures=True)
    for s in slots:
        s.close()


class SandboxPool:
    """A bounded pool of warm sandbox workers; use as a context manager.

    Each worker keeps one runner started and waiting for code, so `submit` pays only for the code.
    `stats` counts results by status and how often a worker had to start a runner on demand."""

    def __init__(self, max_workers: int | None = None, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.tier = resolve_tier(self.config)
        self.max_workers = max_workers or min(8, 2 * (os.cpu_count() or 1))
        self.stats: collections.Counter = collections.Counter()
        self._stats_lock = threading.Lock()
        self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._all: list[_Slot] = []
        try:
            for _ in range(self.max_workers):
                self._all.append(_Slot(self.config, self.tier))
        except BaseException:
            for s in self._all:
                s.close()
            raise
        for s in self._all:
            self._slots.put(s)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.max_workers,
                                                               thread_name_prefix="tao_lab-sandbox")
        self._finalizer = weakref.finalize(self, _close_slots, self._all, self._executor)

    def _count(self, what: str):
        with self._stats_lock:
            self.stats[what] += 1

    def _run(self, code: str) -> ExecResult:
        slot = self._slots.get()
        try:
            res = slot.run(code, self._count)
        finally:
            self._slots.put(slot)
        self._count(res.status)
        return res

    def submit(self, code: str) -> concurrent.futures.Future[ExecResult]:
        return self._executor.submit(self._run, code)

    def map(self, codes: list[str]) -> list[ExecResult]:
        """Run all `codes` concurrently; results in the same order."""
        return [f.result() for f in [self.submit(c) for c in codes]]

    def close(self):
        self._finalizer()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc):
        self.close()
