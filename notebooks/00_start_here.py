# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Start here
#
# **tao_lab** is a workbench for *tool-integrated reinforcement learning* of small language models:
# the model writes Python, a sandbox runs it, the output comes back as the next tokens, and a GRPO-style
# update teaches the model when and how to call the tool. Everything runs on a laptop CPU with the
# embedded SmolLM2-135M-Instruct; the same code runs a 1.5B model in 4-bit on one consumer GPU.
#
# This notebook runs nothing heavy. It says what each notebook teaches, in which order, how long it
# takes, how to move to a GPU, and what the words mean. Run its cells to check your machine.
#
# ## The pipeline, and where each method plugs in
#
# One training step is five stages, each a function you can call alone (`tao_lab/trainer.py`):
#
# | stage | what happens | the default | who replaces it |
# |---|---|---|---|
# | **prompts** | which tasks this step rolls out, rendered how | a seeded stream of tasks (`hooks.SeededStream`) | ToolExpander (hard prompts get demonstrations), ET-Agent (Pareto-selected questions), E3-TIR (rows start from expert prefixes) |
# | **rollout** | G episodes per prompt, the tool runs in the sandbox, every token recorded | `rollout.generate` | ARPO and E3-TIR fork live rows into branches |
# | **reward** | the verifier checks the boxed answer | `rewards.score` | ET-Agent (efficiency-calibrated), ToolExpander (+0.01 self-example) |
# | **filters** | which trajectories and groups train, with reasons | none (GRPO) | TAO-RL Filter A / B + refill, SimpleTIR masks, DAPO dynamic sampling |
# | **advantage + update** | group-normalised advantages, the clipped loss | GRPO | TAO-RL entropy reshaping at post-tool tokens, E3-TIR mixed tree advantages |
#
# A method is an *arm*: `tao-lab train --method NAME` sets its switches and hooks
# (`tao_lab/methods/arms.py`); the cell below lists the arms this checkout has.

# %%
import os
import platform
import time

import pandas as pd
import torch

from tao_lab.methods.arms import ARMS, HOOKS
from tao_lab.sandbox import TIER_CAVEATS, tier_status
from tao_lab import threads

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"CUDA {'available: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available (CPU)'}")
threads.apply()   # the thread policy: torch threads from the cores free now (TAO_LAB_THREADS overrides)
arms = pd.DataFrame([{"arm": name, "own hooks (prompt source / reward / advantage)": name in HOOKS}
                     for name in ARMS])
assert {"grpo", "tao"} <= set(arms["arm"])
arms

# %% [markdown]
# ## The sandbox tier on this machine
#
# Model-written code is untrusted. `tao_lab.sandbox` picks the strongest isolation tier available:
# **bubblewrap** (namespaces: no network, a read-only filesystem view) when `bwrap` is installed, else
# **rlimits** (a child process with CPU, memory, process and output limits). Notebook 01 trips every
# limit on purpose.

# %%
status = tier_status()
for tier, verdict in status.items():
    print(f"{tier:12s} {verdict}\n{'':12s} not protected: {TIER_CAVEATS.get(tier, '?')}")

