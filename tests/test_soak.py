"""The soak tier (issue 13, "A soak test of your own"): a few-step training run whose tool code is
hostile on every call, on each local sandbox tier, SIGKILLed at random points and resumed.

tests/soak_worker.py is the killable training process (its docstring lists the hostile variants:
a fork -> setsid daemon chain exec-ing `sleep TOKEN`, 3 MB floods, NUL and invalid UTF-8 on both
streams, an unclosed fence, a forged `bwrap: ...` runner message; the model's own text carries NUL
and control bytes). Per tier the worker is SIGKILLed three times (KILL_PLAN), each time resumed
by a fresh worker (`Trainer.resume`, what `tao-lab resume` runs): twice after the attempt's first
finished step plus U(0, 1) x that step's duration (seeded), so the kill lands anywhere in a step --
rollout, tool calls, update, the step's commit --, and once as soon as a checkpoint's temp folder
appears, when the step's metrics line and file are written and its checkpoint is not, so the resume
must roll that step back and redo it exactly once. Checked afterwards:
  - no `sleep TOKEN` process is left (what a kill left is swept when the next attempt claims its
    sandbox uids: sandbox/uids.py, as root);
  - metrics steps are exactly [1..N] and every line is strict JSON;
  - step files are [1..N], `RunStore.problems() == []`, every one reads, every tool call ran on the
    tier asked for, and each hostile variant got an ordinary result (never a SandboxError);
  - every checkpoint verifies (manifest), with a readable state of its step and a readable RNG;
  - per step, (task id, group, sample, full text) equals an uninterrupted in-process run with the
    same seed: the prompts, the sampled variants and every byte fed back are the same.
Plus the defect the soak found: a workbench SIGKILLed in the middle of a call left the code's
daemon running as its sandbox uid for good (both tiers, as root); now the next claim sweeps it.

Marked `soak` (excluded from `make test-fast`); budget ~120 s on 2 quiet cores.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import soak_worker as W
from tao_lab import checkpoint as ckpt
from tao_lab.records import RunStore
from train_helpers import one_thread  # noqa: F401

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("one_thread")]

STEPS = 5
# per attempt: kill at a seeded random point in a step, twice; then once in a checkpoint write
KILL_PLAN = ("random", "random", "checkpoint")
SEED = 13
WORKER = Path(W.__file__)
# unique per session, so a leftover from any other run of the suite is never counted as ours
TOKEN = f"{random.Random().randrange(10**5, 10**6)}.{os.getpid()}"
TIERS = ("bubblewrap", "rlimits")          # the local tiers; http needs a service (none here)


def sleepers(token: str) -> list[int]:
    """Pids of live `sleep TOKEN` processes."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", token.encode()]:
                    found.append(int(name))
        except OSError:
            continue
    return found


