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
# # 05 · Training: GRPO and TAO-RL, one step by hand, then live
#
# Notebooks 03 and 04 changed filters and shaping on *stored* rollouts. Here the policy learns:
# a LoRA adapter on the embedded SmolLM2-135M is trained with TAO-RL (METHODS.md §1) on the
# bundled arithmetic tasks. First one step written out as the library calls that make it —
# rollout → score → filter → advantages → one training forward → shaping → loss → optimizer — then
# the same step in a loop, from a training console: filter and shaping controls, an **Apply** button
# that says what changed from which step on, and **Train N more steps** with its progress bar and a
# learning-curve chart that updates after every step, all in one cell.
#
# On a laptop CPU a step takes about a minute at these sizes; the `gpu_qlora` preset runs the same
# loop on a 1.5B model in 4 bit on one consumer GPU (`tao-lab train --preset gpu_qlora`).

# %%
import os
from dataclasses import replace

import pandas as pd
import torch
from IPython.display import display

from tao_lab import config_changes, filters, plots, rundir, trainer, update
from tao_lab.advantages import shape_advantages
from tao_lab.console import TrainingConsole
from tao_lab.hooks import SeededStream
from tao_lab.loss import policy_loss
from tao_lab.presets import make_config
from tao_lab.rewards import score
from tao_lab.tokenview import TokenView

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"   # tests set this: fewer, shorter episodes; 2 steps
plots.use_offline_renderer()                      # charts as SVG: no network, no JavaScript needed

# %% [markdown]
# ## 1. The config: a preset, a method, and overrides
# `make_config(preset, method, overrides)` builds one `TrainConfig` out of one dataclass per stage.
# `cpu_demo` gives the sizes, `tao` the switches of the paper's reading (filters overlong → void
# turn → Filter B → Filter A, refill to B groups; Ã = A(1 + 0.01·g·z) on post-tool tokens).
# Overrides are the same strings as `tao-lab train --set ...`; a wrong one is refused with the field's name.

# %%
sizes = (["rollout.group_size=4", "rollout.max_new_tokens=128", "rollout.max_turns=2",
          "data.prompts_per_step=2", "data.oversample=1", "data.tasks=arith-L1"] if SMOKE else [])
cfg = make_config("cpu_demo", "tao", sizes + ["run.steps=2" if SMOKE else "run.steps=6"])
print(f"{cfg.method}: {cfg.data.prompts_per_step} groups x G={cfg.rollout.group_size} on {cfg.data.tasks}, "
      f"budget {cfg.rollout.max_new_tokens} tokens, lr {cfg.optim.lr}")
print("filters:", cfg.filter.rules, "| shaping:", cfg.shaping)

try:
    make_config("cpu_demo", "tao", ["shaping.coeff=0.05"])
except ValueError as err:
    print("refused:", err)

# %% [markdown]
# The `Trainer` loads the model (LoRA adapter seeded by `cfg.seed`), the training tasks, the
# AdamW optimizer over the adapter parameters only, and opens the run store: a new folder for each
# run, under `runs/05_training/` next to this notebook, where the JupyterLab file browser shows it
# (`TAO_LAB_RUN_DIR` moves every notebook's runs elsewhere: `tao_lab/rundir.py`).

# %%
RUN_DIR = rundir.new_run_dir("05_training")
tr = trainer.Trainer(cfg, RUN_DIR)
print("run folder:", RUN_DIR)
n_train = sum(p.numel() for p in tr.params)
n_all = sum(p.numel() for p in tr.model.parameters())
print(f"{len(tr.tasks)} training tasks; trainable parameters {n_train:,} of {n_all:,} ({n_train / n_all:.2%})")
assert all("lora_" in n for n, p in tr.model.named_parameters() if p.requires_grad)

# %% [markdown]
# ## 2. One step, by hand
# **Sample prompts.** The trainer's *prompt source* (`hooks.PromptSource`) decides what each step rolls
# out. The default, `SeededStream`, reads a seeded permutation of the tasks per epoch with a cursor —
# its `state_dict()` is what a checkpoint stores as the data position, so a resumed run draws the same
# prompts. Methods swap it: ToolExpander replaces hard prompts, ET-Agent picks questions by Pareto rank.

