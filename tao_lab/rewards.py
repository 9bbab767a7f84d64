"""Answer extraction, answer verification and reward functions (pure: no model, no tensors).

Reading order: config → counters → extraction → verification → group-wise reward math → `score`.

What is covered
- `extract_boxed(text)`: the content of the last complete `\\boxed{...}` (or `\\fbox{...}`) with
  nested and escaped braces; the brace-less form `\\boxed 5` (used in some MATH solutions) is read up
  to the next space or `$`. An empty `\\boxed{}` is not an answer (a model echoing the instruction
  "put the answer in \\boxed{}" has not answered). An unclosed `\\boxed{12` (a truncated episode) is
  skipped and the previous complete one counts.
- `extract_answer(text, style)`: the gold answer of a GSM8K solution (after the last `####`,
  thousands commas removed) or of a MATH solution (its last `\\boxed{}`).
- `verify(pred, gold)`: a numeric fast path, then math_verify for symbolic equivalence under a time
  limit. The fast path reads plain numbers: `1,234`, `$18`, `18.0`, `50%` / `50\\%` (the number as
  written: 50, not 0.5), `-3`, `\\frac{1}{2}`, `3/4`, `1e5`, `\\text{42}`. Two integers must be equal
  exactly (answers here reach 80 digits; a float comparison would accept near misses); otherwise
  equality is within `rel_tol` (Python float noise such as 2.9999999999999996, and 0.3333333 for
  1/3, pass). Only when a side is not a plain number is math_verify called.
- A time limit that works from any thread. math_verify's own timeout uses `signal.alarm`, which
  raises when called outside the main thread (and would replace a SIGALRM handler the host set).
  We call math_verify with its timeouts disabled (`parsing_timeout=None`, `timeout_seconds=None`)
  inside one long-lived child process and kill that process at the deadline (see `VerifierProcess`
  for why a thread-level interruption is not enough). So `verify` may be called from a
  ThreadPoolExecutor. A timeout or any failure of the verifier scores 0 and is counted in
  `RewardStats`, never raised.
- Rewards (`RewardConfig`): correctness 1/0 on the last boxed answer; a format penalty when there is
  none; ET-Agent's efficiency-calibrated reward (METHODS.md §3) with σ annealing, as pure group-wise
  numpy functions; ToolExpander's +0.01 self-exemplifying bonus [recon].
- `score(trajs, cfg, step)`: sets `traj.reward` and returns rewards plus metrics (accuracy,
  no-answer rate, answers read from tool output, verifier timeouts/errors, ...).

What is not covered
- Symbolic checks from many threads are serialised through the one child process.
- POSIX only: the reply is awaited with `select` on a pipe, which Windows does not support.
- The child is a plain subprocess with a memory cap, not a sandbox: it only ever sees answer
  strings, which math_verify parses (it does not eval them).
- Pass@k / Avg@k estimators live in advantages.py; behaviour metrics (Effi, ...) in methods/.
- Answers that are words ("Tuesday") are compared by math_verify's string fallback only.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from tao_lab.methods.et_agent import annealed_sigma, et_agent_rewards
from tao_lab.methods.toolexpander import has_self_example

if TYPE_CHECKING:  # the verifier child imports this module; keep it free of pandas & co.
    from tao_lab.records import Trajectory

# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class RewardConfig:
    """How a finished trajectory becomes a scalar reward."""

    answer_in_tool_stdout: bool = True  # a \boxed{} printed by the tool counts as the answer (METHODS §0)
    verify_timeout_s: float = 5.0       # wall-clock budget per symbolic check; over it scores 0, counted
    rel_tol: float = 1e-6               # numeric fast path tolerance when either side is not an integer
    format_penalty: float = 0.0         # subtracted when no \boxed{} answer is found (ET-Agent f_fmt: 1.0)
    efficiency: bool = False            # ET-Agent: reward = correct · f_tool · f_len − penalty (METHODS §3)
    sigma_tool: float = 0.2             # ET-Agent σ of the tool-call-count term (code default 0.2)
    sigma_len: float = 0.5              # ET-Agent σ of the group-z-scored length term (code default 0.5)
    anneal_steps: int = 0               # T in σ_eff = σ·max(0, (T-step)/(T-1)); 0 = σ stays constant
    self_example_bonus: float = 0.0     # [recon] ToolExpander: added when the text has an <example> section

    def __post_init__(self) -> None:
        from tao_lab import checks

        checks.number(self, "verify_timeout_s", lo=0, hi=3600, lo_open=True)
        checks.number(self, "rel_tol", lo=0, hi=1)
        # subtracted, so >= 0; ET-Agent's f_fmt = -1 is format_penalty=1.0
        checks.number(self, "format_penalty", lo=0, hi=100)
        checks.number(self, "sigma_tool", lo=0)
        checks.number(self, "sigma_len", lo=0)
        checks.number(self, "anneal_steps", lo=0, integer=True)
        if self.anneal_steps == 1:
            raise ValueError("RewardConfig.anneal_steps=1: must be 0 (no annealing) or >= 2 (σ reaches 0 at step T)")
        checks.number(self, "self_example_bonus", lo=0, hi=1)
        checks.flag(self, "answer_in_tool_stdout", "efficiency")

    @classmethod
    def et_agent(cls, anneal_steps: int = 0, **overrides) -> "RewardConfig":
        """ET-Agent's reward as in its public code: efficiency terms on, f_fmt = -1 when unanswered."""
        return cls(efficiency=True, format_penalty=1.0, anneal_steps=anneal_steps, **overrides)


