#!/usr/bin/env bash
# A few steps of TAO-RL through verl + the tao_lab_verl plugin on the embedded SmolLM2-135M, one GPU.
# Needs a CUDA machine: adds vLLM to the plugin env (vllm pins its own torch, so this env is a
# separate one, .venv-verl-gpu). Not run in CI (no GPU); the CPU part is `make test-verl`.
#   bash benchmarks/verl_gpu_smoke.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-3}
ENV=.venv-verl-gpu
PY=$ENV/bin/python
if [ ! -x "$PY" ]; then
  python3.11 -m venv "$ENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q 'verl[vllm]==0.9.1' 'TransferQueue>=0.1.10' math-verify==0.9.0
  "$PY" -m pip install -q --no-deps -e . -e plugins/verl
fi
MODEL=${TAO_LAB_MODEL:-${TAO_LAB_HOME:-$HOME/.cache/tao_lab}/models/smollm2-135m}
[ -d "$MODEL" ] || { echo "no model at $MODEL: run 'make model' (or set TAO_LAB_MODEL)"; exit 2; }
OUT=${OUT:-runs/verl_smoke}
mkdir -p "$OUT"
"$PY" -m tao_lab_verl.dataset arith-L1 train "$OUT/train.parquet" 64
"$PY" -m tao_lab_verl.dataset arith-L1 test "$OUT/val.parquet" 16
"$PY" -m verl.trainer.main_ppo --config-path="$PWD/examples" --config-name=verl_tao \
  data.train_files="$OUT/train.parquet" data.val_files="$OUT/val.parquet" \
  data.train_batch_size=4 data.max_prompt_length=1024 \
  actor_rollout_ref.model.path="$MODEL" actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=4 actor_rollout_ref.rollout.response_length=512 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.4 actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
  actor_rollout_ref.rollout.agent.num_workers=1 \
  actor_rollout_ref.actor.ppo_mini_batch_size=4 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4 \
  trainer.n_gpus_per_node=1 trainer.nnodes=1 trainer.total_training_steps="$STEPS" \
  trainer.logger='[console]' trainer.val_before_train=false trainer.test_freq=-1 trainer.save_freq=-1 \
  trainer.default_local_dir="$OUT/ckpt" 2>&1 | tee "$OUT/log.txt"
# What to look for in the log: tao/shaping/gated_tokens > 0, tao/filter_a_masked, the
# filter_groups/evicted_samples counter, and a finite actor/pg_loss for each step.
grep -E "tao/shaping/gated_tokens|tao/filter_a_masked|actor/pg_loss" "$OUT/log.txt" | tail -n 20
