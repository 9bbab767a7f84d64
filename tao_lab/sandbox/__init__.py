"""Run untrusted model-written Python in a child process, with limits, and say which isolation ran it.

A policy in tool-integrated RL writes code; the rollout runs it and feeds the output back. That code
is untrusted (a sampled model writes infinite loops, memory bombs, `os.system(...)`), so it never runs
in the workbench's own process. Every call returns an `ExecResult`; a failure of the *code* (crash,
exception, timeout, limit) never raises. A failure of the *sandbox itself* (bubblewrap broken, the
HTTP service down) raises `SandboxError`, because it would make every later call fail too.

Tiers, best first; `tier="auto"` takes the first that passes a probe call, and `ExecResult.tier`
always says which one ran (`TIER_CAVEATS` has one line per tier on what it does not protect;
choosing the rlimits tier warns once per process with a `SandboxWarning`):

1. ``bubblewrap`` -- Linux, Debian package `bubblewrap`. New PID, network, IPC and UTS namespaces;
   a read-only root holding only `/usr`, the Python installation it runs on and a few `/etc` files
   (read-only binds; symlinked ones recreated as symlinks), fresh `/proc`, a read-only `/dev`, and
   two private size-capped tmpfs, `/tmp` (the working directory) and `/dev/shm`, the only writable
   places; no host home, no repository (so no task files), no host `/tmp`. The runner is PID 1 of
   its namespace (`--as-pid-1`), so when it exits or is killed every process it started dies with
   it, and `--die-with-parent` ties it to the workbench. Plus everything the rlimits tier does.
2. ``rlimits`` -- any POSIX. A fresh interpreter per call in its own session (`start_new_session`)
   with RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_CORE=0, a scrubbed environment and
   a fresh temporary working directory that is deleted afterwards; on timeout the whole process
   group is killed. On Linux, NO_NEW_PRIVS and a seccomp filter (below).
3. ``http`` -- a client for a SandboxFusion-style service (`POST {http_url}/run_code`). Isolation is
   whatever that service provides. One deadline (`timeout_s + http_grace_s`) bounds the whole
   exchange; the reply is read in pieces and dropped past a cap (`http.reply_cap`).

The runner (child.py) sets the sandbox up in the sandboxed interpreter itself, then writes one byte
to a status pipe and closes it; the workbench reads that byte before it sends the code. That byte is
the only way a tier can be reported broken: a runner that ends (or hangs) without it raises
`SandboxError`; once it has come, nothing the code prints or exits with (say `sys.exit("bwrap:
...")`) is more than an ordinary result. (`timeout_s` starts when the code is sent.) On Linux
(x86_64, aarch64) the runner sets NO_NEW_PRIVS (setuid binaries gain nothing) and installs a seccomp
filter that refuses `unshare`/`clone` with CLONE_NEWUSER (nested user namespaces, the way around
the uid and mount rules), answers `clone3` with ENOSYS (libc falls back to `clone`) and kills a
foreign syscall ABI (i386, x32). Other architectures get NO_NEW_PRIVS only.

Running as root (containers, CI): RLIMIT_NPROC does not bind to uid 0, and root may write anywhere
and signal anything. So when the workbench runs as root, the runner drops to an unprivileged
*sandbox uid* (61000 + slot, no passwd entry, one per concurrent call, claimed across processes with
an abstract socket) after setting its limits and before reading the code. That makes the fork-bomb
cap (RLIMIT_NPROC per uid), the file permissions and the "cannot kill the parent" property real, and
lets the rlimits tier sweep *every* process of that uid after each call: kill(-1, SIGKILL) sent *as
that uid* (a short-lived `kill -9 -1` helper), which the kernel delivers to all of them in one pass
that a racing fork cannot slip through, then /proc is checked until a full pass finds none alive (a
`setsid` daemon or a fork-then-exit chain cannot escape a uid). Also as root, the rlimits runner
takes a private mount namespace before the drop and covers `SandboxConfig.hidden_paths` (default:
the project's task files with their gold answers, `TASK_DATA_DIRS`) with empty mode-0 mounts. Under
bubblewrap the runner keeps only CAP_SETUID/CAP_SETGID for the switch (all capabilities are gone
after it). In the rlimits tier the switch needs an interpreter that the sandbox uid can read; an
interpreter inside root's private home (pyenv in /root) cannot be, so there the rlimits tier is
reported unavailable (point `SandboxConfig.python` at a system Python, install bubblewrap, or run
as a normal user) rather than silently running model code as root.

What is covered
  - wall-clock timeout (`timeout_s`) with the process tree killed, CPU time (RLIMIT_CPU), address
    space (RLIMIT_AS -> `MemoryError` -> status "memory"), file size (RLIMIT_FSIZE), core dumps off;
  - fork bombs: RLIMIT_NPROC under a non-root uid (counted per user namespace under unprivileged
    bubblewrap -- checked on Linux 6.18 --, per sandbox uid as root); the PID namespace / uid sweep
    removes them afterwards;
  - output: each stream capped at `max_output_bytes` (head kept, `*_truncated` set, the rest drained
    and dropped), non-UTF-8 bytes decoded with U+FFFD;
  - background processes: none outlives its call (PID namespace; kill(-1) as the sandbox uid in the
    rlimits tier as root);
  - environment: scrubbed (no host secrets in env vars), `python -I -S` (no user site, no
    `PYTHON*` variables, no `.pth` files); the workbench's site-packages is added read-only so
    numpy/sympy import;
  - a tier failure is told apart from the code's failure by the runner's status byte alone.

What is NOT protected, per tier (be careful)
  - bubblewrap:
    - the host kernel is shared: beyond the small seccomp filter, every syscall is open (kernel
      attack surface); no cgroup, so CPU share, disk bandwidth and resident memory are not limited
      (RLIMIT_AS caps virtual memory per process: max_procs x memory_mb in total);
    - the code reads the Python installation and site-packages it is given and anything under
      /usr and the bound /etc files (not secret, but not nothing); /proc/self/mountinfo names the
      bound paths (e.g. the venv's location) and the host's block device, not what lies around them;
    - the runner is PID 1, so signals it sends itself with a default action (e.g.
      `os.kill(os.getpid(), SIGTERM)`) are ignored by the kernel; a program that exits with a code
      above 128 is reported as killed by signal (code - 128), which is how bubblewrap reports signals.
  - rlimits (all of the above, and):
    - NO network isolation: the code can reach the network, the host's loopback services included;
    - NO filesystem isolation beyond Unix permissions: the code reads every file its uid can read.
      As root, only the `hidden_paths` (the project's task files) are covered: other copies of the
      task files (another checkout, an export, a run directory's records) stay readable;
    - as a normal (non-root) user the code runs as *you*: it can read your home **and the project's
      task files with their gold answers** (`data/*.jsonl`: a reward-hacking path), write where
      you can, signal your processes, and a `setsid` daemon escapes the process-group kill (there is
      no sandbox uid to sweep); RLIMIT_NPROC then counts all your processes (we allow your current
      count + `max_procs`);
    - on macOS RLIMIT_AS is not enforced (no memory cap), and there is no NO_NEW_PRIVS or filter.
  - http: whatever the service does not do. `cpu_limit_s` is sent but SandboxFusion ignores it
    (only `run_timeout` and `memory_limit_MB` are its fields); the service sees the code in clear.
  - all local tiers: output still sitting in the interpreter's buffer when a timeout kills it is
    lost (stdout to a pipe is block-buffered, as in a plain `python script.py | cat`).

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
