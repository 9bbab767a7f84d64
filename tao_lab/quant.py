"""An int8 copy of the policy for the rollout (RolloutConfig.quantize="int8"; off by default).

On CPU the rollout's decode is bound by fp32 matmuls. `quantized_copy(model)` builds, at every
generate() call, a copy of the policy whose linear layers (q/k/v/o, MLP, lm_head) are Int8Linear:
int8 x int8 matmuls with int32 accumulation (torch._int_mm, oneDNN's VNNI/AVX2 kernels):
  - weights: int8, symmetric, one scale per output channel, from the policy's EFFECTIVE weight
    W + s·BA (the LoRA adapter is folded in here, so the copy is always the current policy; a peft
    layer that is already merged contributes W alone);
  - activations: int8, symmetric, one scale per token, quantised at every call (why per token, not
    per tensor: Int8Linear's docstring).
Everything else (embedding, norms, rotary embedding, attention, the KV cache) stays fp32 and is
shared with the policy, not copied; the engine (engine.KVEngine) runs the copy unchanged.

Measured on the project machine, 1 thread, embedded SmolLM2-135M, decode at 32 rows: the weight
matmuls 4.3x faster (torch profiler), a decode step ~1.9x; attention (SDPA) is then the largest
cost. Whole rollouts: benchmarks/rollout_throughput.py --quantize int8 (README "Numbers").
Building the copy reads every weight once: ~1-3 s for the embedded model on the shared machine,
paid every step (RolloutStats.quantize_s, inside the rollout's wall time).

The sampler is then not the policy: KL(fp32 || int8) ≈ 0.017 nats per position on a few-shot
prompt, so its token log-probs differ from the policy's. The update corrects for it with truncated
importance sampling (UpdateConfig.is_correction="tis", loss.truncated_is_weights) [code: TRL's
vllm_importance_sampling_correction, verl's rollout correction]; the Trainer refuses int8 without it
(train_config.check_sampler). Off by default until a learning-curve comparison against fp32 rollouts
shows the corrected int8 run learns as well.

Not covered: CUDA (a CUDA model is refused), 4-bit / 8-bit base layers, caching the frozen
lm_head's int8 copy across steps. Measured and not used: fbgemm's per-tensor dynamic quantisation
(quantize_dynamic: as fast, far less accurate), weight-only int8 (torch._weight_int8pack_mm: slower
than fp32 here at 32 rows), bf16 (needs AVX512-BF16; mixed speed).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

QUANTIZE_MODES = ("none", "int8")


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) float -> ((n, k) int8 q, (n, 1) float scale), x ≈ q · scale, symmetric per row.

    scale = max|x_row| / 127 (clamped away from 0); |x / scale| <= 127, so rounding needs no clamp."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x Wᵀ + b as an int8 x int8 matmul with int32 accumulation (torch._int_mm).

    W: int8, one scale per output channel, quantised once here. x: int8, one scale per token
    (row), quantised at every call. Per token, not per tensor: the embedded model's down_proj
    inputs hold a few tokens with activations orders of magnitude above the rest (the "massive
    activations" of the first tokens), and one scale for the whole (tokens, k) matrix wiped out
    everyone else's (measured: KL(fp32 || int8) over 60 prompt positions 0.65 with fbgemm's
    per-tensor dynamic quantisation, 0.017 per token; speed about the same).

    `weight` is a reference to the policy's fp32 parameter (`like`; for a LoRA layer its base W,
    without the adapter), shared, never copied: code that reads a linear layer's shape, dtype or
    device (engine.KVEngine, rollout's vocabulary size) sees the policy's; the forward never reads it.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Parameter | None = None):
        super().__init__()
        if weight.device.type != "cpu":
            raise ValueError(f"RolloutConfig.quantize='int8' is a CPU path (torch._int_mm); the model is on "
                             f"{weight.device}: use quantize='none' there")
        self.out_features, self.in_features = weight.shape
        if like is None:
            like = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach(), requires_grad=False)
        self.weight = like
        q, scale = int8_rows(weight.detach().float())              # per output channel = per row of W
        self.register_buffer("w_int8_t", q.t(), persistent=False)   # (in, out) view: _int_mm's fast layout
        self.register_buffer("w_scale", scale.reshape(1, -1), persistent=False)   # (1, out)
        self.register_buffer("b", None if bias is None else bias.detach().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, x_scale = int8_rows(x.reshape(-1, shape[-1]).float())    # (n, in) int8, (n, 1)
        y = torch._int_mm(xq, self.w_int8_t).float() * (x_scale * self.w_scale)
        if self.b is not None:
            y = y + self.b
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 x int8"


def effective_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) a linear layer applies: nn.Linear's own, or a peft LoRA layer's W + Σ s·BA over
    its active adapters (W alone when the adapter is merged into it or disabled)."""
    if isinstance(layer, nn.Linear):
        return layer.weight, layer.bias
    base = layer.base_layer
    w = base.weight
    if not (getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False)):
        deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
        if deltas:
            w = w.detach() + sum(deltas)
    return w, base.bias


def _is_lora_linear(m: nn.Module) -> bool:
    return hasattr(m, "base_layer") and hasattr(m, "lora_A") and isinstance(m.base_layer, nn.Linear)


def _quantized_tree(module: nn.Module) -> tuple[nn.Module, int]:
    """A shallow copy of `module` whose linear layers are Int8Linear, and how many were replaced.

    Each module on the way down is copied with copy.copy (its parameters, buffers and config are
    shared, its tables are new); a LoRA layer is replaced whole, so its adapter modules are
    never copied. (copy.deepcopy with shared tensors took ~0.9 s for the embedded model.)"""
    if isinstance(module, nn.Linear) or _is_lora_linear(module):
        like = module.weight if isinstance(module, nn.Linear) else module.base_layer.weight
        return Int8Linear(*effective_weight(module), like=like), 1
    if type(module).__name__ in ("Linear4bit", "Linear8bitLt") or hasattr(module, "lora_A"):
        raise ValueError(f"RolloutConfig.quantize='int8' cannot quantise {type(module).__name__}; "
                         "it needs float nn.Linear base layers (not 4-bit or 8-bit)")
    new = copy.copy(module)
    new._parameters, new._buffers, new._modules = dict(module._parameters), dict(module._buffers), {}
    n = 0
    for name, child in module._modules.items():
        if child is None:
            new._modules[name] = None
            continue
        new._modules[name], k = _quantized_tree(child)
        n += k
    return new, n


@torch.no_grad()
def quantized_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` (a causal LM, peft-wrapped or not) with every linear layer an Int8Linear.

    Returns the unwrapped transformers model (the rollout engine reads its decoder, lm_head, config).
    Only the module tree is copied: every tensor that is not quantised (embedding, norms, rotary
    buffers) is shared with `model`. A tied lm_head is quantised like any other linear layer.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    qmodel, n = _quantized_tree(base)
    if n == 0:
        raise ValueError(f"RolloutConfig.quantize='int8': no nn.Linear layer found in {type(base).__name__}")
    return qmodel.eval()


def rollout_model(model: nn.Module, quantize: str) -> nn.Module:
    """The model the rollout samples from under RolloutConfig.quantize."""
    if quantize == "none":
        return model
    if quantize == "int8":
        return quantized_copy(model)
    raise ValueError(f"quantize={quantize!r}: choose one of {list(QUANTIZE_MODES)}")
