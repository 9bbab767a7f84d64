"""Advantages, token entropy, the post-tool gate and TAO-RL's entropy shaping (pure tensor math).

Shapes: B batch (trajectories), T tokens, V vocab, K turns. `mask` is the trainable-token mask of
records.py (1 sampled by the policy, 0 prompt / tool output / padding), possibly multiplied by the
filter weights (filters.FilterResult.weights); every statistic here uses `mask > 0` tokens only.

What is here, with its source (METHODS.md §0, §1.2, §5, §6, §7):

    group_advantages     GRPO outcome advantage A_i = (r_i - mean_g) / (std_g + eps), broadcast to
                         tokens by the caller. std: "unbiased" (verl, TRL), "biased", "none"
                         (Dr. GRPO), "batch" (group-centred, batch std; TRL scale_rewards="batch").
                         A group of size 1 gets A = 0 (verl gives it r/(1+eps); TRL gives 0).
    token_entropy        full-vocabulary entropy at a temperature, chunked over rows of (B*T, V)
    token_logprobs       log pi(ids) at a temperature, same chunking; `token_logprobs_and_entropy`
                         does both in one pass over the logits.
    (the post-tool gate itself is records.post_tool_gate, filled into Trajectory.post_tool by the
    rollout; the shaping below takes it as a (B, T) tensor)
    shape_advantages     TAO-RL multiplicative reshaping  Ã_t = A_t (1 + a g_t z_t)  [paper][code],
                         the additive bonus  A_t + g_t min(α H_t, |A_t|/κ)  [2506.14758], or none;
                         chosen by `ShapingConfig.kind` in the SHAPERS dict literal.
    pass_at_k, avg_at_k  evaluation: unbiased Pass@k 1 - C(n-c,k)/C(n,k) (stable product form)

Paper vs authors' code for the reshaping (defaults = paper reading; each switch in ShapingConfig):
    gate      "post_tool" (paper) | "all_tokens" (public config, tool_aware_only False)
    z_scope   "trajectory" (paper figure) | "micro_batch" (code: mean/std over all trainable
              tokens of the micro-batch, so Ã depends on what else is in the micro-batch)
    detach    True (default: z is a constant, PPO gradient form kept) | False (code: gradient flows
              through z, an advantage-signed entropy regulariser)
    empty_gate_fallback  False | True (code: a micro-batch with no post-tool token reshapes ALL
              its trainable tokens instead)
    The z std is the population std (code: unbiased=False); eps 1e-8 as in the code.

Not covered: token-level (process) rewards; GAE; anything that needs the model (the caller runs
the forward pass and hands the logits in).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# Group advantages (GRPO)


def _std_unbiased(centered: Tensor, inv: Tensor, n: Tensor, rewards: Tensor, eps: float) -> Tensor:
    sq = torch.zeros_like(n).index_add_(0, inv, centered ** 2)
    return (sq / (n - 1).clamp(min=1)).sqrt()[inv] + eps  # N-1: verl torch.std, TRL nanstd


def _std_biased(centered: Tensor, inv: Tensor, n: Tensor, rewards: Tensor, eps: float) -> Tensor:
    sq = torch.zeros_like(n).index_add_(0, inv, centered ** 2)
    return (sq / n).sqrt()[inv] + eps


def _std_none(centered: Tensor, inv: Tensor, n: Tensor, rewards: Tensor, eps: float) -> Tensor:
    return torch.ones_like(centered)  # Dr. GRPO: no std division (and no eps)


def _std_batch(centered: Tensor, inv: Tensor, n: Tensor, rewards: Tensor, eps: float) -> Tensor:
    s = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())  # one unbiased std for the batch
    return (s + eps).expand_as(centered)


STD_MODES: dict[str, Callable[..., Tensor]] = {
    "unbiased": _std_unbiased, "biased": _std_biased, "none": _std_none, "batch": _std_batch,
}
DEFAULT_STD = "unbiased"   # verl / TRL / TAO-RL code: torch.std (N-1); the one default everywhere


def group_advantages(rewards: Tensor, group_ids: Tensor, std: str = DEFAULT_STD,
                     eps: float = 1e-6) -> tuple[Tensor, dict[str, float]]:
    """GRPO advantage per trajectory.

    rewards:   (B,) float, one scalar reward per trajectory
    group_ids: (B,) int, trajectories of the same prompt share an id (any values, any order)
    std:       "unbiased" | "biased" | "none" | "batch" (see STD_MODES)
    returns    (B,) advantages (a group of size 1 gets 0), metrics
    """
    if std not in STD_MODES:
        raise ValueError(f"std={std!r}; choose from {list(STD_MODES)}")
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must both be (B,)")
    r = rewards.detach().double()  # float64: exact enough that 0/1 rewards give exactly 0 for equal groups
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.double()
    mean = torch.zeros_like(n).index_add_(0, inv, r) / n
    centered = r - mean[inv]
    adv = centered / STD_MODES[std](centered, inv, n, r, eps)
    adv = torch.where(counts[inv] > 1, adv, torch.zeros_like(adv))  # no baseline from one sample
    metrics = {
        "adv/groups": float(len(counts)),
        "adv/singleton_groups": float((counts == 1).sum()),
        "adv/zero_signal_frac": float((adv == 0).double().mean()) if len(adv) else 0.0,
        "adv/mean_abs": float(adv.abs().mean()) if len(adv) else 0.0,
        "adv/max": float(adv.max()) if len(adv) else 0.0,
        "adv/min": float(adv.min()) if len(adv) else 0.0,
    }
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32), metrics


# ----------------------------------------------------------------------------------------------
# Log-probabilities and entropy from logits, chunked


def token_logprobs_and_entropy(logits: Tensor, ids: Tensor | None, temperature: float = 1.0,
                               chunk: int = 128, entropy_grad: bool = False) -> tuple[Tensor | None, Tensor]:
    """log pi(ids) and full-vocabulary entropy in one pass over the logits.

    logits: (B, T, V), any float dtype; position t predicts ids[:, t] (shift before calling)
    ids:    (B, T) long, or None to skip the log-probs
    chunk:  rows of the flattened (B*T, V) logits handled at once: only one (chunk, V) float32 copy
            exists at a time in the forward pass. (With gradients on, autograd keeps what each
            chunk's backward needs; entropy is computed under no_grad unless `entropy_grad`.)
    returns (B, T) float32 log-probs (or None), (B, T) float32 entropies in nats
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got shape {tuple(logits.shape)}")
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)
    flat_ids = ids.reshape(B * T) if ids is not None else None
    logps, ents = [], []
    for s in range(0, B * T, chunk):
        x = flat[s:s + chunk].float() / temperature  # the one chunk-sized float copy
        lse = torch.logsumexp(x, dim=-1)
        if flat_ids is not None:
            logps.append(x.gather(-1, flat_ids[s:s + chunk, None]).squeeze(-1) - lse)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            # H = lse - sum_v p_v x_v  (= -sum p log p, without forming log p separately)
            ents.append(lse - (torch.softmax(x, dim=-1) * x).sum(-1))
    ent = torch.cat(ents).reshape(B, T) if ents else logits.new_zeros(B, T, dtype=torch.float32)
    if flat_ids is None:
        return None, ent
    logp = torch.cat(logps).reshape(B, T) if logps else logits.new_zeros(B, T, dtype=torch.float32)
    return logp, ent


