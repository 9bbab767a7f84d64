"""E3-TIR: warm-up with expert-prefix anchors, branching and mixed advantages [paper: arXiv 2604.09455;
no public code, so every mechanism below is a labelled reconstruction of the paper's description].

What it changes, at which stage of tao_lab's loop (trainer.Trainer):

  prompt source  per prompt x a plan of G rows: *anchor rows* (B continuations of x ⊕ expert[:k] for
                 each chosen anchor k; expert tokens are forced, mask 0) and *self-exploration rows*
                 from scratch [paper: three experience types; the mix per prompt is a config here]
  boundary       as the self-exploration pass rate p of x rises (an EMA over the verifier's verdicts
                 on its from-scratch rows), the expert share s = clip(1 − p/stop, 0, 1) shrinks and
                 fewer, shorter anchors are used, until x trains as plain RL [paper: "dynamic
                 adjustment of the knowledge boundary"; the formula is recon]
  advantage      A = λ·A_global (GRPO over all rows of x) + (1−λ)·A_tree (GRPO over the siblings that
                 share an anchor; the from-scratch rows are the root's siblings) [paper: mixed policy
                 optimisation; the grouping is recon]. Generated tokens shared by siblings (a trie
                 over each anchor's rows) whose advantages disagree in sign are detached: loss
                 weight 0 [paper: "resolves optimisation conflicts that arise from shared prefixes"].
                 Switch `detach`: "detach" (the paper's reading, default) | "mean" (sharers' mean
                 advantage, ARPO's hard attribution) | "none". Note: on the first on-policy epoch
                 "mean" and "none" give the same gradient (the d sharers' Σ A_i ∇logπ(token) =
                 d·mean·∇logπ); only "detach" changes it.

  guided         [paper: "expert-guided" experience; its form is recon] while x still gets anchors,
                 the full expert trajectory joins x's group as one off-policy row (reward 1: it was
                 verified), mask 1 on the expert's own text, 0 on observations. Its behaviour
                 log-prob is recorded as 0 (the expert wrote it with probability 1), so the clipped
                 surrogate's ratio is π(token) ≤ 1 and the row's gradient is A·∇π: an importance-
                 weighted term that fades where the policy finds the expert unlikely. (This row makes
                 update/logp_rollout_diff_* large: they compare against that recorded 0.) Not built:
                 the SFT-style alternative (ratio fixed at 1). Switch `guided`: "offpolicy" | "none".

Data cost [paper's claim: < 10% of SFT-then-RL's synthetic data]: every step logs the tokens of the
distinct expert trajectories used so far (`e3tir/expert_tokens`), and `expert_tasks` caps how many
training tasks may have an expert at all.

ROI [recon, tao_lab's formula; the paper's 1.46x "ROI" formula is not public]:
    roi = Δacc / ((train_s + token_cost_s · expert_tokens) / 3600)
accuracy points gained per hour, where making one expert token is priced at token_cost_s seconds.

Experts and anchor cuts: e3tir_experts.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..advantages import group_advantages
from ..hooks import MethodHooks, PromptBatch, seeded_order
from ..records import Trajectory, is_correct
from ..update import UpdateBatch
from .e3tir_experts import Expert, anchor_cuts, build_experts, expert_from_demo

DETACH_RULES = ("detach", "mean", "none")


@dataclass
class E3TIRConfig:
    """E3-TIR's knobs (TrainConfig section `e3tir`); G is rollout.group_size."""

    anchors: int = 2                 # most anchors (cut points) used per prompt [recon]
    continuations: int = 2           # B: continuations sampled from each anchor [paper]
    self_rows: int = 1               # G0: from-scratch rows always kept (they measure the pass rate) [recon]
    cuts: str = "calls+prose"        # anchor cuts: "calls" (after each tool call) | "calls+prose" [recon]
    guided: str = "offpolicy"        # the full expert as an off-policy row of the group [paper] | "none"
    lam: float = 0.5                 # λ: weight of the global advantage against the tree advantage [paper]
    detach: str = "detach"           # shared disagreeing prefixes: "detach" [paper] | "mean" | "none"
    boundary: str = "pass_rate"      # "pass_rate": share = clip(1 - p/stop, 0, 1) [recon] | "fixed": share 1
    stop: float = 0.75               # self-exploration pass rate at which a prompt trains as plain RL [recon]
    ema: float = 0.5                 # weight of the newest pass rate in the EMA [recon]
    expert_tasks: int = 0            # data budget: tasks that may have an expert (0 = every task) [recon]
    budget_order: str = "drawn"      # which tasks get the budget [recon]: "drawn" = the first ones the run
                                     # draws (a short run spends its expert data where it trains) |
                                     # "random" = a seeded random subset of the pool (runs before 2026-12-07)
    token_cost_s: float = 0.01       # ROI: seconds it costs to make one expert token [recon]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "anchors", lo=0, integer=True)
        checks.number(self, "continuations", lo=1, integer=True)
        checks.number(self, "self_rows", lo=1, integer=True)
        checks.choice(self, "cuts", ("calls", "calls+prose"))
        checks.choice(self, "guided", ("offpolicy", "none"))
        checks.number(self, "lam", lo=0, hi=1)
        checks.choice(self, "detach", DETACH_RULES)
        checks.choice(self, "boundary", ("pass_rate", "fixed"))
        checks.number(self, "stop", lo=0, lo_open=True, hi=1)
        checks.number(self, "ema", lo=0, lo_open=True, hi=1)
        checks.number(self, "expert_tasks", lo=0, integer=True)
        checks.choice(self, "budget_order", ("drawn", "random"))
        checks.number(self, "token_cost_s", lo=0)


