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
# # 03 · Filtering: what gets dropped, and why
#
# GRPO learns from the *differences* between the G episodes of one prompt. Some groups and some
# episodes carry no usable signal, or a misleading one. TAO-RL's first stage (METHODS.md §1.1)
# removes them before the update, and the authors' code adds companions from SimpleTIR / DAPO:
#
# | rule | what it looks at | action |
# | --- | --- | --- |
# | `overlong` | episode hit the token budget | loss weight 0; drop the group if fewer than `min_n` members finished |
# | `void_turn` | a turn with neither a tool call nor `\boxed{}` | loss weight 0 |
# | `filter_b` | std of the group's rewards < 1e-3 (all correct / all wrong) | drop the group |
# | `filter_a` | the episode called the tool and *every* call failed | drop it (paper) or mask it (code) |
#
# This notebook runs them on real rollouts of the embedded SmolLM2-135M with the Python tool, shows
# every decision with its reason, and lets you change the rules live. Everything below the rollout
# cell is model-free: it reads the run store back and recomputes (`tao_lab.explore`).

# %%
import os

import pandas as pd
import torch

from tao_lab import explore, filters, plots, widgets
from tao_lab.advantages import group_advantages
from tao_lab.filters import FilterConfig
from tao_lab.records import trajectories_frame
from tao_lab.stored_rollouts import sample_or_load

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"   # tests set this: fewer tasks, shorter episodes
plots.use_offline_renderer()                      # charts as SVG: no network, no JavaScript needed
pd.set_option("display.max_colwidth", 80)

# %% [markdown]
# ## 1. Rollouts with the tool (or the stored ones)
#
# A few tasks from easy and hard arithmetic levels (plus word problems outside smoke mode), G episodes
# each, with the few-shot template (two solved demonstrations in the prompt, so the 135M model does call the tool).
# The run store is a folder named after these settings under `runs/` next to this notebook (or under
# `$TAO_LAB_RUN_DIR`); it is reused when it exists: delete it to sample anew. Notebook 04 reads the same store.

# %%
SOURCES = ["arith-L1", "arith-L3"] if SMOKE else ["arith-L1", "arith-L2", "arith-L3", "word-L2"]
N_PER_SOURCE, G, MAX_NEW = (2, 4, 128) if SMOKE else (4, 8, 384)
SEED = 1
trajs, RUN_DIR = sample_or_load(SOURCES, N_PER_SOURCE, G, MAX_NEW, seed=SEED, progress=True)  # bar + ETA, any size

assert all(t.reward is not None for t in trajs), "every stored trajectory must be scored"

# %%
facts = trajectories_frame(trajs)
facts["all_tools_failed"] = (facts["n_tool_calls"] > 0) & (facts["n_valid_calls"] == 0)
facts.groupby("task_id").agg(
    episodes=("reward", "size"), accuracy=("reward", "mean"), tool_calls=("n_tool_calls", "sum"),
    valid_calls=("n_valid_calls", "sum"), all_failed=("all_tools_failed", "sum"),
    void_turn=("void_turn", "sum"), overlong=("truncated", "sum"))

# %% [markdown]
# ## 2. Why filter at all
#
# ### Degenerate groups carry no signal
# The GRPO advantage of episode i is `(r_i - mean(r)) / (std(r) + eps)` within its group. When all
# G members got the same reward the numerator is zero for every member: the group costs a forward
# and backward pass and teaches nothing. Each dot below is the members of one group with one reward;
# the black tick is the group mean (the baseline).

# %%
ex = explore.recompute(trajs, FilterConfig(rules=()))   # no rule at all: the raw picture
plots.reward_spread_chart(explore.reward_spread_frame(ex.trajectories))

# %%
raw = ex.trajectories
adv, _ = group_advantages(torch.tensor(raw["reward"].to_numpy(), dtype=torch.float32),
                          torch.tensor(raw["group_id"].to_numpy()))
