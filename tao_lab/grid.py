"""A resumable experiment grid: arms x seeds, each run held-out evaluated, surviving interruptions.

    tao-lab grid experiments/tao_ablation.toml --out runs/tao_ablation --jobs 1 --threads 1
    tao-lab grid status runs/tao_ablation

A spec (TOML, JSON, or a `GridSpec` in Python) names a preset, the arms (each a method plus `--set`
overrides), the seeds, the steps and the held-out evaluation. The grid lays out

    OUT/grid.json                 the spec, as run (a restart with a different spec is refused)
    OUT/ARM/seed_S/               one training run store (tao_lab.records.RunStore) per cell
    OUT/ARM/seed_S/evals/step_N/  held-out evaluations before (N=0), every K steps, and after
    OUT/ARM/seed_S/done.json      written last: the cell is complete
    OUT/ARM/seed_S/.lock          held (flock) by the process running the cell
    OUT/ARM/seed_S/log.txt        the cell's stdout/stderr when it runs in a worker process
    OUT/base_evals/KEY/           the step-0 evaluation, made once and copied into every cell it fits

Choices:
  - Resume: a cell with a complete checkpoint continues from the newest one (Trainer.resume, which
    drops metric lines and step files written after it); a cell without one starts over from an
    empty store; a cell with done.json is skipped. So a killed grid, restarted on the same (or
    another) machine with the same checkout and folder, ends with every step recorded exactly once.
  - Evaluation is paired [recon]: every arm and seed is evaluated on the same held-out tasks with the
    same sampling seed (GridSpec.eval_seed), so differences between arms can be taken per task.
    An evaluation that was cut short is removed and redone; one is never appended twice.
  - Workers: `jobs` cells at a time, each a child process with `threads` torch threads; jobs x
    threads may not exceed the usable cores (no oversubscription). A child gets SIGTERM when the
    grid process dies (Linux PR_SET_PDEATHSIG), so a killed grid leaves no orphan training on.
  - Locks: flock on the cell's .lock, released by the kernel when its holder dies (even SIGKILL), so
    two grid processes on one folder never run the same cell, and a stale lock cannot block a cell.

The trainer is reached through ONE adapter, `train_cell`, so names live in one place.

Not covered: several machines sharing a folder over NFS (flock there is unreliable), GPU scheduling.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

DONE, LOCK, LOG = "done.json", ".lock", "log.txt"


# ----------------------------------------------------------------------------------------------
# The spec


@dataclass
class Arm:
    """One arm of the grid: a method and its `--set section.field=value` overrides."""

    name: str                        # folder name and label in the comparison
    method: str = "tao"              # methods.arms.ARMS key (presets.METHODS)
    set: list[str] = field(default_factory=list)
    seeds: list[int] | None = None   # this arm's seeds (None = the grid's), e.g. more for headline arms

    def __post_init__(self):
        if self.seeds is not None:
            self.seeds = [int(s) for s in self.seeds]
            if not self.seeds or len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"Arm.seeds={self.seeds} of arm {self.name!r} must be distinct integers (or None)")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"Arm.name={self.name!r} must be a non-empty folder name (no '/', no leading '.')")
        self.set = list(self.set)


@dataclass
class GridSpec:
    """Preset x arms x seeds, the steps per run and the held-out evaluation."""

    preset: str = "cpu_demo"
    arms: list[Arm] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 8                   # trainer steps per run
    set: list[str] = field(default_factory=list)   # overrides for every arm (applied before the arm's)
    eval_tasks: str | None = None    # held-out source; None = the preset's data.eval_tasks or data.tasks
    eval_split: str | None = "test"
    eval_n: int = 64                 # held-out tasks (the first N of the split: the same for every arm)
    eval_k: int = 4                  # samples per held-out task
    eval_every: int = 0              # also evaluate every K steps (0 = only before and after)
    eval_seed: int = 1234            # sampling seed of every evaluation (paired across arms)
    eval_max_new_tokens: int | None = None   # None = the run's rollout.max_new_tokens
    eval_max_turns: int | None = None        # None = the run's rollout.max_turns
    reward_fn: str | None = None     # "module:function" replacing rewards.score in training (Trainer's
                                     # reward_fn, e.g. a shaped reward); evaluation always uses rewards.score
    work: str = "equal_groups"       # TrainConfig.work of every cell: "equal_groups" (B groups per update
                                     # for every arm) | "equal_rollouts" (the same rollouts per step)

    def __post_init__(self):
        self.arms = [a if isinstance(a, Arm) else Arm(**a) for a in self.arms]
        self.seeds, self.set = [int(s) for s in self.seeds], list(self.set)
        names = [a.name for a in self.arms]
        if not names:
            raise ValueError("GridSpec.arms is empty; give at least one arm (name, method, set)")
        if len(set(names)) != len(names):
            raise ValueError(f"GridSpec.arms: arm names must be unique, got {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"GridSpec.seeds={self.seeds} must be a non-empty list of distinct integers")
        if self.steps < 1:
            raise ValueError(f"GridSpec.steps={self.steps} must be >= 1")
        if self.eval_n < 1 or self.eval_k < 1:
            raise ValueError(f"GridSpec.eval_n={self.eval_n} and eval_k={self.eval_k} must be >= 1")
        if self.reward_fn is not None and ":" not in self.reward_fn:
            raise ValueError(f"GridSpec.reward_fn={self.reward_fn!r} must be 'module:function'")
        from .filters import WORK_MODES
        if self.work not in WORK_MODES:
            raise ValueError(f"GridSpec.work={self.work!r}: choose one of {list(WORK_MODES)}")
        if self.eval_every < 0:
            raise ValueError(f"GridSpec.eval_every={self.eval_every} must be >= 0 (0 = before and after only)")

    def cells(self) -> list[tuple[Arm, int]]:
        """Seed-major order: a grid cut short still has every arm for its first seeds."""
        seeds = sorted({s for a in self.arms for s in (a.seeds or self.seeds)})
        return [(a, s) for s in seeds for a in self.arms if s in (a.seeds or self.seeds)]

    def eval_steps(self) -> list[int]:
        every = range(self.eval_every, self.steps, self.eval_every) if self.eval_every else []
        return sorted({0, *every, self.steps})


def load_spec(path: str | os.PathLike) -> GridSpec:
    """A GridSpec from a .toml or .json file (top-level keys = GridSpec fields, [[arms]] tables)."""
    p = Path(path)
    if p.suffix == ".toml":
        import tomllib
        d = tomllib.loads(p.read_text())
    elif p.suffix == ".json":
        d = json.loads(p.read_text())
    else:
        raise ValueError(f"grid spec {p}: use a .toml or .json file")
    known = set(GridSpec.__dataclass_fields__)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"grid spec {p}: unknown keys {unknown}; allowed: {sorted(known)}")
    return GridSpec(**d)


def cell_dir(out: str | os.PathLike, arm: Arm | str, seed: int) -> Path:
    return Path(out) / (arm if isinstance(arm, str) else arm.name) / f"seed_{seed}"


# ----------------------------------------------------------------------------------------------
# The one adapter to the trainer and the evaluation


def make_cell_config(spec: GridSpec, arm: Arm, seed: int, run_dir: Path):
    """presets.make_config(preset, method, grid overrides + arm overrides + seed/steps/out_dir)."""
    from .presets import make_config

    fixed = [f"seed={seed}", f"work={spec.work}", f"run.steps={spec.steps}", f"run.out_dir={run_dir}"]
    return make_config(spec.preset, arm.method, [*spec.set, *arm.set, *fixed])


def _reward_fn(spec: GridSpec):
    if spec.reward_fn is None:
        return None
    import importlib
    mod, _, name = spec.reward_fn.partition(":")
    return getattr(importlib.import_module(mod), name)


def _eval_config(spec: GridSpec, cfg):
    from .evaluate import EvalConfig

    return EvalConfig(tasks=spec.eval_tasks or cfg.data.eval_tasks or cfg.data.tasks, split=spec.eval_split,
                      limit=spec.eval_n, k=spec.eval_k, temperature=cfg.rollout.temperature,
                      max_turns=spec.eval_max_turns or cfg.rollout.max_turns,
                      max_new_tokens=spec.eval_max_new_tokens or cfg.rollout.max_new_tokens, seed=spec.eval_seed)


def _eval_done(run_dir: Path, step: int) -> bool:
    return (run_dir / "evals" / f"step_{step:06d}" / "metrics.jsonl").exists()


def base_eval_key(spec: GridSpec, cfg) -> str:
    """What a step-0 evaluation depends on: the evaluation, rollout and reward configs, the reward
    function and the model without its seed (a fresh LoRA adapter has B = 0, so every seed's policy is
    the base model; an init_adapter is part of the model config and so of the key)."""
    import hashlib

    from .models import TINY_MODEL

    # the tiny random test model's weights come from the run seed: there the seed stays in the key
    model = {k: v for k, v in asdict(cfg.model).items() if k != "seed"}
    facts = {"eval": asdict(_eval_config(spec, cfg)), "rollout": asdict(cfg.rollout), "reward": asdict(cfg.reward),
             "reward_fn": spec.reward_fn, "model": model,
             "weights_seed": cfg.seed if cfg.model.name == TINY_MODEL else None,
             # the checkpoint an init_adapter resolves to now, not only its folder's name
             "init_checkpoint": _init_checkpoint(cfg.model.init_adapter)}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _init_checkpoint(where: str) -> str | None:
    """The checkpoint an init_adapter resolves to now (a run that is still training resolves later)."""
    from .models import init_adapter_path
    try:
        return str(init_adapter_path(where)) if where else None
    except (FileNotFoundError, ValueError):   # the cell's model load says what is wrong
        return where


def _evaluate(tr, spec: GridSpec, held_out, run_dir: Path, out: Path | None = None) -> dict:
    """Evaluate the trainer's current policy and store it as evals/step_N (a cut-short one is redone).

    Step 0 is the same model for every cell with the same base_eval_key: it is evaluated once per
    grid, kept in OUT/base_evals/KEY/, and copied into each such cell, so the paired "before" numbers
    of two arms are one evaluation, not two samples that differ by thread timing [recon: saves one
    evaluation per cell]."""
    from .evaluate import evaluate, save_eval

    label = f"step_{tr.state.step:06d}"
    where = run_dir / "evals" / label
    if where.exists():
        shutil.rmtree(where)          # incomplete (no metrics line): never append a second line
    cached = out / "base_evals" / base_eval_key(spec, tr.cfg) if out is not None and tr.state.step == 0 else None
    if cached is not None and (cached / "metrics.jsonl").exists():
        shutil.copytree(cached, where)
        return json.loads((cached / "metrics.jsonl").read_text().splitlines()[0])
    ecfg = _eval_config(spec, tr.cfg)
    trajs, m = evaluate(tr.model, tr.tok, held_out, ecfg, tr.cfg.rollout, pool=tr.pool, reward=tr.cfg.reward)
    save_eval(run_dir, label, trajs, m, config={"eval": asdict(ecfg)})
    if cached is not None:            # copy, then rename: a reader never sees half a cache entry
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
        shutil.copytree(where, tmp, dirs_exist_ok=True)
        try:
            os.replace(tmp, cached)
        except OSError:               # another cell stored the same key first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return m


def train_cell(spec: GridSpec, arm: Arm, seed: int, out: str | os.PathLike, progress: bool = True) -> dict:
    """Train (new, resumed or skipped) one cell with its held-out evaluations; writes done.json.

    The only place the grid touches the trainer: Trainer(cfg, dir) / Trainer.resume(dir) / train(steps).
    """
    from . import checkpoint as ckpt
    from .tasks import load_tasks
    from .trainer import Trainer

    run_dir = cell_dir(out, arm, seed)
    if (run_dir / DONE).exists():
        return json.loads((run_dir / DONE).read_text())
    t0 = time.perf_counter()
    cfg = make_cell_config(spec, arm, seed, run_dir)
    if ckpt.newest_intact(run_dir)[0] is not None:
        tr = Trainer.resume(run_dir, steps=spec.steps, reward_fn=_reward_fn(spec))
        resumed_from = tr.state.step
    else:   # a start that never checkpointed: begin again (rundir.check_fresh wants an empty folder)
        for stale in ("config.json", "metrics.jsonl", "lost_steps.json", "steps", "evals", "checkpoints"):
            p = run_dir / stale
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        tr, resumed_from = Trainer(cfg, run_dir, reward_fn=_reward_fn(spec)), None
    ecfg = _eval_config(spec, tr.cfg)
    held_out = load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit)
    missed = []
    with tr:
        for target in spec.eval_steps():
            if _eval_done(run_dir, target):
                continue
            if tr.state.step > target:        # passed without an evaluation: say so, never hide it
                missed.append(target)
                continue
            if tr.state.step < target:
                tr.train(steps=target, progress=progress)
            _evaluate(tr, spec, held_out, run_dir, Path(out))
    done = {"arm": arm.name, "method": arm.method, "seed": seed, "steps": tr.state.step,
            "resumed_from": resumed_from, "missed_evals": missed, "wall_s": time.perf_counter() - t0}
    from .records import atomic_write_bytes
    atomic_write_bytes(run_dir / DONE, json.dumps(done, indent=1).encode())
    return done


# ----------------------------------------------------------------------------------------------
# Locks and status


@contextmanager
def cell_lock(run_dir: Path) -> Iterator[bool]:
    """flock on run_dir/.lock without waiting; yields False when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _locked(run_dir: Path) -> bool:
    if not (run_dir / LOCK).exists():
        return False
    with cell_lock(run_dir) as got:
        return not got


