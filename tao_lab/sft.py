"""The supervised stage: fine-tune the adapter on trajectories, masked NLL on the policy's own tokens.

It is E3-TIR's "SFT-then-RL" baseline and ET-Agent's phase 1 (fine-tuning on the flywheel's
selected trajectories). The examples come from sft_data.py (demonstrations, expert trajectories,
run stores: Trajectories with mask 1 on the model's text). Reading order:

    SFTConfig             the stage's config (validated when built)
    masked_nll            (B, T, V) logits -> summed NLL over mask > 0 and the token count (pure)
    SFTRun                the loop: seeded data stream, micro-batches, exact accumulation, AdamW over
                          the adapter only, grad clip, LR schedule, run store, checkpoints, resume
    load_sft_policy       a policy with an SFT run's adapter, ready to hand to trainer.Trainer

Choices, stated once:
  - The loss is the token-mean of -log pi(token) over every trainable token (mask > 0) of the
    optimizer batch. Micro-batches accumulate exactly: each one's summed NLL is divided by the
    batch's total token count, so the gradient equals the full batch's [code: TRL's SFTTrainer and
    verl's SFT trainer both token-mean over the loss mask].
  - Micro-batching with right padding, no sequence packing (a batch of a few hundred tokens per row
    is small on CPU, and padding never enters the loss: the mask is built from lengths).
  - The training forward asks for logits only from the first completion position on
    (`logits_to_keep`), and the NLL is taken only at trainable positions: a masked token contributes
    nothing and gets exactly zero gradient.
  - Data order: step s reads examples [s·batch, (s+1)·batch) of an endless stream, a fresh seeded
    permutation per epoch (hooks.seeded_order), so a resumed run reads what the uninterrupted
    one would; optimizer, scheduler and RNG states come back from the checkpoint, which makes a
    resumed run's losses equal the uninterrupted run's (tested).
  - Ctrl-C / SIGTERM: the optimizer step and its bookkeeping run as a critical section of
    interrupts.SignalGuard, as the RL trainer's do; a signal there waits until they are done.

Not covered: packing, full fine-tuning (the adapter only), a KL term to the base model.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from .interrupts import SignalGuard
from .models import ModelConfig, load_model
from .records import RunStore, Trajectory
from .sft_data import SOURCES_HELP, load_examples
from .toolcall import PROTOCOLS

SELECTIONS = ("correct", "reward", "all")
SCHEDULES = ("constant", "cosine")


@dataclass
class SFTConfig:
    """The supervised stage: which trajectories, how long, how the adapter is optimised."""

    data: str = "demos"              # the source, see SOURCES_HELP
    select: str = "correct"          # run-store sources: "correct" (verifier alone) | "reward" | "all"
    min_reward: float = 1.0          # select="reward": keep trajectories with reward >= this
    dedupe: bool = True              # drop repeated (prompt, completion) token sequences, counted
    protocol: str = "fenced"         # demonstrations: which tool protocol (and system prompt)
    template: str = "zero_shot"      # demonstrations: prompt template (zero_shot: SFT teaches what the
                                     # few-shot examples show in context; few_shot: the RL prompt as is)
    n_demos: int = 2                 # demonstrations in the few_shot template
    eos: bool = True                 # demonstrations: end with a trainable end-of-sequence token
    max_len: int = 1024              # prompt + completion tokens; longer examples are dropped, counted
    steps: int = 20                  # optimizer steps in total (resume continues up to this)
    epochs: float = 0.0              # > 0: steps = ceil(epochs x examples / batch_size) instead
    batch_size: int = 8              # examples per optimizer step
    micro_batch_size: int = 4        # examples per forward/backward; batch_size must be a multiple
    lr: float = 1e-4                 # peak learning rate (AdamW)
    schedule: str = "constant"       # "constant" | "cosine" (to 0 at the last step; ET-Agent code)
    warmup_ratio: float = 0.0        # share of the steps with a linear warm-up (ET-Agent code: 0.1)
    weight_decay: float = 0.0        # AdamW decoupled weight decay
    grad_clip: float = 1.0           # max global grad norm; 0 = no clipping
    seed: int = 0                    # adapter init and data order
    out_dir: str = "runs/sft"        # run store folder (config, metrics, the example set, checkpoints)
    save_every: int = 10             # checkpoint every N steps (and at the end, and on interrupt)
    keep_checkpoints: int = 2        # newest complete checkpoints kept on disk
    model: ModelConfig = field(default_factory=ModelConfig)  # the policy; ModelConfig.lora must be on

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        checks = {
            "select": (self.select in SELECTIONS, f"one of {SELECTIONS}"),
            "protocol": (self.protocol in PROTOCOLS, f"one of {PROTOCOLS}"),
            "template": (self.template in ("zero_shot", "few_shot"), "'zero_shot' or 'few_shot'"),
            "n_demos": (self.n_demos >= 0, ">= 0"),
            "max_len": (self.max_len >= 2, ">= 2"),
            "steps": (self.steps >= 0, ">= 0"),
            "epochs": (self.epochs >= 0, ">= 0 (0 = use steps)"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "micro_batch_size": (1 <= self.micro_batch_size <= self.batch_size
                                 and self.batch_size % self.micro_batch_size == 0,
                                 f"in [1, batch_size={self.batch_size}] and divide it"),
            "lr": (self.lr > 0, "> 0"),
            "schedule": (self.schedule in SCHEDULES, f"one of {SCHEDULES}"),
            "warmup_ratio": (0 <= self.warmup_ratio < 1, "in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "grad_clip": (self.grad_clip >= 0, ">= 0 (0 = off)"),
            "save_every": (self.save_every >= 1, ">= 1"),
            "keep_checkpoints": (self.keep_checkpoints >= 1, ">= 1"),
            "model": (self.model.lora, "a ModelConfig with lora=True (only the adapter is trained)"),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"SFTConfig.{name}={getattr(self, name)!r}: must be {allowed}")
        if not self.data.strip():
            raise ValueError(f"SFTConfig.data is empty; give {SOURCES_HELP}")


# ----------------------------------------------------------------------------------------------
# The loss (pure)


def masked_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Summed negative log-likelihood over trainable positions, and their weight.

    logits: (B, T, V), position t predicts targets[:, t]; targets: (B, T) long; mask: (B, T) float,
    > 0 where trained (records.py's mask in these coordinates; a value other than 1 weights the token).
    returns (scalar sum of mask·(-log softmax(logits)[target]) over mask > 0, sum of that mask).
    Only masked-in rows of the logits enter the softmax, so a masked position's gradient is exactly 0.
    """
    sel = mask > 0
    w = mask[sel].float()
    if not w.numel():
        return logits.sum() * 0.0, 0.0
    nll = F.cross_entropy(logits[sel].float(), targets[sel], reduction="none")   # (K,)
    return (nll * w).sum(), float(w.sum())