raw = raw.assign(A=adv.numpy())
degenerate = raw["group_status"].isin(["all correct", "all wrong"])
assert (raw.loc[degenerate, "A"] == 0).all(), "an all-equal group must get exactly zero advantage"
print(raw.groupby("group_status")["group_id"].nunique().rename("groups").to_string())
print(f"\n{degenerate.sum()} of {len(raw)} episodes sit in degenerate groups: A = 0 for all of them")

# %% [markdown]
# ### Episodes whose tool calls all failed
# Filter A flags an episode that called the tool and never got a valid result (stderr, or nothing
# printed: `silent_is_failure`). One that never called the tool is *not* flagged. Its final answer,
# if any, was not grounded in a working computation; rewarding or penalising its text is noise.

# %%
failed = [i for i, t in enumerate(trajs) if t.n_tool_calls > 0 and t.n_valid_calls == 0]
rows = [{"traj": i, "group": trajs[i].group_id, "reward": trajs[i].reward, "calls": trajs[i].n_tool_calls,
         "status": trajs[i].tool_calls[-1].status,
         "stderr / stdout": (trajs[i].tool_calls[-1].stderr or trajs[i].tool_calls[-1].stdout or "(nothing printed)")[-80:]}
        for i in failed]
print(f"{len(failed)} of {len(trajs)} episodes made only failing tool calls")
pd.DataFrame(rows, columns=["traj", "group", "reward", "calls", "status", "stderr / stdout"])

# %% [markdown]
# ### Void turns and overlong episodes
# A *void turn* ends with neither a tool call nor a boxed answer: the model wandered off. An
# *overlong* episode ran out of token budget mid-thought. The authors' code zeroes the loss of both
# (they still count in their group's mean and std).

# %%
facts[["finish_reason"]].value_counts().rename("episodes").to_frame()

# %% [markdown]
# ## 3. The rules, one decision per episode, each with its reason
#
# `filters.apply` runs the rules in `FilterConfig.rules` order and returns a `FilterResult`: the
# advantage rows, a loss weight per row, and a `decisions` frame with one row per (episode, rule it
# met). A deviation to know: with G = 4 the authors' `min_n = 4` drops *every* group that has one
# overlong member (3 < 4 finished). We set `min_n = G // 2`; the live panel below lets you put 4 back.

