"""One way to combine a metric over parts (micro-batches -> step), so a name means one thing everywhere.

Every metric has one kind, declared here once (`metric_kind`):

    sum     counts: tokens, gated tokens, sign flips, fallbacks ... (the COUNTS table)
    min     names ending in "_min" or "/min"                     -> smallest part
    max     names ending in "_max" or "/max"                     -> largest part
    mean    everything else: a weighted mean over the parts, each weighted by the tokens that
            actually entered it (the WEIGHTS table names the count metric that is a mean's weight;
            "loss/..." means are weighted by loss/tokens, "shaping/..." by shaping/tokens).
            Parts whose value is NaN (nothing entered them) are left out, as are parts of weight 0;
            the mean of no part is NaN.

Used by update.update_policy (micro-batches of a step) and explore (the same shaping offline).
"""

from __future__ import annotations

import math

# Counts: summed over parts.
COUNTS: frozenset[str] = frozenset({
    "loss/tokens", "shaping/tokens", "shaping/gated_tokens", "shaping/other_tokens",
    "shaping/sign_flips", "shaping/empty_gate_fallback", "shaping/ratio_gated_n", "shaping/ratio_other_n",
    "shaping/micro_batches", "loss/anti_clip_tokens",
})

# The weight of a mean: the count metric of the same part that says how many tokens entered it.
WEIGHTS: dict[str, str] = {
    "shaping/entropy_gated_mean": "shaping/gated_tokens",
    "shaping/entropy_other_mean": "shaping/other_tokens",
    "shaping/ratio_gated_mean": "shaping/ratio_gated_n",
    "shaping/ratio_other_mean": "shaping/ratio_other_n",
    "shaping/bonus_capped_frac": "shaping/gated_tokens",
    "shaping/gate_coverage": "shaping/tokens",
}
_PREFIX_WEIGHT = {"loss/": "loss/tokens", "shaping/": "shaping/tokens"}


def metric_kind(key: str) -> str:
    """'sum' | 'min' | 'max' | 'mean' for a metric name."""
    if key in COUNTS:
        return "sum"
    if key.endswith(("_min", "/min")):
        return "min"
    if key.endswith(("_max", "/max")):
        return "max"
    return "mean"


def weight_key(key: str) -> str | None:
    """The count metric that weighs the mean `key` (None: parts weigh the same)."""
    if key in WEIGHTS:
        return WEIGHTS[key]
    return next((w for p, w in _PREFIX_WEIGHT.items() if key.startswith(p)), None)


def merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-part metric dicts into one, by each metric's kind (see the module docstring).

    A key missing from some parts is merged over the parts that have it. Non-numbers are skipped.
    """
    keys = list(dict.fromkeys(k for p in parts for k in p))
    out: dict[str, float] = {}
    for key in keys:
        vals = [(float(p[key]), p) for p in parts if isinstance(p.get(key), (int, float))]
        kind = metric_kind(key)
        finite = [(v, p) for v, p in vals if not math.isnan(v)]
        if kind == "sum":
            out[key] = float(sum(v for v, _ in finite))
        elif kind in ("min", "max"):
            out[key] = (min if kind == "min" else max)(v for v, _ in finite) if finite else float("nan")
        else:
            wk = weight_key(key)
            pairs = [(v, float(p.get(wk, 1.0)) if wk else 1.0) for v, p in finite]
            total = sum(w for _, w in pairs)
            out[key] = sum(v * w for v, w in pairs) / total if total > 0 else float("nan")
    return out


__all__ = ["COUNTS", "WEIGHTS", "metric_kind", "weight_key", "merge_metrics"]
