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

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import math
import os
import pwd
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass, replace

TIERS = ("bubblewrap", "rlimits", "http")
STATUSES = ("ok", "error", "timeout", "memory", "killed")


class SandboxError(RuntimeError):
    """The sandbox itself is broken or unreachable (not the user's code); every call would fail."""


@dataclass
class ExecResult:
    """What one call produced. Built for people and for `toolcall.format_observation`."""

    status: str               # "ok" | "error" | "timeout" | "memory" | "killed"
    stdout: str               # decoded (UTF-8, invalid bytes -> U+FFFD), head kept if capped
    stderr: str               # same; the sandbox appends one plain-English line on timeout/kill
    duration_s: float         # wall time from handing the code over to the end of the process
    tier: str                 # "bubblewrap" | "rlimits" | "http": the isolation that ran it
    exit_code: int | None     # process exit code; None when killed by a signal or the timeout
    stdout_truncated: bool    # stdout exceeded max_output_bytes; the rest was dropped
    stderr_truncated: bool    # stderr exceeded max_output_bytes; the rest was dropped

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SandboxConfig:
    """Limits and isolation for one call. Defaults follow TAO-RL's reference setup (3 s per call)."""

    timeout_s: float = 3.0            # wall-clock limit; the whole process tree is killed after it
    cpu_s: float | None = None        # CPU seconds (RLIMIT_CPU); None = timeout_s + 1
    memory_mb: int = 512              # address-space cap (RLIMIT_AS) per process, in MiB
    max_output_bytes: int = 65_536    # per stream (stdout, stderr); head kept, the rest dropped
    max_file_mb: int = 16             # largest file (RLIMIT_FSIZE); also the size of bwrap's /tmp
    max_procs: int = 32               # processes the code may have at once (RLIMIT_NPROC, non-root uid)
    tier: str = "auto"                # "auto" | "bubblewrap" | "rlimits" | "http"
    http_url: str | None = None       # base URL of a SandboxFusion-style service (tier "http")
    python: str | None = None         # interpreter that runs the code; None = the workbench's own
    site_packages: bool = True        # let the code import the workbench's packages (numpy, sympy)

    def __post_init__(self):
        if self.tier not in ("auto",) + TIERS:
            raise ValueError(f"SandboxConfig.tier={self.tier!r}; use 'auto' or one of {TIERS}")
        if self.tier == "http" and not self.http_url:
            raise ValueError("SandboxConfig.tier='http' needs http_url, e.g. 'http://localhost:8080'")
        for name in ("timeout_s", "memory_mb", "max_output_bytes", "max_file_mb", "max_procs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxConfig.{name}={getattr(self, name)!r} must be > 0")
        if self.memory_mb < 64:
            raise ValueError(f"SandboxConfig.memory_mb={self.memory_mb} is below what an interpreter"
                             " needs to start; use at least 64")

    @property
    def interpreter(self) -> str:
        return self.python or sys.executable

    @property
    def cpu_limit_s(self) -> int:
        """RLIMIT_CPU takes whole seconds: round up, at least 1."""
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))


# ----------------------------------------------------------------------------------------------
# The runner: a few lines executed by the sandboxed interpreter before the user's code. It sets the
# limits on itself, drops root if asked, then blocks on stdin -- which is what lets a pool start it
# ahead of time. The code arrives as bytes and stdin is then at EOF (`input()` raises EOFError).