# %%
batch = SeededStream(tr.tasks, cfg.seed).next_batch(step=1, k=cfg.data.prompts_per_step)
tasks = batch.tasks
for t in tasks:
    print(t.id, "|", t.prompt, "| answer", t.answer)

# %% [markdown]
# **Rollout** G episodes per prompt with the tool, recording per token the logprob and entropy at
# sampling time, the sampled/forced mask and the post-tool gate. **Score** them (1 = verified answer).

# %%
trajs, stats = trainer.rollout_stage(tr.model, tr.tok, tasks, cfg.rollout, tr.pool, seed=1)
rewards, reward_metrics = score(trajs, cfg.reward)
print(f"{len(trajs)} episodes, {stats.sampled_tokens} sampled + {stats.forced_tokens} forced tokens "
      f"in {stats.wall_s:.0f} s; rewards {rewards}")
assert len(trajs) == cfg.data.prompts_per_step * cfg.rollout.group_size

# %% [markdown]
# **Filter.** Every drop or re-weighting has a reason. If no group carries a signal (all correct or
# all wrong: Filter B), TAO-RL would skip this step; to still show the update below we then fall
# back to no filter (all advantages are 0 then, and the loss is 0 — which is exactly why Filter B exists).

# %%
fres = filters.apply(trajs, replace(cfg.filter, target_groups=cfg.data.prompts_per_step))
display(fres.funnel)
if fres.skip:
    print("TAO-RL would skip this step:", fres.skip_reason)
    fres = filters.apply(trajs, filters.FilterConfig(rules=()))

# %% [markdown]
# **Advantages.** GRPO's group-normalised A per advantage row; rows with loss weight 0 (overlong,
# void turn, masked Filter A) still count in their group's mean and std, then leave the update.

# %%
batch, adv_all, adv_metrics = update.compute_advantages(trajs, fres, cfg.update.adv_std)
print("A per row:", [round(float(a), 3) for a in adv_all], "| rows in the update:", len(batch.trajs))
assert len(batch.trajs) > 0

# %% [markdown]
# **One training forward** gives the log-probs of the sampled tokens *and* their entropies. A
# micro-batch holds the rows of one prompt: the prompt is run once and its KV cache shared by the G
# completions (exact, and 2-3x less compute with few-shot prompts). The loss mask comes from
# positions and lengths (`Trajectory.full_mask()` × filter weight). The rollout recorded its own
# log-probs with the KV-cache engine; this forward with the same weights reproduces them to float
# noise, so they serve as the "old" log-probs and the first ratio is 1.

# %%
rows = update.plan_micro_batches(batch.trajs, cfg.update.micro_batch_size, share_prompt=True)[0]
mb = update.collate([batch.trajs[i] for i in rows], [batch.weights[i] for i in rows], tr.tok.pad_token_id,
                    tr.device, share_prompt=True)
tr.model.train()
logp, ent = update.forward_logprobs(tr.model, mb, temperature=cfg.rollout.temperature, chunk=128,
                                     entropy_grad=not cfg.shaping.detach)
gap = (logp.detach() - mb.old_logp)[mb.mask > 0].abs().max().item()
print(f"trained tokens {int((mb.mask > 0).sum())}; max |logp_train - logp_rollout| = {gap:.1e}")
assert gap < 1e-3

# %% [markdown]
# **Shaping** uses the entropy of that same forward: Ã = A(1 + a·g·z). **Loss**: the clipped
# surrogate (clip-higher 0.2/0.28, dual clip 3), token-mean. Then backward — only the adapter has
# gradients — and one optimizer step.

