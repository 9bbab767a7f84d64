"""The policy loss: clipped surrogate, clip-higher, dual clip, AEPO anti-clip, KL, aggregation (pure).

Per trainable token t, with ratio ρ_t = exp(logπ_θ - logπ_old) (METHODS.md §0, §1.2):

    L_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε_low, 1+ε_high))      clip-higher: ε_low 0.2, ε_high 0.28
    L_t = min(L_t, -A_t c)            for A_t < 0                 dual clip, c = 3 (verl / TAO-RL code)
    L_t += β · k3(π_θ, π_ref)                                     optional, off in all four papers
    k3 = exp(logπ_ref - logπ_θ) - (logπ_ref - logπ_θ) - 1        Schulman's low-variance estimator

AEPO anti-clip [code, off by default]: on gated tokens with ρ > 1+ε_high the clipped ratio is
replaced by (1+ε_high)·ρ/stopgrad(ρ) — the same forward value as the clip, but the gradient is kept.
"Gated" is the gate the shaping used (advantages.effective_gate: post-tool or all tokens, with the
empty-gate fallback), which update_policy passes in.

Truncated importance sampling [code, off by default]: when the sampler is not the policy (an int8
rollout copy, quant.py), L_t is multiplied by w_t = min(π_old/π_sampler, C) (truncated_is_weights;
TRL's vllm_importance_sampling_correction, verl's rollout correction); ρ_t then uses the trained
policy's own π_old (update.py computes it in the first pass), not the sampler's log-probs.

Entropy regulariser [code, off by default]: L -= entropy_coeff · agg(H_t) (verl's entropy_coeff;
the TAO-RL authors' train.sh sets 0.001, the paper does not mention it; default 0 = the paper).

Aggregation over the (B, T) per-token losses, chosen by name in the AGGREGATIONS dict literal:

    "token_mean"           DAPO (default): Σ L·w / Σ w over every trainable token of the batch
    "seq_mean_token_mean"  original GRPO: token-mean inside each sequence, then the mean over the
                           sequences that have a trainable token (TRL averages over all B rows)
    "drgrpo"               Dr. GRPO: Σ L·w / (B · max_len), a constant normaliser

`mask` carries float weights (filters.FilterResult.weights × the 0/1 trainable mask). The means are
weighted means (as the masked_mean of verl / TAO-RL's code), so a weight scales a trajectory's share
against the others; a weight of 0 removes it from numerator and denominator.

Covered: the above, plus metrics (clip fractions, KL estimates, ratio, entropy). Not covered:
sequence-level importance ratios (GSPO), gradient accumulation scaling (update_policy scales each
micro-batch by its share of the aggregation's denominator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class LossConfig:
    """The clipped-surrogate loss and how it is aggregated."""

    eps_low: float = 0.2            # lower clip: ρ >= 1 - eps_low
    eps_high: float = 0.28          # clip-higher (DAPO): ρ <= 1 + eps_high
    dual_clip: float | None = 3.0   # c for A < 0 (verl clip_ratio_c); None turns it off (as TRL)
    agg: str = "token_mean"         # "token_mean" (DAPO) | "seq_mean_token_mean" (GRPO) | "drgrpo"
    max_len: int | None = None      # drgrpo normaliser; None = T of the batch handed in
    beta: float = 0.0               # KL-to-reference coefficient (k3); needs ref_logp when > 0
    anti_clip: bool = False         # AEPO anti-clip on gated tokens; needs gate when True
    entropy_coeff: float = 0.0      # plain entropy bonus -c·agg(H) [code: train.sh 0.001]; 0 = paper (none)

    def __post_init__(self) -> None:
        from tao_lab import checks

        checks.number(self, "eps_low", lo=0, hi=1, hi_open=True)
        checks.number(self, "eps_high", lo=0, hi=10)
        checks.number(self, "dual_clip", lo=1, hi=1e6, lo_open=True, none_ok=True)   # None turns it off
        checks.choice(self, "agg", AGGREGATIONS)
        checks.number(self, "max_len", lo=1, integer=True, none_ok=True)
        checks.number(self, "beta", lo=0, hi=100)
        checks.number(self, "entropy_coeff", lo=0, hi=1)
        checks.flag(self, "anti_clip")


# ----------------------------------------------------------------------------------------------
# Aggregations: (B, T) per-token loss, (B, T) weights -> scalar


def token_mean(loss: Tensor, w: Tensor, max_len: int | None) -> Tensor:
    # DAPO: every trainable token of the batch weighs the same, whatever its sequence's length.
    return (loss * w).sum() / w.sum().clamp(min=1e-12)


def seq_mean_token_mean(loss: Tensor, w: Tensor, max_len: int | None) -> Tensor:
    # Original GRPO: 1/|o_i| inside each sequence, then 1/G over sequences (empty rows left out).
    per_seq = (loss * w).sum(-1) / w.sum(-1).clamp(min=1e-12)
    has = w.sum(-1) > 0
    return (per_seq * has).sum() / has.sum().clamp(min=1)


def drgrpo(loss: Tensor, w: Tensor, max_len: int | None) -> Tensor:
    # Dr. GRPO: a constant normaliser (B x max completion length), no length bias.
    return (loss * w).sum() / (loss.shape[0] * (max_len or loss.shape[1]))


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor, int | None], Tensor]] = {
    "token_mean": token_mean, "seq_mean_token_mean": seq_mean_token_mean, "drgrpo": drgrpo,
}


# ----------------------------------------------------------------------------------------------
# The loss


def _wmean(x: Tensor, m: Tensor) -> float:
    """Mean of x over trainable tokens (m: bool), as a float for the step metrics."""
    return float(x.detach().float()[m].mean()) if m.any() else 0.0


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π_θ || π_ref) on samples from π_θ: e^(ref-logp) - (ref-logp) - 1."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def truncated_is_weights(policy_logp: Tensor, sampler_logp: Tensor, mask: Tensor,
                         cap: float) -> tuple[Tensor, dict[str, float]]:
    """Token-level truncated importance weights w_t = min(π_old(y_t) / π_sampler(y_t), cap) (no grad).

    policy_logp:  (B, T) log π_old, the trained policy before this update's first step
    sampler_logp: (B, T) log-probs recorded by the sampler (e.g. the int8 rollout copy, quant.py)
    mask:         (B, T) loss weights; where it is 0 the weight is 1 (those tokens leave the loss anyway)
    Returns ((B, T) weights, metrics over the trainable tokens: the raw ratio's mean / min / max, the
    truncated weight's mean, the fraction truncated). Equal log-probs give weights of exactly 1.
    [code: TRL's vllm_importance_sampling_correction ("token_truncate"), verl's rollout TIS]
    """
    if policy_logp.shape != sampler_logp.shape or mask.shape != policy_logp.shape:
        raise ValueError(f"policy_logp {tuple(policy_logp.shape)}, sampler_logp {tuple(sampler_logp.shape)} "
                         f"and mask {tuple(mask.shape)} must all be the same (B, T)")
    m = mask > 0
    log_ratio = torch.where(m, (policy_logp - sampler_logp).detach().float(), torch.zeros_like(mask, dtype=torch.float32))
    w = torch.exp(log_ratio.clamp(max=math.log(cap)))      # = min(ratio, cap) without overflowing
    ratio = torch.exp(log_ratio)
    metrics = {
        "loss/is_ratio_mean": _wmean(ratio, m),
        "loss/is_ratio_min": float(ratio[m].min()) if m.any() else float("nan"),
        "loss/is_ratio_max": float(ratio[m].max()) if m.any() else float("nan"),
        "loss/is_weight_mean": _wmean(w, m),
        "loss/is_truncated_frac": _wmean((log_ratio > math.log(cap)).float(), m),
    }
    return w.to(policy_logp.dtype), metrics


def policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, cfg: LossConfig | None = None,
                *, ref_logp: Tensor | None = None, gate: Tensor | None = None,
                entropy: Tensor | None = None, is_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Clipped-surrogate policy loss (scalar, differentiable in logp) and its metrics.

    logp:     (B, T) log π_θ of the sampled tokens (from the training forward, with grad)
    old_logp: (B, T) log π_old (rollout time, or a no-grad recompute)
    adv:      (B, T) per-token advantage (shaped or not), or (B,) broadcast over T. Used as given:
              a graph inside it (ShapingConfig.detach=False, the authors' code) is kept, so the
              gradient then also flows through the entropy z; with the default detach it is constant.
    mask:     (B, T) float loss weights (0/1 trainable mask times the filter weights)
    ref_logp: (B, T) log π_ref, needed when cfg.beta > 0 (also reported when given)
    gate:     (B, T) post-tool gate, needed when cfg.anti_clip
    entropy:  (B, T) token entropy, only reported in the metrics
    is_weight: (B, T) truncated importance weights π_old / π_sampler (truncated_is_weights), no grad:
              each token's clipped loss is multiplied by its weight before aggregation, the
              aggregation's denominator unchanged (TRL); None = 1, the sampler is the policy
    """
    cfg = cfg or LossConfig()
    if logp.dim() != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must all be the same (B, T)")
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    if adv.shape != logp.shape:
        raise ValueError(f"adv {tuple(adv.shape)} must be (B,) or (B, T) = {tuple(logp.shape)}")
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("LossConfig.beta > 0 needs ref_logp (log-probs under the adapter-disabled model)")
    if cfg.entropy_coeff > 0 and entropy is None:
        raise ValueError("LossConfig.entropy_coeff > 0 needs the entropy tensor (with its graph)")
    if cfg.anti_clip and gate is None:
        raise ValueError("LossConfig.anti_clip=True needs the gate tensor (Trajectory.post_tool, records.post_tool_gate)")
    adv = adv.to(logp.dtype)
    w = mask.to(logp.dtype)
    m = mask > 0
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    anti = torch.zeros_like(m)
    if cfg.anti_clip:
        # AEPO: forward value 1+ε_high as the clip, but d/dθ kept through ρ/stopgrad(ρ).
        anti = (gate > 0) & m & (ratio > 1 + cfg.eps_high)
        clipped = torch.where(anti, (1 + cfg.eps_high) * ratio / ratio.detach(), clipped)
    loss_tok = torch.maximum(-adv * ratio, -adv * clipped)
    dual = torch.zeros_like(m)
    if cfg.dual_clip is not None:
        # Dual clip: for A < 0 the loss is capped at -A·c, so a huge ratio can't blow it up.
        cap = -adv * cfg.dual_clip
        dual = (adv < 0) & (loss_tok > cap) & m
        loss_tok = torch.where(adv < 0, torch.minimum(loss_tok, cap), loss_tok)
    if is_weight is not None:
        if is_weight.shape != logp.shape:
            raise ValueError(f"is_weight {tuple(is_weight.shape)} must be (B, T) = {tuple(logp.shape)}")
        loss_tok = loss_tok * is_weight.detach().to(logp.dtype)
    # Masked positions (padding, tool output) may hold any log-prob, even inf: zero them, since
    # nan * 0 would still poison the sum.
    loss_tok = torch.where(m, loss_tok, torch.zeros_like(loss_tok))
    policy = AGGREGATIONS[cfg.agg](loss_tok, w, cfg.max_len)
    total = policy
    metrics: dict[str, float] = {}
    if cfg.entropy_coeff > 0:
        # verl: pg_loss - entropy_coeff * agg_loss(entropy); the gradient needs entropy's graph
        ent_agg = AGGREGATIONS[cfg.agg](torch.where(m, entropy.to(logp.dtype), torch.zeros_like(logp)), w, cfg.max_len)
        total = total - cfg.entropy_coeff * ent_agg
        metrics["loss/entropy_bonus"] = float(ent_agg.detach())
    if ref_logp is not None:
        kl_tok = torch.where(m, k3(logp, ref_logp), torch.zeros_like(logp))
        if cfg.beta > 0:
            total = total + cfg.beta * AGGREGATIONS[cfg.agg](kl_tok, w, cfg.max_len)  # per token, as TRL (agg is linear)
        metrics["loss/kl_ref"] = _wmean(kl_tok, m)
    log_ratio = (logp - old_logp).detach()
    metrics.update({
        "loss/total": float(total.detach()),
        "loss/policy": float(policy.detach()),
        "loss/tokens": float(m.sum()),
        "loss/clip_low": _wmean(((ratio < 1 - cfg.eps_low) & (adv < 0)).float(), m),   # TRL's definitions
        "loss/clip_high": _wmean(((ratio > 1 + cfg.eps_high) & (adv > 0)).float(), m),
        "loss/clip_dual": _wmean(dual.float(), m),
        "loss/anti_clip": _wmean(anti.float(), m),
        "loss/anti_clip_tokens": float(anti.sum()),
        "loss/ratio_mean": _wmean(ratio, m),
        "loss/ratio_max": float(ratio.detach()[m].max()) if m.any() else float("nan"),
        "loss/approx_kl": _wmean(torch.exp(log_ratio) - 1 - log_ratio, m),  # k3 of KL(π_old || π_θ)
        "loss/ppo_kl": _wmean(-log_ratio, m),                               # verl's ppo_kl
    })
    if entropy is not None:
        metrics["loss/entropy"] = _wmean(entropy, m)
    return total, metrics
