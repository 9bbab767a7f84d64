"""ARPO: entropy-based adaptive branching at tool junctures [code: dongguanting/ARPO].

What it changes, at which stage: the *rollout* (and, as an option, the advantage's attribution).

1. Budget [code]. Per prompt, M initial rollouts start (rollout.group_size) and the group may grow
   to G = ArpoConfig.total_rollouts rows (the code: M 8 of G 16).
2. Initial entropy [code]. H_0 of a row is the mean entropy of its first k sampled tokens (of its
   first sampled turn). It is the row's *own* and lives in one batch: a fresh `ArpoBranching` is
   made per batch. The code keeps H_0 in a dictionary keyed by the row's index that is never reset,
   so from the second batch on a row is compared with the H_0 of whatever rollout had that index in
   an earlier batch: a bug, not a design choice; tao_lab does not reproduce it.
3. Junctures [code]. A tool juncture is the start of a turn that follows a tool call (right after
   the forced observation). Once the row has sampled k tokens of that turn (or the turn closed
   earlier), ΔH = mean entropy of those tokens - H_0 and the row forks AT the juncture (the child
   re-samples the turn from the observation on) with p = clip(α + β·ΔH, 0, 1), drawn from a
   generator seeded by [seed, step]. At most one fork per trajectory per juncture; a child never
   re-decides the junctures it inherited from its parent (those at or before its branch position);
   no decision while the prompt has no free row.
4. Fill [code]. When every row of a prompt has finished and rows are left, they are filled with
   fresh rollouts from the prompt (Fork(pos=0)), all at once [recon: the code's fill order is
   not a choice that changes the group].
5. Entropy [code/recon]. "full": the mean full-vocabulary entropy of the k tokens, which the rollout
   already records (default, tao_lab's); "top10_proxy": the code's score, the top-10 log-probs of the
   k positions put in one bag, -Σ p·log p (not renormalised, so SUMMED over positions) / ln|V| (the
   rollout records the per-position terms only when a branch policy sets `topk_logprobs`).
   Measure: "after_result" [paper, default] reads the k tokens written right after the tool result
   and forks at the result (the child re-samples them). "previous_turn" [code] is what the code's
   loop does: when a round ends in a call it decides at once, from the first k tokens of the round
   that *made* the call (the reaction to the previous result; ΔH = 0 exactly at the first call),
   and a forked child takes its baseline from its own first round after the fork.
6. Advantage [code]. "soft" (the code's default): plain GRPO over all G rows of the group; a shared
   prefix token appears once per row that carries it, each time with that row's advantage.
   "hard": a token shared by d trained rows gets the mean of their d advantages
   (`tree_token_advantages`). On-policy, in the first (and only) optimizer step of a batch, both
   give the same gradient: the d copies of a shared token have the same log-prob and ratio 1
   (inside every clip), so soft's Σ_j A_j ∇log π equals hard's d · mean_j(A_j) ∇log π, and the
   token-mean denominator counts the same tokens. They differ once the ratio moves (several epochs
   or mini-batch steps: the clip then acts per copy by the sign of A_j) or when shaping multiplies
   the advantage per row.

The rollout side lives in rollout.generate (forks copy the KV cache at the juncture: no re-prefill;
records, masks and the post-tool gate are per trajectory with parent / branch_pos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..branches import Fork
from ..hooks import MethodHooks, PromptBatch, SeededStream


@dataclass
class ArpoConfig:
    """ARPO's branching knobs (TrainConfig section `arpo`); M is rollout.group_size."""

    total_rollouts: int = 8          # G: rows per prompt after branching (code: 16 with M = 8)
    k_tokens: int = 20               # tokens after a tool result whose entropy is compared [code: <= 20]
    alpha: float = 0.5               # base branch probability [code]
    beta: float = 0.2                # entropy slope [code]
    entropy: str = "full"            # "full": recorded full-vocabulary entropy | "top10_proxy" [code]
    measure: str = "after_result"    # ΔH from the k tokens after the result [paper] | "previous_turn" [code]
    attribution: str = "soft"        # "soft": GRPO over all rows [code default] | "hard": shared-token mean
    seed: int = 0                    # branch draws are seeded by [seed, run seed, step]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "total_rollouts", lo=1, integer=True)
        checks.number(self, "k_tokens", lo=1, integer=True)
        checks.number(self, "alpha", lo=0, hi=1)
        checks.number(self, "beta", lo=-10, hi=10)
        checks.choice(self, "entropy", ("full", "top10_proxy"))
        checks.choice(self, "measure", ("after_result", "previous_turn"))
        checks.choice(self, "attribution", ("soft", "hard"))
        checks.number(self, "seed", lo=0, integer=True)


