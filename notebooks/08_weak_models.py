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
# # 08 · Weak models: why GRPO starves, and what ToolExpander does about it
#
# GRPO learns from the *spread* of rewards inside a group of rollouts of one prompt. A small model
# is often wrong on every rollout of a hard prompt: the group's rewards are all 0, every advantage is
# 0, and the prompt teaches nothing — the step spends its compute and learns from the easy prompts
# only. ToolExpander (arXiv 2510.07737, METHODS.md §4) targets exactly this:
#
# * **dynamic multi-round hard sampling** — a task none of whose last N rollouts is correct is
#   *hard*; at each round its prompt is replaced by a few-shot-augmented one (k solved
#   demonstrations of the same kind), and it goes back to the plain prompt once it is solved;
# * **self-exemplifying thinking** — +0.01 reward when the model writes and analyses an example of
#   its own before answering (GRPO without KL, exponential LR decay);
# * evaluated on **function calling** (BFCL).
#
# Everything below runs the embedded SmolLM2-135M on CPU: real rollouts, the real verifier.

# %%
import os
from collections import Counter
from dataclasses import replace

import altair as alt
import pandas as pd
import torch
from IPython.display import display

from tao_lab import bfcl, bfcl_checker, filters, plots
from tao_lab.methods.toolexpander import HardSampleSource, self_example_check
from tao_lab.models import load_policy
from tao_lab.presets import make_config
from tao_lab.rewards import score
from tao_lab.rollout import generate
from tao_lab.sandbox import SandboxConfig, SandboxPool
from tao_lab.tasks import load_tasks
from tao_lab.tokenview import TokenView
from tao_lab.update import compute_advantages

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"   # tests set this: fewer tasks, shorter episodes
plots.use_offline_renderer()                      # charts as SVG: no network, no JavaScript needed
torch.manual_seed(0)

model, tok = load_policy("smollm2-135m", lora=False)
model = model.eval()

# %% [markdown]
# ## 1. All-wrong groups give zero advantages
# The `toolexpander` arm on the `cpu_demo` sizes, on the hardest arithmetic level. Its prompt source,
# `HardSampleSource`, draws the tasks in the seeded order and renders them: plain prompts (the
# zero-shot template plus the self-example instruction) until a task turns out hard. The first
# round is ordinary GRPO: roll out, verify, and `compute_advantages` — the loop's GRPO step,
# A = (r − mean) / std inside each group.

# %%
G, N_TASKS, BUDGET = (2, 3, 48) if SMOKE else (4, 6, 160)
cfg = make_config("cpu_demo", "toolexpander", [
    f"rollout.group_size={G}", f"rollout.max_new_tokens={BUDGET}", "rollout.max_turns=2",
    "rollout.template=zero_shot", f"toolexpander.hard_rollouts={G}", "toolexpander.n_demos=2"])
print(f"arm {cfg.method}: KL beta {cfg.loss.beta}, LR schedule {cfg.optim.schedule} (γ = {cfg.optim.gamma}), "
      f"self-example bonus {cfg.reward.self_example_bonus}, clip {cfg.loss.eps_low}/{cfg.loss.eps_high} "
      "(the paper's clip values are not published)")
ro = replace(cfg.rollout, seed=0)
sandbox = SandboxPool(config=SandboxConfig(timeout_s=3.0))   # the model's Python calls run here
tasks = load_tasks("arith-L4", split="train", limit=N_TASKS)
source = HardSampleSource(tasks, tok, cfg)
history = {}                                     # step -> (batch, trajectories)


def run_round(step):
    """One step of the loop without the update: draw, roll out, verify, observe."""
    batch = source.next_batch(step, len(tasks))
    out, _ = generate(model, tok, batch.tasks, replace(ro, seed=step), pool=sandbox, prompts=batch.prompts)
    score(out, cfg.reward)
    history[step] = (batch, out)
    return batch, out, source.observe(step, batch, out)


batch, trajs, metrics = run_round(1)
fres = filters.apply(trajs, filters.FilterConfig(rules=()))
_, adv, _ = compute_advantages(trajs, fres, cfg.update.adv_std)
table = pd.DataFrame({"task": [t.task_id for t in trajs], "correct": [bool(t.correct) for t in trajs],
                      "reward": [t.reward for t in trajs], "advantage": adv.tolist()})
display(table)
groups = table.groupby("task")
all_wrong = [k for k, g in groups if not g.correct.any()]
for k in all_wrong:
    assert (groups.get_group(k).advantage.abs() < 1e-6).all(), "an all-wrong group must have A = 0"
print(f"{len(all_wrong)} of {groups.ngroups} groups are all wrong: their advantages are exactly 0, "
      "so those prompts give the update no gradient")

# %% [markdown]
# ## 2. The hard set, round by round
# After the verifier has judged a step's rollouts, `observe` appends each plain rollout's verdict
# to its task's window of the last N. At a round boundary (here every step) a task with 0 of N
# correct is replaced by a few-shot-augmented prompt; a replaced task reverts when one of its
# augmented rollouts is correct. The training rollouts are the hardness check: nothing extra is
# rolled out. Two more rounds of the real model (no weight updates here: only the pool moves).