# ----------------------------------------------------------------------------------------------
# Dynamic boundary (pure)


def expert_share(pass_rate: float, stop: float) -> float:
    """[recon] s = clip(1 − p/stop, 0, 1): all expert help while the policy never solves x alone,
    none once its from-scratch pass rate reaches `stop`."""
    return min(1.0, max(0.0, 1.0 - pass_rate / stop))


def pick_anchors(n_cuts: int, share: float, anchors: int) -> list[int]:
    """Indices of the cuts to use (cuts are ordered shortest first): keep the ceil(share·n) shortest,
    then use the longest `anchors` of those. As the share falls, anchors get fewer AND shorter."""
    keep = math.ceil(share * n_cuts - 1e-9)
    return list(range(keep))[max(0, keep - anchors):] if anchors > 0 else []


# ----------------------------------------------------------------------------------------------
# The prompt source


class E3TIRSource:
    """hooks.PromptSource: the tasks in `seeded_order`, each with its plan of G rows."""

    def __init__(self, tasks: Sequence, tok, cfg: E3TIRConfig, *, seed: int, group_size: int,
                 protocol: str = "fenced", obs_max_chars: int = 512, max_new_tokens: int = 512,
                 demos: Sequence = (), pool=None):
        if cfg.self_rows >= group_size and cfg.anchors > 0:
            raise ValueError(f"e3tir.self_rows={cfg.self_rows} leaves no anchor row in a group of "
                             f"rollout.group_size={group_size}; lower it or raise the group size")
        self.tasks, self.tok, self.cfg, self.seed, self.G = list(tasks), tok, cfg, int(seed), group_size
        self.protocol, self.obs_max_chars, self.max_new_tokens = protocol, obs_max_chars, max_new_tokens
        self.pool = pool                                             # a SandboxPool, or None: run_code
        self.demos = {d.prompt: e for d in demos if d.protocol == protocol and (e := expert_from_demo(d))}
        n = min(cfg.expert_tasks or len(self.tasks), len(self.tasks))
        if cfg.budget_order == "drawn":                              # the prompts of the first n draws
            order = seeded_order(len(self.tasks), 0, n, self.seed)[0]
        else:
            order = np.random.default_rng([self.seed, 3]).permutation(len(self.tasks))[:n]
        self.allowed = {self.tasks[i].id for i in order}            # the data budget
        self.experts: dict[str, Expert | None] = {}                  # built lazily, deterministic
        self.build_counts = {"made": 0, "no_solution": 0, "wrong_output": 0}
        self.cursor, self.pass_rate, self.used = 0, {}, {}           # used: expert id -> its tokens
        self.schedule: list[dict[str, Any]] = []                     # per step and prompt (notebook 06)
        self.guided: dict[str, Expert] = {}                          # this step's prompts with anchors

    # -- experts, built the first time a task is drawn
    def expert(self, task) -> Expert | None:
        if task.id not in self.experts:
            self._build([task])
        return self.experts[task.id]

    def _build(self, tasks: Sequence) -> None:
        todo = [t for t in tasks if t.id not in self.experts and t.id in self.allowed and t.prompt not in self.demos]
        made, counts = build_experts(todo, self.protocol, self.obs_max_chars, self.pool) if todo else ({}, {})
        for k, v in counts.items():
            self.build_counts[k] += v
        for t in tasks:
            allowed = t.id in self.allowed
            self.experts.setdefault(t.id, (self.demos.get(t.prompt) or made.get(t.id)) if allowed else None)

    def plan(self, task) -> tuple[list, dict[str, Any]]:
        """G entries (branches.Prefix for anchor rows, None for self-exploration rows) and the plan's facts."""
        c = self.cfg
        p = self.pass_rate.get(task.id, 0.0)
        share = expert_share(p, c.stop) if c.boundary == "pass_rate" else 1.0
        expert = self.expert(task)
        cuts = anchor_cuts(self.tok, expert, self.protocol, c.cuts, self.max_new_tokens) if expert else []
        chosen = [cuts[i] for i in pick_anchors(len(cuts), share, c.anchors)]
        rows = [a for a in chosen for _ in range(c.continuations)][:self.G - c.self_rows]
        facts = {"task_id": task.id, "pass_rate": p, "share": share, "anchors": len(chosen),
                 "anchor_tokens": [len(a.token_ids) for a in chosen], "prefix_rows": len(rows),
                 "self_rows": self.G - len(rows), "expert": expert.task_id if expert and rows else None}
        return rows + [None] * (self.G - len(rows)), facts

    def next_batch(self, step: int, k: int) -> PromptBatch:
        idx, self.cursor = seeded_order(len(self.tasks), self.cursor, k, self.seed)
        tasks = [self.tasks[i] for i in idx]
        self._build(tasks)                                           # one sandbox batch for the step
        prefixes, facts = zip(*(self.plan(t) for t in tasks))
        self.guided = {t.id: self.experts[t.id] for t, f in zip(tasks, facts) if f["expert"] is not None}
        for e in self.guided.values():                               # data cost: each expert counted once
            if e.task_id not in self.used:
                self.used[e.task_id] = len(self.tok.encode(e.text, add_special_tokens=False))
        self.schedule += [{"step": step, **f} for f in facts]
        fed = sum(len(p.token_ids) for rows in prefixes for p in rows if p is not None)
        info = {"data/cursor": self.cursor, "data/epoch": self.cursor / len(self.tasks),
                "e3tir/expert_tokens": float(sum(self.used.values())),          # data cost so far
                "e3tir/expert_trajectories": float(len(self.used)),
                "e3tir/prefix_tokens_fed": float(fed),
                "e3tir/prefix_rows": float(sum(f["prefix_rows"] for f in facts)),
                "e3tir/self_rows": float(sum(f["self_rows"] for f in facts)),
                "e3tir/share": float(np.mean([f["share"] for f in facts])),
                "e3tir/plain_rl_prompts": float(sum(f["prefix_rows"] == 0 for f in facts))}
        return PromptBatch(tasks, prefixes=[list(p) for p in prefixes], info=info)

    def expert_row(self, like: Trajectory) -> Trajectory | None:
        """The off-policy expert row for the group of rollout row `like` (None when its prompt got
        no anchors this step): the expert text as sft_data.text_to_trajectory tokenises it, on `like`'s
        prompt ids, reward 1, behaviour log-prob 0."""
        from ..sft_data import text_to_trajectory

        e = self.guided.get(like.task_id)
        if e is None:
            return None
        row = text_to_trajectory(like.prompt_text, e.text, self.tok, protocol=self.protocol,
                                 task_id=like.task_id, answer=e.answer)
        return replace(row, group_id=like.group_id, prompt_ids=list(like.prompt_ids), reward=1.0, correct=True,
                       sample_idx=-1)

    def observe(self, step: int, batch: PromptBatch, trajs: list) -> dict[str, float]:
        """EMA of each prompt's self-exploration pass rate (rows with no prefix and no parent,
        judged by the verifier: records.is_correct)."""
        own: dict[str, list[bool]] = {}
        for t in trajs:
            if t.prefix_len == 0 and t.parent is None:
                own.setdefault(t.task_id, []).append(is_correct(t))
        for tid, v in own.items():
            rate = float(np.mean(v))
            old = self.pass_rate.get(tid)
            self.pass_rate[tid] = rate if old is None else (1 - self.cfg.ema) * old + self.cfg.ema * rate
        anchored = [is_correct(t) for t in trajs if t.prefix_len > 0]
        return {"e3tir/self_pass_rate": float(np.mean([x for v in own.values() for x in v])) if own else 0.0,
                "e3tir/anchor_pass_rate": float(np.mean(anchored)) if anchored else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "pass_rate": dict(self.pass_rate), "used": dict(self.used)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])
        self.pass_rate = {str(k): float(v) for k, v in state.get("pass_rate", {}).items()}
        self.used = {str(k): int(v) for k, v in state.get("used", {}).items()}


