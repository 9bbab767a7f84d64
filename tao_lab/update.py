"""The update stage: GRPO advantages, micro-batches, one training forward each, shaping, loss, step.

    compute_advantages   group advantages over the filter's advantage rows (filters.FilterResult);
                         rows with loss weight 0 count in their group's statistics, then leave
    plan_micro_batches   which rows go together (rows of one prompt when the prompt is shared)
    collate              right-padded tensors built from positions and lengths (never token identity);
                         the loss mask is Trajectory.full_mask() x the filter weight
    forward_logprobs     ONE forward -> log-probs of the sampled tokens and full-vocabulary entropy
                         (advantages.token_logprobs_and_entropy), logits only where they are trained
    update_policy        shaping with this forward's entropy (advantages.shape_advantages), the
                         policy loss (loss.policy_loss), gradient accumulation, clipping, the step

Deviations and choices, stated here once:
  - Old log-probs are the ones the rollout recorded while sampling (KV engine, eval mode); the
    training forward is a plain forward. In fp32 they agree to ~1e-5 (tiny model ~1e-6, the embedded
    model ~1e-5; `update/logp_rollout_diff_max` logs it every step), so the first pass over a batch
    is on-policy with ratio 1 up to that noise and no extra no-grad forward is spent.
  - Accumulated micro-batches reproduce the full-batch aggregation exactly: each micro-batch loss is
    scaled by its share of the aggregation's denominator (trainable-token weight for token_mean,
    sequences for seq_mean_token_mean, rows for drgrpo with a fixed max_len), not by 1/n_micro.
    (ShapingConfig.z_scope="micro_batch" depends on micro-batch composition by design.)
  - Off-policy correction (UpdateConfig.is_correction="tis", off by default): when the sampler is not
    the policy (RolloutConfig.quantize="int8"), the first pass's own forward supplies π_old (no extra
    forward; the optimizer steps only after it) and each token's loss is weighted by
    min(π_old / π_sampler, is_cap) (loss.truncated_is_weights; loss/is_* metrics).
  - KL (LossConfig.beta > 0) uses the adapter-disabled model as the reference (`disable_adapter()`):
    one extra no-grad forward per micro-batch, no second copy of the weights.
  - Prompt sharing (UpdateConfig.share_prompt, on by default): a micro-batch holds rows of ONE
    prompt; the prompt is run once, its KV cache repeated over the rows, and only the completions
    are run on top. Exact (same log-probs to ~1e-5 and same gradients: the repeat is differentiable);
    with few-shot prompts longer than the completions it cuts the update's compute ~2-3x (measured:
    2.8x CPU time for a 250-token prompt and 4 completions of ~110 tokens). It is switched off
    automatically under activation checkpointing, which drops a passed cache.

Not covered: sequence packing, value functions, several optimizer steps per micro-batch pass.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from . import filters as filters_mod
from .advantages import (DEFAULT_STD, STD_MODES, ShapingConfig, effective_gate, group_advantages,
                         shape_advantages, token_logprobs_and_entropy)
from .loss import LossConfig, policy_loss, truncated_is_weights
from .metrics import merge_metrics
from .records import Trajectory

# ----------------------------------------------------------------------------------------------
# Config


IS_CORRECTIONS = ("none", "tis")   # the off-policy corrections _micro_step dispatches on


@dataclass
class UpdateConfig:
    """How one batch of rollouts becomes gradient steps."""

    micro_batch_size: int = 4        # trajectories per forward/backward; gradients accumulate
    epochs: int = 1                  # optimizer steps per batch (1 = on-policy, ratio == 1)
    adv_std: str = DEFAULT_STD       # group_advantages std: "unbiased" | "biased" | "none" | "batch"
    share_prompt: bool = True        # run each prompt once per micro-batch, reuse its KV for its rows (exact)
    logit_chunk: int = 128           # rows of (tokens, V) logits turned to log-probs at once
    is_correction: str = "none"      # "tis": weight each token by min(π_old/π_sampler, is_cap), for a
    #                                  sampler that is not the policy (RolloutConfig.quantize="int8")
    is_cap: float = 2.0              # C of the truncation (TRL's vllm_importance_sampling_cap)

    def __post_init__(self):
        from . import checks

        for name in ("micro_batch_size", "epochs", "logit_chunk"):
            checks.number(self, name, lo=1, integer=True)
        checks.choice(self, "adv_std", STD_MODES)
        checks.flag(self, "share_prompt")
        checks.choice(self, "is_correction", IS_CORRECTIONS)
        checks.number(self, "is_cap", lo=1, hi=1e6)       # C < 1 would down-weight on-policy tokens too


# ----------------------------------------------------------------------------------------------
# Advantages and the update batch


@dataclass
class UpdateBatch:
    """The advantage rows that take part in the update (weight > 0), ready for micro-batching.

    token_adv / token_weight (an advantage hook's output: tree or shared-prefix advantages):
    per row a (len(traj.token_ids),) tensor over the completion tokens, or None for that row.
    token_adv replaces the broadcast row advantage (shaping then applies on top of it);
    token_weight multiplies the row's loss mask. Rows without them behave as without the lists.
    """

    trajs: list[Trajectory]          # one per row (refill duplicates repeat a trajectory)
    adv: torch.Tensor                # (R,) GRPO advantage per row
    weights: list[float]             # filter loss weight per row (multiplies the token mask)
    n_zero_weight: int               # advantage rows left out of the update because their weight is 0
    token_adv: list[torch.Tensor | None] | None = None     # per row (n_i,) advantages, replaces adv[i]
    token_weight: list[torch.Tensor | None] | None = None  # per row (n_i,) loss-mask multipliers

    def __post_init__(self):
        for name in ("token_adv", "token_weight"):
            rows = getattr(self, name)
            if rows is None:
                continue
            if len(rows) != len(self.trajs):
                raise ValueError(f"UpdateBatch.{name} has {len(rows)} rows for {len(self.trajs)} trajectories")
            for i, (x, t) in enumerate(zip(rows, self.trajs)):
                if x is not None and tuple(x.shape) != (len(t.token_ids),):
                    raise ValueError(f"UpdateBatch.{name}[{i}] has shape {tuple(x.shape)}; the row has "
                                     f"{len(t.token_ids)} completion tokens, so it must be ({len(t.token_ids)},)")


def compute_advantages(trajs: list[Trajectory], fres: filters_mod.FilterResult,
                       std: str = DEFAULT_STD) -> tuple[UpdateBatch, torch.Tensor, dict[str, float]]:
    """GRPO advantages over the filter's advantage rows; rows with weight 0 leave the update.

    Returns (batch, adv over ALL advantage rows (R_all,), metrics). Weight-0 rows (overlong, void
    turn, masked Filter A) count in their group's mean/std, as in the authors' code, and then
    need no forward pass. The rewards are the filter's (`FilterResult.row_rewards`: an overlong
    row enters with 0 under FilterConfig.overlong_reward="zero"), and a row's advantage is scaled by
    `FilterResult.adv_scale` (Filter A's (1-s) under filter_a_scale_adv, the code's reading).
    """
    rows = fres.select(trajs)
    if not rows:
        return UpdateBatch([], torch.zeros(0), [], 0), torch.zeros(0), {}
    rewards = torch.tensor(fres.row_rewards if fres.row_rewards else [float(t.reward) for t in rows])
    adv, metrics = group_advantages(rewards, torch.tensor(fres.group_ids), std=std)
    if fres.adv_scale:
        adv = adv * torch.tensor(fres.adv_scale, dtype=adv.dtype)
    keep = [i for i, w in enumerate(fres.weights) if w > 0]
    batch = UpdateBatch([rows[i] for i in keep], adv[keep], [fres.weights[i] for i in keep],
                        len(rows) - len(keep))
    return batch, adv, metrics


@dataclass
class MicroBatch:
    """One micro-batch in the coordinates of the kept logits: column j of targets / mask / old_logp /
    gate / adv is the token that logits column j predicts. Built from positions and lengths only.

    Two layouts (`collate`):
      full     input_ids (b, T) are right-padded prompt+completion sequences; every column before
               `start` is prompt (mask 0) in every row, so only the last T - start positions get
               logits (`logits_to_keep`)
      shared   all rows share one prompt `prefix_ids` (1, P): input_ids (b, L) are the completions,
               the prompt is run once and its KV cache repeated b times (exact: gradients flow back
               through the repeat into the one prefix forward)
    """

    input_ids: torch.Tensor          # (b, T) full sequences, or (b, L) completions (shared layout)
    attention_mask: torch.Tensor     # (b, T), or (b, P + L): 1 on real tokens
    start: int                       # full: first position whose prediction is trained; shared: P
    targets: torch.Tensor            # (b, L) token ids the kept logits predict
    mask: torch.Tensor               # (b, L) full_mask() in these coordinates x filter weight x token_weight
    old_logp: torch.Tensor           # (b, L) rollout log-probs (0 where mask is 0)
    gate: torch.Tensor               # (b, L) post-tool gate
    prefix_ids: torch.Tensor | None = None  # (1, P) the shared prompt (shared layout only)
    adv: torch.Tensor | None = None  # (b, L) per-token advantage before shaping (when collate got row_adv)
    policy_logp: torch.Tensor | None = None  # (b, L) π_old of the trained policy, set by the first pass
    #                                          under UpdateConfig.is_correction="tis"


def _completion_rows(trajs: list[Trajectory], weights: list[float], row_adv: torch.Tensor | None,
                     token_adv, token_weight) -> list[dict[str, torch.Tensor]]:
    """Per row, (n_i,) float vectors over its completion tokens: mask x weights, old log-prob, gate, adv."""
    out = []
    for i, (t, w) in enumerate(zip(trajs, weights)):
        n = len(t.token_ids)
        mask = torch.tensor(t.mask, dtype=torch.float32) * w
        if token_weight is not None and token_weight[i] is not None:
            mask = mask * token_weight[i].float().cpu()
        adv = torch.zeros(n)
        if token_adv is not None and token_adv[i] is not None:
            adv = token_adv[i].float().cpu()
        elif row_adv is not None:
            adv = torch.full((n,), float(row_adv[i]))
        out.append({"mask": mask, "old": torch.tensor(t.logprobs, dtype=torch.float32),
                    "gate": torch.tensor(t.post_tool, dtype=torch.float32), "adv": adv})
    return out


def collate(trajs: list[Trajectory], weights: list[float], pad_id: int, device,
            share_prompt: bool = False, row_adv: torch.Tensor | None = None,
            token_adv: list | None = None, token_weight: list | None = None) -> MicroBatch:
    """Right-pad a micro-batch; `share_prompt` needs every row to have the same prompt ids.

    row_adv (b,): the rows' advantages, broadcast over their tokens into MicroBatch.adv unless
    token_adv[i] (n_i,) is given for the row; token_weight[i] (n_i,) multiplies the row's mask.
    """
    b = len(trajs)
    rows = _completion_rows(trajs, weights, row_adv, token_adv, token_weight)
    keys = ("mask", "old", "gate", "adv")
    if share_prompt:
        prompt = trajs[0].prompt_ids
        if any(t.prompt_ids != prompt for t in trajs):
            raise ValueError("collate(share_prompt=True) needs rows with one prompt; plan micro-batches "
                             "with plan_micro_batches(..., share_prompt=True)")
        P, L = len(prompt), max(len(t.token_ids) for t in trajs)
        comp = torch.full((b, L), pad_id, dtype=torch.long)
        att = torch.zeros((b, P + L), dtype=torch.long)
        att[:, :P] = 1
        cols = {k: torch.zeros((b, L)) for k in keys}
        for i, t in enumerate(trajs):
            n = len(t.token_ids)
            comp[i, :n] = torch.tensor(t.token_ids)
            att[i, P:P + n] = 1
            for k in keys:
                cols[k][i, :n] = rows[i][k]
        return MicroBatch(comp.to(device), att.to(device), P, comp.to(device), cols["mask"].to(device),
                          cols["old"].to(device), cols["gate"].to(device), torch.tensor([prompt], device=device),
                          cols["adv"].to(device) if row_adv is not None or token_adv is not None else None)
    lens = [len(t.prompt_ids) + len(t.token_ids) for t in trajs]
    T = max(lens)
    start = min(len(t.prompt_ids) for t in trajs) - 1      # predicts the first completion token
    ids = torch.full((b, T), pad_id, dtype=torch.long)
    att = torch.zeros((b, T), dtype=torch.long)
    cols = {k: torch.zeros((b, T)) for k in keys}
    for i, t in enumerate(trajs):
        n, p = lens[i], len(t.prompt_ids)
        ids[i, :n] = torch.tensor(t.full_ids())
        att[i, :n] = 1
        for k in keys:
            cols[k][i, p:n] = rows[i][k]
    sl = slice(start + 1, T)   # token at position j is predicted by position j - 1
    has_adv = row_adv is not None or token_adv is not None
    return MicroBatch(ids.to(device), att.to(device), start, ids[:, sl].to(device),
                      cols["mask"][:, sl].to(device), cols["old"][:, sl].to(device), cols["gate"][:, sl].to(device),
                      None, cols["adv"][:, sl].to(device) if has_adv else None)


def plan_micro_batches(trajs: list[Trajectory], size: int, share_prompt: bool) -> list[list[int]]:
    """Row indices per micro-batch: consecutive chunks, or (share_prompt) chunks of rows that share
    a prompt, prompts in order of first appearance (a group of G rows is one micro-batch if G <= size)."""
    if not share_prompt:
        return [list(range(s, min(s + size, len(trajs)))) for s in range(0, len(trajs), size)]
    by_prompt: dict[tuple, list[int]] = {}
    for i, t in enumerate(trajs):
        by_prompt.setdefault(tuple(t.prompt_ids), []).append(i)
    return [rows[s:s + size] for rows in by_prompt.values() for s in range(0, len(rows), size)]


def keep_4bit_differentiable(model) -> int:
    """Keep every bitsandbytes 4-bit layer on its differentiable kernel; returns how many were repacked.

    On a CPU with AVX512-BF16, bitsandbytes (0.49+) repacks a Linear4bit's weight into an inference
    layout the first time it runs in eval mode without gradients (every rollout does), and from
    then on EVERY forward, training included and whatever its shape, takes `gemv_4bit`, which has
    no autograd kernel: the backward through the frozen base is wrong (measured on a tiny Llama,
    LoRA r=4 on all linear layers, vs the same weights dequantised to fp32: LoRA gradients off by
    200% at 1x1 tokens, 150% at 2x1, 41% at 2x24; exact after this call). The repack also rounds the
    block scales to bf16, so a pack/unpack round trip per step would drift the base weights: the
    repack is switched off for good instead (`support_avx512bf16_for_cpu = False`), and a weight
    already packed is unpacked once. models.finish_policy calls this at load; update_policy calls it
    again in case a model was built elsewhere. CUDA layers are never repacked: a no-op there.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:   # no bitsandbytes: there is no 4-bit layer to fix
        return 0
    n = 0
    for m in model.modules():
        if not isinstance(m, bnb.nn.Linear4bit):
            continue
        m.support_avx512bf16_for_cpu = False
        w = m.weight
        if getattr(w.quant_state, "packing_format_for_cpu", False):
            w.data, w.quant_state = _convert_weight_packed_for_cpu_inverse(w.data, w.quant_state)
            n += 1
    return n