# %%
for step in (2, 3):
    batch, _, metrics = run_round(step)
    rates = {kind: metrics[f"source/all_wrong_{kind}"] for kind in ("plain", "replaced")
             if f"source/all_wrong_{kind}" in metrics}
    print(f"round {step}: {int(batch.info['source/replaced_in_batch'])} of {len(tasks)} prompts replaced; "
          "all-wrong group rate " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
rounds = pd.DataFrame(source.rounds)
display(rounds)
assert len(rounds) == 3 and rounds["hard"].iloc[0] == len(all_wrong)

# %%
long = rounds.melt(id_vars="round", value_vars=["hard", "replaced", "reverted", "pool"], var_name="count")
alt.Chart(long, title="The hard set over rounds").mark_line(point=True).encode(
    x=alt.X("round:O"), y=alt.Y("value:Q", title="tasks"), color="count:N")

# %% [markdown]
# A 135M model without training is rarely right even with demonstrations, so at this size the pool
# seldom shrinks here: a task leaves it when one augmented rollout is correct, which in a real run
# is what the updates make possible (tests/test_toolexpander.py shows the revert with a policy that
# is right exactly when it sees demonstrations).
#
# ## 3. One hard task before and after replacement
# The same task in round 1 with its plain prompt and in round 2, after round 1 found it hard, with k
# demonstrations of its kind placed before the question. The coloured tokens are the model's
# completion (colour = entropy).

# %%
replaced_in_2 = [t.id for t, p in zip(*(history[2][0].tasks, history[2][0].prompts)) if p != source.plain_prompt(t)]
hard_id = replaced_in_2[0] if replaced_in_2 else tasks[0].id
task = source.by_id[hard_id]
before = next(t for t in history[1][1] if t.task_id == hard_id)
after = next(t for t in history[2][1] if t.task_id == hard_id)
print(f"task {hard_id} ({task.meta['kind']}): plain prompt {len(before.prompt_text)} chars, "
      f"round-2 prompt {len(after.prompt_text)} chars "
      f"({after.prompt_text.count('Code execution result') - before.prompt_text.count('Code execution result')} "
      "demonstrated tool results added)")
print("correct before:", before.correct, "| after:", after.correct)
display(TokenView(before, tok))
TokenView(after, tok)

# %% [markdown]
# ## 4. Self-exemplifying thinking: which completions earn the +0.01
# The system prompt asks for an example between `<example>` tags. `self_example_check` [recon] is
# strict so the bonus cannot be farmed: one well-formed section, before the answer and the first
# tool result, at least 4 words, followed by some analysis, and not a copy of the prompt.

# %%
completions = [t for _, out in history.values() for t in out]
verdicts = [self_example_check(t.text, t.prompt_text) for t in completions]
print(f"{sum(ok for ok, _ in verdicts)} of {len(verdicts)} real completions earn the bonus; reasons:")
display(pd.Series(Counter(reason for _, reason in verdicts)).rename("completions").to_frame())
question = tasks[0].prompt
genuine = ("<example>If 7 apples cost 21 coins, one apple costs 21 / 7 = 3 coins.</example> "
           "So I divide the total by the count here too. \\boxed{3}")
copied = f"<example>{question}</example> so \\boxed{{3}}"
for name, text in (("genuine", genuine), ("copied", copied)):
    ok, why = self_example_check(text, question)
    print(f"{name:8s} -> {ok} ({why})")
assert self_example_check(genuine, question)[0] and not self_example_check(copied, question)[0]

# %% [markdown]
# ## 5. Function calling on BFCL
# ToolExpander's own setting. The questions and their possible answers come from the `bfcl-eval`
# wheel (downloaded, never installed; without the network a small sample in the same layout is
# used). The model must answer with `<tool_call>[{"name": …, "arguments": {…}}]</tool_call>`;
# `bfcl_checker.check` applies BFCL's AST rules (function name, required parameters, no unknown ones,
# values of the right type among the allowed ones), and the ToolRL-style reward is
# R_format ∈ {0, 1} + R_correct ∈ [−3, 3].

# %%
try:
    wheel = bfcl.fetch_wheel()
except RuntimeError as err:
    print("offline: using the bundled sample questions |", str(err)[:80])
    wheel = bfcl.write_sample_wheel(os.path.join(os.environ.get("TMPDIR", "/tmp"), "tao_lab_bfcl_sample.whl"))
question_task = bfcl.load_bfcl("bfcl:simple_python", "test", wheel)[0]
print(question_task.prompt[:400])
episode, _ = generate(model, tok, [question_task],
                      replace(ro, group_size=1, max_new_tokens=64 if SMOKE else 160, tools=False, seed=3))
result = bfcl_checker.score_text(episode[0].text, question_task)
print("\nmodel wrote:", episode[0].text[:300])
print("verdict:", result.verdict)
print(f"reward: R_format {result.r_format} + R_correct {result.r_correct:+.2f} = {result.reward:+.2f}")
print("a correct answer:", bfcl.gold_text(question_task))
gold = bfcl_checker.score_text(bfcl.gold_text(question_task), question_task)
assert gold.verdict.valid and gold.reward == 4.0
sandbox.close()
TokenView(episode[0], tok)

# %% [markdown]
# ## What to take away
# * An all-wrong group contributes nothing to GRPO's update: a weak model on hard tasks wastes most
#   of each step. ToolExpander's replacement turns such a task into one with a demonstration in
#   context, where some rollouts can be right and the group has a reward spread again.
# * The hard set is re-checked every round from the training rollouts themselves; the pool is part
#   of the prompt source's checkpointed state, so a resumed run sees the same pool.
# * Train with it: `tao-lab train --method toolexpander` (arithmetic) or add
#   `--set data.tasks=bfcl --set rollout.tools=false` for function calling;
#   `experiments/toolexpander_vs_grpo.toml` is the comparison grid.