# ----------------------------------------------------------------------------------------------
# Mixed advantage and shared-prefix detaching (pure tensor functions)


def mixed_advantage(rewards: Tensor, group_ids: Tensor, tree_ids: Tensor, lam: float,
                    std: str = "unbiased") -> tuple[Tensor, Tensor, Tensor]:
    """[paper] A = λ·A_global + (1−λ)·A_tree.

    rewards (R,) float; group_ids (R,) int: rows of the same prompt; tree_ids (R,) int: rows that
    share an anchor (the same prompt and the same forced prefix). Returns (A, A_global, A_tree),
    each (R,). λ = 1 is GRPO exactly; A_tree sums to zero over each anchor's siblings.
    """
    a_global, _ = group_advantages(rewards, group_ids, std=std)
    a_tree, _ = group_advantages(rewards, tree_ids, std=std)
    return lam * a_global + (1 - lam) * a_tree, a_global, a_tree


def tree_keys(rows: Sequence, group_ids: Sequence[int]) -> Tensor:
    """(R,) int: one id per (group, forced prefix tokens) — an anchor's siblings share it."""
    seen: dict[tuple, int] = {}
    return torch.tensor([seen.setdefault((g, tuple(t.token_ids[:t.prefix_len])), len(seen))
                         for t, g in zip(rows, group_ids)], dtype=torch.long)


