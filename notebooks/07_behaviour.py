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
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Behaviour: ET-Agent's metrics, data flywheel, Pareto sampling and efficiency reward
#
# Accuracy says whether an agent answered; ET-Agent (METHODS.md §3) asks *how*: did it call the
# tool when it should have, did its code run, did it repeat itself, how many tokens and calls did
# one correct answer cost. This notebook follows the method on the embedded SmolLM2-135M:
#
# 1. **behaviour metrics** of real rollouts (`tao_lab.behaviour`);
# 2. the **self-evolving data flywheel** (`methods/et_agent_flywheel.py`): per question a buffer of
#    trajectories that grows round by round by re-rollout, redundancy cuts, self-correction and hint
#    injection, all executed in the real sandbox and checked by the verifier; its best correct
#    trajectories are phase 1's fine-tuning set;
# 3. **group-wise Pareto sampling**: which questions a behaviour-calibration RL stage trains on;
# 4. the **efficiency-calibrated reward** and its σ annealing within each stage;
# 5. the behaviour radar before and after the flywheel.
#
# Everything runs offline; `TAO_LAB_SMOKE=1` (the tests) shrinks the sizes.

# %%
import os

import altair as alt
import ipywidgets as W
import numpy as np
import pandas as pd
from IPython.display import HTML, display

from tao_lab import behaviour, plots
from tao_lab.methods import et_agent as E
from tao_lab.methods.et_agent_flywheel import OPS, Flywheel, FlywheelConfig
from tao_lab.models import load_policy
from tao_lab.rewards import RewardConfig
from tao_lab.rollout import RolloutConfig
from tao_lab.sandbox import SandboxConfig, SandboxPool
from tao_lab.tasks import load_tasks
from tao_lab.tokenview import token_view_html

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"   # tests set this: 3 questions, 1 round, short budget
plots.use_offline_renderer()                      # charts as SVG: no network needed
N_TASKS, ROUNDS, BUDGET_TOKENS = (3, 1, 96) if SMOKE else (8, 3, 320)

# %% [markdown]
# ## 1. Behaviour metrics of real rollouts
# The policy, a handful of bundled arithmetic questions, and a rollout config: the few-shot prompt
# shows the fenced-python protocol. The sandbox pool is shared by every rollout below.

# %%
model, tok = load_policy("smollm2-135m", lora=False)
tasks = load_tasks("arith-L1", split="train", limit=N_TASKS, seed=0)
rcfg = RolloutConfig(group_size=1, max_new_tokens=BUDGET_TOKENS, max_turns=3, temperature=1.0, seed=0)
pool = SandboxPool(max_workers=2, config=SandboxConfig(timeout_s=3.0))

fw = Flywheel(model, tok, tasks, rcfg, FlywheelConfig(rounds=ROUNDS, init_samples=2, seed=0), pool=pool)
initial = fw.round()          # round 0: init_samples fresh rollouts per question, verified
initial_trajs = [e.traj for e in initial]
pd.DataFrame([behaviour.behaviour_metrics(initial_trajs)]).round(3)

# %% [markdown]
# Each metric is a pure function of the trajectories (`behaviour.behaviour_metrics`); correctness
# is the verifier's verdict (`records.is_correct`). A call is **redundant** by a stated rule
# [recon]: its code repeats an earlier call's, or it ran but nothing it printed reappears in the
# model's later text. Per call:

# %%
calls = pd.DataFrame([
    {"task": t.task_id, "call": k, "code": c.code[:40], "status": c.status, "valid": c.valid,
     "redundant": red, "stdout": c.stdout[:30]}
    for t in initial_trajs for k, (c, red) in enumerate(zip(t.tool_calls, behaviour.redundant_calls(t)))])
calls if len(calls) else "no tool calls in round 0"

# %% [markdown]
# ## 2. The data flywheel, round by round
# Each round takes every question's best unexpanded trajectory (correct first, then fewer calls,
# then shorter). A correct one is **re-rolled** and **cut before its first redundant call**; a
# wrong one is **cut before its first failed call** (self-correction) and **cut before its answer
# with "Wait, let me check this with Python."** appended and 4 more turns (hint injection). The
# policy regenerates from each cut — here the 135M policy itself, where the paper used a 72B editor.

# %%
fw.run(progress=not SMOKE)
table = fw.frame()
table

# %% [markdown]
# The buffer of one question as token views: grey is forced (a kept prefix, a hint, tool output),
# coloured is what the policy wrote in that row (colour = entropy). The best entry is phase 1's
# demonstration when it is correct. We look at a question the flywheel got right at least once
# (else the one with the largest buffer).

# %%
solved = table[table.correct].task_id
q = solved.iloc[0] if len(solved) else table.groupby("task_id").size().idxmax()
for j, e in enumerate(fw.buffers[q]):
    head = (f"<h4>{q} · entry {j} · op <code>{e.op}</code> · round {e.round} · parent {e.parent} · "
            f"{'correct' if e.traj.correct else 'wrong'}</h4>")
    display(HTML(head + token_view_html(e.traj, tok)))

# %%
ops = table.groupby(["round", "op"]).agg(rows=("correct", "size"), correct=("correct", "sum")).reset_index()
display(ops)
sft_set = fw.sft_examples()
print(f"phase 1 set: {len(sft_set)} correct demonstrations from {len(tasks)} questions; "
      f"ops {table[table.best & table.correct]['op'].value_counts().to_dict()}; skipped cuts {fw.skipped}")
