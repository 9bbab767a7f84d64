"""Sandbox throughput: calls/s and latency per tier, one fresh sandbox per call vs a warm pool.

    .venv/bin/python benchmarks/sandbox_throughput.py            # ~1 min on 2 cores
    .venv/bin/python benchmarks/sandbox_throughput.py --n 40     # quicker

For each local tier that works here it runs the same code N times
  - "cold serial": `run_code` one call after another (starts an interpreter per call);
  - "warm serial": one call at a time into a 1-worker pool whose interpreter is already started
    and waiting (what a single rollout sees); its calls/s is 1 / mean latency;
  - "pool xW": N calls submitted at once to `SandboxPool(W)`; calls/s over the whole batch.
Columns: calls/s; latency p50/p95 = submit -> result (serial modes only: in a batch it is mostly
queueing); exec p50/p95 = `ExecResult.duration_s`, code handed over -> process ended.
The trivial workload (`print(1+1)`) measures sandbox overhead; `import numpy` shows what a typical
scientific call costs on top. Results go to benchmarks/results/sandbox_throughput.json.
As root, the rlimits tier needs an interpreter the sandbox uid can read; if the workbench's own
Python cannot be used, the system Python is (as in tests/test_sandbox.py), and the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from tao_lab.sandbox import SandboxConfig, SandboxPool, run_code, tier_status

OUT = Path(__file__).resolve().parent / "results" / "sandbox_throughput.json"
WORKLOADS = {"print(1+1)": "print(1 + 1)", "import numpy": "import numpy\nprint(numpy.__version__)"}


def tier_configs() -> dict[str, SandboxConfig]:
    """Each local tier that works here, with the config used to run it."""
    out = {}
    for tier in ("bubblewrap", "rlimits"):
        cfg = SandboxConfig(tier=tier, timeout_s=10)
        if tier_status(cfg)[tier] != "ok" and tier == "rlimits" and os.geteuid() == 0:
            system_python = shutil.which("python3", path="/usr/bin:/bin")
            cfg = replace(cfg, python=system_python) if system_python else cfg
        why = tier_status(cfg)[tier]
        if why == "ok":
            out[tier] = cfg
        else:
            print(f"skipping {tier}: {why}")
    return out


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1] if len(xs) > 1 else xs[0]


def measure_cold(code: str, cfg: SandboxConfig, n: int) -> dict:
    lat, exe = [], []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        res = run_code(code, config=cfg)
        lat.append(time.perf_counter() - t)
        exe.append(res.duration_s)
        assert res.ok, res.stderr
    return summarize("cold serial", lat, exe, time.perf_counter() - t0, n)


def measure_pool(code: str, cfg: SandboxConfig, n: int, workers: int) -> dict:
    with SandboxPool(max_workers=workers, config=cfg) as pool:
        pool.map([code] * workers)  # let every worker start its next interpreter
        time.sleep(0.5)
        t0 = time.perf_counter()
        results = pool.map([code] * n)
        wall = time.perf_counter() - t0
        assert all(r.ok for r in results), [r.stderr for r in results if not r.ok][:1]
        row = summarize(f"pool x{workers}", None, [r.duration_s for r in results], wall, n)
        row["cold_starts"] = pool.stats["cold_starts"]
    return row


def measure_pool_serial(code: str, cfg: SandboxConfig, n: int) -> dict:
    """One call at a time through a 1-worker pool with a pause: the latency of a warm call."""
    with SandboxPool(max_workers=1, config=cfg) as pool:
        lat, exe = [], []
        for _ in range(n):
            time.sleep(0.05)  # the next interpreter is started and waiting
            t = time.perf_counter()
            res = pool.submit(code).result()
            lat.append(time.perf_counter() - t)
            exe.append(res.duration_s)
            assert res.ok, res.stderr
    return summarize("warm serial", lat, exe, sum(lat), n)


def summarize(mode: str, lat: list[float] | None, exe: list[float], wall: float, n: int) -> dict:
    ms = lambda xs, q: round(1000 * percentile(xs, q), 1) if xs else None  # noqa: E731
    return {"mode": mode, "n": n, "calls_per_s": round(n / wall, 1),
            "latency_p50_ms": ms(lat, 50), "latency_p95_ms": ms(lat, 95),
            "exec_p50_ms": ms(exe, 50), "exec_p95_ms": ms(exe, 95)}


def machine() -> dict:
    bwrap = shutil.which("bwrap")
    return {
        "platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "euid": os.geteuid(),
        "bwrap": subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()
        if bwrap else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="calls per pool measurement")
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4], help="pool sizes to measure")
    ap.add_argument("--out", default=str(OUT), help="result JSON (default: the saved result)")
    args = ap.parse_args()
    info, rows = machine(), []
    print(f"{'tier':<11} {'workload':<13} {'mode':<12} {'calls':>5} {'calls/s':>8}  "
          f"{'lat50':>6} {'lat95':>6}  {'exe50':>6} {'exe95':>6}   (ms)")
    for tier, cfg in tier_configs().items():
        for name, code in WORKLOADS.items():
            n_serial = max(10, args.n // 5) if name == "print(1+1)" else max(5, args.n // 20)
            n_pool = args.n if name == "print(1+1)" else max(10, args.n // 5)
            measured = [measure_cold(code, cfg, n_serial), measure_pool_serial(code, cfg, n_serial)]
            measured += [measure_pool(code, cfg, n_pool, w) for w in args.workers]
            for row in measured:
                rows.append({"tier": tier, "workload": name,
                             "python": cfg.python or sys.executable, **row})
                lat = (f"{row['latency_p50_ms']:>6.1f} {row['latency_p95_ms']:>6.1f}"
                       if row["latency_p50_ms"] is not None else f"{'-':>6} {'-':>6}")
                print(f"{tier:<11} {name:<13} {row['mode']:<12} {row['n']:>5} {row['calls_per_s']:>8.1f}"
                      f"  {lat}  {row['exec_p50_ms']:>6.1f} {row['exec_p95_ms']:>6.1f}", flush=True)
    info["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    print(f"load average (1 min) {info['load_avg_1m_at_start']} -> {info['load_avg_1m_at_end']}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
