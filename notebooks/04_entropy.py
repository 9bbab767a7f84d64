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
# # 04 · Entropy around tool calls, and TAO-RL's advantage shaping
#
# Every sampled token was drawn from a distribution over the whole vocabulary; its **entropy**
# H_t (in nats) says how undecided the policy was there. The rollout records it at sampling time
# (forced tool-output tokens get none: the policy did not choose them).
#
# ARPO observed that entropy jumps in the first tokens after a tool result. TAO-RL's second stage
# (METHODS.md §1.2) uses that: on the tokens of the turn right after a tool call (the *post-tool
# gate* g_t), it rescales the advantage by the token's standardised entropy z_t,
#
#     Ã_t = A_t · (1 + a · g_t · z_t),   a = 0.01,
#
# so uncertain post-tool tokens get a larger |A| and confident ones a smaller |A|, for both signs.
# This notebook looks at the entropy of real rollouts, then at what the reshaping and its switches do.

# %%
import os

import numpy as np
import pandas as pd

from tao_lab import explore, plots, widgets
from tao_lab.advantages import ShapingConfig
from tao_lab.filters import FilterConfig
from tao_lab.models import load_tokenizer
from tao_lab.stored_rollouts import sample_or_load
from tao_lab.tokenview import TokenView

SMOKE = os.environ.get("TAO_LAB_SMOKE") == "1"   # tests set this: fewer tasks, shorter episodes
plots.use_offline_renderer()                      # charts as SVG: no network, no JavaScript needed

# %% [markdown]
# ## 1. Rollouts with the tool (or the stored ones)
# The same run store as notebook 03: reused when it exists, sampled from the embedded model otherwise.

# %%
SOURCES = ["arith-L1", "arith-L3"] if SMOKE else ["arith-L1", "arith-L2", "arith-L3", "word-L2"]
N_PER_SOURCE, G, MAX_NEW = (2, 4, 128) if SMOKE else (4, 8, 384)
SEED = 1
trajs, RUN_DIR = sample_or_load(SOURCES, N_PER_SOURCE, G, MAX_NEW, seed=SEED, progress=True)  # bar + ETA, any size

tok = load_tokenizer("smollm2-135m")   # only to turn token ids back into text
assert all(t.reward is not None for t in trajs)

# %% [markdown]
# ## 2. Per-token records
# `explore.token_table` is the run store's per-token frame plus, for each sampled token, its
# `offset` from the start of its turn and its `segment`: *first turn*, or *after tool output* (a turn
# that starts right after a forced observation, so `offset` = tokens since the tool output ended).

# %%
tokens = explore.token_table(trajs)
forced = tokens[tokens["mask"] == 0]
assert (forced["entropy"] == 0).all() and (forced["post_tool"] == 0).all(), \
    "forced tool-output tokens carry no entropy and are never in the post-tool gate"
sampled = tokens[tokens["mask"] == 1]
sampled.groupby("segment")["entropy"].describe()[["count", "mean", "50%", "max"]]

# %% [markdown]
# ## 3. One episode, token by token
# Background colour = entropy of the sampled token (white = certain, red = undecided); grey blocks
# are the tool's output, fed to the model as forced tokens; red underline = the post-tool gate.
# Hover a token for its id, log-probability and entropy.

# %%
with_calls = [i for i, t in enumerate(trajs) if t.n_valid_calls > 0]
EPISODE = max(with_calls or range(len(trajs)), key=lambda i: (trajs[i].reward, sum(trajs[i].post_tool)))
TokenView(trajs[EPISODE], tok, color_by="entropy")

# %% [markdown]
# The same episode (and one more) as a trace: grey bands are tool outputs, red dots the gated tokens.

# %%
show = [EPISODE] + [i for i in with_calls if i != EPISODE][:1]
plots.entropy_trace_chart(explore.trace_frame(tokens, show), explore.tool_spans(tokens, show))

# %% [markdown]
# ## 4. All episodes at once
# Rows are episodes sorted by reward, lowest first (the column on the left gives each row's reward),
# columns token positions (binned when there are many); grey cells hold only tool output. What
# happens right of each grey block is the question of the next section.