_RUNNER = r"""
import os, resource, signal, sys
def _on_cpu_limit(*_):
    # Die of SIGXCPU so the parent sees a CPU timeout. Under bubblewrap the runner is PID 1, which
    # the kernel does not let die of its own default-action signal: exit as 128 + SIGXCPU instead.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGXCPU)
    os._exit(128 + signal.SIGXCPU)
def _limits(cpu, mem, fsize, nproc, uid):
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                              (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0),
                              (resource.RLIMIT_NPROC, nproc, nproc)):
        if soft >= 0:
            resource.setrlimit(which, (soft, hard))
    if uid >= 0:
        os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
def _report(e, src, main):
    if isinstance(e, MemoryError):
        main.__dict__.clear()
    try:
        import linecache, traceback
        lines = src.decode("utf-8", "replace").splitlines(True)
        linecache.cache["<tool>"] = (len(src), None, lines, "<tool>")
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb)
    except BaseException:
        os.write(2, (type(e).__name__ + ": " + str(e) + "\n").encode("utf-8", "replace"))
def _run():
    _limits(*map(int, sys.argv[1:6]))
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    sys.path.extend(p for p in sys.argv[6].split(os.pathsep) if p)
    src = sys.stdin.buffer.read()
    if not src:
        os._exit(0)
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    sys.argv = [""]
    code = 0
    try:
        exec(compile(src, "<tool>", "exec"), main.__dict__)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException as e:
        _report(e, src, main)
        code = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            pass
    os._exit(code)
_run()
"""

_SANDBOX_UID_BASE = 61000         # first uid used when dropping root; no passwd entry expected
_SANDBOX_UID_COUNT = 1000         # how many uids to try
_SWEEP_ROUNDS = 200               # uid sweep: at most this many kill rounds (5 ms apart)
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
              "/etc/alternatives", "/etc/nsswitch.conf")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


# ----------------------------------------------------------------------------------------------
# Sandbox uids (only when running as root)

_uid_lock = threading.Lock()
_uids_taken: set[int] = set()


class _UidLease:
    """An unprivileged uid reserved for one worker. Claimed process-wide by a set and machine-wide by
    binding an abstract Unix socket named after it (released by the kernel if we die)."""

    def __init__(self):
        self.uid, self._sock = -1, None
        uids = range(_SANDBOX_UID_BASE, _SANDBOX_UID_BASE + _SANDBOX_UID_COUNT)
        with _uid_lock:
            in_use = _scan_uids(uids)  # skip uids with processes, even zombies (they hold NPROC)
            for uid in uids:
                if uid in _uids_taken or uid in in_use or _has_passwd_entry(uid):
                    continue
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.bind(f"\0tao_lab.sandbox.uid.{uid}")
                except OSError:  # another process holds this uid
                    sock.close()
                    continue
                self.uid, self._sock = uid, sock
                _uids_taken.add(uid)
                return
        raise SandboxError(f"no free sandbox uid in {_SANDBOX_UID_BASE}..+{_SANDBOX_UID_COUNT}; "
                           "too many sandbox workers on this machine")

    def release(self):
        if self._sock is not None:
            with _uid_lock:
                _uids_taken.discard(self.uid)
            self._sock.close()
            self._sock = None


