"""Sandbox uids for running as root: one unprivileged uid per concurrent call, and the cleanup of
everything that uid left behind."""

from __future__ import annotations

import os
import pwd
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time

from .common import SandboxError


_SANDBOX_UID_BASE = 61000         # first uid used when dropping root; no passwd entry expected
_SANDBOX_UID_COUNT = 1000         # how many uids to try
_SWEEP_ROUNDS = 200               # uid sweep: at most this many kill rounds (2 ms apart)
_KILL = shutil.which("kill", path="/usr/bin:/bin")  # procps/util-linux `kill -9 -1`: kill(-1, SIGKILL)

# ----------------------------------------------------------------------------------------------
# Sandbox uids (only when running as root)

_uid_lock = threading.Lock()
_uids_taken: set[int] = set()


class UidLease:
    """An unprivileged uid reserved for one worker. Claimed process-wide by a set and machine-wide by
    binding an abstract Unix socket named after it (released by the kernel if we die)."""

    def __init__(self):
        self.uid, self._sock = -1, None
        uids = range(_SANDBOX_UID_BASE, _SANDBOX_UID_BASE + _SANDBOX_UID_COUNT)
        with _uid_lock:
            in_use = scan_uids(uids)  # skip uids with processes, even zombies (they hold NPROC)
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


def drops_root() -> bool:
    """Whether runners switch to a sandbox uid: only when we are root, and only on Linux (/proc)."""
    return os.geteuid() == 0 and sys.platform.startswith("linux")


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def scan_uids(uids: range) -> dict[int, tuple[list[int], int]]:
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


def sweep_uid(uid: int) -> int:
    """SIGKILL every process of the sandbox uid until a full pass over /proc finds none alive.
    Returns how many zombies of it remain: orphans wait for init to reap them and still count
    against RLIMIT_NPROC meanwhile.

    Listing /proc and then killing what was listed races a fork-then-exit chain (the child born
    between the two steps is never listed, and the round looks empty). So each round first sends
    kill(-1, SIGKILL) *as the sandbox uid* (`kill_all_of`): the kernel signals every process of
    that uid in one pass under its task-list lock, and a fork that races it does not yield a live
    child. The /proc pass after it only confirms; the pid-by-pid kill is the fallback."""
    for _ in range(_SWEEP_ROUNDS):
        helper_ran = kill_all_of(uid)
        live, zombies = scan_uids(range(uid, uid + 1)).get(uid, ([], 0))
        if not live:
            return zombies
        if not helper_ran:
            for pid in live:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.002)  # SIGKILLed tasks may take a moment to leave the live state
    raise SandboxError(f"processes of sandbox uid {uid} survived {_SWEEP_ROUNDS} kill rounds")


def kill_all_of(uid: int) -> bool:
    """kill(-1, SIGKILL) sent by a short-lived helper running as `uid`, so it reaches exactly the
    processes of that uid (kill(-1) spares the sender). subprocess switches the helper's uid in C
    between fork and exec, which is safe in a threaded pool (a Python fork is not). False if the
    helper could not run."""
    if uid < _SANDBOX_UID_BASE:  # never, ever as root or a real user: kill(-1) would hit all of theirs
        raise ValueError(f"kill_all_of refuses uid {uid}: not a sandbox uid")
    if _KILL is None:
        return False
    try:
        subprocess.run([_KILL, "-9", "-1"], user=uid, group=uid, extra_groups=[], env={},
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       close_fds=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return True