def checkpointing_on(model) -> bool:
    """Is activation checkpointing on anywhere in the model? (It drops a passed KV cache.)"""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def forward_logprobs(model, mb: MicroBatch, temperature: float, chunk: int,
                     entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One training forward -> (b, L) log-probs of the targets and (b, L) entropies."""
    if mb.prefix_ids is None:
        T = mb.input_ids.shape[1]
        out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False,
                    logits_to_keep=T - mb.start)
        logits = out.logits[:, :-1]                            # (b, L, V): the last position predicts nothing
    else:
        b, L = mb.input_ids.shape
        P = mb.start
        pre = model(input_ids=mb.prefix_ids, use_cache=True, logits_to_keep=1)   # the prompt, once
        cache = pre.past_key_values
        if b > 1:
            cache.batch_repeat_interleave(b)                   # differentiable repeat of the prompt's K/V
        pos = torch.arange(P, P + L, device=mb.input_ids.device).expand(b, L)
        out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, past_key_values=cache,
                    use_cache=True, position_ids=pos)
        # completion token 0 is predicted by the prompt's last position, token j by completion j-1
        logits = torch.cat([pre.logits[:, -1:].expand(b, 1, -1), out.logits[:, :-1]], dim=1)  # (b, L, V)
    return token_logprobs_and_entropy(logits, mb.targets, temperature, chunk, entropy_grad=entropy_grad)


# This micro-batch's share of each aggregation's denominator (see the module docstring), by name:
# one entry per loss.AGGREGATIONS key, so a new aggregation cannot fall through to another's rule.
_AGG_SHARES: dict[str, Callable[[torch.Tensor, dict[str, float]], float]] = {
    "token_mean": lambda m, tot: float(m.sum()) / max(tot["weight"], 1e-12),
    "seq_mean_token_mean": lambda m, tot: float((m.sum(-1) > 0).sum()) / max(tot["seqs"], 1),
    "drgrpo": lambda m, tot: m.shape[0] / max(tot["rows"], 1),     # B rows x fixed max_len
}


def _agg_share(mb_mask: torch.Tensor, full_mask_total: dict[str, float], agg: str) -> float:
    if agg not in _AGG_SHARES:
        raise ValueError(f"no micro-batch share rule for LossConfig.agg={agg!r}; add it to update._AGG_SHARES")
    return _AGG_SHARES[agg](mb_mask, full_mask_total)


def _micro_step(model, mb: MicroBatch, *, cfg: UpdateConfig, shaping: ShapingConfig, loss_cfg: LossConfig,
                temperature: float) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """One micro-batch: training forward, shaping, (KL reference forward), loss.

    Returns (loss, metrics, |logp - rollout logp| on trainable tokens, Ã/A on the gated tokens)."""
    logp, ent = forward_logprobs(model, mb, temperature, cfg.logit_chunk,
                                 entropy_grad=not shaping.detach or loss_cfg.entropy_coeff > 0)
    gate = effective_gate(mb.gate, mb.mask, shaping)         # the tokens shaping acts on, THE gate
    adv_t, smetrics = shape_advantages(mb.adv, ent, mb.mask, mb.gate, shaping)
    ref_logp = None
    if loss_cfg.beta > 0:
        with torch.no_grad(), model.disable_adapter():      # reference = base model, no copy
            ref_logp, _ = forward_logprobs(model, mb, temperature, cfg.logit_chunk, False)
    old_logp, is_weight, is_metrics = mb.old_logp, None, {}
    if cfg.is_correction == "tis":
        # π_old is the trained policy before this update's first optimizer step: this very forward in
        # the first pass (no extra forward), kept for later epochs. The rollout's log-probs are the
        # sampler's; they only enter through the truncated weight.
        if mb.policy_logp is None:
            mb.policy_logp = logp.detach()
        old_logp = mb.policy_logp
        is_weight, is_metrics = truncated_is_weights(old_logp, mb.old_logp, mb.mask, cfg.is_cap)
    loss_mb, lmetrics = policy_loss(logp, old_logp, adv_t, mb.mask, loss_cfg, ref_logp=ref_logp,
                                    gate=gate, entropy=ent, is_weight=is_weight)
    lmetrics.update(is_metrics)
    m = mb.mask > 0
    g = (gate > 0) & m & (mb.adv != 0)
    return loss_mb, {**lmetrics, **smetrics}, (logp.detach() - mb.old_logp)[m].abs(), \
        (adv_t.detach()[g] / mb.adv[g]).cpu()


def update_policy(model, optimizer, batch: UpdateBatch, params: list[torch.nn.Parameter], pad_id: int, *,
                  cfg: UpdateConfig, shaping: ShapingConfig, loss: LossConfig, grad_clip: float,
                  temperature: float, max_new_tokens: int,
                  before_optimizer_step: Callable[[], None] | None = None) -> dict[str, float]:
    """The update: micro-batches, one forward each, shaped advantages, policy loss, accumulation,
    grad-norm clipping, one optimizer step per epoch. Returns step metrics, merged over the
    micro-batches by metrics.merge_metrics (counts summed over every pass, extremes reduced, means
    weighted by the tokens that entered them); loss/total and loss/policy are the full-batch
    aggregation (the share-weighted sum the gradient is of), averaged over epochs.

    temperature: the rollout's sampling temperature (the recorded log-probs are at it; 0 means 1);
    max_new_tokens: the completion budget, the drgrpo constant normaliser when loss.max_len is None;
    before_optimizer_step: called once, right before the first optimizer step (the trainer defers
    signals from there on, so that an interrupt never leaves the weights updated but the step unrecorded).
    """
    device = params[0].device
    repacked = keep_4bit_differentiable(model)                 # QLoRA on CPU: see its docstring
    temperature = temperature or 1.0                           # records use T=1 for greedy rollouts
    loss_cfg = loss if loss.max_len is not None or loss.agg != "drgrpo" \
        else replace(loss, max_len=max_new_tokens)             # one constant across micro-batches
    n = len(batch.trajs)
    share = cfg.share_prompt and not checkpointing_on(model)   # checkpointing drops a passed cache
    mbs = plan_micro_batches(batch.trajs, cfg.micro_batch_size, share)
    mb_list = [collate([batch.trajs[i] for i in idx], [batch.weights[i] for i in idx], pad_id, device, share,
                       row_adv=batch.adv[idx],
                       token_adv=[batch.token_adv[i] for i in idx] if batch.token_adv is not None else None,
                       token_weight=[batch.token_weight[i] for i in idx] if batch.token_weight is not None else None)
               for idx in mbs]
    totals = {"weight": sum(float(mb.mask.sum()) for mb in mb_list),
              "seqs": sum(int((mb.mask.sum(-1) > 0).sum()) for mb in mb_list), "rows": n}
    parts: list[dict[str, float]] = []
    exact = {"loss/total": 0.0, "loss/policy": 0.0}
    norms, ratios, diffs = [], [], []
    model.train()
    for epoch in range(cfg.epochs):
        optimizer.zero_grad(set_to_none=True)
        for mb in mb_list:
            loss_mb, metrics, diff, ratio = _micro_step(model, mb, cfg=cfg, shaping=shaping, loss_cfg=loss_cfg,
                                                        temperature=temperature)
            if not torch.isfinite(loss_mb):
                raise FloatingPointError(f"non-finite loss {float(loss_mb)} at epoch {epoch}; metrics {metrics}")
            share_mb = _agg_share(mb.mask, totals, loss_cfg.agg)
            (loss_mb * share_mb).backward()
            for k in exact:
                exact[k] += metrics[k] * share_mb / cfg.epochs
            parts.append(metrics)
            ratios.append(ratio)
            if epoch == 0:   # the rollout's log-probs vs this forward, same weights: should be ~0
                diffs.append(diff)
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        if epoch == 0 and before_optimizer_step is not None:
            before_optimizer_step()
        optimizer.step()
        norms.append(float(norm))
    optimizer.zero_grad(set_to_none=True)
    out = {**merge_metrics(parts), **exact}
    out["update/grad_norm"] = sum(norms) / len(norms)
    d = torch.cat(diffs) if diffs else torch.zeros(0)
    r = torch.cat(ratios) if ratios else torch.zeros(0)
    out.update({
        "update/rows": n, "update/micro_batches": len(mbs) * cfg.epochs, "update/shared_prompt": float(share),
        "update/4bit_layers_unpacked": float(repacked),
        "update/logp_rollout_diff_max": float(d.max()) if d.numel() else 0.0,
        "update/logp_rollout_diff_mean": float(d.mean()) if d.numel() else 0.0,
        "shaping/adv_ratio_p05": float(r.quantile(0.05)) if r.numel() else 1.0,
        "shaping/adv_ratio_p50": float(r.quantile(0.5)) if r.numel() else 1.0,
        "shaping/adv_ratio_p95": float(r.quantile(0.95)) if r.numel() else 1.0,
    })
    model.eval()
    return out
