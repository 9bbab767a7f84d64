"""Run untrusted model-written Python in a child process, with limits, and say which isolation ran it.

A policy in tool-integrated RL writes code; the rollout runs it and feeds the output back. That code
is untrusted (a sampled model writes infinite loops, memory bombs, `os.system(...)`), so it never runs
in the workbench's own process. Every call returns an `ExecResult`; a failure of the *code* (crash,
exception, timeout, limit) never raises. A failure of the *sandbox itself* (bubblewrap broken, the
HTTP service down) raises `SandboxError`, because it would make every later call fail too.

Tiers, best first; `tier="auto"` takes the first that passes a probe call, and `ExecResult.tier`
always says which one ran:

1. ``bubblewrap`` -- Linux, Debian package `bubblewrap`. New PID, network, IPC and UTS namespaces;
   a read-only root holding only `/usr`, the Python installation it runs on and a few `/etc` files
   (read-only binds), fresh `/proc`, a read-only `/dev`, and two private size-capped tmpfs, `/tmp`
   (the working directory) and `/dev/shm`, the only writable places; no host home, no repository,
   no host `/tmp`. The runner is PID 1 of its namespace (`--as-pid-1`), so when it exits or is
   killed every process it started dies with it, and `--die-with-parent` ties it to the workbench.
   Plus the rlimits below.
2. ``rlimits`` -- any POSIX. A fresh interpreter per call in its own session (`start_new_session`)
   with RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_CORE=0, a scrubbed environment and
   a fresh temporary working directory that is deleted afterwards; on timeout the whole process
   group is killed.
3. ``http`` -- a client for a SandboxFusion-style service (`POST {http_url}/run_code`). Isolation is
   whatever that service provides.

Running as root (containers, CI): RLIMIT_NPROC does not bind to uid 0, and root may write anywhere
and signal anything. So when the workbench runs as root, the runner drops to an unprivileged
*sandbox uid* (61000 + slot, no passwd entry, one per concurrent call, claimed across processes with
an abstract socket) after setting its limits and before reading the code. That makes the fork-bomb
cap (RLIMIT_NPROC per uid), the file permissions and the "cannot kill the parent" property real, and
lets the rlimits tier sweep *every* process of that uid after each call (a `setsid` daemon cannot
escape a uid). Under bubblewrap the runner keeps only CAP_SETUID/CAP_SETGID for that switch (all
capabilities are gone after it). In the rlimits tier the switch needs an interpreter that the
sandbox uid can read; an interpreter inside root's private home (pyenv in /root) cannot be, so
there the rlimits tier is reported unavailable (point `SandboxConfig.python` at a system Python,
install bubblewrap, or run as a normal user) rather than silently running model code as root.

What is covered
  - wall-clock timeout (`timeout_s`) with the process tree killed, CPU time (RLIMIT_CPU), address
    space (RLIMIT_AS -> `MemoryError` -> status "memory"), file size (RLIMIT_FSIZE), core dumps off;
  - fork bombs: RLIMIT_NPROC under a non-root uid (counted per user namespace under unprivileged
    bubblewrap -- checked on Linux 6.18 --, per sandbox uid as root); the PID namespace / uid sweep
    removes them afterwards;
  - output: each stream capped at `max_output_bytes` (head kept, `*_truncated` set, the rest drained
    and dropped), non-UTF-8 bytes decoded with U+FFFD;
  - background processes: none outlives its call (PID namespace; uid sweep in the rlimits tier as
    root);
  - environment: scrubbed (no host secrets in env vars), `python -I -S` (no user site, no
    `PYTHON*` variables, no `.pth` files); the workbench's site-packages is added read-only so
    numpy/sympy import;
  - bubblewrap only: no network, no host files beyond the read-only binds, no view of host
    processes.

What is not covered (be careful)
  - rlimits tier: NO network isolation and NO filesystem isolation beyond Unix permissions: code
    reads whatever the running uid can read. As a normal (non-root) user the code runs as *you*: it
    can read your home, write where you can, signal your processes, and a `setsid` daemon escapes
    the process-group kill; RLIMIT_NPROC then counts all your processes (we allow your current
    count + `max_procs`). On macOS RLIMIT_AS is not enforced, so there is no memory cap.
  - no seccomp filter, no cgroup: CPU share, disk bandwidth and kernel attack surface are not
    limited; RLIMIT_AS caps virtual, not resident, memory per process (max_procs x memory_mb total).
  - the code may read the Python installation and site-packages it is given (not secret, but not
    nothing), and anything world-readable under /usr and the bound /etc files.
  - output still sitting in the interpreter's buffer when a timeout kills it is lost (stdout to a
    pipe is block-buffered, as in a plain `python script.py | cat`).
  - under bubblewrap the runner is PID 1, so signals it sends itself with a default action (e.g.
    `os.kill(os.getpid(), SIGTERM)`) are ignored by the kernel; a program that exits with a code
    above 128 is reported as killed by signal (code - 128), which is how bubblewrap reports signals.

Speed: a pool keeps one interpreter per worker already started and waiting for code on stdin, so a
call pays only for the code itself; `python -I -S` starts in ~12 ms vs ~45 ms with site processing.
See benchmarks/sandbox_throughput.py for measured calls/s.
"""

from .common import (DEFAULT_TIMEOUT_S, STATUSES, TASK_DATA_DIRS, TIER_CAVEATS, TIERS, ExecResult,
                     SandboxConfig, SandboxError, SandboxWarning)
from .pool import SandboxPool, available_tiers, resolve_tier, run_code, tier_status

__all__ = ["DEFAULT_TIMEOUT_S", "STATUSES", "TASK_DATA_DIRS", "TIER_CAVEATS", "TIERS", "ExecResult",
           "SandboxConfig", "SandboxError", "SandboxWarning", "SandboxPool", "available_tiers",
           "resolve_tier", "run_code", "tier_status"]
