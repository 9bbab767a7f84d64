"""A 4-bit QLoRA model and the same weights dequantised to fp32 with the same LoRA (for gradient checks).

Used by tests/test_qlora.py and benchmarks/gpu_check_qlora.py. The LoRA matrices get random values
(B = 0 at init would make every lora_A gradient 0 and the comparison empty).
"""

from __future__ import annotations

import torch


def qlora_pair(path: str, device: str = "cpu", r: int = 4, seed: int = 1):
    """(4-bit model, fp32 model with the dequantised base) sharing one random LoRA, r on all linear."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    from tao_lab.models import load_policy

    q, tok = load_policy(path, load_in_4bit=True, lora=True, lora_r=r, device=device)
    f, _ = load_policy(path, lora=True, lora_r=r, device=device)
    quant = dict(q.named_modules())
    for name, m in f.named_modules():
        if isinstance(quant.get(name), bnb.nn.Linear4bit):
            w = quant[name].weight
            m.weight.data = F.dequantize_4bit(w.data, w.quant_state).float()
    g = torch.Generator().manual_seed(seed)
    fp = dict(f.named_parameters())
    with torch.no_grad():
        for name, p in q.named_parameters():
            if "lora_" in name:
                v = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(v.to(p.device))
                fp[name].copy_(v.to(p.device))
    return q, f, tok


def lora_grads(model, ids: torch.Tensor, rollout_first: bool = True) -> dict[str, torch.Tensor]:
    """LoRA gradients of mean(logits^2) on `ids` (B, T), after an eval no-grad forward as a rollout does."""
    model.zero_grad(set_to_none=True)
    if rollout_first:
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    model.train()
    model(input_ids=ids).logits.float().pow(2).mean().backward()
    return {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters() if "lora_" in n}


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ||a - b|| / ||b|| over the parameters (b is the fp32 reference)."""
    return max(float((a[n] - b[n]).norm() / b[n].norm().clamp(min=1e-12)) for n in b)