def forward_nll(model, trajs: list[Trajectory], pad_id: int, device) -> tuple[torch.Tensor, float]:
    """One forward of a micro-batch -> (summed NLL, trainable-token weight); gradients as enabled."""
    from .update import collate

    mb = collate(trajs, [1.0] * len(trajs), pad_id, device)
    T = mb.input_ids.shape[1]
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False,
                logits_to_keep=T - mb.start)
    return masked_nll(out.logits[:, :-1], mb.targets, mb.mask)   # the last position predicts nothing


# ----------------------------------------------------------------------------------------------
# The loop


def lr_factor(step: int, total: int, schedule: str, warmup_ratio: float) -> float:
    """LR multiplier for optimizer step `step` (0-based) of `total`: linear warm-up, then constant
    or cosine to 0 [code: ET-Agent's fine-tuning, cosine with warm-up 0.1]."""
    warm = int(math.ceil(warmup_ratio * total))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    span = max(total - warm, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warm, span) / span))


class SFTRun:
    """Model, examples, AdamW over the adapter, run store and checkpoints; `step()` runs one update.

    model/tok/examples may be handed in (a notebook that already has them); otherwise they are
    loaded from the config (ModelConfig.name="tiny-random" builds the tests' tiny model).
    """

    def __init__(self, cfg: SFTConfig, run_dir=None, *, model=None, tok=None,
                 examples: list[Trajectory] | None = None, write_config: bool = True):
        from .runinfo import git_revision, versions

        self.cfg = cfg
        self.store = RunStore(run_dir or cfg.out_dir)
        if model is None:
            model, tok = load_model(cfg.model, cfg.seed)
        self.model, self.tok = model, tok
        counts = {"examples": len(examples or [])}
        if examples is None:
            examples, counts = load_examples(cfg, tok)
        elif not examples:
            raise ValueError("SFTRun got an empty list of examples")
        elif not any(t.n_sampled for t in examples):
            raise ValueError("no example has a trainable token (mask 1): nothing to learn from")
        self.examples, self.data_counts = list(examples), counts
        self.total_steps = math.ceil(cfg.epochs * len(self.examples) / cfg.batch_size) if cfg.epochs else cfg.steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters; load it with ModelConfig.lora=True")
        self.device = self.params[0].device
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, cfg.schedule, cfg.warmup_ratio))
        self.step_no = 0
        self._rng = ckpt.rng_state()
        if write_config:
            self.store.write_config({"kind": "sft", "sft": asdict(cfg), "data_counts": counts,
                                     "total_steps": self.total_steps, "versions": versions(),
                                     "git_revision": git_revision()})
            self.store.write_step(0, self.examples)   # step 0 of an SFT run store = its training set

    def _pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def batch_indices(self, step: int) -> list[int]:
        """Example indices of optimizer step `step` (1-based): a seeded stream read by position."""
        from .hooks import seeded_order
        B = self.cfg.batch_size
        return seeded_order(len(self.examples), (step - 1) * B, B, self.cfg.seed)[0]

    def step(self) -> dict:
        cfg, s = self.cfg, self.step_no + 1
        t0 = time.perf_counter()
        batch = [self.examples[i] for i in self.batch_indices(s)]
        total = float(sum(t.n_sampled for t in batch))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k in range(0, len(batch), cfg.micro_batch_size):
            nll, _ = forward_nll(self.model, batch[k:k + cfg.micro_batch_size], self._pad_id(), self.device)
            if not torch.isfinite(nll):
                raise FloatingPointError(f"non-finite SFT loss at step {s}")
            (nll / total).backward()      # exact token-mean over the whole batch
            loss_sum += float(nll.detach())
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        guard = SignalGuard()
        with guard.handling(), guard.critical_section():   # a signal waits until the step is recorded
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.model.eval()
            self.step_no = s
            m = {"step": s, "loss": loss_sum / total, "tokens": total, "lr": lr,
                 "grad_norm": float(norm), "examples": len(batch),
                 "epoch": s * cfg.batch_size / len(self.examples), "time/step_s": time.perf_counter() - t0}
            self.store.append_metrics(m)
            self._rng = ckpt.rng_state()
            if s % cfg.save_every == 0 or s == self.total_steps:
                self.save_checkpoint()
        return m

    def train(self, steps: int | None = None, progress: bool = False) -> list[dict]:
        """Run until `steps` optimizer steps in total (default: the config's). Ctrl-C / SIGTERM save a
        checkpoint of the last completed step and re-raise KeyboardInterrupt."""
        target = self.total_steps if steps is None else steps
        logs, bar = [], None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=target, initial=self.step_no, desc="sft", unit="step")
        try:
            while self.step_no < target:
                logs.append(self.step())
                if bar is not None:
                    bar.set_postfix(loss=f"{logs[-1]['loss']:.3f}", refresh=False)
                    bar.update(1)
        except KeyboardInterrupt:
            self.optimizer.zero_grad(set_to_none=True)
            path = self.save_checkpoint() if self.step_no else None
            print(f"\ninterrupted: checkpoint of step {self.step_no} at {path}; continue with "
                  f"`tao-lab sft --resume {self.store.path}`", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.step_no and ckpt.latest(self.store.path) != self.step_no:
            self.save_checkpoint()
        return logs

    @torch.no_grad()
    def nll(self, examples: list[Trajectory] | None = None) -> float:
        """Token-mean NLL of `examples` (default: the training set) under the current adapter."""
        examples = self.examples if examples is None else examples
        self.model.eval()
        tot, n = 0.0, 0.0
        for k in range(0, len(examples), self.cfg.micro_batch_size):
            s, w = forward_nll(self.model, examples[k:k + self.cfg.micro_batch_size], self._pad_id(), self.device)
            tot, n = tot + float(s), n + w
        return tot / max(n, 1.0)

    def save_checkpoint(self) -> Path:
        return ckpt.save(self.store.path, self.step_no, model=self.model, optimizer=self.optimizer,
                         scheduler=self.scheduler, rng=self._rng,
                         state={"kind": "sft", "step": self.step_no, "total_steps": self.total_steps},
                         config=asdict(self.cfg), keep=self.cfg.keep_checkpoints)

    @classmethod
    def resume(cls, run_dir, steps: int | None = None, **kw) -> "SFTRun":
        """Continue an SFT run from its newest complete checkpoint; the stored training set is reused
        and metric lines after that checkpoint are dropped (they are rewritten exactly once)."""
        path = ckpt.latest_path(run_dir)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}; "
                                    "start a new run with `tao-lab sft` instead")
        saved = ckpt.read_state(path)
        if saved["state"].get("kind") != "sft":
            raise ValueError(f"{run_dir} is not an SFT run (continue an RL run with `tao-lab resume`)")
        cfg = SFTConfig(**saved["config"])
        if steps is not None:
            cfg = replace(cfg, steps=steps, epochs=0.0)
        store = RunStore(run_dir)
        run = cls(cfg, run_dir, examples=store.read_step(0), write_config=False, **kw)
        if steps is None:
            run.total_steps = saved["state"]["total_steps"]
        ckpt.load_into(path, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler)
        run.step_no = saved["state"]["step"]
        ckpt.set_rng_state(ckpt.read_rng(path))
        run._rng = ckpt.rng_state()
        store.truncate_after(run.step_no)
        return run


