"""The readable GRPO / TAO-RL loop: sample prompts -> rollout -> reward -> filter -> advantage -> update.

One `Trainer.step()` runs the stages below, each a named function a notebook can also call alone:

    prompt_source     which tasks this step rolls out, rendered how, with which forced prefixes
                      and branch policy: ceil(B x oversample) prompts (hooks.py; default
                      SeededStream, a seeded permutation per epoch read by a checkpointed cursor)
    rollout_stage     rollout.generate with a per-step seed (KV engine, eval mode, no grad)
    reward_fn         rewards.score (or the method's / caller's reward); then rewards.mark_correct,
                      so correctness is the verifier's even under a shaped reward
    observe           the prompt source sees the scored rollouts (hardness, pass rates, probes)
    filters.apply     TAO-RL's filters + companions + refill to B groups, with reasons; under
                      filter.refill="dynamic" (DAPO) the stages above repeat on fresh prompts until
                      B groups survive (methods/dapo.py)
    advantage_fn      GRPO group advantage per advantage row (update.compute_advantages) or the
                      method's (tree / mixed advantages, per-token)
    update_policy     micro-batches, ONE training forward each for log-probs and entropy, entropy
                      shaping, loss.policy_loss on Trajectory.full_mask() x filter weight, gradient
                      accumulation, grad-norm clipping, one optimizer step per pass (update.py,
                      whose docstring lists its choices: rollout log-probs as old log-probs, exact
                      accumulation, KL via disable_adapter, prompt sharing)
    telemetry         every metric of METHODS.md §7 (telemetry.py), stage timings and peak memory
                      (runinfo.py), per step

Choices of the loop itself:
  - Every stage's randomness derives from (TrainConfig.seed, step): a per-step rollout seed, a
    per-step refill seed, a prompt stream read by a cursor. Resuming restores the cursor and the
    RNG states, so a resumed run draws the prompts and samples the uninterrupted run would have.
  - Steps whose filters leave nothing to train on are *skipped* and logged with the reason; the LR
    schedule still advances (lr_t = lr_0 · γ^t counts trainer steps).
  - Refill duplicates are trained as separate rows (one forward each), as in the authors' code.
  - Equal work (TrainConfig.work, step_filter_config): by default every arm trains on B groups per
    update, an arm without refill trimmed to B as the authors' code does; "equal_rollouts" instead
    gives every arm the same rollouts per step.
  - The config may change between steps (a notebook's widgets): each change is validated, recorded
    with the step it takes effect in RUN_DIR/config_changes.jsonl, reaches the optimizer, and is
    replayed on resume (config_changes.py).

Checkpoints (tao_lab/checkpoint.py) are written every `save_every` steps, at the end, and on Ctrl-C /
SIGTERM (interrupts.py), atomically. From the first optimizer step of an update to the end of the step's bookkeeping
(schedule, state, run store, checkpoint) a signal is deferred, so a step is never half-applied: an
interrupt during the rollout or the forward/backward abandons the step, one after the optimizer
step lets it finish first.

The config (TrainConfig and its sections, its dict form, the config a resumed run continues with)
is train_config.py; loading the policy and sampling from its merged adapter, models.py.

Not covered: multi-GPU, sequence packing, vLLM, off-policy replay, value functions.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt
from . import rundir
from . import filters as filters_mod
from .config_changes import ConfigLog, apply_optim_changes
from .config_changes import read as read_changes
from .hooks import MethodHooks, PromptBatch, SeededStream
from .interrupts import SignalGuard
from .models import load_model, merged_adapter
from .optim import make_optimizer
from .records import RunStore, Trajectory
from .rewards import mark_correct, score
from .rollout import RolloutConfig, RolloutStats, generate
from .runinfo import StageTimer, git_revision, memory_metrics, versions
from .telemetry import telemetry, trajectory_columns
from .train_config import TrainConfig, check_sampler, config_from_dict, config_to_dict, resumed_config
from .update import compute_advantages, update_policy


# ----------------------------------------------------------------------------------------------
# Per-step values derived from the config (TrainConfig: train_config.py)


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one stream (1 rollout, 2 refill, ...) of one step: resumable, no shared RNG state."""
    return (seed * 1_000_003 + step * 7_919 + stream * 104_729) % (2 ** 31 - 1)


