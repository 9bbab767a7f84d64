"""A QLoRA GRPO step at the scale of the gpu_qlora preset, without the hub: a random Llama with
Qwen2.5-1.5B's shape (28 layers, hidden 1536, MLP 8960, 12 heads, 2 KV heads; the embedded
tokenizer's vocabulary), saved once, loaded in 4-bit NF4 with LoRA r=16 on all linear layers,
bf16 compute, gradient checkpointing. Times a full tao_lab step (rollout without tools, exactly
`--new-tokens` per row, update) and prints the measured peak CUDA memory next to
`presets.qlora_memory_estimate` for the same sizes.

    PYTHONPATH=. python benchmarks/gpu_scale_step.py               # on a GPU (a few minutes)
    PYTHONPATH=. python benchmarks/gpu_scale_step.py --dry-run     # CPU, a 2-layer model: the code path only

Random weights: the rewards mean nothing and no learning is measured; speed and memory are.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

QWEN_1_5B = {"layers": 28, "hidden": 1536, "intermediate": 8960, "heads": 12, "kv_heads": 2}
TINY = {"layers": 2, "hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2}


def build(path: Path, shape: dict, vocab: int, device: str) -> int:
    """A random Llama of `shape`, saved in bf16 to `path`; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):                    # initialise where there is room (6 GB in fp32 at 1.5B)
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, a 2-layer model, tiny sizes")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the result JSON here")
    args = ap.parse_args()
    from tao_lab.models import load_tokenizer
    from tao_lab.presets import make_config, qlora_memory_estimate
    from tao_lab.trainer import Trainer

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: run with --dry-run to check the code path on CPU", file=sys.stderr)
        return 2
    shape = TINY if args.dry_run else QWEN_1_5B
    if args.dry_run:
        args.steps, args.prompts, args.group, args.new_tokens = 1, 1, 2, 8
    tok = load_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model"
        t = time.perf_counter()
        n_params = build(path, shape, len(tok), "cuda" if cuda else "cpu")
        tok.save_pretrained(path)
        build_s = time.perf_counter() - t
        cfg = make_config("gpu_qlora", "grpo", [
            f"model.name={path}", f"model.dtype={'bfloat16' if cuda else 'float32'}",
            f"model.gradient_checkpointing={cuda}", "data.tasks=arith-L2", f"data.prompts_per_step={args.prompts}",
            "data.oversample=1", f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.new_tokens}",
            "rollout.tools=false", "rollout.ignore_eos=true", f"update.micro_batch_size={args.micro_batch}",
            f"optim.optimizer={'auto' if cuda else 'adamw'}", f"run.steps={args.steps}", "run.store_trajectories=false"])

        def reward_fn(trajs, step):   # model-free and mixed within each group, so every row trains
            for t in trajs:
                t.reward = float(t.sample_idx % 2)
            return [t.reward for t in trajs], {}

        with tempfile.TemporaryDirectory() as run:
            with Trainer(cfg, run, reward_fn=reward_fn) as tr:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(args.steps):
                    t = time.perf_counter()
                    log = tr.step()
                    times.append(time.perf_counter() - t)
                peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
                rollout_tps = log.metrics.get("rollout/sampled_tokens_per_s", float("nan"))
    est = qlora_memory_estimate(layers=shape["layers"], hidden=shape["hidden"], intermediate=shape["intermediate"],
                                heads=shape["heads"], kv_heads=shape["kv_heads"], vocab=len(tok), lora_r=16,
                                rows=args.prompts * args.group, prompt_len=300, completion_len=args.new_tokens,
                                micro_batch=args.micro_batch)
    result = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)", "params_M": n_params / 1e6,
              "build_s": build_s, "step_s": times, "median_step_s": sorted(times)[len(times) // 2],
              "rollout_tokens_per_s_last_step": rollout_tps, "peak_cuda_gib": peak,
              "estimate_peak_gib": est["peak_gib"], "settings": vars(args)}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