# %% [markdown]
# ## The notebooks, in order
#
# Times are wall-clock on the project machine (2 CPU cores, no GPU). *Smoke* is what `make test` runs
# (`TAO_LAB_SMOKE=1`: tiny sizes, the story intact; measured this round on a shared machine, so
# upper bounds); *full* is the size the notebook is written for, given where it has been measured.
#
# | notebook | it teaches | smoke | full |
# |---|---|---|---|
# | `00_start_here` | this map, the glossary, a machine check | seconds | seconds |
# | `01_tool_sandbox` | one tool call and its result, every limit tripping, both tool-call protocols | < 1 min | ~1 min |
# | `02_rollouts` | zero-shot vs few-shot rollouts, one episode as coloured tokens, a group side by side, the run store | 1-3 min | rollout cell ~2 min |
# | `03_filtering` | TAO-RL Filter A / B, void-turn and overlong masks, refill: every decision with its reason | 1-2 min | not measured |
# | `04_entropy` | per-token entropy around tool calls, the post-tool reshaping and its switches, a live panel | ~1 min | not measured |
# | `05_training` | one GRPO / TAO-RL step as calls, then live training with charts and widgets | 1-2 min | ~12 min (6 steps, as `make demo`) |
# | `06_tree_rollouts` | E3-TIR: experts, anchors, rollouts from anchors, the tree, mixed advantages, the expert share | 1-1.5 min | not measured |
# | `07_behaviour` | ET-Agent: behaviour metrics, a flywheel round, Pareto selection, σ annealing, a radar | 1-2 min | not measured |
# | `08_weak_models` | ToolExpander: all-wrong groups, hard-sample replacement, self-examples, a BFCL episode | 1-1.5 min | not measured |
#
# Full-size times assume a quiet machine; the thread policy keeps a busy laptop from stalling, but
# another heavy process on the same cores still slows everything down.
#
# ## Moving to a GPU and a bigger model
#
# 1. Install the CUDA build of PyTorch (on Linux, PyPI's default `torch==2.13.0` wheel is the CUDA one).
# 2. Use the `gpu_qlora` preset: Qwen2.5-1.5B-Instruct in 4-bit NF4 with LoRA on all linear layers,
#    bf16 compute, gradient checkpointing and 8-bit paged AdamW, about 4.7 GiB at peak
#    (`presets.qlora_memory_estimate` shows the formula). The weights come from the Hugging Face hub
#    once; after that they are cached.
# 3. On the command line: `tao-lab train --preset gpu_qlora --method tao --out runs/qwen`; in a
#    notebook, build the config with `presets.make_config("gpu_qlora", "tao")` where it says `cpu_demo`.
#
# ## Glossary
#
# - **episode / trajectory**: one sampled answer to one prompt, with its tool calls; `records.Trajectory`
#   keeps per token the id, whether the policy sampled it (mask 1) or it was forced (tool output, mask 0),
#   its log-probability and entropy.
# - **group**: the G episodes of one prompt in one step; GRPO's advantage is the reward minus the
#   group's mean, divided by its std.
# - **void turn**: a turn with neither a tool call nor a boxed answer; the episode ends there (SimpleTIR).
# - **Filter A** (TAO-RL): drop (paper) or mask (authors' code) trajectories whose tool calls *all*
#   failed. **Filter B**: drop groups whose rewards are all equal (all correct or all wrong): their
#   advantages are 0 and they only dilute the batch. **Refill**: bring the surviving groups back to B.
# - **post-tool gate**: 1 on the sampled tokens of the turn right after a tool call. TAO-RL reshapes
#   the advantage only there: Ã = A·(1 + a·z), z the entropy's **z-score** (its distance from the
#   trajectory's mean entropy in standard deviations).
# - **verifier**: the check of the boxed answer against the gold one (`rewards.verify`); correctness is
#   always its verdict, never a shaped reward.
# - **Avg@k / Pass@k**: mean accuracy over k samples per task, and the chance that at least one of k
#   is correct (the unbiased estimator 1 − C(n−c, k)/C(n, k)).
# - **[paper] / [code] / [recon]**: every mechanism in `tao_lab/` says whether it follows the paper, the
#   authors' public code, or is tao_lab's reconstruction where neither says; where paper and code
#   differ, both are switches and the default is the paper.
#
# ## The papers
#
# - TAO-RL: tool-aware trajectory filtering + entropy-guided exploration (arXiv 2606.03762)
# - E3-TIR: expert-prefix anchors, branching, mixed advantages (arXiv 2604.09455)
# - ET-Agent: behaviour calibration with a data flywheel (arXiv 2601.06860)
# - ToolExpander: GRPO for weak models, hard-sample replacement (arXiv 2510.07737)
# - ARPO: entropy-based adaptive branching at tool junctures; AEPO (its successor)
# - DAPO (dynamic sampling, clip-higher), SimpleTIR (void-turn masks)
#
# The next notebook is `01_tool_sandbox`. The two commands for everything else: `make demo`, `make test`.

# %%
t0 = time.perf_counter()
from tao_lab.tasks import load_tasks  # noqa: E402  (timed: the first import of the task sets)

tasks = load_tasks("arith-L2", split="train", limit=3)
print(f"bundled tasks load: {len(tasks)} in {time.perf_counter() - t0:.2f} s; the first one:")
print(tasks[0].prompt, "->", tasks[0].answer)
assert tasks and tasks[0].answer