def _metric_steps(run_dir: Path) -> list[int]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(ln)["step"] for ln in p.read_text().splitlines() if ln.strip()]


def status(out: str | os.PathLike, spec: GridSpec | None = None):
    """One row per cell: arm, seed, state (done / running / partial / pending), steps, evals."""
    import pandas as pd
    from . import checkpoint as ckpt

    out = Path(out)
    spec = spec or read_grid_spec(out)
    rows = []
    for arm, seed in spec.cells():
        d = cell_dir(out, arm, seed)
        steps = _metric_steps(d)
        evals = sorted(int(p.parent.name.split("_")[1]) for p in (d / "evals").glob("step_*/metrics.jsonl"))
        state = ("done" if (d / DONE).exists() else "running" if _locked(d)
                 else "partial" if steps or evals else "pending")
        rows.append({"arm": arm.name, "seed": seed, "state": state, "steps": len(steps), "of": spec.steps,
                     "checkpoint": ckpt.latest(d) if d.exists() else None, "evals": evals})
    return pd.DataFrame(rows)


def format_status(df, out) -> str:
    counts = df["state"].value_counts().to_dict()
    head = f"{out}: {counts.get('done', 0)}/{len(df)} cells done, " + ", ".join(
        f"{counts.get(k, 0)} {k}" for k in ("running", "partial", "pending"))
    lines = [head]
    for r in df.itertuples():
        lines.append(f"  {r.arm:>16s} seed {r.seed:<4d} {r.state:8s} step {r.steps}/{r.of}  "
                     f"checkpoint {r.checkpoint if r.checkpoint is not None else '-'}  evals {r.evals}")
    return "\n".join(lines)