# %%
FCFG = FilterConfig(min_n=max(1, G // 2))
res = filters.apply(trajs, FCFG)
res.decisions.query("reason != 'ok'").head(20)

# %%
gone = sorted(set(range(len(trajs))) - set(res.index))
last = res.decisions.groupby("traj").last()
assert all(not last.loc[i, "kept"] and last.loc[i, "reason"] != "ok" for i in gone), \
    "every episode outside the advantage set must have a drop decision with a reason"
print(f"{len(trajs)} episodes in, {len(res.index)} advantage rows out; skip update: {res.skip}")
if res.skip:
    print("why:", res.skip_reason)
{k: v for k, v in res.counts.items() if v}

# %% [markdown]
# ### The funnel
# Each bar is one rule, in run order, with the episodes that reached it: grey passed, colours are the
# reasons for dropping or re-weighting. The label says how many episodes and groups went in and out.

# %%
funnel = explore.funnel_frame(res)
per_rule = funnel.groupby("rule")["n"].sum()
assert all(per_rule[r] == res.funnel.set_index("rule").loc[r, "trajs_in"] for r in per_rule.index)
plots.funnel_chart(funnel)

# %% [markdown]
# ## 4. Filter A: drop (paper) versus mask (authors' code)
#
# The paper says such episodes are *discarded*: they leave before the advantage, so the group's mean
# and std are computed without them (and the group is re-checked: it may now be degenerate or too
# small). The public code instead computes the group advantage *with* them and then zeroes their loss
# mask: they shift their group-mates' advantages without being trained on themselves. The chart puts
# the two side by side for the groups that carry signal, the groups where the two readings differ first.
#
# They differ only in a group with mixed rewards that holds such an episode. A small sample may have
# none (a flagged episode in an all-wrong group is dropped by Filter B either way), and then the two
# panels would be identical. The cell says so and shows a *what-if* instead: a copy of a real
# flagged episode joins a real mixed group as one more member (its reward and tokens are its own;
# only its place in that group is made up).

# %%
SETTINGS = {"drop (paper)": FCFG, "mask (code)": FilterConfig(min_n=FCFG.min_n, filter_a_mode="mask")}
table = explore.advantage_table(trajs, SETTINGS)
differ = explore.differing_groups(table)
what_if = None if differ else explore.flagged_member_what_if(trajs)
if differ:
    print(f"drop and mask give different advantages in group(s) {differ} of this sample")
elif what_if is None:
    print("no mixed group holds an episode whose tool calls all failed, and there is no such episode to "
          "move into one: drop and mask give the same advantages on this sample")
else:
    case, gid, src = what_if
    print(f"no mixed group of this sample holds an episode whose tool calls all failed, so drop and mask "
          f"coincide here.\nWhat-if: a copy of flagged episode {src} (reward {trajs[src].reward}) joins mixed "
          f"group {gid} as member #{case[-1].sample_idx}")
    table = explore.advantage_table(case, SETTINGS)
    differ = explore.differing_groups(table)
    assert gid in differ, "a flagged member in a mixed group must separate drop from mask"
shown = explore.signal_groups(table, max_groups=8, first=differ)
plots.advantage_compare_chart(shown) if len(shown) else "no mixed group in this run: nothing to compare"

# %%
flagged = table[table["all_tools_failed"]]
drop_rows, mask_rows = flagged[flagged["setting"] == "drop (paper)"], flagged[flagged["setting"] == "mask (code)"]
assert drop_rows["advantage"].isna().all(), "drop mode: a flagged episode never gets an advantage"
assert (mask_rows.loc[mask_rows["advantage"].notna(), "weight"] == 0).all(), \
    "mask mode: a flagged episode keeps its advantage slot but gets loss weight 0"
print(f"flagged episodes: {len(drop_rows)}; in mask mode {int(mask_rows['advantage'].notna().sum())} of them "
      "still count in their group's mean/std")

# %% [markdown]
# ## 5. Batch refill
#
# After Filter B fewer groups may survive than the update wants (B). The authors' code duplicates
# surviving groups (fresh group ids) up to B; with more survivors it subsamples B. DAPO's alternative
# (`methods.dapo.dynamic_sampling`, `--method dapo`) keeps sampling new prompts instead; it needs the model, so it is not run
# here. Below: B = the number of prompts we sampled.

# %%
B = len({t.group_id for t in trajs})
refilled = filters.apply(trajs, FilterConfig(min_n=FCFG.min_n, target_groups=B))
print(f"survived: {refilled.n_groups_survived} groups; after refill: {refilled.n_groups} groups "
      f"({int(refilled.counts['refill/duplicated_groups'])} duplicated)")
if refilled.n_groups_survived:
    assert refilled.n_groups == B
else:
    assert refilled.skip and "no group survived" in refilled.skip_reason
refilled.funnel

# %% [markdown]
# ## 6. Change the rules live
#
# Drag the rule tags to reorder them, remove one with its ×, type a name to add it back; switch
# Filter A between drop and mask, change its strength (mask mode) and the overlong `min_n`. Each
# change re-runs the filters and the group advantages on the stored episodes (no new sampling).

# %%
filter_panel = widgets.Panel(trajs, filter_cfg=FCFG, sections=("filters",), charts=("funnel", "advantages"))
filter_panel

# %%
before = len(filter_panel.state.result.index)
filter_panel.controls["rules"].value = [r for r in FCFG.rules if r != "filter_b"]
assert len(filter_panel.state.result.index) >= before, "switching Filter B off can only keep more episodes"
filter_panel.controls["rules"].value = list(FCFG.rules)   # back to the default order

# %% [markdown]
# **What to take away.** Filters B and A change *which* episodes define the baseline; masks change
# *which* tokens get gradient. Every drop above has a reason you can count per step (`res.counts`
# goes into the step metrics). Notebook 04 looks inside the surviving episodes, token by token.