def step_filter_config(cfg: TrainConfig, step: int) -> filters_mod.FilterConfig:
    """The filter stage's config of one step: refill target B, the step's refill seed, and under
    work="equal_groups" an arm without refill trimmed to B groups (refill="subsample") [code]."""
    refill = cfg.filter.refill
    if cfg.work == "equal_groups" and refill == "none":
        refill = "subsample"
    return replace(cfg.filter, target_groups=cfg.data.prompts_per_step, seed=step_seed(cfg.seed, step, 2),
                   refill=refill)


# ----------------------------------------------------------------------------------------------
# The rollout stage


def rollout_stage(model, tok, tasks: Sequence, cfg: RolloutConfig, pool, seed: int,
                  group_offset: int = 0, merge: bool = False,
                  batch: PromptBatch | None = None, progress: bool = False) -> tuple[list[Trajectory], RolloutStats]:
    """generate() in eval mode with this step's seed (`merge`: from merged LoRA weights); the model
    is left in eval mode. `batch` (a prompt source's PromptBatch) supplies the rendered prompts,
    forced prefixes, branch policy and row budget; `tasks` is then batch.tasks. `progress`: a tqdm
    bar over the episodes (stderr in a terminal, a widget in a notebook)."""
    model.eval()
    extra = {} if batch is None else {"prompts": batch.prompts, "prefixes": batch.prefixes,
                                      "branch_policy": batch.branch_policy, "max_rows": batch.max_rows}
    # RolloutConfig.quantize="int8" folds LoRA into its int8 copy itself (quant.effective_weight):
    # merging first would only copy the base weights once more
    with torch.no_grad(), merged_adapter(model, merge and cfg.quantize == "none"):
        return generate(model, tok, tasks if batch is None else batch.tasks, replace(cfg, seed=seed),
                        pool=pool, group_offset=group_offset, progress=progress, **extra)


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class StepLog:
    """What the `on_step` callback receives after every step."""

    step: int
    metrics: dict[str, float]
    trajs: list[Trajectory]
    filter_result: filters_mod.FilterResult
    skipped: bool
    skip_reason: str = ""


@dataclass
class TrainState:
    """What changes step to step (and goes into a checkpoint besides weights and optimizer)."""

    step: int = 0                    # last completed step
    source: dict = field(default_factory=dict)   # the prompt source's state_dict() (JSON)

    @classmethod
    def from_saved(cls, d: dict) -> "TrainState":
        """Read a checkpoint's state; checkpoints made before prompt sources stored a bare cursor."""
        if "source" not in d:
            return cls(step=int(d["step"]), source={"cursor": int(d.get("cursor", 0))})
        return cls(step=int(d["step"]), source=dict(d["source"]))


def resolve_hooks(cfg: TrainConfig, tasks: Sequence, tok, prompt_source=None, reward_fn=None,
                  advantage_fn=None) -> MethodHooks:
    """Each hook: the one handed in, else the arm's (methods.arms.HOOKS), else the loop's default."""
    arm = MethodHooks()
    if prompt_source is None or reward_fn is None or advantage_fn is None:
        from .methods.arms import method_hooks
        arm = method_hooks(cfg, tasks, tok)
    return MethodHooks(
        prompt_source=prompt_source or arm.prompt_source or SeededStream(tasks, cfg.seed),
        reward_fn=reward_fn or arm.reward_fn,                 # None: rewards.score with cfg.reward
        advantage_fn=advantage_fn or arm.advantage_fn or compute_advantages)