def read_grid_spec(out: Path) -> GridSpec:
    p = Path(out) / "grid.json"
    if not p.exists():
        raise FileNotFoundError(f"{out} has no grid.json; is it a grid folder (made by `tao-lab grid`)?")
    return GridSpec(**json.loads(p.read_text()))


def _write_or_check_spec(spec: GridSpec, out: Path) -> None:
    p = out / "grid.json"
    mine = asdict(spec)
    if p.exists():
        old = json.loads(p.read_text())
        old.setdefault("work", "equal_rollouts")   # a grid made before `work` existed trained so
        if old != json.loads(json.dumps(mine)):
            diff = sorted(k for k in mine if old.get(k) != json.loads(json.dumps(mine[k])))
            hint = (f" (it ran with work={old['work']!r}: resume it with --work {old['work']})"
                    if "work" in diff else "")
            raise ValueError(f"{out} holds a grid with a different spec (fields {diff}){hint}; use a new --out "
                             "folder, or restore the spec to resume")
        return
    out.mkdir(parents=True, exist_ok=True)
    from .records import atomic_write_bytes
    atomic_write_bytes(p, json.dumps(mine, indent=1).encode())


# ----------------------------------------------------------------------------------------------
# Running the grid

LOCKED_RC = 3                        # a worker's exit code when another process holds the cell


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_budget(jobs: int, threads: int, cores: int | None = None) -> None:
    cores = usable_cores() if cores is None else cores
    if jobs < 1 or threads < 1:
        raise ValueError(f"grid: jobs={jobs} and threads={threads} must be >= 1")
    if jobs * threads > cores:
        raise ValueError(f"grid: jobs x threads = {jobs} x {threads} = {jobs * threads} exceeds the {cores} usable "
                         "cores; lower --jobs or --threads (oversubscribed cores slow every run down)")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the grid process dies (Linux), so no orphan trains on."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass                         # not Linux: an orphan finishes its cell and releases the lock