def gone(pids: list[int], token: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while set(pids) & set(sleepers(token)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(autouse=True)
def no_daemon_outlives_the_test():
    """Even a failing test leaves no `sleep TOKEN` behind (after its own checks ran)."""
    yield
    for pid in sleepers(TOKEN):
        os.kill(pid, signal.SIGKILL)


def unusable(tier: str) -> str | None:
    """Why the soak cannot run on `tier` here, or None."""
    from tao_lab.sandbox import SandboxConfig, tier_status

    if tier == "rlimits" and os.geteuid() != 0:
        return "as a normal user the rlimits tier has no sandbox uid to sweep: daemons escape (documented)"
    python = W.SYSTEM_PYTHON if tier == "rlimits" else None
    why = tier_status(SandboxConfig(python=python))[tier]
    return None if why == "ok" else f"the {tier} tier cannot run here: {why}"


def require(tier: str) -> None:
    if unusable(tier):
        pytest.skip(unusable(tier))


def episodes(run: Path) -> dict[int, list[tuple]]:
    store = RunStore(run)
    return {s: [(t.task_id, t.group_id, t.sample_idx, t.text) for t in store.read_step(s)] for s in store.steps()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process, on the first local tier that works."""
    from tao_lab.trainer import Trainer

    run = tmp_path_factory.mktemp("soak_ref") / "run"
    model, tok, tasks = W.build(TOKEN)
    for tier in [t for t in TIERS if not unusable(t)]:
        with W.sandbox_pool(tier) as pool, Trainer(W.config(STEPS), run, model=model, tok=tok, tasks=tasks,
                           reward_fn=W.variant_reward, pool=pool) as tr:
            tr.train()
        return episodes(run)
    pytest.skip("no local sandbox tier works here")


class Attempt:
    """One worker process and its `READY` / `STEP s` lines, timestamped by a reader thread."""

    def __init__(self, run: Path, tier: str, mode: str, log: Path):
        env = dict(os.environ, TAO_LAB_THREADS="1", PYTHONPATH=os.pathsep.join(
            [str(WORKER.parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.err = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(run), tier, TOKEN, str(STEPS), mode],
                                     stdout=subprocess.PIPE, stderr=self.err, env=env, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.steps: list[int] = []
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))
        self.lines.put((time.monotonic(), None))

    def wait_for(self, prefix: str, timeout: float = 120.0) -> float | None:
        """When the next line starting with `prefix` came (None: the worker ended first)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            try:
                t, line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line from the worker within {timeout:g} s") from None
            if line is None:
                self.ended = True
                return None
            if line.startswith("STEP"):
                self.steps.append(int(line.split()[1]))
            if line.startswith(prefix):
                return t
        return None

    def finish(self, timeout: float = 180.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.wait_for("\0", timeout=10)   # drain the STEP lines still queued, up to the end
        self.err.close()
        return rc


def kill_at_random(a: Attempt, rng: random.Random) -> str | None:
    """SIGKILL after the attempt's first finished step + U(0, 1) x that step's duration."""
    ready = a.wait_for("READY")
    first = a.wait_for("STEP") if ready is not None else None
    if first is None:
        return None
    frac = rng.random()
    time.sleep(frac * (first - ready))
    if a.proc.poll() is not None:
        return None
    a.proc.send_signal(signal.SIGKILL)
    return f"step {a.steps[-1] + 1} at {frac:.2f} of a step"


def kill_in_checkpoint_write(a: Attempt, run: Path) -> str | None:
    """SIGKILL as soon as a checkpoint's temp folder appears: the step's metrics line and file are
    written, its checkpoint is not, so the resume must roll the step back and redo it once."""
    cdir = run / "checkpoints"
    before = {p.name for p in cdir.iterdir()}
    if a.wait_for("READY") is None:
        return None
    while a.proc.poll() is None:
        new = [n for n in os.listdir(cdir) if n.startswith(".tmp-step_") and n not in before]
        if new:
            a.proc.send_signal(signal.SIGKILL)
            return f"writing {new[0][5:16]}"
        time.sleep(0.001)
    return None


def soak(tier: str, run: Path, log: Path) -> dict:
    """Train STEPS steps in killable workers, killed as KILL_PLAN says, then resumed to the end.
    Returns the figures."""
    rng = random.Random(f"{SEED}-{tier}")
    fig = {"tier": tier, "kills": [], "attempts": 0, "leftovers_after_kill": 0, "steps_committed": 0,
           "steps_rolled_back": 0}
    mode, t0 = "train", time.monotonic()
    while True:
        assert fig["attempts"] <= len(KILL_PLAN), f"the worker keeps dying: {fig}; see {log}"
        a = Attempt(run, tier, mode, log)
        plan = KILL_PLAN[fig["attempts"]] if fig["attempts"] < len(KILL_PLAN) else None
        fig["attempts"] += 1
        try:
            if plan == "random":
                where = kill_at_random(a, rng)
            elif plan == "checkpoint":
                where = kill_in_checkpoint_write(a, run)
            else:
                where = None
            rc = a.finish()
        finally:
            if a.proc.poll() is None:
                a.proc.kill()
                a.proc.wait()
        fig["steps_committed"] += len(a.steps)
        if rc == -signal.SIGKILL:
            fig["kills"].append(where)
            left = sleepers(TOKEN)     # a daemon of a call in flight: swept by the next claim
            fig["leftovers_after_kill"] += len(left)
            fig.setdefault("left_pids", []).extend(left)
            intact, _ = ckpt.newest_intact(run)           # what the resume will roll back to
            logged = len((run / "metrics.jsonl").read_text().splitlines())
            fig["steps_rolled_back"] += logged - (int(intact.name.split("_")[1]) if intact else 0)
            mode = "resume"
            continue
        assert rc == 0, f"worker exited {rc}; its stderr is in {log}:\n{log.read_text()[-3000:]}"
        break
    fig["wall_s"] = round(time.monotonic() - t0, 1)
    return fig


def check_store(run: Path, tier: str) -> int:
    """Everything on disk is whole, once, readable; returns the number of tool calls stored."""
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line, parse_constant=refuse)["step"] for line in lines] == list(range(1, STEPS + 1))
    store = RunStore(run)
    assert store.steps() == list(range(1, STEPS + 1)) and store.problems() == []
    calls = 0
    for s in store.steps():
        for t in store.read_step(s):
            calls += len(t.tool_calls)
            for c in t.tool_calls:
                assert c.tier == tier, (s, c.tier)
                variant = t.text[:1]
                if variant == "D":
                    assert c.status == "ok" and c.stdout == "up\n", c
                elif variant == "F":
                    assert len(c.stdout) == 65_536 and set(c.stdout) == {"x"}, (c.status, c.stdout[:40])
                elif variant == "N":
                    assert "\x00" in c.stdout and "\ufffd" in c.stdout and "\x00" in c.stderr, c
                elif variant == "X":
                    assert c.status == "error" and c.stderr.startswith("bwrap: "), c
            if t.text[:1] == "U":
                assert not t.tool_calls          # an unclosed fence is no call
    cdir = run / "checkpoints"
    assert ckpt.complete_steps(run) == list(range(1, STEPS + 1))
    assert not [p.name for p in cdir.iterdir() if p.name.startswith((".tmp-", ".damaged-"))]
    for s in ckpt.complete_steps(run):
        path = cdir / f"step_{s:06d}"
        assert ckpt.verify(path) is None
        assert ckpt.read_state(path)["state"]["step"] == s
        assert {"python", "numpy", "torch"} <= set(ckpt.read_rng(path))
    return calls


@pytest.mark.parametrize("tier", TIERS)
def test_a_hostile_run_killed_three_times_and_resumed_loses_nothing_and_leaves_nothing(tier, reference, tmp_path):
    require(tier)
    run = tmp_path / "run"
    fig = soak(tier, run, tmp_path / "worker.log")
    assert len(fig["kills"]) == len(KILL_PLAN) and None not in fig["kills"], fig   # all in mid-run
    assert gone(fig.get("left_pids", []), TOKEN, within_s=0), fig   # swept by the resumed attempt
    assert gone(sleepers(TOKEN), TOKEN) and not sleepers(TOKEN), "a `sleep TOKEN` daemon survived"
    fig["calls"] = check_store(run, tier)
    got = episodes(run)
    for s in range(1, STEPS + 1):
        assert got[s] == reference[s], f"step {s} differs from the uninterrupted run"
    fig["steps_lost"] = STEPS - len(got)
    print(f"\nsoak {tier}: {fig}")


def test_the_reference_run_meets_every_hostile_variant(reference):
    variants = {text[:1] for eps in reference.values() for *_, text in eps}
    assert variants == set("DFNUX")


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Uid:"))


def _workdirs_of(uid: int) -> list[Path]:
    import tempfile

    from tao_lab.sandbox.uids import WORKDIR_PREFIX
    return [p for p in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*") if p.stat().st_uid == uid]


ORPHAN = """
import sys
from tao_lab.sandbox import SandboxConfig, SandboxPool
code = ("import os,time\\nif os.fork()==0:\\n os.setsid()\\n if os.fork()==0:os.execvp('sleep',['sleep','%s'])\\n"
        " os._exit(0)\\nos.wait()\\nprint('up',flush=True)\\ntime.sleep(60)")
with SandboxPool(max_workers=1, config=SandboxConfig(tier=sys.argv[1], python=sys.argv[2] or None, timeout_s=90)) as p:
    p.map([code])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox uids (and their sweep) exist only as root")
@pytest.mark.parametrize("tier", TIERS)
def test_a_daemon_of_a_workbench_killed_mid_call_is_swept_by_the_next_claim(tier, tmp_path):
    """Found by the soak: nothing ties a sandbox uid's processes to a workbench that is SIGKILLed
    in the middle of a call (a uid change clears bubblewrap's parent-death signal, and the rlimits
    daemon has its own session), so the code and its daemons ran on, for good. Now the next
    sandbox uid claim on the machine sweeps every uid that nobody holds (and removes the rlimits
    work dirs the killed workbench left), and the rlimits runner
    itself dies with its workbench (sandbox/child.py: a parent-death signal after the uid drop)."""
    require(tier)
    from tao_lab.sandbox.uids import UidLease, scan_uids

    token = f"{random.Random().randrange(10**5, 10**6)}.{os.getpid()}"
    python = W.SYSTEM_PYTHON if tier == "rlimits" else ""
    env = dict(os.environ, PYTHONPATH=str(WORKER.parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN % token, tier, python], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sleepers(token) and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon = sleepers(token)
        assert daemon, "the daemon never started"
        uid = _uid_of(daemon[0])
        workdirs = _workdirs_of(uid)
        assert bool(workdirs) == (tier == "rlimits")     # bubblewrap's /tmp is a tmpfs of its own
        proc.send_signal(signal.SIGKILL)          # the workbench dies mid-call
        proc.wait()
        if tier == "rlimits":   # its runner (still in the code's sleep) dies with it: a parent-death signal
            deadline = time.monotonic() + 3
            while set(scan_uids(range(uid, uid + 1)).get(uid, ([], 0))[0]) - set(daemon):
                assert time.monotonic() < deadline, "the rlimits runner outlived its killed workbench"
                time.sleep(0.05)
        UidLease().release()                      # any later claim on the machine
        assert gone(daemon, token), f"the {tier} daemon outlived its killed workbench"
        assert not [p for p in workdirs if p.exists()], "the killed workbench's work dirs were left"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in sleepers(token):               # never leave one behind, even when failing
            os.kill(pid, signal.SIGKILL)
