"""verl trainer "tao_sync": verl's sync v1 trainer + TAO-RL's entropy reshaping of the advantages.

verl 0.9.1 hands a registered advantage estimator only token_level_rewards / response_mask / uid,
not the entropy nor the agent loop's post-tool gate, so the reshaping is a trainer hook: after
verl's own `_compute_advantage` (GRPO with its std, Filter-A-masked rows already 0), `tao_shape`
reads the old-policy entropy verl computed in its old_log_prob forward and the gate from
`extra_fields["tao_post_tool"]`, and applies tao_lab.advantages.shape_advantages. Select it with
`trainer.v1.trainer_mode=tao_sync` and configure it under the top-level `tao.shaping` key
(fields of tao_lab.advantages.ShapingConfig; defaults = the paper reading).

Reachable variants (ShapingConfig fields):
    kind tao / additive / none, coef, alpha, kappa, gate post_tool / all_tokens  -- all
    detach=True        -- yes: the entropy is the old policy's, a constant (detach=False is refused)
    z_scope=trajectory -- yes (per row, over its response-mask tokens)
    z_scope=micro_batch -- refused: the statistics would be over the whole step batch here, not the
                          actor's micro-batch; verl's policy-loss hook gets no entropy
    empty_gate_fallback -- refused with z_scope=trajectory (code pairs it with micro-batch stats)
Not reachable at scale: the authors' current-forward, non-detached entropy with micro-batch
statistics -- it lives inside the loss, and verl's ppo_loss passes policy-loss functions only
old/new log-probs, advantages and the mask.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict
from torch import Tensor

from tao_lab.advantages import ShapingConfig, shape_advantages
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from tao_lab_verl import TRAINER_NAME


def shaping_config(config) -> ShapingConfig:
    """ShapingConfig from the top-level `tao.shaping` key of verl's config, checked for reachability."""
    raw = dict(((config.get("tao", None) or {}).get("shaping", None)) or {})
    cfg = ShapingConfig(**raw)
    if not cfg.detach:
        raise ValueError("tao.shaping.detach=False needs the current-forward entropy inside the loss; "
                         "verl 0.9.1's policy-loss hook does not receive it (see tao_lab_verl.trainer)")
    if cfg.z_scope != "trajectory":
        raise ValueError(f"tao.shaping.z_scope={cfg.z_scope!r}: only 'trajectory' is reachable in verl 0.9.1")
    if cfg.empty_gate_fallback:
        raise ValueError("tao.shaping.empty_gate_fallback=True is the micro-batch reading; not reachable here")
    return cfg


def gate_tensor(post_tool: list, shape: tuple[int, int]) -> Tensor:
    """(B, T) float gate from per-row lists of tao_lab's post-tool flags (right-padded with 0)."""
    g = torch.zeros(shape)
    for b, row in enumerate(post_tool):
        row = list(row)[:shape[1]]
        g[b, :len(row)] = torch.tensor(row, dtype=torch.float32)
    return g


def tao_shape(advantages: Tensor, entropy: Tensor, response_mask: Tensor, post_tool: list,
              cfg: ShapingConfig) -> tuple[Tensor, dict[str, float]]:
    """Ã = shape_advantages(A, H, mask, gate) on verl's (B, T) tensors; metrics under `tao/`."""
    gate = gate_tensor(post_tool, tuple(response_mask.shape))
    adv_t, metrics = shape_advantages(advantages, entropy.float(), response_mask.float(), gate, cfg)
    return adv_t.to(advantages.dtype), {f"tao/{k}": v for k, v in metrics.items()}


@register_trainer(TRAINER_NAME)
class TaoTrainerSync(PPOTrainerSync):
    """PPOTrainerSync whose advantages are reshaped by tao_shape after verl's estimator."""

    def _build_replay_buffer(self):
        self.trainer_mode = "sync"  # from here on behave exactly as verl's sync trainer
        self.tao_shaping = shaping_config(self.config)
        return super()._build_replay_buffer()

    def _compute_advantage(self, batch, metrics: dict):
        import transfer_queue as tq
        from verl.workers.utils.padding import response_to_nested

        batch = super()._compute_advantage(batch, metrics)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["advantages", "entropy", "response_mask", "extra_fields"])
        response_mask = data["response_mask"]
        extra = [getattr(e, "data", e) for e in data["extra_fields"]]
        padded = data.select("advantages", "entropy", "response_mask").to_padded_tensor()
        adv_t, shape_metrics = tao_shape(padded["advantages"], padded["entropy"], padded["response_mask"],
                                         [e.get("tao_post_tool", []) for e in extra], self.tao_shaping)
        metrics.update(shape_metrics)
        metrics["tao/filter_a_masked"] = float(sum(e.get("tao_filter_a", 0.0) for e in extra))
        out = {"advantages": response_to_nested(adv_t, response_mask)}
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                        fields=TensorDict(out, batch_size=len(batch)))
        return batch