def arpo_branch_probability(delta_h: Tensor | float, base: float = 0.5, beta: float = 0.2) -> Tensor | float:
    """ARPO [code]: probability of branching at a tool juncture, clip(base + beta·ΔH, 0, 1).

    ΔH = entropy after the tool result minus the rollout's initial entropy.
    """
    if isinstance(delta_h, Tensor):
        return (base + beta * delta_h).clamp(0.0, 1.0)
    return min(1.0, max(0.0, base + beta * float(delta_h)))


def topk_entropy(logits: Tensor, temperature: float, k: int = 10) -> Tensor:
    """The code's entropy proxy: logits (R, V) -> (R,) = -Σ_{top-k} p·log p / ln V, at the sampling
    temperature (p from the full softmax, only the k largest terms summed) [code]."""
    logp = torch.log_softmax(logits.float() / (temperature or 1.0), dim=-1)
    top = logp.topk(min(k, logp.shape[-1]), dim=-1).values
    return -(top.exp() * top).sum(-1) / math.log(logp.shape[-1])


# ----------------------------------------------------------------------------------------------
# The branch policy


@dataclass
class Juncture:
    """One decided tool juncture (telemetry)."""

    task: int
    sample_idx: int
    turn: int                 # the turn that follows the tool call
    pos: int                  # its first completion position (where a child continues)
    delta_h: float
    p: float
    branched: bool


class ArpoBranching:
    """A branches.BranchPolicy for one batch: forks at tool junctures by ΔH, then fresh rows.

    episodes[task] are episode.Episode objects (.traj, .turn_starts, .done, .waiting); free[task]
    is how many rows the task still has. Every decision is recorded in `junctures`.
    """

    def __init__(self, cfg: ArpoConfig, seed: Sequence[int] | int = 0):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.topk_logprobs = 10 if cfg.entropy == "top10_proxy" else 0   # asks the rollout to record it
        self.h0: dict[tuple[int, int], float] = {}       # (task, sample_idx) -> H_0, this batch only
        self.decided: set[tuple[int, int, int]] = set()  # (task, sample_idx, juncture pos)
        self.junctures: list[Juncture] = []
        self.fresh_rows = 0
        self.skipped_full = 0                             # junctures met with no free row left

    # -- entropies
    def _entropy(self, ep, positions: list[int]) -> float:
        if self.cfg.entropy == "full":
            return float(np.mean([ep.traj.entropies[i] for i in positions]))
        rec = getattr(ep, "topk_entropy", None)
        if rec is None:
            raise RuntimeError("entropy='top10_proxy' needs episode.Episode.topk_entropy (rollout.py records "
                               "it when the branch policy sets topk_logprobs)")
        return float(sum(rec[i] for i in positions))     # [code] one bag over the k positions: a sum

    def initial_entropy(self, task: int, ep) -> float | None:
        """[code] H_0: entropy of the row's first k sampled tokens of its first sampled turn (None until
        they exist or the turn closed). A child shares those tokens with its parent, so it shares its
        H_0; under measure="previous_turn" it starts from its first turn after the fork [code]."""
        key = (task, ep.traj.sample_idx)
        if key not in self.h0:
            tr, k = ep.traj, self.cfg.k_tokens
            lo = (tr.branch_pos or 0) if self.cfg.measure == "previous_turn" else 0
            first = next((i for i in range(lo, len(tr.mask)) if tr.mask[i] == 1), None)
            if first is None:
                return None
            turn = tr.turn_idx[first]
            pos = [i for i in range(first, len(tr.mask)) if tr.mask[i] == 1 and tr.turn_idx[i] == turn][:k]
            closed = ep.done or ep.waiting or tr.n_turns - 1 > turn
            if len(pos) < k and not closed:
                return None
            self.h0[key] = self._entropy(ep, pos)
        return self.h0[key]

    def window(self, ep, turn: int) -> list[int] | None:
        """[code] Positions of the first k sampled tokens of `turn` (None while fewer exist and it is
        open; a turn closed by a call or the end with fewer than k is read as it is [recon])."""
        tr, start = ep.traj, ep.turn_starts[turn]
        pos = [i for i in range(start, len(tr.mask)) if tr.mask[i] == 1 and tr.turn_idx[i] == turn][:self.cfg.k_tokens]
        closed = ep.done or ep.waiting or len(ep.turn_starts) > turn + 1
        return pos if pos and (len(pos) >= self.cfg.k_tokens or closed) else None

    # -- decisions
    def open_junctures(self, task: int, ep) -> list[int]:
        """Turns of this row that follow a tool call and are still undecided. A child's junctures at
        or before its branch position were its parent's to decide."""
        tr = ep.traj
        lo = tr.branch_pos if tr.branch_pos is not None else -1
        return [j for j in range(1, len(ep.turn_starts))
                if ep.turn_starts[j] > lo and ep.turn_starts[j] >= tr.prefix_len
                and (task, tr.sample_idx, ep.turn_starts[j]) not in self.decided]

    def __call__(self, episodes: list[list], free: list[int]) -> list[Fork]:
        forks: list[Fork] = []
        free = list(free)
        for t, eps in enumerate(episodes):
            for ep in list(eps):
                for turn in self.open_junctures(t, ep):
                    fork = self.decide(t, ep, turn, free)
                    if fork is not None:
                        forks.append(fork)
                        free[t] -= 1
            # [code] leftover rows: fresh rollouts once every row of the prompt has finished
            if free[t] > 0 and eps and all(e.done for e in eps) and not any(f.task == t for f in forks):
                forks += [Fork(task=t, sample_idx=eps[0].traj.sample_idx, pos=0)] * free[t]
                self.fresh_rows += free[t]
                free[t] = 0
        return forks

    def decide(self, task: int, ep, turn: int, free: list[int]) -> Fork | None:
        """Decide one juncture once its k-token window is known; a Fork at its start or None."""
        win = self.window(ep, turn if self.cfg.measure == "after_result" else turn - 1)
        h0 = self.initial_entropy(task, ep)
        if win is None or h0 is None:
            return None                                   # not yet measurable: ask again next step
        pos = ep.turn_starts[turn]
        self.decided.add((task, ep.traj.sample_idx, pos))
        if free[task] <= 0:
            self.skipped_full += 1
            return None
        dh = self._entropy(ep, win) - h0
        p = arpo_branch_probability(dh, self.cfg.alpha, self.cfg.beta)
        branched = bool(self.rng.random() < p)
        self.junctures.append(Juncture(task, ep.traj.sample_idx, turn, pos, dh, p, branched))
        return Fork(task=task, sample_idx=ep.traj.sample_idx, pos=pos) if branched else None

    def metrics(self) -> dict[str, float]:
        """Branching telemetry of this batch (the caller prefixes it, e.g. `arpo/`)."""
        js = self.junctures
        b = [j for j in js if j.branched]
        nb = [j for j in js if not j.branched]

        def mean(xs):
            return float(np.mean(xs)) if xs else float("nan")

        return {
            "junctures": float(len(js)), "branches": float(len(b)), "fresh_rows": float(self.fresh_rows),
            "skipped_full": float(self.skipped_full),
            "branch_rate": len(b) / len(js) if js else float("nan"), "p_mean": mean([j.p for j in js]),
            "delta_h_branched": mean([j.delta_h for j in b]), "delta_h_not": mean([j.delta_h for j in nb]),
            "branch_turn_mean": mean([j.turn for j in b]), "branch_pos_mean": mean([j.pos for j in b]),
        }