class Trainer:
    """Holds model, optimizer, task list, sandbox pool and run store; `step()` runs the stages once.

    model/tok/tasks may be handed in (a notebook that already loaded them); otherwise they are
    loaded from the config. The hooks (hooks.py) may be handed in too; each one not given is the
    arm's (methods.arms.HOOKS[cfg.method]) or the default:
      prompt_source  hooks.PromptSource; default SeededStream(tasks, cfg.seed)
      reward_fn(trajs, step) -> (rewards, metrics); must set traj.reward (tests use it to give a
                     random tiny model a learnable signal); default rewards.score
      advantage_fn(trajs, filter_result, std) -> (UpdateBatch, adv, metrics); default GRPO
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike | None = None, *, model=None, tok=None,
                 tasks: Sequence | None = None, prompt_source=None, reward_fn: Callable | None = None,
                 advantage_fn: Callable | None = None,
                 on_step: Callable[[StepLog], None] | None = None, pool=None, write_config: bool = True):
        check_sampler(cfg)
        self.cfg = cfg
        if write_config:   # a new run: never into a folder that holds one (tao_lab/rundir.py)
            rundir.check_fresh(run_dir or cfg.run.out_dir)
        self.store = RunStore(run_dir or cfg.run.out_dir)
        if model is None:
            model, tok = load_model(cfg.model, cfg.seed)
        self.model, self.tok = model, tok
        if tasks is None:
            from .tasks import load_tasks
            tasks = load_tasks(cfg.data.tasks, split=cfg.data.split, limit=cfg.data.limit)
        self.tasks = list(tasks)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters; load it with ModelConfig.lora=True")
        self.optimizer, self.scheduler = make_optimizer(self.params, cfg.optim)
        hooks = resolve_hooks(cfg, self.tasks, tok, prompt_source, reward_fn, advantage_fn)
        self.prompt_source, self.reward_fn, self.advantage_fn = hooks.prompt_source, hooks.reward_fn, hooks.advantage_fn
        self.on_step = on_step
        self.state = TrainState(source=copy.deepcopy(self.prompt_source.state_dict()))
        self.config_log = ConfigLog(self.store.path, config_to_dict(cfg))
        self.device = self.params[0].device
        self._pool, self._own_pool = pool, pool is None
        self.signals = SignalGuard()
        self._rng_snapshot = ckpt.rng_state()
        self.last_log: StepLog | None = None
        self._changes_for_next: list[dict] = []   # recorded by apply_config for the step not yet run
        if write_config:
            self.store.write_config({"train": config_to_dict(cfg), "versions": versions(),
                                     "git_revision": git_revision(), "n_train_tasks": len(self.tasks)})

    # -- resources
    @property
    def pool(self):
        if self._pool is None and self.cfg.rollout.tools:
            from .sandbox import SandboxConfig, SandboxPool
            self._pool = SandboxPool(config=SandboxConfig(timeout_s=self.cfg.rollout.tool_timeout_s))
        return self._pool

    def close(self):
        if self._own_pool and self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one step
    def step(self) -> StepLog:
        s = self.state.step + 1
        changes = [*self._changes_for_next, *self._config_changes(s)]
        cfg, timer = self.cfg, StageTimer()
        try:
            trajs, fres, sample_metrics = self._sample_and_filter(s, timer)
            with timer("advantage"):
                batch, adv_all, ametrics = self.advantage_fn(trajs, fres, cfg.update.adv_std)
        except BaseException:
            # the step did not happen: the source goes back to the last committed state, so a
            # retried (or resumed) step draws the same prompts
            self.prompt_source.load_state_dict(copy.deepcopy(self.state.source))
            raise
        skip_reason = fres.skip_reason or ("" if batch.trajs else "no advantage row has a loss weight > 0")
        umetrics: dict[str, float] = {}
        try:
            with timer("update"):
                if not skip_reason:
                    # from the first optimizer step on, a signal waits until the step is committed
                    umetrics = update_policy(self.model, self.optimizer, batch, self.params, self._pad_id(),
                                             cfg=cfg.update, shaping=cfg.shaping, loss=cfg.loss,
                                             grad_clip=cfg.optim.grad_clip, temperature=cfg.rollout.temperature,
                                             max_new_tokens=cfg.rollout.max_new_tokens,
                                             before_optimizer_step=self.signals.begin)
            log = self._commit(s, trajs, fres, adv_all, skip_reason,
                               metric_parts=(sample_metrics, fres.counts, ametrics, umetrics,
                                             {"config/changes": len(changes)}), timer=timer)
            self._changes_for_next = []
        except BaseException:
            if self.state.step < s:      # not committed: undo the source's draw (see above)
                self.prompt_source.load_state_dict(copy.deepcopy(self.state.source))
            raise
        finally:
            self.signals.clear()         # an exception mid-step must not leave signals deferred
        if self.on_step is not None:
            self.on_step(log)
        return log

    def apply_config(self, cfg: TrainConfig) -> list[dict]:
        """Make `cfg` the config of the next step now, and return what changed.

        Assigning `trainer.cfg` does the same, but its changes are checked and recorded only when
        the next step starts; this validates at once (a bad value raises ValueError and the old
        config stays), records the changes in config_changes.jsonl as taking effect at the next
        step ({"step", "field", "old", "new"} each) and lets optimizer changes reach the optimizer.
        A notebook's Apply button uses it to say what was applied.
        """
        old = self.cfg
        self.cfg = cfg
        try:
            changes = self._config_changes(self.state.step + 1)
        except ValueError:
            self.cfg = old
            raise
        self._changes_for_next += changes
        return [{"step": self.state.step + 1, **c} for c in changes]

    def _config_changes(self, s: int) -> list[dict]:
        """The config as it stands now (a notebook may have changed it) is validated, its changes
        are recorded as taking effect at step s, and optimizer changes reach the optimizer."""
        now = config_to_dict(self.cfg)
        check_sampler(config_from_dict(now))   # every section's checks again (an in-place edit skipped them); self.cfg
        changes = self.config_log.check(now, s)   # stays the object the caller may still be editing
        apply_optim_changes(changes, self.optimizer, self.scheduler)
        return changes

    def _sample_and_filter(self, s: int, timer: StageTimer):
        """Prompt source -> rollout -> reward -> observe -> filters: (trajs, FilterResult, metrics).

        With filter.refill="dynamic" (DAPO, methods/dapo.py) the rounds repeat on fresh prompts
        until B groups survive Filter B or filter.max_rounds rounds ran; round 0 is exactly the batch
        a run without it rolls out, and the rounds' metrics are merged (dapo.merge_rounds)."""
        cfg, fcfg = self.cfg, step_filter_config(self.cfg, s)
        k0 = math.ceil(cfg.data.prompts_per_step * cfg.data.oversample)
        if fcfg.refill != "dynamic":
            trajs, info, metrics = self._sample_round(s, k0, 0, timer)
            with timer("filter"):
                fres = filters_mod.apply(trajs, fcfg)
            return trajs, fres, {**info, **metrics}
        from .methods.dapo import dynamic_sampling, merge_rounds

        pool: list[Trajectory] = []
        rounds: list[tuple[int, dict]] = []
        info: dict = {}

        def sample(need: int) -> list[Trajectory]:
            nonlocal info
            k = k0 if not rounds else math.ceil(need * cfg.data.oversample)
            trajs, info, metrics = self._sample_round(s, k, len(rounds), timer,
                                                      group_offset=1 + max((t.group_id for t in pool), default=-1))
            pool.extend(trajs)
            rounds.append((len(trajs), metrics))
            return trajs

        t0, inner = time.perf_counter(), sum(timer.s.values())
        pool_out, fres = dynamic_sampling(sample, fcfg, cfg.filter.max_rounds)
        # the rounds timed their own stages; the filter passes between them are the rest
        timer.add("filter", time.perf_counter() - t0 - (sum(timer.s.values()) - inner))
        return pool_out, fres, {**info, **merge_rounds(rounds)}

    def _sample_round(self, s: int, k: int, rnd: int, timer: StageTimer, group_offset: int = 0):
        """One round of k prompts: (trajs, the source's batch.info, rollout/reward/observe metrics).
        Round 0 samples with the step's rollout seed; round r > 0 with its own (stream 100 + r)."""
        cfg = self.cfg
        with timer("sample"):
            pbatch = self.prompt_source.next_batch(s, k)
        with timer("rollout"):
            seed = step_seed(cfg.seed, s, 1 if rnd == 0 else 100 + rnd)
            trajs, rstats = rollout_stage(self.model, self.tok, pbatch.tasks, cfg.rollout, self.pool, seed,
                                          group_offset=group_offset, merge=cfg.merge_for_rollout, batch=pbatch)
        with timer("reward"):
            rmetrics = self._score(trajs, s)
            smetrics = self.prompt_source.observe(s, pbatch, trajs) or {}
        return trajs, dict(pbatch.info), {**smetrics, **rstats.as_metrics(), **rmetrics}

    def _score(self, trajs: list[Trajectory], s: int) -> dict[str, float]:
        """The reward hook, then the verifier's verdict on every trajectory it left unchecked."""
        if self.reward_fn is None:
            return score(trajs, self.cfg.reward, step=s)[1]
        _, metrics = self.reward_fn(trajs, s)
        mark_correct(trajs, self.cfg.reward)
        return {"reward/accuracy": float(np.mean([bool(t.correct) for t in trajs])) if trajs else 0.0, **metrics}

    def _commit(self, s, trajs, fres, adv_all, skip_reason, metric_parts, timer) -> StepLog:
        """Advance the schedule and the state, write the step and maybe a checkpoint, uninterruptibly."""
        cfg = self.cfg
        with self.signals.critical_section():   # commit: nothing below may be cut in half by a signal
            lr = self.scheduler.get_last_lr()[0]
            with warnings.catch_warnings():   # a skipped step advances the schedule without an optimizer step
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
                self.scheduler.step()
            self.state = TrainState(step=s, source=copy.deepcopy(self.prompt_source.state_dict()))
            metrics = {"step": s, "skipped": int(bool(skip_reason)), "lr": lr}
            for part in metric_parts:
                metrics.update(part)
            metrics.update({**telemetry(trajs, fres), **timer.metrics(), **memory_metrics(self.device)})
            if self.cfg.run.store_trajectories:
                self.store.write_step(s, trajs, **trajectory_columns(trajs, fres, adv_all))
            self.store.append_metrics(metrics)
            self._rng_snapshot = ckpt.rng_state()
            if s % cfg.run.save_every == 0 or s == cfg.run.steps:
                self.save_checkpoint()
        self.last_log = StepLog(s, metrics, trajs, fres, bool(skip_reason), skip_reason)
        return self.last_log

    def _pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    # -- many steps, with interrupt handling
    def train(self, steps: int | None = None, progress: bool = False) -> list[StepLog]:
        """Run until `steps` steps in total have completed (default cfg.run.steps).

        Ctrl-C / SIGTERM: the step in flight is abandoned (never half-applied), a checkpoint of the
        last completed step is written, and KeyboardInterrupt is re-raised.
        """
        target = self.cfg.run.steps if steps is None else steps
        logs = []
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=target, initial=self.state.step, desc="train", unit="step")
        with self.signals.handling():
            try:
                while self.state.step < target:
                    log = self.step()
                    logs.append(log)
                    if bar is not None:
                        m = log.metrics
                        bar.set_postfix(reward=f"{m.get('reward/mean', float('nan')):.3f}",
                                        acc=f"{m.get('reward/accuracy', float('nan')):.2f}",
                                        skipped=m["skipped"], refresh=False)
                        bar.update(1)
            except KeyboardInterrupt:
                self.optimizer.zero_grad(set_to_none=True)
                path = self.save_checkpoint()
                print(f"\ninterrupted: checkpoint of step {self.state.step} at {path}; "
                      f"continue with `tao-lab resume {self.store.path}`", file=sys.stderr)
                raise
            finally:
                if bar is not None:
                    bar.close()
        if self.state.step and ckpt.latest(self.store.path) != self.state.step:
            self.save_checkpoint()
        return logs

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        return ckpt.save(self.store.path, self.state.step, model=self.model, optimizer=self.optimizer,
                         scheduler=self.scheduler, rng=self._rng_snapshot,
                         state=asdict(self.state), config=config_to_dict(self.cfg),
                         keep=self.cfg.run.keep_checkpoints)

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, steps: int | None = None, **kw) -> "Trainer":
        """Rebuild a Trainer from the newest intact checkpoint of `run_dir` (rundir.prepare_resume).

        Damaged newer checkpoints are set aside; with none intact the run restarts from step 0 with
        its config.json. The run's later metric lines and step files (written after that point, e.g.
        by a run that crashed) are removed first, so the resumed run writes them exactly once. What
        was found and done is printed and kept in `resume_notes`.
        """
        plan = rundir.prepare_resume(run_dir)   # newest intact checkpoint; the store repaired to it
        if plan.path is None:      # none intact: step 0 with config.json, fresh model / optimizer / source
            cfg = resumed_config(run_dir, plan.config, 0)
            tr = cls(cfg if steps is None else replace(cfg, run=replace(cfg.run, steps=steps)), run_dir,
                     write_config=False, **kw)
            tr.config_log.truncate_after(1)
            tr.resume_notes = plan.notes
            return tr
        path = plan.path
        saved = ckpt.read_state(path)
        step = TrainState.from_saved(saved["state"]).step
        cfg = resumed_config(run_dir, saved["config"], step)
        if steps is not None:
            cfg = replace(cfg, run=replace(cfg.run, steps=steps))
        tr = cls(cfg, run_dir, write_config=False, **kw)
        ckpt.load_into(path, model=tr.model, optimizer=tr.optimizer, scheduler=tr.scheduler)
        # the checkpoint's optimizer predates the changes of the step it resumes: apply those again
        tr.config_log.truncate_after(step + 1)
        apply_optim_changes([c for c in read_changes(run_dir) if c["step"] > step], tr.optimizer, tr.scheduler)
        tr.state = TrainState.from_saved(saved["state"])
        tr.prompt_source.load_state_dict(copy.deepcopy(tr.state.source))
        ckpt.set_rng_state(ckpt.read_rng(path))
        tr._rng_snapshot = ckpt.rng_state()
        tr.store.truncate_after(tr.state.step)
        tr.resume_notes = plan.notes
        return tr


def frame_of_logs(logs: Sequence[StepLog]) -> pd.DataFrame:
    """The step metrics of a list of StepLogs as one frame (what RunStore.metrics() reads back)."""
    return pd.DataFrame([log.metrics for log in logs])