def token_entropy(logits: Tensor, temperature: float = 1.0, chunk: int = 128,
                  grad: bool = False) -> Tensor:
    """(B, T, V) logits -> (B, T) full-vocabulary entropy (nats) of softmax(logits / temperature)."""
    return token_logprobs_and_entropy(logits, None, temperature, chunk, entropy_grad=grad)[1]


def token_logprobs(logits: Tensor, ids: Tensor, temperature: float = 1.0, chunk: int = 128) -> Tensor:
    """(B, T, V) logits, (B, T) ids -> (B, T) log softmax(logits / temperature)[ids]."""
    return token_logprobs_and_entropy(logits, ids, temperature, chunk)[0]


# ----------------------------------------------------------------------------------------------
# Entropy shaping


@dataclass
class ShapingConfig:
    """How the per-token advantage is reshaped by entropy (defaults = TAO-RL paper reading)."""

    kind: str = "tao"             # "tao" multiplicative A(1+a g z) | "additive" (§6 ablation) | "none"
    coef: float = 0.01            # a: TAO-RL 0.01 [code]; AEPO used 0.2; ablation 0.01/0.05/0.2
    gate: str = "post_tool"       # "post_tool" (paper) | "all_tokens" (public config default)
    z_scope: str = "trajectory"   # "trajectory" (paper figure) | "micro_batch" (code)
    detach: bool = True           # True: entropy is a constant (default) | False: code, gradient through z
    empty_gate_fallback: bool = False  # code: True, a micro-batch without gated tokens reshapes all tokens
    alpha: float = 0.4            # additive bonus α (2506.14758, GRPO)
    kappa: float = 2.0            # additive bonus κ: bonus capped at |A|/κ, so a negative A never flips

    def __post_init__(self) -> None:
        from tao_lab import checks

        checks.choice(self, "kind", SHAPERS)
        checks.choice(self, "gate", GATES)
        checks.choice(self, "z_scope", Z_SCOPES)
        checks.number(self, "coef", lo=0, hi=10)       # papers: 0.01 .. 0.2; a < 0 would invert the shaping
        checks.number(self, "alpha", lo=0, hi=10)
        checks.number(self, "kappa", lo=0, hi=1e6, lo_open=True)
        if self.kappa <= 1.0 and self.kind == "additive":
            raise ValueError(f"ShapingConfig.kappa={self.kappa}: must be > 1 with kind='additive', "
                             "or the bonus can cancel a negative A")
        checks.flag(self, "detach", "empty_gate_fallback")