def load_sft_policy(run_dir, model_cfg: ModelConfig | None = None, seed: int = 0):
    """(model, tokenizer) with the adapter of an SFT run's newest checkpoint, for RL:

        model, tok = load_sft_policy("runs/sft", cfg.model)
        Trainer(cfg, "runs/rl", model=model, tok=tok).train()

    `model_cfg` (the RL run's) must have the SFT run's adapter layout (lora_r, target_modules);
    default: the SFT run's own ModelConfig.
    """
    path = ckpt.latest_path(run_dir)
    if path is None:
        raise FileNotFoundError(f"no complete checkpoint under {Path(run_dir) / 'checkpoints'}")
    saved = ckpt.read_state(path)
    if saved["state"].get("kind") != "sft":
        raise ValueError(f"{run_dir} is not an SFT run")
    model_cfg = model_cfg or ModelConfig(**saved["config"]["model"])
    return load_model(replace(model_cfg, init_adapter=str(path)), seed)   # models.load_init_adapter


def apply_overrides(cfg: SFTConfig, overrides: Sequence[str]) -> SFTConfig:
    """"field=value" or "model.field=value" strings, each validated by its dataclass; values are read
    by the same parser as `tao-lab train --set` (presets.parse_value)."""
    import typing

    from .presets import parse_value
    for item in overrides:
        key, eq, text = (s.strip() for s in item.partition("="))
        target = cfg.model if key.startswith("model.") else cfg
        name = key.removeprefix("model.")
        names = {f.name for f in fields(target)}
        if not eq or name not in names or name == "model":
            raise ValueError(f"--set {item!r}: write FIELD=VALUE with FIELD one of {sorted(names - {'model'})} "
                             f"or model.FIELD")
        tp = typing.get_type_hints(type(target))[name]
        value = parse_value(text, tp, key)
        new = replace(target, **{name: value})
        cfg = replace(cfg, model=new) if target is cfg.model else new
    return cfg
