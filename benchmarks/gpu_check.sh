#!/usr/bin/env bash
# The GPU route, ready to measure (issue 15): one command, no hub access, under 10 minutes on one
# modern GPU. Prints and saves under $OUT (default benchmarks/results/gpu/):
#   1. rollout tok/s of tao_lab vs transformers' generate (embedded SmolLM2-135M)
#   2. a GRPO step vs TRL's GRPOTrainer: time and peak memory (embedded model, LoRA)
#   3. QLoRA gradients through 4-bit layers vs the dequantised weights (must agree)
#   4. a QLoRA GRPO step of a random model with Qwen2.5-1.5B's shape: step time, peak CUDA memory,
#      and presets.qlora_memory_estimate beside it
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run  # CPU, tiny sizes: the code paths only (run by the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DRY=""
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -n "$DRY" ]; then
  echo "== dry run on CPU: code paths only, no figure means anything"
  "$PY" benchmarks/rollout_throughput.py --repeats 1 --new-tokens 8 --group 2 --n-prompts 1 --out "$OUT/rollout.json"
  "$PY" benchmarks/grpo_step_vs_trl.py --warmup 0 --steps 1 --tiny --out "$OUT/grpo_step.json"
  "$PY" benchmarks/gpu_check_qlora.py --device cpu
  "$PY" benchmarks/gpu_scale_step.py --dry-run --out "$OUT/scale_step.json"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" benchmarks/rollout_throughput.py --repeats 2 --out "$OUT/rollout.json"
  "$PY" benchmarks/grpo_step_vs_trl.py --rounds 2 --out "$OUT/grpo_step.json"
  "$PY" benchmarks/gpu_check_qlora.py --device cuda
  "$PY" benchmarks/gpu_scale_step.py --out "$OUT/scale_step.json"
fi
echo "== results in $OUT"
