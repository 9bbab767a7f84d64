"""QLoRA gradients: 4-bit base vs the same weights dequantised to fp32 (issue 16 §1).

On a CPU with AVX512-BF16 a rollout-style eval forward used to repack the 4-bit weights into an
inference layout whose kernel (gemv_4bit) has no autograd, so every later backward was wrong.
Tolerance: 1e-4 relative (measured: 0, the 4-bit training path dequantises and runs the same fp32
matmul). Old code: 2.0 / 1.5 / 0.41 at 1x1 / 2x1 / 2x24.
"""

from __future__ import annotations


import pytest
import torch

from qlora_pair import lora_grads, max_rel_diff, qlora_pair

bnb = pytest.importorskip("bitsandbytes")

TOL = 1e-4
# A weight that WAS repacked had its block scales rounded to bf16 by bitsandbytes; unpacking cannot
# undo that, so the model after it differs from the fp32 copy by ~0.7% (measured); old code: > 100%.
REPACKED_TOL = 2e-2


@pytest.fixture(scope="module")
def pair(tmp_path_factory, smol_tokenizer):
    from tao_lab.models import tiny_model

    path = tmp_path_factory.mktemp("tiny4")
    tiny_model(vocab_size=len(smol_tokenizer), hidden=64, seed=0).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return qlora_pair(str(path))


@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (2, 24)])
def test_lora_gradients_through_4bit_equal_the_dequantised_fp32_ones_after_a_rollout_forward(pair, shape):
    q, f, tok = pair
    ids = torch.randint(0, len(tok), shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert max_rel_diff(lora_grads(q, ids), lora_grads(f, ids)) < TOL


def test_update_policy_unpacks_a_4bit_model_that_a_rollout_repacked(pair):
    from tao_lab import update as U
    from tao_lab.advantages import ShapingConfig
    from tao_lab.loss import LossConfig
    from tao_lab.records import Trajectory

    q, f, tok = pair
    lin = next(m for m in q.modules() if isinstance(m, bnb.nn.Linear4bit))
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, len(tok), (5,), generator=g).tolist()
    trajs = [Trajectory("t", 0, prompt, [int(x)], [1], [-1.0], [0.0], [0], [0]) for x in torch.randint(0, 99, (2,), generator=g)]
    batch = U.UpdateBatch(trajs, torch.tensor([1.0, -1.0]), [1.0, 1.0], 0)
    grads = {}
    for name, model in (("q", q), ("f", f)):
        if name == "q":       # a model built without models.finish_policy, then a rollout on it
            for m in model.modules():
                if isinstance(m, bnb.nn.Linear4bit):
                    m.support_avx512bf16_for_cpu = bnb.functional.has_avx512bf16()
            model.eval()
            with torch.no_grad():
                model(input_ids=torch.tensor([prompt]))
        params = [p for p in model.parameters() if p.requires_grad]
        snap = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        seen = {}
        opt = torch.optim.SGD(params, lr=0.0)
        U.update_policy(model, opt, batch, params, tok.pad_token_id, cfg=U.UpdateConfig(share_prompt=True),
                        shaping=ShapingConfig(kind="none"), loss=LossConfig(), grad_clip=0.0, temperature=1.0,
                        max_new_tokens=4, before_optimizer_step=lambda: seen.update(
                            {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        grads[name] = seen
        assert all(torch.equal(p, snap[n]) for n, p in model.named_parameters() if n in snap)  # lr 0
    assert not getattr(lin.weight.quant_state, "packing_format_for_cpu", False)
    assert max_rel_diff(grads["q"], grads["f"]) < REPACKED_TOL