assert fw.rounds_done == ROUNDS and set(table["op"]) <= {"initial", *OPS}
assert all(e.traj.correct is not None for buf in fw.buffers.values() for e in buf)   # every row verified

# %% [markdown]
# Phase 1 fine-tunes on this set: `sft.SFTRun(SFTConfig(epochs=3, schedule="cosine",
# warmup_ratio=0.1), examples=fw.sft_examples())` (ET-Agent's code settings). Each example's mask
# is its demonstration mask: the kept prefix's model text and the hint are trained, tool output is not.

# %% [markdown]
# ## 3. Group-wise Pareto sampling
# A behaviour-calibration stage probes candidate questions with G rollouts each and keeps those
# whose tool-call counts and correctness vary most: NSGA-II fronts on (Var calls, Var correct),
# crowding distance in the last front until the question budget is filled, then only questions with
# mixed outcomes. Here the flywheel's buffers stand in for the probe rollouts.

# %%
stats = {q: {"calls": [e.traj.n_tool_calls for e in buf], "correct": [bool(e.traj.correct) for e in buf]}
         for q, buf in fw.buffers.items()}
budget = W.IntSlider(value=max(1, len(stats) // 2), min=1, max=len(stats), description="budget")
post = W.Checkbox(value=True, description="mixed-outcome post-filter")
out = W.Output()


def redraw(*_):
    frame = E.pareto_frame(stats, budget.value, post.value)
    with out:
        out.clear_output(wait=True)
        display(E.pareto_chart(frame), frame.round(3))
    return frame


budget.observe(redraw, "value")
post.observe(redraw, "value")
display(W.HBox([budget, post]), out)
frame = redraw()
assert frame["pareto"].sum() == min(budget.value, len(stats))
assert set(frame[frame.selected].task_id) <= set(frame[frame.mixed].task_id)

# %% [markdown]
# ## 4. The efficiency-calibrated reward
# R = raw · f_tool · f_len + f_fmt with f(x) = 2 / (1 + exp(σ (x − group mean))): below the group's
# mean call count (or z-scored length) f > 1, above it f < 1. σ decays linearly to 0 over each
# stage and restarts with the next. The paper's σ (0.2 for calls, 0.5 for length) is the default;
# the public scripts use 0 (`et_agent.sigmas=code`), which leaves the calibration to the data.

# %%
x = np.arange(0, 7)
curves = pd.concat([pd.DataFrame({"calls − group mean": x - 3, "f": E.calibration(x, s), "σ": str(s)})
                    for s in (0.0, 0.2, 0.5, 1.0)])
f_chart = alt.Chart(curves).mark_line(point=True).encode(x="calls − group mean:Q", y="f:Q", color="σ:N") \
    .properties(width=300, height=200, title="f_tool against a group mean of 3 calls")
stage_steps = 4
rows = []
for setting in ("paper", "code"):
    sr = E.StageReward(RewardConfig(), E.EtAgentConfig(stage_steps=stage_steps, sigmas=setting))
    for step in range(1, 3 * stage_steps + 1):
        st, sl = sr.sigmas(step)
        rows += [{"step": step, "σ": v, "term": f"{setting}: σ_{name}"} for name, v in (("tool", st), ("len", sl))]
sigma_chart = alt.Chart(pd.DataFrame(rows)).mark_line(point=True).encode(x="step:Q", y="σ:Q", color="term:N") \
    .properties(width=360, height=200, title=f"σ_eff over 3 stages of {stage_steps} steps")
display(f_chart | sigma_chart)

# %% [markdown]
# The reward per row of one question's buffer (treated as one group), at the first and the last
# step of a stage: a correct row with fewer calls and fewer tokens earns more while σ > 0.

# %%
buf = fw.buffers[q]
group = dict(correct=[float(bool(e.traj.correct)) for e in buf], n_tool_calls=[e.traj.n_tool_calls for e in buf],
             lengths=[len(e.traj.token_ids) for e in buf], no_answer=[e.traj.finish_reason != "boxed" for e in buf])
per_row = []
for step in (1, stage_steps):
    st, sl = E.StageReward(RewardConfig(), E.EtAgentConfig(stage_steps=stage_steps)).sigmas(step)
    R, ft, fl = E.et_agent_rewards(**group, sigma_tool=st, sigma_len=sl)
    per_row += [{"stage step": step, "entry": j, "op": e.op, "correct": bool(e.traj.correct), "calls": e.traj.n_tool_calls,
                 "tokens": len(e.traj.token_ids), "f_tool": a, "f_len": b, "R": r}
                for j, (e, a, b, r) in enumerate(zip(buf, ft, fl, R))]
pd.DataFrame(per_row).round(3)

# %% [markdown]
# ## 5. Behaviour before and after the flywheel
# Round 0's rollouts against the flywheel's best trajectory per question (phase 1's candidates):
# the radar scales each axis to the better run, outward is better.

# %%
best = [e.traj for e in fw.best().values()]
before_after = behaviour.behaviour_frame({"round 0": initial_trajs, "flywheel best": best})
display(before_after.round(3))
display(behaviour.radar_chart(before_after))
assert before_after.loc[1, "accuracy"] >= before_after.loc[0, "accuracy"]   # best-of-buffer never loses
pool.close()
