"""The optimizer over the adapter parameters and its learning-rate schedule.

OptimConfig (TrainConfig.optim), SCHEDULES (name -> scheduler factory) and make_optimizer: AdamW, or
bitsandbytes' 8-bit paged AdamW on CUDA. A change of these fields between steps reaches the
optimizer through config_changes.apply_optim_changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class OptimConfig:
    """Optimizer over the adapter parameters and the learning-rate schedule."""

    lr: float = 1e-5                 # lr_0
    schedule: str = "constant"       # "constant" | "exponential" (ToolExpander: lr_t = lr_0 · γ^t)
    gamma: float = 0.98              # γ of the exponential schedule, per trainer step [recon: paper gives none]
    weight_decay: float = 0.0        # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moments
    grad_clip: float = 1.0           # max global grad norm (TAO-RL code: 1.0); 0 = no clipping
    optimizer: str = "auto"          # "adamw" | "paged_adamw_8bit" (bitsandbytes, CUDA) | "auto"

    def __post_init__(self):
        from . import checks

        self.betas = tuple(self.betas)
        checks.choice(self, "schedule", SCHEDULES)
        checks.choice(self, "optimizer", ("auto", "adamw", "paged_adamw_8bit"))
        checks.number(self, "lr", lo=0, hi=1, lo_open=True)            # LoRA RL uses 1e-6..1e-4
        checks.number(self, "gamma", lo=0, hi=1, lo_open=True)
        checks.number(self, "weight_decay", lo=0, hi=1)
        checks.number(self, "grad_clip", lo=0)                         # nan would silently turn clipping off
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                           and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimConfig.betas={self.betas!r}: two finite numbers in [0, 1)")


def _constant(_: int) -> float:
    return 1.0


SCHEDULES: dict[str, Callable] = {
    "constant": lambda opt, cfg: torch.optim.lr_scheduler.LambdaLR(opt, _constant),
    "exponential": lambda opt, cfg: torch.optim.lr_scheduler.ExponentialLR(opt, cfg.gamma),  # lr_0·γ^t
}


def make_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig):
    """AdamW on the adapter parameters; 8-bit paged AdamW (bitsandbytes) on CUDA when "auto"."""
    kind = cfg.optimizer
    on_cuda = params[0].device.type == "cuda"
    if kind == "auto":
        kind = "paged_adamw_8bit" if on_cuda else "adamw"
    if kind == "paged_adamw_8bit":
        if not on_cuda:
            raise ValueError("OptimConfig.optimizer='paged_adamw_8bit' needs CUDA; use 'adamw' (or 'auto') on CPU")
        import bitsandbytes as bnb
        opt = bnb.optim.PagedAdamW8bit(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return opt, SCHEDULES[cfg.schedule](opt, cfg)