def _drops_root() -> bool:
    """Whether runners switch to a sandbox uid: only when we are root, and only on Linux (/proc)."""
    return os.geteuid() == 0 and sys.platform.startswith("linux")


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _scan_uids(uids: range) -> dict[int, tuple[list[int], int]]:
    """For each uid in `uids` that has processes: (live pids, number of zombies), from
    /proc/<pid>/status (the owner of /proc/<pid> is root for a task that changed uid, so unusable)."""
    found: dict[int, tuple[list[int], int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                zombie = False
                for line in f:
                    if line.startswith(b"State:"):
                        zombie = line.split()[1] in (b"Z", b"X")
                    elif line.startswith(b"Uid:"):
                        uid = int(line.split()[1])
                        if uid in uids:
                            live, zombies = found.get(uid, ([], 0))
                            found[uid] = (live, zombies + 1) if zombie else (live + [int(name)], zombies)
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _sweep_uid(uid: int) -> int:
    """SIGKILL every process of the sandbox uid until none is alive. Returns how many zombies of it
    remain: orphans wait for init to reap them and still count against RLIMIT_NPROC meanwhile."""
    for _ in range(_SWEEP_ROUNDS):
        live, zombies = _scan_uids(range(uid, uid + 1)).get(uid, ([], 0))
        if not live:
            return zombies
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
    raise SandboxError(f"processes of sandbox uid {uid} survived {_SWEEP_ROUNDS} kill rounds")


# ----------------------------------------------------------------------------------------------
# Spawning one runner


@functools.lru_cache(maxsize=2)
def _site_paths(site_packages: bool) -> tuple[str, ...]:
    if not site_packages:
        return ()
    paths = sysconfig.get_paths()
    return tuple(sorted({paths["purelib"], paths["platlib"]}))


def _scrubbed_env(home: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    env.update({v: "1" for v in _THREAD_VARS})  # numpy/BLAS: one thread, small address space
    return env


def _roots_for(python: str) -> list[str]:
    """Directories a sandbox must see to run `python`: its (venv) prefix and the real installation."""
    roots = {os.path.dirname(os.path.dirname(os.path.abspath(python))),
             os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    if python == sys.executable:
        roots |= {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    roots = {r for r in roots if r not in ("/", "/usr") and not r.startswith("/usr/")}
    return sorted(r for r in roots if not any(r.startswith(o + "/") for o in roots if o != r))


def _bind_with_parents(root: str, made: set[str]) -> list[str]:
    """bwrap args binding `root` read-only at the same path. bwrap copies the mode of a bind's
    parent dirs (0700 for /root), so the parents not yet made are created 0755 first."""
    argv, parents = [], []
    d = os.path.dirname(root)
    while d not in ("/", "") and d not in made:
        parents.append(d)
        d = os.path.dirname(d)
    for p in reversed(parents):
        argv += ["--perms", "0755", "--dir", p]
        made.add(p)
    made.add(root)
    return argv + ["--ro-bind", root, root]


@functools.lru_cache(maxsize=16)
def _bwrap_argv(interpreter: str, site_packages: bool, tmp_mb: int, as_root: bool) -> tuple[str, ...]:
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--as-pid-1"]
    if as_root:  # privileged bwrap keeps all caps by default: keep only what the uid drop needs
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:                  # unprivileged bwrap needs a user namespace (also makes NPROC per-sandbox)
        argv += ["--unshare-user"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += [a for f in _ETC_FILES if os.path.exists(f) for a in ("--ro-bind", f, f)]
    extra = [p for p in _site_paths(site_packages) if not p.startswith("/usr/")]
    roots = _roots_for(interpreter) + extra
    # A venv or checkout under /tmp (e.g. a CI clone in /tmp/x) would be hidden by the private /tmp
    # below, so those roots are bound after it, on top of the tmpfs.
    under_tmp = [r for r in roots if r.startswith("/tmp/")]
    made: set[str] = {"/tmp"}
    for root in (r for r in roots if r not in under_tmp):
        argv += _bind_with_parents(root, made)
    size = str(tmp_mb << 20)  # each tmpfs is size-capped, or writing to it would fill RAM
    argv += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
             "--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
    for root in under_tmp:
        argv += _bind_with_parents(root, made)
    argv += ["--chdir", "/tmp",
             "--remount-ro", "/"]  # the skeleton bwrap built (/etc, /root, ...) becomes read-only
    return tuple(argv)


class _Proc:
    """One started runner, waiting for code on stdin."""

    def __init__(self, cfg: SandboxConfig, tier: str, uid: int):
        self.cfg, self.tier, self.uid = cfg, tier, uid
        self.workdir = None
        self.zombies = 0  # orphaned zombies of our uid left after the kill (see _Slot.run)
        if tier == "bubblewrap":
            prefix = list(_bwrap_argv(cfg.interpreter, cfg.site_packages, cfg.max_file_mb, os.geteuid() == 0))
            cwd, env = None, _scrubbed_env("/tmp")
        else:
            self.workdir = tempfile.mkdtemp(prefix="tao_lab_sandbox_")
            if uid >= 0:
                os.chown(self.workdir, uid, uid)
            prefix, cwd, env = [], self.workdir, _scrubbed_env(self.workdir)
        nproc = cfg.max_procs
        if tier == "rlimits" and uid < 0 and sys.platform.startswith("linux"):
            live, zombies = _scan_uids(range(os.getuid(), os.getuid() + 1)).get(os.getuid(), ([], 0))
            nproc += len(live) + zombies  # NPROC counts all of *your* processes here
        args = [str(cfg.cpu_limit_s), str(cfg.memory_mb << 20), str(cfg.max_file_mb << 20),
                str(nproc), str(uid), os.pathsep.join(_site_paths(cfg.site_packages))]
        argv = prefix + [cfg.interpreter, "-I", "-S", "-B", "-c", _RUNNER] + args
        try:
            self.popen = subprocess.Popen(
                argv, stdin=-1, stdout=-1, stderr=-1, cwd=cwd, env=env, start_new_session=True)
        except OSError as e:
            self._remove_workdir()
            raise SandboxError(f"cannot start the {tier} sandbox ({argv[0]}): {e}") from e

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sweep: bool = True):
        """End the runner and all it started (`sweep=False`: already done), reap it, close its
        pipes and delete its work dir."""
        if sweep:
            _kill_tree(self)
        self.popen.wait()
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None and not f.closed:
                f.close()
        self._remove_workdir()

    def _remove_workdir(self):
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# ----------------------------------------------------------------------------------------------
# Running code on a started runner


def _execute(proc: _Proc, code: str) -> ExecResult:
    cfg, p = proc.cfg, proc.popen
    cap = cfg.max_output_bytes
    bufs = {p.stdout.fileno(): bytearray(), p.stderr.fileno(): bytearray()}
    sizes = dict.fromkeys(bufs, 0)
    start = time.monotonic()
    try:
        p.stdin.write(code.encode("utf-8", "surrogateescape") or b"pass\n")
        p.stdin.close()
    except BrokenPipeError:  # the runner died while waiting; its exit status tells the story
        pass
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline, timed_out, ended_at = start + cfg.timeout_s, False, None
    while True:
        now = time.monotonic()
        if ended_at is None and p.poll() is not None:
            ended_at = now
            if proc.tier == "rlimits":  # the runner is done; a daemon it left may hold the pipes
                _kill_tree(proc)
        if ended_at is None and now >= deadline:
            timed_out, ended_at = True, now
            _kill_tree(proc)
        if ended_at is not None and (not sel.get_map() or now - ended_at > 1.0):
            break  # (the 1 s cut-off: non-root rlimits tier, an escaped daemon holds the pipe)
        if not sel.get_map():  # the code closed stdout and stderr but still runs
            try:
                p.wait(timeout=max(0.0, deadline - now))
            except subprocess.TimeoutExpired:
                pass
            continue
        for key, _ in sel.select(timeout=max(0.0, min(deadline - now, 0.05))):
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fd)
                continue
            room = cap - len(bufs[key.fd])
            if room > 0:
                bufs[key.fd] += chunk[:room]
            sizes[key.fd] += len(chunk)
    sel.close()
    rc = p.wait()
    duration = ended_at - start
    # Already killed if needed: an exited bubblewrap runner took its PID namespace with it, and the
    # rlimits tier swept its uid above. This reaps, closes the pipes, removes the work dir.
    proc.kill(sweep=False)
    (out_b, err_b), (out_n, err_n) = bufs.values(), sizes.values()  # stdout first, then stderr
    return _classify(proc, rc, timed_out, duration, out_b, err_b, out_n > cap, err_n > cap)


def _kill_tree(proc: _Proc):
    """Kill the code and everything it started. The uid sweep goes first so that the runner dies
    while its parent (bwrap) still lives to reap it, instead of lingering as an orphan zombie."""
    if proc.uid >= 0:
        proc.zombies = _sweep_uid(proc.uid)
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(proc: _Proc, rc: int, timed_out: bool, duration: float, out_b: bytes, err_b: bytes,
              out_trunc: bool, err_trunc: bool) -> ExecResult:
    cfg = proc.cfg
    stdout = out_b.decode("utf-8", "replace")
    stderr = err_b.decode("utf-8", "replace")
    if proc.tier == "bubblewrap" and rc == 1 and stderr.startswith("bwrap: ") and not stdout:
        raise SandboxError(f"bubblewrap failed to set up the sandbox: {stderr.strip()}")
    # A signal death: Popen reports -N; bubblewrap reports 128 + N (see module docstring).
    sig = -rc if rc < 0 else (rc - 128 if proc.tier == "bubblewrap" and rc > 128 else 0)
    note, exit_code = "", rc
    if timed_out:
        status, exit_code = "timeout", None
        note = f"TimeoutError: the code ran longer than {cfg.timeout_s:g} s and was stopped"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and duration >= cfg.cpu_limit_s):
        status, exit_code = "timeout", None
        note = f"TimeoutError: the code used more than {cfg.cpu_limit_s} s of CPU time and was stopped"
    elif sig:
        status, exit_code = "killed", None
        note = f"Killed by signal {_signal_name(sig)}"
    elif rc == 0:
        status = "ok"
    else:
        last = _last_line(stderr)
        status = "memory" if last.split(":", 1)[0].endswith("MemoryError") else "error"
    if note:
        stderr = (stderr if not stderr or stderr.endswith("\n") else stderr + "\n") + note + "\n"
    return ExecResult(status, stdout, stderr, round(duration, 6), proc.tier, exit_code,
                      out_trunc, err_trunc)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


# ----------------------------------------------------------------------------------------------
# The HTTP tier (SandboxFusion-style: POST /run_code)


def _run_http(code: str, cfg: SandboxConfig) -> ExecResult:
    body = json.dumps({"code": code, "language": "python", "run_timeout": cfg.timeout_s,
                       "memory_limit_MB": cfg.memory_mb}).encode()
    req = urllib.request.Request(cfg.http_url.rstrip("/") + "/run_code", data=body,
                                 headers={"Content-Type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=cfg.timeout_s + 30) as resp:
            reply = json.loads(resp.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise SandboxError(f"sandbox service at {cfg.http_url} did not answer /run_code: {e}. "
                           "Start the service or use tier='auto'") from e
    duration = time.monotonic() - start
    run = reply.get("run_result") if isinstance(reply, dict) else None
    if not isinstance(run, dict):
        raise SandboxError(f"sandbox service at {cfg.http_url} returned no run_result: {reply!r:.300}")
    cap = cfg.max_output_bytes
    out_b = str(run.get("stdout") or "").encode("utf-8", "replace")
    err_b = str(run.get("stderr") or "").encode("utf-8", "replace")
    out, err = out_b[:cap].decode("utf-8", "replace"), err_b[:cap].decode("utf-8", "replace")
    rc = run.get("return_code")
    if run.get("status") == "TimeLimitExceeded":
        status, rc = "timeout", None
        err += f"TimeoutError: the code ran longer than {cfg.timeout_s:g} s and was stopped\n"
    elif rc == 0:
        status = "ok"
    elif _last_line(err).split(":", 1)[0].endswith("MemoryError"):
        status = "memory"
    elif isinstance(rc, int) and rc < 0:
        status = "killed"
    else:
        status = "error"
    return ExecResult(status, out, err, duration, "http",
                      rc if isinstance(rc, int) else None, len(out_b) > cap, len(err_b) > cap)


# ----------------------------------------------------------------------------------------------
# Tier selection


_probe_cache: dict[tuple, str] = {}
_PROBE_CODE = "import fractions\nprint(6 * 7)\n"


def tier_status(config: SandboxConfig | None = None) -> dict[str, str]:
    """For each tier: "ok", or why it cannot run here (and how to fix that). Probes once, cached."""
    cfg = config or SandboxConfig()
    report = {}
    for tier in TIERS:
        key = (tier, cfg.interpreter, cfg.site_packages, cfg.http_url, os.geteuid())
        if key not in _probe_cache:
            _probe_cache[key] = _probe(tier, cfg)
        report[tier] = _probe_cache[key]
    return report


def available_tiers(config: SandboxConfig | None = None) -> list[str]:
    """Tiers that work on this machine (a probe call returned 42), best first."""
    return [t for t, why in tier_status(config).items() if why == "ok"]


def _probe(tier: str, cfg: SandboxConfig) -> str:
    if tier == "http":
        if not cfg.http_url:
            return "no http_url configured"
        try:
            res = _run_http(_PROBE_CODE, replace(cfg, tier="http"))
        except SandboxError as e:
            return str(e)
        return "ok" if res.ok and res.stdout.strip() == "42" else f"probe call failed: {res.stderr!r:.200}"
    if tier == "bubblewrap" and shutil.which("bwrap") is None:
        return "bwrap not found on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
    if sys.platform == "win32":
        return "needs a POSIX system"
    lease = _UidLease() if _drops_root() else None
    try:
        res = _execute(_Proc(replace(cfg, timeout_s=max(cfg.timeout_s, 10.0)), tier,
                             lease.uid if lease else -1), _PROBE_CODE)
    except SandboxError as e:
        return str(e)
    finally:
        if lease:
            lease.release()
    if res.ok and res.stdout.strip() == "42":
        return "ok"
    why = _last_line(res.stderr) or res.status
    if lease and tier == "rlimits":
        why += (f" -- as root the code runs as uid {lease.uid if lease else ''}, which cannot read "
                f"{cfg.interpreter}'s installation; set SandboxConfig(python=...) to a system Python "
                "(e.g. /usr/bin/python3), install bubblewrap, or run as a normal user")
    return f"probe call failed: {why}"


def resolve_tier(config: SandboxConfig) -> str:
    """The tier a config will use: the requested one if it works, else the first available."""
    status = tier_status(config)
    if config.tier != "auto":
        if status[config.tier] != "ok":
            raise SandboxError(f"sandbox tier {config.tier!r} cannot run here: {status[config.tier]}")
        return config.tier
    for tier in ("bubblewrap", "rlimits") + (("http",) if config.http_url else ()):
        if status[tier] == "ok":
            return tier
    raise SandboxError("no sandbox tier works on this machine: "
                       + "; ".join(f"{t}: {why}" for t, why in status.items()))


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
        return _run_http(code, cfg)
    lease = _UidLease() if _drops_root() else None
    try:
        return _execute(_Proc(cfg, tier, lease.uid if lease else -1), code)
    finally:
        if lease:
            lease.release()


class _Slot:
    """One pool worker: a sandbox uid (as root) and the next runner, already started."""

    def __init__(self, cfg: SandboxConfig, tier: str):
        self.cfg, self.tier = cfg, tier
        self.lease = _UidLease() if tier != "http" and _drops_root() else None
        self.next: _Proc | None = None
        self.closed = False
        self.warm()

    def warm(self):
        if self.tier != "http" and not self.closed:
            self.next = _Proc(self.cfg, self.tier, self.lease.uid if self.lease else -1)

    def run(self, code: str, count) -> ExecResult:
        if self.tier == "http":
            return _run_http(code, self.cfg)
        proc, self.next = self.next, None
        if proc is None or not proc.alive():
            count("cold_starts")  # the waiting runner was gone (or none yet): start one now
            if proc is not None:
                proc.kill()
            proc = _Proc(self.cfg, self.tier, self.lease.uid if self.lease else -1)
        try:
            return _execute(proc, code)
        finally:
            if proc.zombies and self.lease:
                # The code left orphans that init has not reaped yet; they still count against
                # RLIMIT_NPROC of this uid, so move to a fresh uid rather than inherit the debt.
                count("uid_rotations")
                self.lease.release()
                self.lease = _UidLease()
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