# %%
adv_t, shaping_metrics = shape_advantages(batch.adv[rows], ent, mb.mask, mb.gate, cfg.shaping)
loss, loss_metrics = policy_loss(logp, mb.old_logp, adv_t, mb.mask, cfg.loss, gate=mb.gate, entropy=ent)
loss.backward()
grad = torch.nn.utils.clip_grad_norm_(tr.params, cfg.optim.grad_clip)
tr.optimizer.zero_grad(set_to_none=True)   # the loop below does the real step; this one was a look
tr.model.eval()
print(f"loss {loss.item():+.5f} | ratio mean {loss_metrics['loss/ratio_mean']:.6f} | grad norm {grad:.4f} | "
      f"gated tokens {shaping_metrics['shaping/gated_tokens']:.0f}")
assert torch.isfinite(loss)

# %% [markdown]
# ## 3. The loop, live: a training console
# `Trainer.step()` runs exactly those calls (plus micro-batching, gradient accumulation, clipping,
# the optimizer step, telemetry and the run store). The console below puts the filter and shaping
# controls of `tao_lab.widgets` on this trainer (`tao_lab.console`):
#
# - **Apply** makes the settings shown the config of the *next* step (`Trainer.apply_config`: the
#   dataclasses validate them, and each changed field is written to `config_changes.jsonl` in the run
#   folder, which a resumed run replays). The line under the buttons says what changed, from which step on.
# - **Train N more steps** applies what the controls show, then trains N more steps; the progress bar
#   and the learning curves (drawn by the trainer's `on_step` callback) update after every step.
# - Controls that do nothing for the chosen variant are greyed out: α and κ belong to the additive
#   bonus, a and z scope to the multiplicative TAO-RL shaping, Filter A's strength to its mask mode.
#
# Running this cell trains one step, as a click on the button would. The steps box starts at the
# rest of the planned run (`run.steps`: 6 here, 2 at smoke size), which the next cell trains.

# %%
console = TrainingConsole(tr, steps=max(1, cfg.run.steps - 1))
display(console)
console.train(1)
assert len(console.history) == tr.state.step >= 1

# %% [markdown]
# ## 4. Change the knobs between steps
# Move any control above and press **Train** (or **Apply** first, to see what will change). The cell
# below is for Run All, where nobody clicks: it plays the part of a person — Filter A to the authors'
# mask mode, the coefficient a to 0.05 — *only if you have not changed or applied anything yourself*,
# then does what the Train button does. Your own choice is never overwritten: the cell reads the controls.

# %%
if not (console.applied or console.pending()):   # nothing chosen by hand: make the example change
    console.controls["filter_a_mode"].value = "mask"
    console.controls["coef"].value = 0.05
before = tr.state.step
console.train()                                   # = the button: apply the controls, train N more steps
assert tr.state.step == before + console.n_steps.value and not console.pending()
# the run's own record: one line per changed field, with the first step that ran with it
pd.DataFrame(config_changes.read(RUN_DIR), columns=["step", "field", "old", "new"])

# %% [markdown]
# ## 5. The latest rollouts, token by token
# Colour = entropy at sampling time; grey = forced tool output; underlined = post-tool gate. The
# stored step has the filter's decision per trajectory (`keep`, `filter_reason`, `advantage`).

# %%
last = tr.last_log
frame = tr.store.read_step_frame(last.step)[["task_id", "reward", "n_tool_calls", "finish_reason", "keep",
                                             "filter_reason", "advantage"]]
display(frame)
best = max(last.trajs, key=lambda t: (t.reward or 0, t.n_valid_calls))
TokenView(best, tr.tok)

# %% [markdown]
# ## 6. Checkpoint, report
# A checkpoint (adapter, optimizer, scheduler, RNG states, step, data position, config) was written
# atomically at the end of `train`; `tao-lab resume RUN_DIR` continues from it, with the same prompts
# the uninterrupted run would have drawn. `tao-lab report RUN_DIR` writes one offline HTML page.

# %%
from tao_lab import checkpoint
from tao_lab.report import write_report

tr.close()
print("checkpoints:", checkpoint.complete_steps(RUN_DIR))
assert checkpoint.latest(RUN_DIR) == tr.state.step
report = write_report(RUN_DIR, tokenizer=tr.tok)
print(f"report: {report} ({report.stat().st_size / 1e6:.1f} MB, no network needed)")
