"""Field checks for the config dataclasses: every error names the field, its value and what is allowed.

Each stage's config calls these from its __post_init__, so a bad value fails when the config is
built (a `--set` override, a notebook cell), not after the model has loaded or a rollout has run.
Numbers must be finite (nan and inf are refused everywhere); enums are checked against the table
of variants the code dispatches on, so an unknown name never falls through to a default branch.
"""

from __future__ import annotations

import math
from typing import Iterable


def _where(owner, name: str, value) -> str:
    return f"{type(owner).__name__}.{name}={value!r}"


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def number(owner, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, integer: bool = False, none_ok: bool = False) -> None:
    """The field `name` of `owner` is a finite number (an int if `integer`) in the interval, or None if
    `none_ok`; raises ValueError naming the field, the value and the allowed range otherwise."""
    value = getattr(owner, name)
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a finite number"
    allowed = f"{kind} in {_interval(lo, hi, lo_open, hi_open)}" + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ValueError(f"{_where(owner, name, value)}: must be {allowed}")
    if not math.isfinite(value):
        raise ValueError(f"{_where(owner, name, value)}: must be {allowed} (nan and inf are refused)")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        raise ValueError(f"{_where(owner, name, value)}: must be {allowed}")


def choice(owner, name: str, allowed: Iterable) -> None:
    """The field `name` of `owner` is one of `allowed` (the dispatch table's keys)."""
    value = getattr(owner, name)
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{_where(owner, name, value)}: choose one of {allowed}")


def flag(owner, *names: str) -> None:
    """Each named field is a bool (a string "false" would otherwise be truthy)."""
    for name in names:
        value = getattr(owner, name)
        if not isinstance(value, bool):
            raise ValueError(f"{_where(owner, name, value)}: must be True or False")


__all__ = ["number", "choice", "flag"]
