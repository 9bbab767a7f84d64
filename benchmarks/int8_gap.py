"""How far the int8 rollout copy's log-probs are from the fp32 policy's, on real training steps.

Runs the cpu_demo preset (embedded SmolLM2-135M, LoRA r=16, few-shot arith-L3 with the Python tool),
plain GRPO (no filters, so every step trains and measures), with rollout.quantize=int8 and update.is_correction=tis for a few steps, and prints per step what
the update measured on the sampled tokens: mean / max |logπ_fp32 - logπ_int8| (the update's first
forward vs the rollout's records) and the truncated importance weights min(π_fp32/π_int8, C)
(mean, min/max raw ratio, fraction truncated), plus the time spent building the int8 copy.
From step 2 on the LoRA adapter is non-zero, so the copy folds a trained adapter.

    .venv/bin/python benchmarks/int8_gap.py [--steps 2] [--out benchmarks/results/int8_gap.json] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tao_lab import trainer as T
from tao_lab.presets import make_config

RESULTS = Path(__file__).parent / "results" / "int8_gap.json"
KEYS = ("update/logp_rollout_diff_mean", "update/logp_rollout_diff_max", "loss/is_ratio_mean", "loss/is_ratio_min",
        "loss/is_ratio_max", "loss/is_weight_mean", "loss/is_truncated_frac", "loss/tokens",
        "rollout/quantize_s", "rollout/wall_s", "rollout/sampled_tokens")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--set", nargs="*", default=[], help="extra section.field=value overrides")
    args = ap.parse_args()
    overrides = ["rollout.quantize=int8", "update.is_correction=tis", f"run.steps={args.steps}", *args.set]
    cfg = make_config("cpu_demo", "grpo", overrides)
    rows = []
    with tempfile.TemporaryDirectory() as run, T.Trainer(cfg, run) as tr:
        for _ in range(args.steps):
            log = tr.step()
            row = {"step": log.step, "skipped": log.skipped, **{k: log.metrics.get(k) for k in KEYS}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"overrides": overrides, "preset": "cpu_demo", "method": "grpo", "steps": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