# ----------------------------------------------------------------------------------------------
# Counters: every verifier fallback, timeout and failure is counted here, never raised.


@dataclass
class RewardStats:
    """Thread-safe counters filled by `verify` and `score`."""

    numeric: int = 0             # decided by the numeric fast path
    symbolic: int = 0            # sent to math_verify
    timeouts: int = 0            # math_verify ran past the deadline (scored 0)
    errors: int = 0              # math_verify raised (scored 0)
    unparsed: int = 0            # math_verify could not read one side (scored 0)
    error_types: dict = field(default_factory=lambda: defaultdict(int))  # exception name -> count
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, k: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + k)

    def add_error(self, exc: BaseException) -> None:
        self.add_error_name(type(exc).__name__)

    def add_error_name(self, name: str) -> None:
        with self._lock:
            self.errors += 1
            self.error_types[name] += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"numeric": self.numeric, "symbolic": self.symbolic, "timeouts": self.timeouts,
                    "errors": self.errors, "unparsed": self.unparsed}


# ----------------------------------------------------------------------------------------------
# Extraction

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _boxed_candidates(text: str) -> list[str]:
    """Contents of every complete \\boxed / \\fbox in order (may include empty strings)."""
    out = []
    for m in _BOXED_RE.finditer(text):
        i = m.end()
        j = i
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            depth, k = 0, j
            while k < len(text):
                c = text[k]
                if c == "\\":          # escaped char (\{, \}, \\): never a structural brace
                    k += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        out.append(text[j + 1:k].strip())
                        break
                k += 1
            # falling off the end means the brace never closed (truncated): not an answer
        elif j > i and j < len(text):
            # brace-less form `\boxed 5`: one token, up to whitespace or `$`
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                out.append(tok.group(0).rstrip(".,;"))
    return out


def extract_boxed(text: str | None) -> str | None:
    """Content of the last complete, non-empty \\boxed{...} in `text`; None when there is none."""
    if not text:
        return None
    found = [c for c in _boxed_candidates(text) if c]
    return found[-1] if found else None


def _strip_thousands(s: str) -> str:
    return s.replace(",", "") if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", s) else s


def extract_answer(solution: str, style: str = "auto") -> str | None:
    """Gold answer of a reference solution.

    style: "gsm8k" — text after the last `####`, thousands commas removed ("1,450,000" -> "1450000");
    "math" — the last \\boxed{} of the solution; "auto" — `####` if present, else the last box.
    Returns None when the solution has no such marker.
    """
    if style not in ("auto", "gsm8k", "math"):
        raise ValueError(f"extract_answer style must be 'auto', 'gsm8k' or 'math', got {style!r}")
    if style in ("auto", "gsm8k") and "####" in solution:
        ans = solution.rsplit("####", 1)[1].strip()
        return _strip_thousands(ans) or None
    if style == "gsm8k":
        return None
    return extract_boxed(solution)


