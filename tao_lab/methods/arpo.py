"""ARPO: entropy-based adaptive branching at tool junctures [code: dongguanting/ARPO].

What it changes, at which stage: the *rollout*. Per prompt, M initial rollouts (rollout.group_size)
start; after each tool result the entropy of the next k sampled tokens is compared with the row's
own initial entropy, and the row forks there with probability p = clip(α + β·ΔH, 0, 1) until the
group budget G is filled. Defaults are the code's: M 8 of G 16 (here set by the preset), k ≤ 20,
α 0.5, β 0.2.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ArpoConfig:
    """ARPO's branching knobs (TrainConfig section `arpo`); M is rollout.group_size."""

    total_rollouts: int = 8          # G: rows per prompt after branching (code: 16 with M = 8)
    k_tokens: int = 20               # tokens after a tool result whose entropy is compared [code: <= 20]
    alpha: float = 0.5               # base branch probability [code]
    beta: float = 0.2                # entropy slope [code]
    entropy: str = "full"            # "full": recorded full-vocabulary entropy | "top10_proxy" [code]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "total_rollouts", lo=1, integer=True)
        checks.number(self, "k_tokens", lo=1, integer=True)
        checks.number(self, "alpha", lo=0, hi=1)
        checks.number(self, "beta", lo=-10, hi=10)
        checks.choice(self, "entropy", ("full", "top10_proxy"))


def arpo_branch_probability(delta_h: Tensor | float, base: float = 0.5, beta: float = 0.2) -> Tensor | float:
    """ARPO [code]: probability of branching at a tool juncture, clip(base + beta·ΔH, 0, 1).

    ΔH = entropy after the tool result minus the rollout's initial entropy.
    """
    if isinstance(delta_h, Tensor):
        return (base + beta * delta_h).clamp(0.0, 1.0)
    return min(1.0, max(0.0, base + beta * float(delta_h)))
