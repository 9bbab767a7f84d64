"""The bubblewrap tier: the bwrap command line that builds the sandbox's filesystem and namespaces."""

from __future__ import annotations

import functools
import os
import sys

from .common import site_paths


_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
              "/etc/alternatives", "/etc/nsswitch.conf")


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


def _etc_args() -> list[str]:
    """The few /etc files an interpreter reads. A symlink (/etc/localtime -> /usr/share/zoneinfo/..)
    is recreated as a symlink: bound, it would be bound from its target, and /proc/self/mountinfo
    would show that host path as the mount's root."""
    argv = []
    for f in _ETC_FILES:
        if os.path.islink(f):
            argv += ["--symlink", os.readlink(f), f]
        elif os.path.exists(f):
            argv += ["--ro-bind", f, f]
    return argv


@functools.lru_cache(maxsize=16)
def bwrap_argv(interpreter: str, site_packages: bool, tmp_mb: int, as_root: bool) -> tuple[str, ...]:
    argv = ["bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--as-pid-1"]
    # No `--disable-userns`: it needs `--unshare-user`, which as root maps only uid 0 (the drop to the
    # sandbox uid then fails) or, with `--uid`, maps that uid to host root (RLIMIT_NPROC stops
    # binding). The runner's seccomp filter refuses nested user namespaces on every tier instead.
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
    argv += ["--perms", "0755", "--dir", "/etc"] + _etc_args()
    extra = [p for p in site_paths(site_packages) if not p.startswith("/usr/")]
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
