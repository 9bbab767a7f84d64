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
# # 06 · Tree rollouts: E3-TIR's expert anchors, branching and mixed advantages
#
# Zero-RL explores blindly: a small policy that never solves a prompt gets groups of all-wrong
# answers and no learning signal. SFT-then-RL fixes that with a lot of expert data and pays with an
# entropy collapse. **E3-TIR** (arXiv 2604.09455, METHODS.md §2; no public code, so everything here
# is a labelled reconstruction) warms up with a *little* expert data used as **anchors**: the policy
# continues from prefixes of an expert trajectory, so it sees what the rest of a good solution looks
# like from where it stands, and the anchors fade out as the policy learns to solve the prompt alone.
#
# This notebook builds one step by hand, on the embedded SmolLM2-135M:
# 1. an expert trajectory, made by running code in the real sandbox and checked by the verifier;
# 2. its anchors (cuts at tool calls) and the plan of G rows for one prompt;
# 3. a real rollout from the anchors; the resulting tree;
# 4. the mixed advantage A = λ·A_global + (1−λ)·A_tree per token, with the shared prefixes whose
#    branches disagree detached;
# 5. the dynamic boundary: how the expert share shrinks as the self-exploration pass rate rises.

# %%
import os

import altair as alt
import ipywidgets as W
import pandas as pd
import torch
from IPython.display import display

from tao_lab import filters, plots
from tao_lab.methods.e3tir import (E3TIRAdvantage, E3TIRConfig, E3TIRSource, expert_share, pick_anchors, roi)
from tao_lab.methods.e3tir_experts import anchor_cuts, build_experts
from tao_lab.models import load_policy
from tao_lab.records import tree_frame
from tao_lab.rewards import score
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.tasks import load_tasks
from tao_lab.tokenview import TokenView, token_pieces
from tao_lab.update import compute_advantages

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"   # tests set this: shorter episodes
plots.use_offline_renderer()                      # charts as SVG: no network, no JavaScript needed
model, tok = load_policy("smollm2-135m", lora=False)

# %% [markdown]
# ## 1. An expert trajectory
# The bundled arithmetic prompts are written by `scripts/make_tasks.py` from a few forms, so the
# expression can be read back from the prompt. `build_experts` turns it into code, runs the code in
# the **real sandbox**, writes the completion as the bundled demonstrations do (prose, the call,
# the observation exactly as the rollout formats it, the boxed answer) and keeps it only if its boxed
# answer verifies against the gold answer. The counts are E3-TIR's data cost in trajectories.

# %%
tasks = load_tasks("arith-L3", split="train", limit=4)
experts, counts = build_experts(tasks)
print(counts)
task = tasks[0]
expert = experts[task.id]
print(f"task {task.id}: {task.prompt}  (gold {task.answer})\n")
print(expert.text)
assert counts["made"] == len(tasks)

# %% [markdown]
# ## 2. Anchors and the plan for one prompt
# A step of an expert trajectory ends at a tool call [paper]. The cuts, shortest first: the prose
# before the first call [recon], then "after the k-th call and its observation". Each cut becomes a
# `branches.Prefix`: forced tokens, **mask 0** — never in the loss, the entropy statistics or the
# post-tool gate. The row after an expert call *is* post-tool for the policy's own next turn.

# %%
cuts = anchor_cuts(tok, expert, cuts="calls+prose")
display(pd.DataFrame([{"cut": c.source, "tokens": len(c.token_ids), "tool calls": len(c.tool_calls),
                       "ends with": repr(tok.decode(c.token_ids)[-40:])} for c in cuts]))

# %% [markdown]
# The prompt source `E3TIRSource` plans G rows per prompt: B continuations of each chosen anchor,
# and self-exploration rows from scratch (at least `self_rows`). The choice of anchors is the
# dynamic boundary of section 5; a prompt nobody has tried yet (pass rate 0) gets every anchor.

# %%
e3 = E3TIRConfig(anchors=2, continuations=2, self_rows=2, lam=0.5, detach="detach")
G = 6
rcfg = RolloutConfig(group_size=G, max_new_tokens=64 if SMOKE else 192, max_turns=2, temperature=1.0,
                     template="few_shot", n_demos=2, seed=0)
source = E3TIRSource([task], tok, e3, seed=0, group_size=G, max_new_tokens=rcfg.max_new_tokens)
batch = source.next_batch(1, 1)
display(pd.DataFrame(source.schedule))
print({k: v for k, v in batch.info.items() if k.startswith("e3tir/")})

