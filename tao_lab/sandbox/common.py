"""Types and limits shared by every tier: the result, the config, the error, and small helpers."""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 3.0  # [code] TAO-RL: 3 s per tool call; the one source of the tool timeout default

TIERS = ("bubblewrap", "rlimits", "http")
STATUSES = ("ok", "error", "timeout", "memory", "killed")


class SandboxError(RuntimeError):
    """The sandbox itself is broken or unreachable (not the user's code); every call would fail."""


class SandboxWarning(UserWarning):
    """The tier that will run model code protects less than the caller may assume (see TIER_CAVEATS)."""


# The project's task files carry the gold answers: model code that reads them can hack the reward.
# Every place tasks.DATA_DIR may resolve to (tasks.py sits above the sandbox and is not imported
# here): the checkout's data/ and an installed wheel's <prefix>/share/tao_lab/data.
_PACKAGE = Path(__file__).resolve().parents[1]
_WHEEL_DATA = Path(sys.prefix) / "share" / "tao_lab" / "data"
TASK_DATA_DIRS = tuple(str(p) for p in (_PACKAGE.parent / "data", _WHEEL_DATA) if p.is_dir())

# One line per tier for people choosing a tier (notebooks, CLI): what the tier does NOT protect.
TIER_CAVEATS = {
    "bubblewrap": "no network, no host files beyond the Python installation; shares the host kernel",
    "rlimits": "model code can reach the network and read every host file its uid can read (the task"
               " files are hidden only when the workbench runs as root); as a normal user it runs as you",
    "http": "isolation is whatever the remote service provides",
}


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

    timeout_s: float = DEFAULT_TIMEOUT_S           # wall-clock limit; the whole process tree is killed after it
    cpu_s: float | None = None        # CPU seconds (RLIMIT_CPU); None = timeout_s + 1
    memory_mb: int = 512              # address-space cap (RLIMIT_AS) per process, in MiB
    max_output_bytes: int = 65_536    # per stream (stdout, stderr); head kept, the rest dropped
    max_file_mb: int = 16             # largest file (RLIMIT_FSIZE); also the size of bwrap's /tmp
    max_procs: int = 32               # processes the code may have at once (RLIMIT_NPROC, non-root uid)
    tier: str = "auto"                # "auto" | "bubblewrap" | "rlimits" | "http"
    http_url: str | None = None       # base URL of a SandboxFusion-style service (tier "http")
    python: str | None = None         # interpreter that runs the code; None = the workbench's own
    site_packages: bool = True        # let the code import the workbench's packages (numpy, sympy)
    hidden_paths: tuple[str, ...] | None = None  # rlimits tier as root: paths the code cannot see;
                                      # None = the project's task files (TASK_DATA_DIRS)
    http_grace_s: float = 5.0         # http tier: the service gets timeout_s + this to answer in full

    def __post_init__(self):
        if self.tier not in ("auto",) + TIERS:
            raise ValueError(f"SandboxConfig.tier={self.tier!r}; use 'auto' or one of {TIERS}")
        if self.tier == "http" and not self.http_url:
            raise ValueError("SandboxConfig.tier='http' needs http_url, e.g. 'http://localhost:8080'")
        for name in ("timeout_s", "memory_mb", "max_output_bytes", "max_file_mb", "max_procs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxConfig.{name}={getattr(self, name)!r} must be > 0")
        if not self.http_grace_s >= 0:  # (also refuses nan)
            raise ValueError(f"SandboxConfig.http_grace_s={self.http_grace_s!r} must be >= 0")
        if self.hidden_paths is not None:
            if isinstance(self.hidden_paths, str) or not all(
                    isinstance(p, str) and os.path.isabs(p) for p in self.hidden_paths):
                raise ValueError(f"SandboxConfig.hidden_paths={self.hidden_paths!r} must be a tuple of"
                                 " absolute paths")
            self.hidden_paths = tuple(self.hidden_paths)
        if self.memory_mb < 64:
            raise ValueError(f"SandboxConfig.memory_mb={self.memory_mb} is below what an interpreter"
                             " needs to start; use at least 64")

    @property
    def interpreter(self) -> str:
        return self.python or sys.executable

    @property
    def hidden(self) -> tuple[str, ...]:
        """The paths hidden from the code (rlimits tier as root), resolved, existing ones only."""
        paths = TASK_DATA_DIRS if self.hidden_paths is None else self.hidden_paths
        return tuple(sorted({os.path.realpath(p) for p in paths if os.path.exists(p)}))

    @property
    def cpu_limit_s(self) -> int:
        """RLIMIT_CPU takes whole seconds: round up, at least 1."""
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.timeout_s + 1))



@functools.lru_cache(maxsize=2)
def site_paths(site_packages: bool) -> tuple[str, ...]:
    if not site_packages:
        return ()
    paths = sysconfig.get_paths()
    return tuple(sorted({paths["purelib"], paths["platlib"]}))


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""
