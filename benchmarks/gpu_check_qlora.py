"""QLoRA gradient check: LoRA gradients through the 4-bit base vs the same weights dequantised to fp32.

Tiny random Llama (2 layers, hidden 64), LoRA r=4 on every linear layer, random LoRA values; for each
shape (batch x tokens) 1x1, 2x1, 2x24: an eval no-grad forward (as a rollout), then a training
forward/backward of mean(logits^2) in both models; prints max_n ||g4 - g32|| / ||g32|| per shape and
fails (exit 1) above the tolerance. Runs on CUDA when available, else CPU.

    PYTHONPATH=. python benchmarks/gpu_check_qlora.py [--tol 1e-3] [--device cuda]

CPU reference (this repo, after the fix): 0 at every shape; before it, 2.0 / 1.5 / 0.41.
On CUDA bitsandbytes dequantises in the compute dtype (fp32 here), so the expected figure is ~1e-6.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from qlora_pair import lora_grads, max_rel_diff, qlora_pair  # noqa: E402

from tao_lab.models import load_tokenizer, tiny_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    tok = load_tokenizer("smollm2-135m")
    with tempfile.TemporaryDirectory() as d:
        tiny_model(vocab_size=len(tok), hidden=64, seed=0).save_pretrained(d)
        tok.save_pretrained(d)
        q, f, _ = qlora_pair(d, device=args.device)
    results = {}
    for shape in [(1, 1), (2, 1), (2, 24)]:
        ids = torch.randint(0, len(tok), shape, generator=torch.Generator().manual_seed(sum(shape))).to(args.device)
        results["x".join(map(str, shape))] = max_rel_diff(lora_grads(q, ids), lora_grads(f, ids))
    ok = all(v < args.tol for v in results.values())
    print(json.dumps({"device": args.device, "tol": args.tol, "max_rel_grad_diff": results, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