# %% [markdown]
# ## 3. A real rollout from the anchors, and the tree
# `rollout.generate(prefixes=...)` prefills each distinct (prompt, anchor) once and forks its KV
# cache to the rows that share it; then every row samples on its own. Below, one anchored row as
# coloured tokens: the grey blocks are forced (the expert's text and the tool output), the coloured
# ones are the policy's, the underline is the post-tool gate.

# %%
trajs, stats = generate(model, tok, batch.tasks, rcfg, prefixes=batch.prefixes)
score(trajs)
for t in trajs:
    n = t.prefix_len
    assert t.mask[:n] == [0] * n and t.post_tool[:n] == [0] * n      # the anchor never trains
print(f"{stats.prefix_tokens} forced prefix tokens, {stats.n_tool_calls} tool calls by the policy, "
      f"rewards {[t.reward for t in trajs]}")
anchored = max(trajs, key=lambda t: t.prefix_len)
TokenView(anchored, tok)

# %% [markdown]
# The tree (`records.tree_frame`, one row per trajectory): each bar is a row of the group, grey where
# it was forced from the expert, coloured by its reward where the policy wrote it. Rows that share
# an anchor are siblings: their tree advantage compares them with each other only.

# %%
tree = tree_frame(trajs)
tree["anchor"] = [("expert: " + next(p.source for p in batch.prefixes[0] if p and len(p.token_ids) == t.prefix_len)
                   if t.prefix_len else "self-exploration") for t in trajs]
bars = pd.concat([
    tree.assign(start=0, end=tree.prefix_len, part="expert prefix (forced)"),
    tree.assign(start=tree.prefix_len, end=tree.n_tokens, part="policy")])
bars = bars[bars.end > bars.start]
alt.Chart(bars).mark_bar(height=14).encode(
    x=alt.X("start:Q", title="completion token"), x2="end:Q",
    y=alt.Y("sample_idx:O", title="row"),
    color=alt.condition(alt.datum.part == "policy", alt.Color("reward:Q", scale=alt.Scale(scheme="redyellowgreen",
                        domain=[0, 1]), title="reward"), alt.value("#bbbbbb")),
    row=alt.Row("anchor:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
    tooltip=["sample_idx", "anchor", "prefix_len", "n_tokens", "n_tool_calls", "reward"],
).properties(width=520, title="One prompt's rows, grouped by anchor")

# %% [markdown]
# ## 4. Mixed advantages, per token, with detached shared prefixes
# `E3TIRAdvantage` is the step's advantage hook: A_global is GRPO over all G rows of the prompt,
# A_tree is GRPO over the siblings of one anchor (the from-scratch rows are the root's siblings), and
# A = λ·A_global + (1−λ)·A_tree [paper]. Siblings often write the same first tokens ("The answer
# is"); a trie over each anchor's rows finds those shared tokens, and where the sharers' advantages
# disagree in sign the token gets **loss weight 0** (detach) [paper] — otherwise the same tokens
# would be pushed up by one branch and down by the other. Switch: `mean` (the sharers' mean
# advantage) or `none`. With λ = 1 and `none` this is plain GRPO.
#
# The third kind of experience, *expert-guided* [paper]: while a prompt still gets anchors, the whole
# expert trajectory joins its group as one off-policy row (reward 1, its own tree; row "expert"
# below). Its behaviour log-prob is 1, so the clipped ratio is π(token) and its gradient A·∇π fades
# where the policy finds the expert unlikely [recon].

# %%
fres = filters.apply(trajs, filters.FilterConfig(rules=(), refill="none"))
ub, adv, metrics = E3TIRAdvantage(e3, source)(trajs, fres)
grpo_ub, _, _ = E3TIRAdvantage(E3TIRConfig(lam=1.0, detach="none"))(trajs, fres)
assert torch.equal(grpo_ub.adv, compute_advantages(trajs, fres)[0].adv)      # λ = 1 is GRPO
print({k: round(v, 3) for k, v in metrics.items() if k.startswith("e3tir/")})
assert metrics["e3tir/expert_rows"] == 1 and ub.trajs[-1].reward == 1.0


def token_frame(lam: float, rule: str) -> pd.DataFrame:
    fn = E3TIRAdvantage(E3TIRConfig(lam=lam, detach=rule), source)
    fn(trajs, fres)
    last, parts = fn.last, []
    for i, t in enumerate(last["rows"]):
        pieces = token_pieces(t, tok)
        parts.append(pd.DataFrame({
            "row": "expert" if t.sample_idx < 0 else str(t.sample_idx), "pos": range(len(t.token_ids)), "token": pieces,
            "advantage": last["token_adv"][i].numpy(), "weight": last["token_weight"][i].numpy(),
            "kind": ["forced" if not m else "detached" if w == 0 else "trained"
                     for m, w in zip(t.mask, last["token_weight"][i].tolist())]}))
    return pd.concat(parts, ignore_index=True)


def advantage_chart(lam: float, rule: str):
    df = token_frame(lam, rule)
    df = df[df.pos < 48]                                   # the first tokens are where rows share
    base = alt.Chart(df).encode(x=alt.X("pos:O", title="completion token"), y=alt.Y("row:O"))
    cells = base.mark_rect().encode(
        color=alt.condition(alt.datum.kind == "trained", alt.Color("advantage:Q", scale=alt.Scale(
            scheme="redblue", domainMid=0), title="A per token"), alt.value("#eeeeee")),
        tooltip=["row", "pos", "token", "advantage", "kind"])
    marks = base.transform_filter(alt.datum.kind == "detached").mark_text(text="×", fontSize=11)
    return (cells + marks).properties(width=620, title=f"λ = {lam}, rule {rule}: × = detached, grey = forced")


advantage_chart(e3.lam, e3.detach)

# %% [markdown]
# Move λ and the rule: everything is recomputed on the stored rollout, without the model.

# %%
lam_w = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="λ")
rule_w = W.Dropdown(options=["detach", "mean", "none"], value="detach", description="rule")
out = W.Output()