# %%
heat = explore.heatmap_frame(tokens)
assert len(heat) <= plots.MAX_ROWS
plots.entropy_heatmap(heat)

# %% [markdown]
# ## 5. Does entropy spike right after tool feedback?
# Mean entropy by distance from the end of the last tool output (red), against first-turn tokens at
# the same distance from the start of the response (blue, the baseline), with 95% bands and the
# number of tokens each point rests on (offsets with fewer than 3 tokens are left out). With a few
# dozen episodes the bands are wide: read the first handful of offsets, where most episodes contribute.
#
# Whether the spike shows up depends on the model and the prompt. ARPO saw it on 7B-scale models
# reasoning after a tool result; a 135M model prompted with two demonstrations that answer
# "The answer is \boxed{...}" right after the output may instead *copy* that line with near-zero
# entropy. Either way, the post-tool gate decides where the reshaping acts, and the z-score makes
# it relative to each episode's own entropy, so it does something in both cases.

# %%
profile = explore.entropy_by_offset(tokens, max_offset=32 if SMOKE else 64)
assert (profile["n"] > 0).all()
first = profile[profile["offset"] < 4].pivot(index="offset", columns="segment", values="mean")
print("mean entropy over the first 4 tokens:", first.mean().round(3).to_dict())
plots.entropy_after_tool_chart(profile)

# %% [markdown]
# ## 6. TAO-RL's reshaping on the stored episodes
# `explore.recompute` runs the whole model-free chain: filters (defaults of notebook 03), group
# advantages, then `advantages.shape_advantages` with a `ShapingConfig`. Gated tokens are the
# sampled tokens of the turn right after a tool call; z is computed per trajectory over its trainable
# tokens (paper figure). We use a = 0.2 here (AEPO's value) so the effect is visible; TAO-RL uses 0.01.