# ----------------------------------------------------------------------------------------------
# The prompt source: the default stream, one fresh branching policy per batch


class ArpoSource:
    """hooks.PromptSource: SeededStream's prompts, each batch with its own ArpoBranching (seeded by
    [arpo.seed, run seed, step], so H_0 and the draws never leak between batches) and max_rows = G."""

    def __init__(self, cfg: ArpoConfig, tasks: Sequence, seed: int):
        self.cfg, self.seed = cfg, int(seed)
        self.stream = SeededStream(tasks, seed)
        self.policy: ArpoBranching | None = None

    def next_batch(self, step: int, k: int) -> PromptBatch:
        batch = self.stream.next_batch(step, k)
        self.policy = ArpoBranching(self.cfg, [self.cfg.seed, self.seed, int(step)])
        return replace(batch, branch_policy=self.policy, max_rows=self.cfg.total_rollouts)

    def observe(self, step: int, batch: PromptBatch, trajs: list) -> dict[str, float]:
        pol = batch.branch_policy if isinstance(batch.branch_policy, ArpoBranching) else self.policy
        out = {f"arpo/{k}": v for k, v in (pol.metrics() if pol is not None else {}).items()}
        groups = {t.group_id for t in trajs}
        out["arpo/rows_per_group"] = len(trajs) / max(len(groups), 1)
        n = max(len(trajs), 1)
        out["arpo/tool_calls_per_traj"] = sum(t.n_tool_calls for t in trajs) / n
        # calls each row ran itself (a child's copies of its parent's calls ran once, in the parent)
        out["arpo/own_tool_calls_per_traj"] = sum(_own_calls(t) for t in trajs) / n
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


def _own_calls(t) -> int:
    """Tool calls a trajectory ran itself: a child's calls before its branch turn are copies."""
    if t.branch_pos is None or t.branch_pos >= len(t.turn_idx):
        return t.n_tool_calls if t.branch_pos is None else 0
    return sum(c.turn >= t.turn_idx[t.branch_pos] for c in t.tool_calls)


# ----------------------------------------------------------------------------------------------
# Advantage attribution on the tree