def trie_nodes(token_rows: Sequence[Sequence[int]], starts: Sequence[int], tree_ids: Sequence[int]) -> list[Tensor]:
    """Per row a (n_i,) long tensor: the trie node of each token among the rows of its tree, -1 on
    the forced prefix (before `starts[i]`). Two tokens share a node iff their rows are in the same
    tree and agree on every generated token up to and including it."""
    nodes: dict[tuple, int] = {}
    out = []
    for toks, s, tree in zip(token_rows, starts, tree_ids):
        ids, parent = [-1] * s, ("root", int(tree))
        for tok in toks[s:]:
            parent = nodes.setdefault((parent, int(tok)), len(nodes))
            ids.append(parent)
        out.append(torch.tensor(ids, dtype=torch.long))
    return out


def shared_prefix_rule(node_ids: Tensor, row_of_token: Tensor, row_adv: Tensor,
                       rule: str = "detach") -> tuple[Tensor, Tensor]:
    """Per-token advantage and loss weight on a tree of sibling rows.

    node_ids (T,) long: trie node per token (-1: not a generated token); row_of_token (T,) long;
    row_adv (R,). Returns (token_adv (T,), token_weight (T,)):
      detach [paper]  weight 0 on a token whose sharers' advantages include both signs
      mean            the sharers' mean advantage (weight 1)
      none            the row's own advantage (weight 1)
    """
    if rule not in DETACH_RULES:
        raise ValueError(f"detach rule {rule!r}; choose from {DETACH_RULES}")
    a = row_adv[row_of_token].double()
    weight = torch.ones_like(a)
    live = node_ids >= 0
    if rule == "none" or not bool(live.any()):
        return a.to(row_adv.dtype), weight.to(row_adv.dtype)
    nid = node_ids.clamp(min=0)
    n = int(nid.max()) + 1
    ones = live.double()

    def per_node(x: Tensor) -> Tensor:
        return torch.zeros(n, dtype=torch.float64).index_add_(0, nid, x * ones)[nid]

    if rule == "detach":
        mixed = (per_node((a > 0).double()) > 0) & (per_node((a < 0).double()) > 0)
        weight = torch.where(live & mixed, torch.zeros_like(weight), weight)
    else:
        a = torch.where(live, per_node(a) / per_node(torch.ones_like(a)).clamp(min=1), a)
    return a.to(row_adv.dtype), weight.to(row_adv.dtype)


