"""E3-TIR: warm-up with expert-prefix anchors, branching and mixed advantages [paper: arXiv 2604.09455;
no public code, so every mechanism here is a reconstruction of the paper's description].

What it changes, at which stage: the *prompt source* (rows continue from prefixes of expert
trajectories cut at tool-call boundaries: the anchors), the *rollout* (branches around the anchors),
and the *advantage* (λ·global + (1−λ)·tree advantage; shared generated prefixes whose siblings
disagree in sign are detached).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class E3TIRConfig:
    """E3-TIR's knobs (TrainConfig section `e3tir`)."""

    anchors: int = 2                 # expert anchors (cut points) per prompt [recon]
    continuations: int = 2           # B: continuations sampled from each anchor [paper]
    lam: float = 0.5                 # λ: weight of the global advantage against the tree advantage [paper]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "anchors", lo=0, integer=True)
        checks.number(self, "continuations", lo=1, integer=True)
        checks.number(self, "lam", lo=0, hi=1)