def _z_per_trajectory(h: Tensor, m: Tensor, eps: float) -> Tensor:
    n = m.sum(1, keepdim=True).clamp(min=1)
    mean = (h * m).sum(1, keepdim=True) / n
    std = (((h - mean) ** 2 * m).sum(1, keepdim=True) / n).sqrt()  # population std, as the code
    return (h - mean) / (std + eps) * m


def _z_per_micro_batch(h: Tensor, m: Tensor, eps: float) -> Tensor:
    n = m.sum().clamp(min=1)
    mean = (h * m).sum() / n
    std = (((h - mean) ** 2 * m).sum() / n).sqrt()
    return (h - mean) / (std + eps) * m


Z_SCOPES: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {
    "trajectory": _z_per_trajectory, "micro_batch": _z_per_micro_batch,
}


def entropy_zscore(entropy: Tensor, mask: Tensor, scope: str = "trajectory", eps: float = 1e-8) -> Tensor:
    """(B, T) entropy -> (B, T) z = (H - mean H) / (std H + eps) over mask > 0 tokens; 0 elsewhere."""
    return Z_SCOPES[scope](entropy, (mask > 0).to(entropy.dtype), eps)


def _ratio_stats(adv: Tensor, adv_t: Tensor, sel: Tensor, prefix: str) -> dict[str, float]:
    """Ã/A over the selected tokens with A != 0; NaN (and count 0) when there is none, so that
    metrics.merge_metrics leaves such a part out instead of averaging in a made-up 1.0."""
    sel = sel & (adv != 0)
    n = float(sel.sum())
    if not n:
        return {f"{prefix}_mean": float("nan"), f"{prefix}_min": float("nan"),
                f"{prefix}_max": float("nan"), f"{prefix}_n": 0.0}
    r = (adv_t.detach()[sel] / adv[sel]).float()
    return {f"{prefix}_mean": float(r.mean()), f"{prefix}_min": float(r.min()), f"{prefix}_max": float(r.max()),
            f"{prefix}_n": n}


