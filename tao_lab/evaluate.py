"""Held-out evaluation: Avg@k / Pass@k and tool telemetry, saved as a run (METHODS.md §7).

`evaluate` rolls out k samples per task with the policy as it is (an adapter included), scores them,
and reports Avg@k, unbiased Pass@1 and Pass@k (advantages.pass_at_k_mean) and the same tool
telemetry as a training step. `save_eval` stores it under run_dir/evals/<label>/ as its own run
store (trajectories + one metrics line), which report.py reads; `load_trained` rebuilds the policy
of a training run from its newest checkpoint.

BFCL tasks (tasks.load_tasks("bfcl")) are scored by BFCL's AST rules (bfcl_checker.py), with eval/bfcl/<category>.

Not covered: greedy Maj@k voting, per-level breakdowns (group the stored trajectories by task id).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from . import checkpoint as ckpt
from . import filters as filters_mod
from .advantages import pass_at_k_mean
from .behaviour import behaviour_metrics
from .records import RunStore, Trajectory, is_correct
from .rewards import RewardConfig, score
from .rollout import RolloutConfig
from .tasks import DEFAULT_TASKS
from .models import load_model
from .telemetry import telemetry
from .train_config import config_from_dict
from .trainer import rollout_stage


@dataclass
class EvalConfig:
    """A held-out evaluation: k samples per task."""

    tasks: str = DEFAULT_TASKS       # tasks.load_tasks source
    split: str | None = "test"       # held-out split
    limit: int | None = 16           # number of tasks (None = all)
    k: int = 4                       # samples per task (Avg@k, Pass@1..k)
    temperature: float = 1.0         # sampling temperature of the eval rollouts
    max_turns: int = 5               # turn budget (papers: 10 at eval; 5 keeps CPU runs short)
    max_new_tokens: int = 256        # completion budget
    seed: int = 1234                 # sampling seed (same seed before and after training)

    def __post_init__(self):
        from . import checks

        checks.number(self, "limit", lo=1, integer=True, none_ok=True)
        checks.number(self, "k", lo=1, integer=True)
        checks.number(self, "temperature", lo=0, hi=10)
        checks.number(self, "max_turns", lo=1, integer=True)
        checks.number(self, "max_new_tokens", lo=1, integer=True)
        checks.number(self, "seed", integer=True)


def evaluate(model, tok, tasks: Sequence, cfg: EvalConfig, rollout: RolloutConfig, pool=None,
             reward: RewardConfig | None = None, merge: bool = True,
             progress: bool = False) -> tuple[list[Trajectory], dict[str, float]]:
    """Roll out k samples per task, score them; Avg@k, Pass@k (unbiased) and tool telemetry.
    `progress`: a tqdm bar (with ETA) over the k x tasks episodes."""
    rcfg = replace(rollout, group_size=cfg.k, temperature=cfg.temperature, max_turns=cfg.max_turns,
                   max_new_tokens=cfg.max_new_tokens, quantize="none")   # the policy itself, never its int8 copy
    t0 = time.perf_counter()
    trajs, stats = rollout_stage(model, tok, tasks, rcfg, pool, cfg.seed, merge=merge, progress=progress)
    bfcl_tasks = bool(tasks) and all((t.meta or {}).get("format") == "bfcl" for t in tasks)
    if bfcl_tasks:                             # function calling: BFCL's AST verdict (tao_lab/bfcl_checker.py)
        from .bfcl import category_accuracy, make_reward_fn
        _, rmetrics = make_reward_fn(tasks, (reward or RewardConfig()).self_example_bonus)(trajs, 0)
        rmetrics.update(category_accuracy(trajs, tasks))
    else:
        _, rmetrics = score(trajs, reward or RewardConfig())
    correct: dict[str, list[float]] = {}       # task -> 0/1 per sample: the verifier's verdict, never
    for t in trajs:                            # the (possibly shaped) reward
        correct.setdefault(t.task_id, []).append(float(is_correct(t)))
    n = [len(v) for v in correct.values()]
    c = [int(sum(v)) for v in correct.values()]
    no_filter = filters_mod.apply(trajs, filters_mod.FilterConfig(rules=()))   # telemetry needs a result
    metrics = {"eval/n_tasks": len(correct), "eval/k": cfg.k,
               f"eval/avg@{cfg.k}": float(np.mean([x for v in correct.values() for x in v])),
               **{f"eval/pass@{k}": pass_at_k_mean(n, c, k) for k in sorted({1, cfg.k})},
               **rmetrics, **stats.as_metrics(), **telemetry(trajs, no_filter),
               **{f"behaviour/{k}": v for k, v in behaviour_metrics(trajs).items()},   # ET-Agent's (METHODS §3)
               "time/eval_s": time.perf_counter() - t0}
    return trajs, metrics


def save_eval(run_dir: str | os.PathLike, label: str, trajs: list[Trajectory], metrics: dict,
              config: dict | None = None) -> Path:
    """Store an evaluation as its own run under run_dir/evals/<label>/ (report.py reads it).

    Never overwrites: if <label> already holds an evaluation, this one is saved as <label>-2 (-3, ...)
    and both stay, so an 8-task "after" is never silently replaced by a 4-task one."""
    base = Path(run_dir) / "evals"
    path, k = base / label, 2
    while (path / "metrics.jsonl").exists():
        path, k = base / f"{label}-{k}", k + 1
    if path.name != label:
        print(f"an evaluation named {label!r} exists; keeping it and saving this one as {path.name!r}")
        label = path.name
    store = RunStore(path)
    if config is not None:
        store.write_config(config)
    store.write_step(0, trajs)
    store.append_metrics({"step": 0, "label": label, **metrics})
    return store.path


def trained_config(run_dir: str | os.PathLike) -> tuple:
    """(TrainConfig, step, checkpoint path) of a run's newest checkpoint, without loading a model."""
    path = ckpt.latest_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    saved = ckpt.read_state(path)
    return config_from_dict(saved["config"]), saved["step"], path


def load_trained(run_dir: str | os.PathLike) -> tuple:
    """(model, tokenizer, TrainConfig, step) with the newest checkpoint's adapter of a run."""
    cfg, step, path = trained_config(run_dir)
    model, tok = load_model(cfg.model, cfg.seed)
    ckpt.load_adapter(model, path)
    return model.eval(), tok, cfg, step