def _spawn(out: Path, arm: Arm, seed: int, threads: int) -> subprocess.Popen:
    d = cell_dir(out, arm, seed)
    d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    log = open(d / LOG, "a")
    try:
        return subprocess.Popen([sys.executable, "-m", "tao_lab.grid", str(out), arm.name, str(seed),
                                 "--threads", str(threads)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent)
    finally:
        log.close()


def _bar(total: int, desc: str, position: int, initial: int = 0):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, position=position, initial=initial, unit="step", leave=position == 0)


def run_grid(spec: GridSpec, out: str | os.PathLike, jobs: int = 1, threads: int = 1,
             isolate: bool = True, progress: bool = True) -> dict[str, int]:
    """Run every cell not yet done; returns counts {done, skipped_done, skipped_locked, failed}.

    isolate=True: each cell in a worker process (`jobs` at a time, `threads` torch threads each);
    isolate=False: one after another in this process (notebooks; `threads` sets torch threads).
    """
    check_budget(jobs, threads)
    out = Path(out)
    _write_or_check_spec(spec, out)
    counts = {"done": 0, "skipped_done": 0, "skipped_locked": 0, "failed": 0}
    todo = []
    for arm, seed in spec.cells():
        if (cell_dir(out, arm, seed) / DONE).exists():
            counts["skipped_done"] += 1
        else:
            todo.append((arm, seed))
    if not isolate:
        import torch
        torch.set_num_threads(threads)
        for arm, seed in todo:
            with cell_lock(cell_dir(out, arm, seed)) as got:
                if not got:
                    counts["skipped_locked"] += 1
                    continue
                train_cell(spec, arm, seed, out, progress=progress)
                counts["done"] += 1
        return counts
    return _run_workers(spec, out, todo, jobs, threads, counts, progress)