def _shaping_metrics(adv: Tensor, adv_t: Tensor, entropy: Tensor, m: Tensor, g: Tensor) -> dict[str, float]:
    other = m & ~g
    h = entropy.detach().float()
    return {
        "shaping/tokens": float(m.sum()),
        "shaping/gate_coverage": float(g.sum()) / max(float(m.sum()), 1.0),
        "shaping/gated_tokens": float(g.sum()),
        "shaping/other_tokens": float(other.sum()),
        "shaping/entropy_gated_mean": float(h[g].mean()) if g.any() else float("nan"),
        "shaping/entropy_other_mean": float(h[other].mean()) if other.any() else float("nan"),
        "shaping/sign_flips": float(((adv_t.detach() * adv) < 0).sum()),
        **_ratio_stats(adv, adv_t, g, "shaping/ratio_gated"),
        **_ratio_stats(adv, adv_t, other, "shaping/ratio_other"),
    }


def reshape_multiplicative(adv: Tensor, entropy: Tensor, mask: Tensor, gate: Tensor, coef: float = 0.01,
                           z_scope: str = "trajectory", detach: bool = True) -> tuple[Tensor, dict[str, float]]:
    """TAO-RL / AEPO:  Ã_t = A_t · (1 + a · g_t · z_t); tokens with g_t = 0 or mask 0 keep A_t.

    adv: (B, T) (or (B,), broadcast); entropy, mask, gate: (B, T). High-entropy gated tokens get a
    larger |A|, low-entropy ones a smaller |A|, for both signs (a sign flips only if a·|z| > 1).
    """
    h = entropy if not detach else entropy.detach()  # detach=False: code, gradient flows through z
    m = mask > 0
    g = (gate > 0) & m
    adv = _as_tokens(adv, mask)
    z = entropy_zscore(h, mask, z_scope)
    adv_t = torch.where(g, adv * (1 + coef * z), adv)
    return adv_t, _shaping_metrics(adv, adv_t, entropy, m, g)


def additive_bonus(adv: Tensor, entropy: Tensor, mask: Tensor, gate: Tensor, alpha: float = 0.4,
                   kappa: float = 2.0) -> tuple[Tensor, dict[str, float]]:
    """2506.14758:  Ã_t = A_t + g_t · min(α · H_t.detach(), |A_t| / κ).

    The bonus is >= 0 and at most |A|/κ, so with κ > 1 a negative advantage is shrunk, never flipped
    (A = -1, H = 10, α = 0.4, κ = 2: bonus min(4, 0.5) = 0.5, Ã = -0.5), and it fades as H falls.
    """
    m = mask > 0
    g = (gate > 0) & m
    adv = _as_tokens(adv, mask)
    raw = alpha * entropy.detach()
    cap = adv.abs() / kappa
    bonus = torch.minimum(raw, cap)
    adv_t = torch.where(g, adv + bonus, adv)
    metrics = _shaping_metrics(adv, adv_t, entropy, m, g)
    metrics["shaping/bonus_capped_frac"] = float((g & (raw > cap)).sum()) / max(float(g.sum()), 1.0)
    return adv_t, metrics


def _as_tokens(adv: Tensor, mask: Tensor) -> Tensor:
    if adv.dim() == 1:
        adv = adv[:, None]
    return adv.to(torch.float32).expand(mask.shape)


def _shape_none(adv, entropy, mask, g, cfg):
    adv = _as_tokens(adv, mask)
    return adv, _shaping_metrics(adv, adv, entropy, mask > 0, (g > 0) & (mask > 0))


def _shape_tao(adv, entropy, mask, g, cfg):
    return reshape_multiplicative(adv, entropy, mask, g, cfg.coef, cfg.z_scope, cfg.detach)


def _shape_additive(adv, entropy, mask, g, cfg):
    return additive_bonus(adv, entropy, mask, g, cfg.alpha, cfg.kappa)