def _segments(tr, key, by_key: dict) -> list[tuple[tuple, int, int]]:
    """[(owner node, start, end)] covering tr's completion positions: a position before a row's
    branch_pos was written by (is a copy of) its parent's token there, recursively."""
    out, node, hi, seen = [], tr, len(tr.token_ids), set()
    k = key
    while hi > 0:
        lo = node.branch_pos if node.parent is not None and node.branch_pos is not None else 0
        pkey = (k[0], node.parent)
        if lo > 0 and (pkey not in by_key or pkey in seen):
            lo = 0                                        # ancestor unknown: the row owns its tokens
        if lo < hi:
            out.append((k, lo, hi))
            hi = lo
        if hi == 0:
            break
        seen.add(k)
        node, k = by_key[pkey], pkey
    return out


def tree_token_advantages(rows: Sequence, adv: Tensor, all_trajs: Sequence,
                          row_groups: Sequence[int] | None = None) -> list[Tensor]:
    """Hard attribution [code]: a completion token shared by d trained rows gets the mean of their
    advantages; a token only one trained row carries keeps that row's advantage.

    rows:      R trained trajectories (their own group_id / parent / branch_pos define the tree)
    adv:       (R,) advantage per row
    all_trajs: every trajectory of the step (ancestors that were not trained still define sharing)
    row_groups: per row, the group whose rows may share (default its group_id; a refill duplicate
               has its own)
    returns    per row a (n_i,) float tensor, n_i = len(rows[i].token_ids)
    """
    if len(rows) != adv.shape[0]:
        raise ValueError(f"tree_token_advantages: {len(rows)} rows for {adv.shape[0]} advantages")
    groups = list(row_groups) if row_groups is not None else [t.group_id for t in rows]
    by_key = {(t.group_id, t.sample_idx): t for t in all_trajs}
    by_key.update({(t.group_id, t.sample_idx): t for t in rows if (t.group_id, t.sample_idx) not in by_key})
    segs = [_segments(t, (t.group_id, t.sample_idx), by_key) for t in rows]
    total: dict[tuple, Tensor] = {}
    count: dict[tuple, Tensor] = {}
    for i, (g, ss) in enumerate(zip(groups, segs)):
        for owner, lo, hi in ss:
            key = (g, owner)
            n = len(by_key[owner].token_ids) if owner in by_key else hi
            if key not in total:
                total[key], count[key] = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
            total[key][lo:hi] += float(adv[i])
            count[key][lo:hi] += 1
    out = []
    for i, (g, ss) in enumerate(zip(groups, segs)):
        a = torch.zeros(len(rows[i].token_ids), dtype=torch.float64)
        for owner, lo, hi in ss:
            a[lo:hi] = total[(g, owner)][lo:hi] / count[(g, owner)][lo:hi]
        out.append(a.float())
    return out


class ArpoAdvantage:
    """hooks.AdvantageFn: GRPO over every row of the group ("soft"), plus per-token tree
    advantages ("hard")."""

    def __init__(self, attribution: str = "soft"):
        self.attribution = attribution

    def __call__(self, trajs, fres, std):
        from ..update import compute_advantages

        batch, adv_all, metrics = compute_advantages(trajs, fres, std)
        if self.attribution != "hard" or not batch.trajs:
            return batch, adv_all, metrics
        keep = [i for i, w in enumerate(fres.weights) if w > 0]      # compute_advantages' kept rows
        rows = [trajs[fres.index[i]] for i in keep]                   # originals: tree by group_id
        tok_adv = tree_token_advantages(rows, batch.adv, trajs, [fres.group_ids[i] for i in keep])
        shared = sum(int((ta != float(a)).sum()) for ta, a in zip(tok_adv, batch.adv))
        metrics = {**metrics, "arpo/hard_changed_tokens": float(shared)}
        return replace(batch, token_adv=tok_adv), adv_all, metrics


# ----------------------------------------------------------------------------------------------
# The arm


def arm(cfg):
    """`--method arpo`: GRPO's switches (no filter, no shaping), ARPO's rollout and advantage hooks."""
    from .arms import grpo

    return replace(grpo(cfg), method="arpo")


def build_hooks(cfg, tasks, tok) -> MethodHooks:
    """methods.arms.HOOKS["arpo"]: ArpoSource (branching rollouts) and ArpoAdvantage."""
    G, M = cfg.arpo.total_rollouts, cfg.rollout.group_size
    if G < M:
        raise ValueError(f"arpo.total_rollouts={G} (G, rows per prompt after branching) must be >= "
                         f"rollout.group_size={M} (M, the initial rollouts)")
    return MethodHooks(prompt_source=ArpoSource(cfg.arpo, tasks, cfg.seed),
                       advantage_fn=ArpoAdvantage(cfg.arpo.attribution))
