"""The runner: the program every local sandbox (bubblewrap, rlimits) starts with, before any code.

`runner.Proc` runs this file's text as `python -I -S -B -c <text> ARGS` (so nothing from the
workbench is imported; importing this module runs nothing). In order, the runner

1. sets its rlimits (CPU, address space, file size, no core, processes);
2. as root in the rlimits tier: takes a private mount namespace and covers the hidden paths (the
   task files with their gold answers) -- only root may mount, so this comes before the uid drop;
3. on Linux: sets NO_NEW_PRIVS (a setuid binary gains nothing) and installs a small seccomp filter
   that refuses new user namespaces (`unshare`/`clone` with CLONE_NEWUSER), the way out of every
   limit above;
4. as root: switches to the unprivileged sandbox uid;
5. writes one byte, b"R" (or b"U": all set up but step 2, refused -- root without CAP_SYS_ADMIN,
   as in a default Docker container; the workbench warns), to the status pipe and closes it -- the
   only channel through which the workbench learns that the sandbox was set up. It is closed
   before the code is read, so the code can neither write to it nor take the byte back: whatever
   the code prints or exits with, the call is an ordinary result, and a runner that dies before
   step 5 is a broken tier;
6. blocks on stdin for the code (what lets a pool start it ahead of time), runs it, reports.

ARGS: cpu_s mem_bytes fsize_bytes nproc uid status_fd site_paths hidden_paths (paths joined by
os.pathsep; uid -1 = keep the current uid; hidden_paths empty = hide nothing).
"""

import os
import resource
import signal
import sys

# Linux constants (uapi headers). [code] syscall numbers per architecture: (unshare, clone, clone3).
_SYSCALLS = {"x86_64": (0xC000003E, 272, 56, 435), "aarch64": (0xC00000B7, 97, 220, 435)}
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS, _SECCOMP_MODE_FILTER = 22, 38, 2
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_EPERM, _ENOSYS = 1, 38


def _on_cpu_limit(*_):
    # Die of SIGXCPU so the parent sees a CPU timeout. Under bubblewrap the runner is PID 1, which
    # the kernel does not let die of its own default-action signal: exit as 128 + SIGXCPU instead.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGXCPU)
    os._exit(128 + signal.SIGXCPU)


def _limits(cpu, mem, fsize, nproc):
    for which, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1), (resource.RLIMIT_AS, mem, mem),
                              (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0),
                              (resource.RLIMIT_NPROC, nproc, nproc)):
        if soft >= 0:
            resource.setrlimit(which, (soft, hard))


def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ctypes, rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _hide(paths):
    """Cover each path in a private mount namespace: an empty, read-only, mode-0 tmpfs over a
    directory, /dev/null over a file. Needs root (CAP_SYS_ADMIN); the sandbox uid it then drops to
    cannot unmount them (no capability, and the filter below refuses a user namespace)."""
    ctypes, libc = _libc()
    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_bind, ms_rec, ms_private = 1, 2, 4, 8, 4096, 16384, 1 << 18
    _check(ctypes, libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Without this, our covers would propagate back into the host's shared mounts.
    _check(ctypes, libc.mount(b"none", b"/", None, ms_rec | ms_private, None), "mount --make-rprivate /")
    for p in paths:
        b = os.fsencode(p)
        if os.path.isdir(p):
            rc = libc.mount(b"tmpfs", b, b"tmpfs", ms_rdonly | ms_nosuid | ms_nodev | ms_noexec,
                            b"mode=000,size=4k")
        else:
            rc = libc.mount(b"/dev/null", b, None, ms_bind, None)
        _check(ctypes, rc, f"hide {p}")


def _seccomp_program(machine):
    """The filter as (code, jt, jf, k) tuples: a foreign syscall ABI (i386, x32) kills; clone3 gets
    ENOSYS (its flags sit in memory a filter cannot read; libc then falls back to clone); unshare and
    clone with CLONE_NEWUSER in their first argument get EPERM; everything else is allowed."""
    arch, unshare, clone, clone3 = _SYSCALLS[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    return [
        (ld, 0, 0, 4),                                   # 0: A = seccomp_data.arch
        (jeq, 1, 0, arch),                               # 1: our ABI? -> 3
        (ret, 0, 0, _RET_KILL_PROCESS),                  # 2
        (ld, 0, 0, 0),                                   # 3: A = seccomp_data.nr
        (jge, 8, 0, 0x40000000),                         # 4: x32 numbers -> 13 (kill)
        (jeq, 6, 0, clone3),                             # 5: -> 12 (ENOSYS)
        (jeq, 1, 0, unshare),                            # 6: -> 8
        (jeq, 0, 2, clone),                              # 7: -> 8, else -> 10 (allow)
        (ld, 0, 0, 16),                                  # 8: A = low word of args[0] (little-endian)
        (jset, 1, 0, _CLONE_NEWUSER),                    # 9: -> 11 (EPERM)
        (ret, 0, 0, _RET_ALLOW),                         # 10
        (ret, 0, 0, _RET_ERRNO | _EPERM),                # 11
        (ret, 0, 0, _RET_ERRNO | _ENOSYS),               # 12
        (ret, 0, 0, _RET_KILL_PROCESS),                  # 13
    ]


def _no_new_privs_and_userns():
    ctypes, libc = _libc()
    ul = ctypes.c_ulong
    _check(ctypes, libc.prctl(_PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0)), "PR_SET_NO_NEW_PRIVS")
    machine = os.uname().machine
    if machine not in _SYSCALLS:  # no syscall table for it: NO_NEW_PRIVS only (see the docstring)
        return

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    insns = _seccomp_program(machine)
    table = (Insn * len(insns))(*[Insn(*i) for i in insns])
    prog = Prog(len(insns), table)
    _check(ctypes, libc.prctl(_PR_SET_SECCOMP, ul(_SECCOMP_MODE_FILTER), ctypes.byref(prog), ul(0), ul(0)),
           "seccomp filter")


def _report(e, src, main):
    if isinstance(e, MemoryError):
        main.__dict__.clear()
    try:
        import linecache
        import traceback
        lines = src.decode("utf-8", "replace").splitlines(True)
        linecache.cache["<tool>"] = (len(src), None, lines, "<tool>")
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        traceback.print_exception(type(e), e, tb)
    except BaseException:
        os.write(2, (type(e).__name__ + ": " + str(e) + "\n").encode("utf-8", "replace"))


def _set_up(argv):
    cpu, mem, fsize, nproc, uid, status_fd = map(int, argv[:6])
    site, hidden = argv[6], argv[7]
    _limits(cpu, mem, fsize, nproc)
    hid = True
    if hidden:
        try:
            _hide(hidden.split(os.pathsep))
        except PermissionError:  # root without CAP_SYS_ADMIN (a default Docker container)
            hid = False
    if sys.platform.startswith("linux"):
        _no_new_privs_and_userns()
    if uid >= 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    sys.path.extend(p for p in site.split(os.pathsep) if p)
    os.write(status_fd, b"R" if hid else b"U")  # U: set up, but the hidden paths could not be hidden
    os.close(status_fd)


def _run(argv):
    _set_up(argv)
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


if __name__ == "__main__":
    _run(sys.argv[1:])