# %%
FCFG = FilterConfig(rules=("overlong", "void_turn", "filter_a"), min_n=max(1, G // 2))  # keep Filter B off:
# degenerate groups have A = 0 and Ã = 0, they only make the histograms emptier
ex = explore.recompute(trajs, FCFG, ShapingConfig(coef=0.2))
s = ex.shaped
print(f"{len(ex.result.index)} advantage rows; gate coverage {ex.metrics.get('shaping/gate_coverage', 0):.0%} "
      f"of trainable tokens")
if not s.empty:
    live = s[(s["loss_mask"] > 0) & (s["adv"] != 0)]
    gated, other = live[live["gate"] == 1], live[live["gate"] == 0]
    assert np.allclose(other["adv_shaped"], other["adv"]), "ungated tokens keep A"
    assert np.allclose(gated["adv_shaped"], gated["adv"] * (1 + 0.2 * gated["z"]), atol=1e-5), \
        "gated tokens follow Ã = A (1 + a z)"
    print(f"checked Ã = A(1 + a·z) on {len(gated)} gated tokens and Ã = A on {len(other)} others")
plots.advantage_trace_chart(explore.shaped_trace(s)) if not s.empty else "no advantage row survived the filters"

# %% [markdown]
# ### The switches (METHODS.md §1.2), one at a time
# - **gate**: `post_tool` (paper) or `all_tokens` (the public config's default, i.e. AEPO everywhere);
# - **z scope**: per `trajectory` (paper figure) or per `micro_batch` of trainable tokens (code): then
#   a token's Ã depends on which other episodes share its micro-batch;
# - **detach**: the entropy is a constant (default) or carries gradient (code): same Ã *values*, a
#   different gradient, so nothing below moves with it;
# - **a**: 0.01 (TAO-RL), 0.05, 0.2 (AEPO).

# %%
def ratio_stats(cfg: ShapingConfig, micro_batch=None) -> dict:
    m = explore.recompute(trajs, FCFG, cfg, micro_batch=micro_batch).metrics
    return {k.split("/")[1]: round(m.get(k, float("nan")), 4) for k in
            ("shaping/gate_coverage", "shaping/ratio_gated_mean", "shaping/ratio_gated_min",
             "shaping/ratio_gated_max", "shaping/ratio_other_min", "shaping/ratio_other_max", "shaping/sign_flips")}


arms = {
    "a=0.01 (TAO-RL)": (ShapingConfig(coef=0.01), None),
    "a=0.05": (ShapingConfig(coef=0.05), None),
    "a=0.2": (ShapingConfig(coef=0.2), None),
    "a=0.2, all tokens": (ShapingConfig(coef=0.2, gate="all_tokens"), None),
    "a=0.2, z per micro-batch of 4": (ShapingConfig(coef=0.2, z_scope="micro_batch"), 4),
    "a=0.2, z per micro-batch of 8": (ShapingConfig(coef=0.2, z_scope="micro_batch"), 8),
    "a=0.2, not detached": (ShapingConfig(coef=0.2, detach=False), None),
}
switches = pd.DataFrame({name: ratio_stats(cfg, mb) for name, (cfg, mb) in arms.items()}).T
switches

# %%
if not s.empty:
    assert switches.loc["a=0.2, all tokens", "gate_coverage"] == 1.0
    assert switches.loc["a=0.2", "ratio_other_max"] == 1.0   # post-tool gate: ungated tokens untouched
    assert switches.loc["a=0.2, not detached"].equals(switches.loc["a=0.2"])  # detach: values identical
    spread = lambda r: r["ratio_gated_max"] - r["ratio_gated_min"]
    assert spread(switches.loc["a=0.01 (TAO-RL)"]) <= spread(switches.loc["a=0.2"])

# %% [markdown]
# ## 7. The additive entropy bonus (ablation arm, arXiv 2506.14758)
# `Ã_t = A_t + min(α·H_t, |A_t|/κ)` on gated tokens, α = 0.4, κ = 2. The bonus is never negative and
# at most |A|/κ, so a negative advantage shrinks but never flips sign, and the bonus fades as entropy
# falls during training.

# %%
add = explore.recompute(trajs, FCFG, ShapingConfig(kind="additive", alpha=0.4, kappa=2.0))
if not add.shaped.empty:
    a = add.shaped[(add.shaped["loss_mask"] > 0)]
    assert ((a["adv_shaped"] * a["adv"]) >= 0).all(), "the additive bonus never flips the sign of A"
    bonus = a["adv_shaped"] - a["adv"]
    assert (bonus >= -1e-7).all() and (bonus <= a["adv"].abs() / 2.0 + 1e-6).all()
    print(f"bonus capped at |A|/κ on {add.metrics['shaping/bonus_capped_frac']:.0%} of gated tokens")

# %% [markdown]
# ## 8. Ã / A on gated versus other tokens
# Multiplicative (a = 0.2) on the left, additive on the right. Ungated tokens sit at exactly 1.

# %%
if not s.empty and not add.shaped.empty:
    chart = (plots.ratio_chart(explore.ratio_histogram(s), title="TAO-RL, a = 0.2")
             | plots.ratio_chart(explore.ratio_histogram(add.shaped), title="additive, α = 0.4, κ = 2"))
else:
    chart = "nothing survived the filters in this run: no advantage to reshape"
chart

# %% [markdown]
# ## 9. Live panel
# Move the controls: each change recomputes filters, advantages and shaping on the stored episodes
# (no re-sampling) and redraws the charts. The summary line under the controls gives the numbers.

# %%
panel = widgets.Panel(trajs, filter_cfg=FCFG, shaping_cfg=ShapingConfig(coef=0.2),
                      charts=("ratio", "advantage_trace"))
panel

# %%
before = panel.summary.value
panel.controls["coef"].value = 0.05
assert panel.state.shaping_cfg.coef == 0.05
if not panel.state.shaped.empty:
    assert panel.summary.value != before, "a new coefficient must change the numbers shown"
panel.controls["coef"].value = 0.2

# %% [markdown]
# **What to take away.** The gate decides *where* entropy may move the advantage, z decides *which
# way*, and a decides *how far*. With TAO-RL's a = 0.01 the change is a percent or two per token:
# a gentle push towards exploring after tool feedback, not a new objective.