SHAPERS: dict[str, Callable] = {"none": _shape_none, "tao": _shape_tao, "additive": _shape_additive}


def _gate_post_tool(gate: Tensor | None, mask: Tensor) -> Tensor:
    if gate is None:
        raise ValueError("ShapingConfig.gate='post_tool' needs the post-tool gate tensor: build it with "
                         "Trajectory.post_tool (records.post_tool_gate), or set gate='all_tokens'")
    return gate


GATES: dict[str, Callable[[Tensor | None, Tensor], Tensor]] = {
    "post_tool": _gate_post_tool,
    "all_tokens": lambda gate, mask: (mask > 0).float(),
}


def effective_gate(gate: Tensor | None, mask: Tensor, cfg: ShapingConfig) -> Tensor:
    """(B, T) 0/1: the tokens shaping acts on under `cfg` — THE gate of a micro-batch.

    gate="post_tool": the post-tool gate on trainable tokens; gate="all_tokens": every trainable
    token; with `empty_gate_fallback` (code) a micro-batch without a gated token gets every
    trainable token. shape_advantages reshapes these tokens; the AEPO anti-clip (loss.policy_loss)
    and the Ã/A metrics of update_policy must use the same tensor.
    """
    m = mask > 0
    g = (GATES[cfg.gate](gate, mask) > 0) & m
    if cfg.empty_gate_fallback and not g.any():
        g = m   # code: no post-tool token in this micro-batch -> reshape every token
    return g.float()


def shape_advantages(adv: Tensor, entropy: Tensor, mask: Tensor, gate: Tensor | None,
                     cfg: ShapingConfig) -> tuple[Tensor, dict[str, float]]:
    """Per-token advantage after entropy shaping, chosen by `cfg.kind` (SHAPERS) and `cfg.gate` (GATES).

    adv: (B,) or (B, T); entropy, mask: (B, T) — one micro-batch when cfg.z_scope="micro_batch";
    gate: (B, T) post-tool gate (needed for gate="post_tool"). Returns (B, T) Ã and metrics. The
    tokens it reshapes are `effective_gate(gate, mask, cfg)`.
    """
    g = effective_gate(gate, mask, cfg)
    fallback = cfg.empty_gate_fallback and not bool(((GATES[cfg.gate](gate, mask) > 0) & (mask > 0)).any())
    adv_t, metrics = SHAPERS[cfg.kind](adv, entropy, mask, g, cfg)
    metrics["shaping/empty_gate_fallback"] = float(fallback)
    return adv_t, metrics


# ----------------------------------------------------------------------------------------------
# Evaluation estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k from n samples with c correct: 1 - C(n-c, k)/C(n, k), as a stable product."""
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every size-k subset contains a correct sample
    # C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i): no factorials, no overflow
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def avg_at_k(correct) -> float:
    """Avg@k: mean accuracy over all samples; `correct` is (P, k) of 0/1 (P problems, k samples)."""
    arr = np.asarray(correct, dtype=float)
    if arr.size == 0:
        raise ValueError("avg_at_k got no samples")
    return float(arr.mean())


def pass_at_k_mean(n: list[int], c: list[int], k: int) -> float:
    """Mean unbiased Pass@k over problems (n[i] samples, c[i] correct for problem i)."""
    if len(n) != len(c) or not n:
        raise ValueError(f"pass_at_k_mean needs equal, non-empty n and c, got {len(n)} and {len(c)}")
    return float(np.mean([pass_at_k(ni, ci, k) for ni, ci in zip(n, c)]))


__all__ = [
    "group_advantages", "STD_MODES", "token_logprobs_and_entropy", "token_entropy", "token_logprobs",
    "ShapingConfig", "entropy_zscore",
    "reshape_multiplicative", "additive_bonus", "shape_advantages", "effective_gate", "DEFAULT_STD", "SHAPERS", "GATES", "Z_SCOPES",
    "pass_at_k", "avg_at_k", "pass_at_k_mean",
]