def _run_workers(spec, out: Path, todo: list, jobs: int, threads: int, counts: dict, progress: bool) -> dict:
    """Keep up to `jobs` workers busy; a bar for the grid and one per running cell (read from metrics.jsonl)."""
    n_cells = len(spec.cells())
    grid_bar = _bar(n_cells, "grid", 0, initial=counts["skipped_done"]) if progress else None
    running: dict[subprocess.Popen, tuple] = {}
    slots = list(range(1, jobs + 1))
    try:
        while todo or running:
            while todo and len(running) < jobs:
                arm, seed = todo.pop(0)
                if _locked(cell_dir(out, arm, seed)):
                    counts["skipped_locked"] += 1
                    print(f"grid: {arm.name}/seed_{seed} is held by another process; skipped", file=sys.stderr)
                    continue
                slot = slots.pop(0)
                bar = _bar(spec.steps, f"{arm.name} s{seed}", slot) if progress else None
                running[_spawn(out, arm, seed, threads)] = (arm, seed, slot, bar)
            time.sleep(0.5)
            for proc, (arm, seed, slot, bar) in list(running.items()):
                n_done = len(_metric_steps(cell_dir(out, arm, seed))) if bar is not None else 0
                if bar is not None and n_done != bar.n:     # redraw on progress only (logs stay short)
                    bar.n = n_done
                    bar.refresh()
                rc = proc.poll()
                if rc is None:
                    continue
                del running[proc]
                slots.append(slot)
                if bar is not None:
                    bar.close()
                if rc == 0:
                    counts["done"] += 1
                    if grid_bar is not None:
                        grid_bar.update(1)
                elif rc == LOCKED_RC:
                    counts["skipped_locked"] += 1
                else:
                    counts["failed"] += 1
                    tail = (cell_dir(out, arm, seed) / LOG).read_text().splitlines()[-15:]
                    print(f"grid: {arm.name}/seed_{seed} failed (exit {rc}); last lines of its log.txt:\n  "
                          + "\n  ".join(tail), file=sys.stderr)
    finally:
        for proc in running:          # interrupted: workers checkpoint on SIGTERM, then exit
            proc.terminate()
        for proc in running:
            proc.wait()
        if grid_bar is not None:
            grid_bar.close()
    return counts


def _worker_main(argv: list[str]) -> int:
    """`python -m tao_lab.grid OUT ARM SEED --threads T`: run one cell under its lock."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m tao_lab.grid", description="run one grid cell (used by run_grid)")
    ap.add_argument("out")
    ap.add_argument("arm")
    ap.add_argument("seed", type=int)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    spec = read_grid_spec(Path(a.out))
    arm = next(x for x in spec.arms if x.name == a.arm)
    with cell_lock(cell_dir(a.out, arm, a.seed)) as got:
        if not got:
            print(f"{a.arm}/seed_{a.seed}: held by another process", file=sys.stderr)
            return LOCKED_RC
        try:
            done = train_cell(spec, arm, a.seed, a.out, progress=False)
        except KeyboardInterrupt:     # SIGTERM from the grid: the trainer has checkpointed
            return 130
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
