"""ToolExpander: GRPO for weak models [paper: arXiv 2510.07737; no public code].

What it changes, at which stage: the *prompt source* (hard samples, none of N rollouts correct, are
replaced by few-shot demonstrations, re-checked every round), the *schedule* (exponential LR decay
lr_t = lr_0·γ^t [paper], γ [recon]), the *loss* (GRPO without KL [paper]) and the *reward* (+0.01
when the model writes and analyses its own example before answering [paper]; detection [recon]).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class ToolExpanderConfig:
    """Hard-sample replacement knobs (TrainConfig section `toolexpander`)."""

    hard_rollouts: int = 10          # N: a task is hard when none of its last N rollouts is correct [paper]
    round_steps: int = 1             # trainer steps per hardness round [recon]
    n_demos: int = 2                 # k solved demonstrations prepended to a hard task's prompt [recon]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "hard_rollouts", lo=1, integer=True)
        checks.number(self, "round_steps", lo=1, integer=True)
        checks.number(self, "n_demos", lo=1, integer=True)


_EXAMPLE_RE = re.compile(r"<example>\s*\S.*?</example>", re.DOTALL)


def has_self_example(text: str) -> bool:
    """[recon] ToolExpander's self-exemplifying thinking, detected as a non-empty <example> section.

    The paper rewards (+0.01) a model that writes and analyses its own example before answering but
    does not say how that is detected; tao_lab asks for a marked section `<example>...</example>`.
    """
    return bool(_EXAMPLE_RE.search(text or ""))
