"""Thread policy: how many CPU threads torch may use, chosen once per process from the free cores.

Why this exists: torch starts with one OpenMP thread per core. On a laptop or a shared machine,
one other busy process is enough for OpenMP's spin-waiting barriers to collapse a rollout 10-30x
(measured in issue 17: 209 -> 6 tok/s with 2 threads beside a busy loop at higher priority, while
1 thread kept 156 tok/s). On a quiet machine the extra thread wins (209 vs 153 tok/s), so the count
is not a constant: it is the number of cores actually free when the first model is built.

Order of precedence (the first that is set wins, `describe()["source"]` says which):
  1. the `threads=` argument of `apply()` (config / CLI `--threads`)
  2. the environment variable TAO_LAB_THREADS
  3. OMP_NUM_THREADS, when the user set it (torch already honours it; we keep it, not override it)
  4. automatic: cores in this process's affinity mask minus the cores other processes keep busy,
     sampled from /proc/stat over a short window (the 1-minute load average as fallback).

`apply()` is idempotent: the first call decides and prints one line on stdout; later calls return
the same decision (an explicit, different `threads=` re-applies and is recorded). It must run before
the first matmul, because torch.set_num_interop_threads is refused once parallel work has started;
that refusal is caught and counted in `describe()`, never silent.
"""
from __future__ import annotations

import os
import sys
import time

ENV_VAR = "TAO_LAB_THREADS"
SAMPLE_S = 0.2          # /proc/stat window: long enough to see a busy loop, short enough for startup

_decision: dict | None = None


def affinity_cores() -> int:
    """Cores this process may run on (a container or `taskset` limit counts, os.cpu_count does not)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not Linux
        return os.cpu_count() or 1


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None where it is unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)   # idle + iowait
    total = sum(fields[:8])                                      # guest time is already in user
    return total - idle, total


def busy_cores_elsewhere(window_s: float = SAMPLE_S) -> tuple[float, str]:
    """Cores kept busy by OTHER processes now, and how it was measured ('proc_stat' or 'loadavg')."""
    ncpu = os.cpu_count() or 1
    start, own0, t0 = _cpu_jiffies(), time.process_time(), time.monotonic()
    if start is None:
        try:
            return max(0.0, os.getloadavg()[0] - 1.0), "loadavg"   # -1: the caller itself
        except OSError:
            return 0.0, "none"
    time.sleep(window_s)
    end, own1, t1 = _cpu_jiffies(), time.process_time(), time.monotonic()
    busy, total = end[0] - start[0], end[1] - start[1]
    if total <= 0:
        return 0.0, "proc_stat"
    machine_busy = busy / total * ncpu                  # cores busy over the window, all processes
    own = (own1 - own0) / max(t1 - t0, 1e-6)           # cores this process used meanwhile
    return max(0.0, machine_busy - own), "proc_stat"


def choose(threads: int | None = None) -> dict:
    """Decide the thread count without applying it. Returns the record `describe()` stores."""
    cores = affinity_cores()
    record = {"cores_affinity": cores, "busy_elsewhere": None, "measured_by": None}
    if threads is not None:
        n, source = int(threads), "argument"
    elif os.environ.get(ENV_VAR, "").strip():
        n, source = _parse_env(ENV_VAR), ENV_VAR
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        n, source = _parse_env("OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    else:
        busy, how = busy_cores_elsewhere()
        record.update(busy_elsewhere=round(busy, 2), measured_by=how)
        # A core counts as taken when another process kept it more than half busy.
        n, source = max(1, cores - int(round(busy))), "auto"
    if n < 1:
        raise ValueError(f"threads={n} (from {source}); it must be an integer >= 1")
    record.update(threads=min(n, cores) if source == "auto" else n, source=source)
    return record


def _parse_env(name: str) -> int:
    raw = os.environ[name].strip()
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}; it must be an integer >= 1") from None


def apply(threads: int | None = None, *, verbose: bool = True) -> dict:
    """Choose (first call) and set torch's intra- and inter-op thread counts. Returns describe()."""
    global _decision
    if _decision is not None and (threads is None or threads == _decision["threads"]):
        return describe()
    import torch

    record = choose(threads)
    torch.set_num_threads(record["threads"])
    record["interop_set"] = True
    try:
        torch.set_num_interop_threads(record["threads"])
    except RuntimeError:
        # torch refuses once any parallel work ran (e.g. a notebook re-applying); intra-op still set.
        record["interop_set"] = False
    record["torch_threads"] = torch.get_num_threads()
    record["applied_calls"] = (_decision or {}).get("applied_calls", 0) + 1
    _decision = record
    if verbose:
        busy = "" if record["busy_elsewhere"] is None else f", {record['busy_elsewhere']} busy elsewhere"
        print(f"tao_lab: {record['threads']} torch thread(s) ({record['source']}; "
              f"{record['cores_affinity']} core(s){busy}; set {ENV_VAR} to override)", file=sys.stdout)
    return describe()


def describe() -> dict:
    """The decision in force, for a run's config.json; {} before the first apply()."""
    return dict(_decision) if _decision else {}


def _reset_for_tests() -> None:
    global _decision
    _decision = None