def redraw(*_):
    out.clear_output(wait=True)
    with out:
        display(advantage_chart(lam_w.value, rule_w.value))


lam_w.observe(redraw, "value")
rule_w.observe(redraw, "value")
redraw()
display(W.VBox([W.HBox([lam_w, rule_w]), out]))

# %% [markdown]
# ## 5. The dynamic boundary
# After the rollout, `observe` updates the prompt's self-exploration pass rate p (an EMA over the
# verifier's verdicts on the rows without a prefix). The expert share is s = clip(1 − p/stop, 0, 1)
# [recon]: the source keeps the ceil(s·n) shortest cuts and uses the longest `anchors` of them, so
# anchors get **fewer and shorter** as p rises, until the prompt trains as plain RL.

# %%
print(source.observe(1, batch, trajs), "pass rate now", source.pass_rate)
rates = [i / 20 for i in range(21)]
sched = pd.DataFrame([{"pass rate": p, "expert share": expert_share(p, e3.stop),
                       "anchors used": len(pick_anchors(len(cuts), expert_share(p, e3.stop), e3.anchors)),
                       "longest anchor (tokens)": max([len(cuts[i].token_ids) for i in
                                                       pick_anchors(len(cuts), expert_share(p, e3.stop),
                                                                    e3.anchors)] or [0])} for p in rates])
long = sched.melt("pass rate", var_name="what", value_name="value")
alt.Chart(long).mark_line(point=True).encode(
    x="pass rate:Q", y=alt.Y("value:Q", title=None), color="what:N").properties(
    width=200, height=160).facet(column=alt.Column("what:N", title=None)).resolve_scale(y="independent").properties(
    title=f"Expert share schedule (stop = {e3.stop}) for this prompt's {len(cuts)} cuts")

# %% [markdown]
# ## 6. Data cost and ROI
# E3-TIR's claim is about data cost: under 10% of the expert data SFT-then-RL needs. Every step of a
# run logs `e3tir/expert_tokens` (the tokens of the distinct expert trajectories used so far) and
# `e3tir.expert_tasks` caps how many training tasks may have an expert. The paper's ROI formula is not
# public; tao_lab's [recon] is accuracy points per hour, the expert data priced in seconds per token:
# roi = Δacc / ((train_s + token_cost_s · expert_tokens) / 3600).

# %%
used = batch.info["e3tir/expert_tokens"]
print(f"expert tokens used: {used:.0f}; e.g. +6 points after 30 min of training -> ROI "
      f"{roi(6.0, 1800.0, used, e3.token_cost_s):.2f} points/hour")
