"""The arms a comparison can run (METHODS.md §1.3 and the seed methods), as switches on one loop.

ARMS[name](cfg) -> cfg sets the algorithm's switches on a sized config (presets.make_config applies
it between the preset and the `--set` overrides). Every arm shares the loss (clip-higher 0.2/0.28,
dual clip 3, token-mean, no KL) unless its paper says otherwise, so a comparison isolates what the
method changes:

    grpo          plain GRPO: no filter, no shaping, every group trained (all-equal groups get A = 0)
    simpletir     GRPO + SimpleTIR masks: overlong and void-turn trajectories get loss weight 0
    tao           TAO-RL, paper reading: overlong -> void turn -> Filter B -> Filter A (drop, before
                  the advantage) -> refill to B groups; Ã = A(1 + 0.01 g z) on post-tool tokens, z
                  per trajectory, entropy detached
    tao_code      TAO-RL as the authors' public config runs it: Filter A off (its mode set to "mask"
                  so `filter.rules` + filter_a reproduces the code), gate on all tokens, z over the
                  micro-batch, no detach, a micro-batch without gated tokens reshapes all of them
    dapo          GRPO + DAPO dynamic sampling: Filter B, then fresh prompts until B groups survive
    arpo          GRPO's switches; ARPO's rollout forks at tool junctures by entropy (methods/arpo.py)
    e3tir         GRPO switches; expert-anchor prompt source, dynamic boundary and mixed advantage
                  with shared-prefix detaching come from its hooks (methods/e3tir.py)
    et_agent      GRPO + ET-Agent's efficiency reward (σ annealed per stage) and Pareto-sampled
                  questions per stage (methods/et_agent.py)
    toolexpander  GRPO, no KL, lr_0·γ^t, +0.01 self-example bonus; hard tasks (0 of N correct) get
                  few-shot-augmented prompts (methods/toolexpander.py)

HOOKS[name](cfg, tasks, tok) -> hooks.MethodHooks gives an arm its prompt source, reward and
advantage replacements; an arm without an entry runs the loop's defaults.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..advantages import ShapingConfig
from .arpo import arm as arpo_arm
from .e3tir import e3tir_arm
from .et_agent import arm as et_agent_arm
from .toolexpander import toolexpander_arm


def grpo(cfg):
    return replace(cfg, method="grpo", filter=replace(cfg.filter, rules=(), refill="none"),
                   shaping=replace(cfg.shaping, kind="none"))


def simpletir(cfg):
    return replace(cfg, method="simpletir", filter=replace(cfg.filter, rules=("overlong", "void_turn"), refill="none"),
                   shaping=replace(cfg.shaping, kind="none"))


def tao(cfg):
    return replace(cfg, method="tao",
                   filter=replace(cfg.filter, rules=("overlong", "void_turn", "filter_b", "filter_a"),
                                  filter_a_mode="drop", refill="duplicate"),
                   shaping=ShapingConfig(kind="tao", coef=0.01, gate="post_tool", z_scope="trajectory", detach=True))


def tao_code(cfg):
    return replace(cfg, method="tao_code",
                   filter=replace(cfg.filter, rules=("overlong", "void_turn", "filter_b"),
                                  filter_a_mode="mask", filter_a_strength=1.0, refill="duplicate"),
                   shaping=ShapingConfig(kind="tao", coef=0.01, gate="all_tokens", z_scope="micro_batch",
                                         detach=False, empty_gate_fallback=True))


def dapo(cfg):
    return replace(cfg, method="dapo", filter=replace(cfg.filter, rules=("filter_b",), refill="dynamic"),
                   shaping=replace(cfg.shaping, kind="none"))


ARMS: dict[str, Callable] = {
    "grpo": grpo, "simpletir": simpletir, "tao": tao, "tao_code": tao_code, "dapo": dapo,
    "arpo": arpo_arm,
    "e3tir": e3tir_arm,
    "et_agent": et_agent_arm,   # GRPO + efficiency reward; Pareto prompts via HOOKS (methods/et_agent.py)
    "toolexpander": toolexpander_arm,
}

# name -> build(cfg, tasks, tok) -> hooks.MethodHooks (imported lazily: method files may be heavy)
HOOKS: dict[str, str] = {
    "arpo": ".arpo:build_hooks",
}
HOOKS["e3tir"] = ".e3tir:build_hooks"
HOOKS["et_agent"] = ".et_agent:build_hooks"
HOOKS["toolexpander"] = ".toolexpander:build_hooks"


def method_hooks(cfg, tasks, tok):
    """The MethodHooks of cfg.method (an empty one when the arm changes only switches)."""
    from importlib import import_module

    from ..hooks import MethodHooks

    spec = HOOKS.get(cfg.method)
    if spec is None:
        return MethodHooks()
    module, _, name = spec.partition(":")
    return getattr(import_module(module, __package__), name)(cfg, tasks, tok)
