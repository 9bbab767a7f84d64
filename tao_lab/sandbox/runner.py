"""The local runner (tiers bubblewrap and rlimits): start an interpreter that sets its limits and
waits for code, hand it the code, collect capped output, classify how it ended."""

from __future__ import annotations

import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from .bubblewrap import bwrap_argv
from .common import (ExecResult, SandboxConfig, SandboxError, SandboxWarning, last_line, signal_name,
                     site_paths)
from .uids import scan_uids, sweep_uid


# The runner (child.py) runs as `python -I -S -B -c <its text>`: no file of the workbench is opened
# by the sandboxed interpreter, and importing child.py runs nothing.
_RUNNER = Path(__file__).with_name("child.py").read_text()
_warned_unhidden = False
_SETUP_LIMIT_S = 10.0  # how long a runner may take to set the sandbox up (a loaded machine is slow)

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _scrubbed_env(home: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    env.update({v: "1" for v in _THREAD_VARS})  # numpy/BLAS: one thread, small address space
    return env



class Proc:
    """One started runner, waiting for code on stdin. `status` is the read end of the pipe through
    which the runner (and only the runner: see child.py) says that the sandbox was set up."""

    def __init__(self, cfg: SandboxConfig, tier: str, uid: int):
        self.cfg, self.tier, self.uid = cfg, tier, uid
        self.workdir = None
        self.zombies = 0  # orphaned zombies of our uid left after the kill (see _Slot.run)
        hidden = ""
        if tier == "bubblewrap":
            prefix = list(bwrap_argv(cfg.interpreter, cfg.site_packages, cfg.max_file_mb, os.geteuid() == 0))
            cwd, env = None, _scrubbed_env("/tmp")
        else:
            self.workdir = tempfile.mkdtemp(prefix="tao_lab_sandbox_")
            if uid >= 0:
                os.chown(self.workdir, uid, uid)
                hidden = os.pathsep.join(cfg.hidden)  # only root can mount (see child._hide)
            prefix, cwd, env = [], self.workdir, _scrubbed_env(self.workdir)
        nproc = cfg.max_procs
        if tier == "rlimits" and uid < 0 and sys.platform.startswith("linux"):
            live, zombies = scan_uids(range(os.getuid(), os.getuid() + 1)).get(os.getuid(), ([], 0))
            nproc += len(live) + zombies  # NPROC counts all of *your* processes here
        self.status, status_w = os.pipe()
        args = [str(cfg.cpu_limit_s), str(cfg.memory_mb << 20), str(cfg.max_file_mb << 20),
                str(nproc), str(uid), str(status_w), os.pathsep.join(site_paths(cfg.site_packages)), hidden]
        argv = prefix + [cfg.interpreter, "-I", "-S", "-B", "-c", _RUNNER] + args
        try:
            self.popen = subprocess.Popen(argv, stdin=-1, stdout=-1, stderr=-1, cwd=cwd, env=env,
                                          start_new_session=True, pass_fds=(status_w,))
        except OSError as e:
            os.close(self.status)
            self._remove_workdir()
            raise SandboxError(f"cannot start the {tier} sandbox ({argv[0]}): {e}") from e
        finally:
            os.close(status_w)  # the runner holds the only write end now
        os.set_blocking(self.status, False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def was_set_up(self) -> bool:
        """Whether the runner reported the sandbox set up (call after it ended). Warns once per
        process if it could not hide the task files (see child.py, step 5)."""
        global _warned_unhidden
        try:
            byte = os.read(self.status, 1)
        except OSError:  # (BlockingIOError: nothing written, and a write end still open)
            return False
        if byte == b"U" and not _warned_unhidden:
            _warned_unhidden = True
            warnings.warn(f"the {self.tier} sandbox could not hide {', '.join(self.cfg.hidden)} from model"
                          " code (mounting needs CAP_SYS_ADMIN): it can read the task files with their"
                          " answers; use the bubblewrap tier", SandboxWarning, stacklevel=2)
        return byte in (b"R", b"U")

    def kill(self, sweep: bool = True):
        """End the runner and all it started (`sweep=False`: already done), reap it, close its
        pipes and delete its work dir."""
        if sweep:
            kill_tree(self)
        self.popen.wait()
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if f is not None and not f.closed:
                f.close()
        if self.status >= 0:
            os.close(self.status)
            self.status = -1
        self._remove_workdir()

    def _remove_workdir(self):
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


# ----------------------------------------------------------------------------------------------
# Running code on a started runner


def await_setup(proc: Proc):
    """Wait for the runner's status byte before handing over the code. Reading it first means the
    code never runs while the byte is still in the pipe (as a normal user the code could otherwise
    reach the pipe through /proc and take it), and the time limit starts with the code, not with the
    interpreter. No byte -- the runner died or hung while setting up -- raises `SandboxError`."""
    limit = max(_SETUP_LIMIT_S, proc.cfg.timeout_s)
    ready, _, _ = select.select([proc.status], [], [], limit)
    if ready and proc.was_set_up():
        return
    kill_tree(proc)
    try:
        _, err_b = proc.popen.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        err_b = b""
    proc.kill(sweep=False)
    how = f"exit status {proc.popen.returncode}" if ready else f"not set up after {limit:g} s"
    raise SandboxError(f"the {proc.tier} sandbox failed to start ({how}): {err_tail(err_b or b'')}")


def execute(proc: Proc, code: str) -> ExecResult:
    await_setup(proc)
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
                kill_tree(proc)
        if ended_at is None and now >= deadline:
            timed_out, ended_at = True, now
            kill_tree(proc)
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
    # Whatever happened from here on was the code's doing: an ordinary result, never an exception.
    return _classify(proc, rc, timed_out, duration, out_b, err_b, out_n > cap, err_n > cap)


def err_tail(err_b: bytes, n: int = 600) -> str:
    text = err_b.decode("utf-8", "replace").strip()
    return text if len(text) <= n else "..." + text[-n:]


def kill_tree(proc: Proc):
    """Kill the code and everything it started. The uid sweep goes first so that the runner dies
    while its parent (bwrap) still lives to reap it, instead of lingering as an orphan zombie."""
    if proc.uid >= 0:
        proc.zombies = sweep_uid(proc.uid)
    try:
        os.killpg(proc.popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _classify(proc: Proc, rc: int, timed_out: bool, duration: float, out_b: bytes, err_b: bytes,
              out_trunc: bool, err_trunc: bool) -> ExecResult:
    cfg = proc.cfg
    stdout = out_b.decode("utf-8", "replace")
    stderr = err_b.decode("utf-8", "replace")
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
        note = f"Killed by signal {signal_name(sig)}"
    elif rc == 0:
        status = "ok"
    else:
        last = last_line(stderr)
        status = "memory" if last.split(":", 1)[0].endswith("MemoryError") else "error"
    if note:
        stderr = (stderr if not stderr or stderr.endswith("\n") else stderr + "\n") + note + "\n"
    return ExecResult(status, stdout, stderr, round(duration, 6), proc.tier, exit_code,
                      out_trunc, err_trunc)
