"""ET-Agent: behaviour calibration [paper: arXiv 2601.06860; code: asilverlight/ET-Agent].

What it changes, at which stage: the *reward* (efficiency-calibrated: R = correct·f_tool·f_len −
f_fmt, σ annealed over a stage [code]), the *prompt source* (group-wise Pareto sampling of the
questions whose tool counts and correctness vary most [code]) and a *supervised phase* on the
trajectories of a self-evolving data flywheel [paper][code].

The reward's pure functions over one group of G rollouts are below; rewards.score applies them when
RewardConfig.efficiency is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EtAgentConfig:
    """ET-Agent's stage knobs (TrainConfig section `et_agent`)."""

    stages: int = 3                  # curriculum RL stages [paper]
    stage_steps: int = 4             # trainer steps per stage (σ anneals to 0 within a stage)

    def __post_init__(self):
        from .. import checks

        checks.number(self, "stages", lo=1, integer=True)
        checks.number(self, "stage_steps", lo=1, integer=True)


def calibration(x: np.ndarray, sigma: float) -> np.ndarray:
    """f(x) = 2 / (1 + exp(σ · (x − mean(x)))) over one group. x: (G,) -> (G,), values in (0, 2).

    Below the group mean f > 1 (fewer calls / shorter is rewarded), above it f < 1; σ = 0 gives 1.
    """
    x = np.asarray(x, dtype=np.float64)
    z = np.clip(sigma * (x - x.mean()), -700.0, 700.0)  # exp overflows past ~709
    return 2.0 / (1.0 + np.exp(z))


def group_zscore(x: np.ndarray) -> np.ndarray:
    """(x − mean) / std over one group, population std (ddof=0) as in ET-Agent's code; 0 if std = 0."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    return np.zeros_like(x) if std == 0 else (x - x.mean()) / std


def annealed_sigma(sigma: float, step: int, total_steps: int) -> float:
    """σ_eff = σ · max(0, (T − step) / (T − 1)); T = 0 means no annealing.

    Steps count from 1 (the run store's first step is 1): σ_eff = σ at step 1 and 0 from step T on.
    Deviation: the factor is also capped at 1, so step 0 (before training) uses σ, not σ·T/(T−1).
    """
    if total_steps == 0:
        return float(sigma)
    factor = (total_steps - step) / (total_steps - 1)
    return float(sigma) * min(1.0, max(0.0, factor))


def et_agent_rewards(correct: np.ndarray, n_tool_calls: np.ndarray, lengths: np.ndarray,
                     no_answer: np.ndarray, sigma_tool: float, sigma_len: float,
                     format_penalty: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R = correct · f_tool · f_len − format_penalty · no_answer, over one group. All arrays (G,).

    f_tool = calibration(n_tool_calls, σ_tool); f_len = calibration(zscore(lengths), σ_len) (the
    mean of z-scores is 0, so this is f applied to z). Returns (R, f_tool, f_len).
    """
    correct = np.asarray(correct, dtype=np.float64)
    f_tool = calibration(n_tool_calls, sigma_tool)
    f_len = calibration(group_zscore(lengths), sigma_len)
    r = correct * f_tool * f_len - format_penalty * np.asarray(no_answer, dtype=np.float64)
    return r, f_tool, f_len