# ----------------------------------------------------------------------------------------------
# Verification


def parse_number(s: str) -> Fraction | None:
    """A plain number written in `s` as an exact Fraction, else None (see the module doc)."""
    s = s.strip().replace("\u2212", "-")
    for a, b in (("\\!", ""), ("\\,", ""), ("\\ ", ""), ("{,}", ","), ("\\$", ""), ("$", ""),
                 ("\\%", ""), ("%", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
        s = s.replace(a, b)
    m = re.fullmatch(r"\\(?:text|mathrm|textbf|mathbf)\{(.*)\}", s.strip())
    s = (m.group(1) if m else s).strip()
    s = _strip_thousands(s)
    try:
        if m := re.fullmatch(r"([+-]?)\\frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}", s):
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) == "-" else value
        if re.fullmatch(r"[+-]?\d+\s*/\s*\d+", s):
            num, den = s.split("/")
            return Fraction(int(num), int(den))
        if m := re.fullmatch(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?", s):
            if m.group(1) and abs(int(m.group(1))) > 1000:   # 1e999999999 would build a huge int
                return None
            return Fraction(s)
    except (ValueError, ZeroDivisionError):    # > 4300 digits (int limit) or a zero denominator
        return None
    return None


def numbers_equal(pred: Fraction, gold: Fraction, rel_tol: float = 1e-6) -> bool:
    """Exact for two integers; within `rel_tol` relative error otherwise."""
    if pred == gold:
        return True
    if pred.denominator == 1 and gold.denominator == 1:
        return False
    return abs(pred - gold) <= rel_tol * max(abs(pred), abs(gold))


# Symbolic checks run in one long-lived child process (`_verifier_child`), not in this process:
# - a deadline must be able to stop *any* computation. sympy turns `2^{99999999999}` into CPython
#   bigint work in C, which a signal can interrupt only in the main thread and an exception injected
#   into a worker thread cannot interrupt at all; killing a process always works;
# - an interrupted sympy computation can leave sympy's caches inconsistent (we saw later, unrelated
#   checks return False); a killed child takes that state with it;
# - a runaway allocation is capped by the child's address-space limit, not by the host's RAM.
# Cost: ~1 s to start the child once (numpy + sympy imports), ~0.1 ms of pipe I/O per check.
# Checks from many threads are serialised through one lock (the numeric fast path, which most
# answers take, never gets here).

_CHILD_MEMORY_BYTES = 4 << 30   # address-space cap of the verifier child (POSIX)
_CHILD_STARTUP_S = 120.0        # time allowed for the child to import sympy; not part of any deadline


def _symbolic_equal(pred: str, gold: str) -> bool | None:
    """math_verify equivalence with its signal timeouts off; None when a side does not parse."""
    import math_verify
    g = math_verify.parse("\\boxed{" + gold + "}", parsing_timeout=None, raise_on_error=True)
    p = math_verify.parse("\\boxed{" + pred + "}", parsing_timeout=None, raise_on_error=True)
    if not g or not p:
        return None
    return bool(math_verify.verify(g, p, timeout_seconds=None, raise_on_error=True))


def _verifier_child() -> None:
    """Main loop of the verifier child: one JSON request per stdin line, one JSON reply per line."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything sympy prints goes to stderr, never into the reply channel
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY_BYTES, _CHILD_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # no such limit on this OS: the deadline still holds
        pass
    logging.disable(logging.WARNING)  # math_verify warns that its own timeout is off: on purpose
    _symbolic_equal("1", "1")         # import and warm up before saying ready
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = {"same": _symbolic_equal(req["pred"], req["gold"])}
        except Exception as e:  # noqa: BLE001 — reported to the parent, which counts it
            reply = {"error": type(e).__name__, "message": str(e)[:300]}
        out.write(json.dumps(reply) + "\n")


class VerifierProcess:
    """The child process behind `verify`'s symbolic path: started lazily, killed on a deadline."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python    # interpreter of the child; must have math_verify
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = os.getpid()  # a forked copy of this process must not share the parent's pipes

    def _start(self) -> None:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parent.parent)  # so the child imports this tao_lab
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [self.python, "-c", "from tao_lab.rewards import _verifier_child; _verifier_child()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1, env=env)
        line = self._readline(_CHILD_STARTUP_S)
        if not line or not json.loads(line).get("ready"):
            code = self._kill()
            raise RuntimeError(f"the math_verify child process did not start (exit code {code}); check "
                               f"that `{self.python} -c 'import math_verify'` works")

    def _readline(self, timeout_s: float) -> str | None:
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        return self._proc.stdout.readline() if ready else None

    def _kill(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            return proc.wait()
        return None

    def check(self, pred: str, gold: str, timeout_s: float) -> dict:
        """{"same": bool | None} or {"timeout": True} or {"error": name, "message": ...}."""
        with self._lock:
            if self._pid != os.getpid():           # we are a fork: the child belongs to the parent
                self._proc, self._pid = None, os.getpid()
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._proc.stdin.write(json.dumps({"pred": pred, "gold": gold}) + "\n")
            self._proc.stdin.flush()
            line = self._readline(timeout_s)
            if line is None:
                self._kill()
                return {"timeout": True}
            if not line:  # EOF: the child died (e.g. killed by the memory cap)
                code = self._kill()
                return {"error": "VerifierDied", "message": f"exit code {code}"}
            return json.loads(line)

    def close(self) -> None:
        with self._lock:
            self._kill()


_VERIFIER = VerifierProcess()
atexit.register(_VERIFIER.close)


def verify(pred: str | None, gold: str | None, timeout_s: float = 5.0,
           stats: RewardStats | None = None, rel_tol: float = 1e-6) -> bool:
    """Is `pred` the same answer as `gold`? Never raises on odd input: failures score False, counted."""
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return False
    stats = stats if stats is not None else RewardStats()
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        stats.add("numeric")
        return numbers_equal(p, g, rel_tol)
    stats.add("symbolic")
    try:
        reply = _VERIFIER.check(pred, gold, timeout_s)
    except (OSError, RuntimeError, ValueError) as e:  # could not start / talk to the child
        stats.add_error(e)
        return False
    if reply.get("timeout"):
        stats.add("timeouts")
        return False
    if "error" in reply:
        stats.add_error_name(reply["error"])
        return False
    if reply["same"] is None:
        stats.add("unparsed")
        return False
    return bool(reply["same"])


# ----------------------------------------------------------------------------------------------
# Scoring trajectories


def find_answer(traj: Trajectory, use_tool_output: bool = True) -> tuple[str | None, str | None, int]:
    """The trajectory's final answer: (answer, where, n_observations_not_found).

    `traj.text` interleaves model text and the exact observation texts of `traj.tool_calls`. We walk
    it in order and keep the last boxed answer; `where` is "model" or "tool". A box inside an
    observation counts only with `use_tool_output`; if the observation was truncated, the call's
    full stdout is read instead. Observations that cannot be located in the text are counted and
    their stdout is read only when nothing else answered.
    """
    text = traj.text or ""
    answer, where, pos, lost = None, None, 0, []
    for call in traj.tool_calls:
        i = text.find(call.observation, pos) if call.observation else -1
        if i < 0:
            lost.append(call)
            continue
        if (a := extract_boxed(text[pos:i])) is not None:
            answer, where = a, "model"
        if use_tool_output and (a := extract_boxed(call.observation) or extract_boxed(call.stdout)):
            answer, where = a, "tool"
        pos = i + len(call.observation)
    if (a := extract_boxed(text[pos:])) is not None:
        answer, where = a, "model"
    if answer is None and use_tool_output:
        for call in reversed(lost):
            if (a := extract_boxed(call.stdout)) is not None:
                answer, where = a, "tool"
                break
    return answer, where, len(lost)


def mark_correct(trajs: Sequence[Trajectory], cfg: RewardConfig | None = None) -> int:
    """Set Trajectory.correct from the verifier on trajectories that have no verdict yet (after a
    method's own reward_fn: correctness never comes from a shaped reward). Returns how many it checked."""
    cfg = cfg or RewardConfig()
    todo = [t for t in trajs if t.correct is None]
    for t in todo:
        ans, _, _ = find_answer(t, cfg.answer_in_tool_stdout)
        t.correct = bool((t.answer or "").strip()) and bool(verify(ans, t.answer, cfg.verify_timeout_s,
                                                                   rel_tol=cfg.rel_tol))
    return len(todo)


def score(trajs: Sequence[Trajectory], cfg: RewardConfig | None = None,
          step: int = 0) -> tuple[list[float], dict[str, float]]:
    """Set `traj.reward` on every trajectory; return (rewards, metrics).

    Groups for the ET-Agent terms are trajectories sharing `group_id`. `step` drives σ annealing.
    """
    cfg = cfg or RewardConfig()
    stats = RewardStats()
    n = len(trajs)
    correct = np.zeros(n)
    no_answer = np.zeros(n, dtype=bool)
    from_tool = np.zeros(n, dtype=bool)
    missing_gold, lost_obs = 0, 0
    for i, t in enumerate(trajs):
        ans, where, lost = find_answer(t, cfg.answer_in_tool_stdout)
        lost_obs += lost
        no_answer[i] = ans is None
        from_tool[i] = where == "tool"
        if not (t.answer or "").strip():
            missing_gold += 1       # an upstream bug, but one bad sample must not kill the run
            continue
        correct[i] = verify(ans, t.answer, cfg.verify_timeout_s, stats, cfg.rel_tol)

    sigma_tool = annealed_sigma(cfg.sigma_tool, step, cfg.anneal_steps)
    sigma_len = annealed_sigma(cfg.sigma_len, step, cfg.anneal_steps)
    f_tool, f_len = np.ones(n), np.ones(n)
    if cfg.efficiency:
        groups: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(trajs):
            groups[t.group_id].append(i)
        rewards = np.zeros(n)
        for idx in groups.values():
            r, ft, fl = et_agent_rewards(
                correct[idx], [trajs[i].n_tool_calls for i in idx],
                [len(trajs[i].token_ids) for i in idx],   # completion tokens incl. tool output, as the code
                no_answer[idx], sigma_tool, sigma_len, cfg.format_penalty)
            rewards[idx], f_tool[idx], f_len[idx] = r, ft, fl
    else:
        rewards = correct - cfg.format_penalty * no_answer

    examples = np.array([has_self_example(t.text, t.prompt_text) for t in trajs], dtype=bool)
    if cfg.self_example_bonus:
        rewards = rewards + cfg.self_example_bonus * examples

    out = [float(r) for r in rewards]
    for t, r, c in zip(trajs, out, correct):
        t.reward, t.correct = r, bool(c)

    def rate(x: np.ndarray) -> float:
        return float(x.mean()) if n else 0.0

    v = stats.as_dict()
    metrics = {
        "reward/n": n,
        "reward/mean": rate(rewards),
        "reward/accuracy": rate(correct),
        "reward/no_answer_rate": rate(no_answer),
        "reward/answer_from_tool_rate": rate(from_tool),
        "reward/self_example_rate": rate(examples),
        "reward/verify_numeric": v["numeric"],
        "reward/verify_symbolic": v["symbolic"],
        "reward/verifier_timeouts": v["timeouts"],
        "reward/verifier_errors": v["errors"],
        "reward/verifier_unparsed": v["unparsed"],
        "reward/missing_gold": missing_gold,
        "reward/observations_not_in_text": lost_obs,
    }
    if cfg.efficiency:
        metrics.update({"reward/sigma_tool_eff": sigma_tool, "reward/sigma_len_eff": sigma_len,
                        "reward/f_tool_mean": rate(f_tool), "reward/f_len_mean": rate(f_len)})
    return out, metrics