class E3TIRAdvantage:
    """hooks.AdvantageFn: mixed advantages per row, the shared-prefix rule per token (UpdateBatch.
    token_adv for "mean", token_weight for "detach"), plus one off-policy expert row per guided
    group when given the source (cfg.guided = "offpolicy"). `last` keeps the tensors for notebook 06."""

    def __init__(self, cfg: E3TIRConfig, source: E3TIRSource | None = None):
        self.cfg, self.source = cfg, source
        self.last: dict[str, Any] = {}

    def _with_expert_rows(self, rows: list, fres) -> tuple[list, list[int], list[float], list[float], list[float]]:
        """rows + one expert row per guided group (their rewards 1, weights 1, adv scale 1, own trees)."""
        rewards = list(fres.row_rewards) if fres.row_rewards else [float(t.reward) for t in rows]
        gids, weights, scale = list(fres.group_ids), list(fres.weights), list(fres.adv_scale or [1.0] * len(rows))
        if self.source is None or self.cfg.guided == "none":
            return rows, gids, rewards, weights, scale
        first = {}
        for t, g in zip(rows, gids):
            first.setdefault(g, t)
        extra = [(g, e) for g, t in first.items() if (e := self.source.expert_row(t))]   # t.group_id == g
        return (rows + [e for _, e in extra], gids + [g for g, _ in extra], rewards + [1.0] * len(extra),
                weights + [1.0] * len(extra), scale + [1.0] * len(extra))

    def __call__(self, trajs, fres, std: str = "unbiased"):
        rows = fres.select(trajs)
        if not rows:
            return UpdateBatch([], torch.zeros(0), [], 0), torch.zeros(0), {}
        n_roll = len(rows)
        rows, gids, rewards, weights, scale = self._with_expert_rows(rows, fres)
        rewards, groups = torch.tensor(rewards), torch.tensor(gids)
        trees = tree_keys(rows[:n_roll], gids[:n_roll])
        trees = torch.cat([trees, torch.arange(len(rows) - n_roll) + len(trees)])   # an expert row: its own tree
        adv, a_global, a_tree = mixed_advantage(rewards, groups, trees, self.cfg.lam, std)
        if fres.adv_scale:
            adv = adv * torch.tensor(scale, dtype=adv.dtype)
        nodes = trie_nodes([t.token_ids for t in rows], [t.prefix_len for t in rows], trees.tolist())
        owner = torch.cat([torch.full((len(x),), i, dtype=torch.long) for i, x in enumerate(nodes)])
        tok_adv, tok_w = shared_prefix_rule(torch.cat(nodes), owner, adv, self.cfg.detach)
        sizes = [len(x) for x in nodes]
        tok_adv, tok_w = list(tok_adv.split(sizes)), list(tok_w.split(sizes))
        keep = [i for i, w in enumerate(weights) if w > 0]
        batch = UpdateBatch([rows[i] for i in keep], adv[keep], [weights[i] for i in keep], len(rows) - len(keep),
                            token_adv=[tok_adv[i] for i in keep] if self.cfg.detach == "mean" else None,
                            token_weight=[tok_w[i] for i in keep] if self.cfg.detach == "detach" else None)
        sampled, shared = torch.cat([torch.tensor(t.mask, dtype=torch.bool) for t in rows]), torch.cat(nodes)
        counts = torch.bincount(shared.clamp(min=0), minlength=1)[shared.clamp(min=0)]
        _, gmetrics = group_advantages(rewards, groups, std=std)
        metrics = {**gmetrics, "e3tir/expert_rows": float(len(rows) - n_roll),
                   "e3tir/detached_tokens": float(((torch.cat(tok_w) == 0) & sampled).sum()),
                   "e3tir/shared_tokens": float(((shared >= 0) & (counts > 1) & sampled).sum()),
                   "e3tir/anchors": float(len(set(trees[:n_roll].tolist()))),
                   "e3tir/adv_tree_abs": float(a_tree.abs().mean())}
        self.last = {"rows": rows, "adv": adv, "a_global": a_global, "a_tree": a_tree, "tree_ids": trees,
                     "nodes": nodes, "token_adv": tok_adv, "token_weight": tok_w, "n_rollout_rows": n_roll}
        return batch, adv, metrics


# ----------------------------------------------------------------------------------------------
# ROI, the arm and its hooks


def roi(delta_acc: float, train_s: float, expert_tokens: float, token_cost_s: float) -> float:
    """[recon, tao_lab's formula] accuracy points gained per hour of cost, the expert data priced
    in seconds: Δacc / ((train_s + token_cost_s · expert_tokens) / 3600)."""
    cost_s = train_s + token_cost_s * expert_tokens
    if cost_s <= 0:
        raise ValueError(f"roi: train_s + token_cost_s·expert_tokens = {cost_s} must be > 0")
    return 3600.0 * delta_acc / cost_s


def e3tir_arm(cfg):
    """GRPO's switches (no filter, no shaping) with method="e3tir": its hooks do the rest."""
    from .arms import grpo

    return replace(grpo(cfg), method="e3tir")


def build_hooks(cfg, tasks, tok) -> MethodHooks:
    """methods.arms.HOOKS["e3tir"]: the anchor source (bundled demos as extra experts) and the
    mixed advantage (which asks the source for this step's off-policy expert rows)."""
    from ..tasks import load_demos

    r = cfg.rollout
    source = E3TIRSource(tasks, tok, cfg.e3tir, seed=cfg.seed, group_size=r.group_size, protocol=r.protocol,
                         obs_max_chars=r.obs_max_chars, max_new_tokens=r.max_new_tokens, demos=load_demos())
    return MethodHooks(prompt_source=source, advantage_fn=E3TIRAdvantage(cfg.e3tir, source))
