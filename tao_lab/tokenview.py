"""A trajectory as coloured tokens: self-contained HTML for notebooks and offline reports.

Each completion token is a <span> whose background encodes entropy (or -logprob) of the sampled
token; a run of forced tokens (a tool output, a forced prefix) is ONE grey block, so an
observation reads "4416" and not "|4|4|1|6|"; the post-tool gate is underlined; hovering shows id,
logprob, entropy and turn. `group_view_html` puts the G episodes of one prompt side by side on one
shared colour scale, each headed by its verdict, reward and advantage: the view GRPO needs. No JavaScript, no network: the page is
one string of HTML + inline CSS, so it renders in JupyterLab, in a saved report, and in a browser
opened from disk.
"""

from __future__ import annotations

import html

from .records import Trajectory

_CSS = """
.tl-view{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.9;
 white-space:pre-wrap;word-break:break-word;max-width:100%;}
.tl-view span.t{border-radius:2px;padding:1px 0}
.tl-view span.f{background:#e8e8e8;color:#555;border-left:2px solid #999;border-right:2px solid #999;padding:0 2px}
.tl-view span.g{text-decoration:underline;text-decoration-color:#d62728;text-underline-offset:3px}
.tl-view .p{color:#888}
.tl-legend{font:12px sans-serif;margin:4px 0 8px 0;color:#333}
.tl-legend b{display:inline-block;width:60px;height:10px;vertical-align:middle;
 background:linear-gradient(90deg,rgb(255,255,255),rgb(255,140,0),rgb(200,0,0))}
.tl-group{display:grid;gap:10px;align-items:start}
.tl-group .cell{border:1px solid #ddd;border-radius:4px;padding:6px;min-width:0;font-size:12px}
.tl-group .hd{font:12px sans-serif;margin-bottom:4px} .tl-group .ok{color:#2ca02c} .tl-group .no{color:#d62728}
"""


def _colour(x: float, lo: float, hi: float) -> str:
    """white -> orange -> red as x goes lo -> hi."""
    u = 0.0 if hi <= lo else min(max((x - lo) / (hi - lo), 0.0), 1.0)
    if u < 0.5:
        v = u / 0.5
        r, g, b = 255, int(255 - 115 * v), int(255 - 255 * v)
    else:
        v = (u - 0.5) / 0.5
        r, g, b = int(255 - 55 * v), int(140 - 140 * v), 0
    return f"rgb({r},{g},{b})"


def token_pieces(traj: Trajectory, tokenizer) -> list[str]:
    """Text of each completion token, so that ''.join(pieces) reads like the decoded completion."""
    out, prev = [], ""
    ids = traj.token_ids
    for i in range(len(ids)):
        # decode growing prefixes: exact for multi-byte characters split across tokens
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=False)
        out.append(text[len(prev):] if text.startswith(prev) else tokenizer.decode([ids[i]]))
        prev = text
    return out


def _values(traj: Trajectory, color_by: str) -> list[float]:
    if color_by not in ("entropy", "nll"):
        raise ValueError(f"color_by={color_by!r}; choose 'entropy' or 'nll'")
    return [e if color_by == "entropy" else -lp for e, lp in zip(traj.entropies, traj.logprobs)]


def _spans(traj: Trajectory, tokenizer, values: list[float], hi: float) -> list[str]:
    """One <span> per sampled token, one per run of forced tokens."""
    parts, forced = [], []

    def flush():
        if forced:
            text = html.escape("".join(forced))
            parts.append(f'<span class="f" title="forced (tool output or prefix), {len(forced)} tokens">{text}</span>')
            forced.clear()

    for i, piece in enumerate(token_pieces(traj, tokenizer)):
        if not traj.mask[i]:
            forced.append(piece)
            continue
        flush()
        tip = (f"id {traj.token_ids[i]} | turn {traj.turn_idx[i]} | logprob {traj.logprobs[i]:.3f} | "
               f"entropy {traj.entropies[i]:.3f}" + (" | post-tool" if traj.post_tool[i] else ""))
        cls = "t g" if traj.post_tool[i] else "t"
        parts.append(f'<span class="{cls}" style="background:{_colour(values[i], 0.0, hi)}" '
                     f'title="{tip}">{html.escape(piece)}</span>')
    flush()
    return parts


def token_view_html(traj: Trajectory, tokenizer, color_by: str = "entropy", show_prompt: bool = False,
                    standalone: bool = False, vmax: float | None = None) -> str:
    """HTML for one trajectory. color_by: "entropy" (nats) or "nll" (-logprob of the sampled token)."""
    values = _values(traj, color_by)
    sampled = [v for v, m in zip(values, traj.mask) if m]
    hi = vmax if vmax is not None else (max(sampled) if sampled else 1.0)
    parts = []
    if show_prompt:
        parts.append(f'<span class="p">{html.escape(traj.prompt_text)}</span>')
    parts += _spans(traj, tokenizer, values, hi)
    head = (f'<div class="tl-legend">task <code>{html.escape(traj.task_id)}</code> · reward '
            f'{traj.reward} · finish <code>{traj.finish_reason}</code> · {traj.n_tool_calls} tool calls '
            f'({traj.n_valid_calls} valid) · colour = {color_by} 0 <b></b> {hi:.2f} · '
            f'<span style="background:#e8e8e8">tool output</span> · '
            f'<span style="text-decoration:underline;text-decoration-color:#d62728">post-tool gate</span></div>')
    body = f'<style>{_CSS}</style>{head}<div class="tl-view">{"".join(parts)}</div>'
    if standalone:
        return f'<!doctype html><html><head><meta charset="utf-8"><title>tao_lab episode</title></head><body>{body}</body></html>'
    return body


def group_view_html(trajs: list[Trajectory], tokenizer, advantages: list[float] | None = None,
                    color_by: str = "entropy", columns: int = 4) -> str:
    """The episodes of one group (one prompt) side by side on ONE colour scale (the group's max), each
    headed by the verifier's verdict, its reward and (if given) its advantage."""
    if not trajs:
        raise ValueError("group_view_html: no trajectories")
    if advantages is not None and len(advantages) != len(trajs):
        raise ValueError(f"group_view_html: {len(advantages)} advantages for {len(trajs)} trajectories")
    vals = [_values(t, color_by) for t in trajs]
    hi = max([v for vs, t in zip(vals, trajs) for v, m in zip(vs, t.mask) if m] or [1.0])
    cells = []
    for k, (t, vs) in enumerate(zip(trajs, vals)):
        verdict = {True: '<b class="ok">correct</b>', False: '<b class="no">wrong</b>', None: "not verified"}[t.correct]
        adv = "" if advantages is None else f" · A = {advantages[k]:+.2f}"
        reward = "?" if t.reward is None else f"{t.reward:.2f}"
        cells.append(f'<div class="cell"><div class="hd">#{t.sample_idx} {verdict} · reward {reward}{adv} · '
                     f'{t.n_tool_calls} call(s)</div><div class="tl-view">{"".join(_spans(t, tokenizer, vs, hi))}</div></div>')
    head = (f'<div class="tl-legend">task <code>{html.escape(trajs[0].task_id)}</code> · {len(trajs)} episodes · '
            f'colour = {color_by} 0 <b></b> {hi:.2f} (one scale for the group) · '
            f'<span style="background:#e8e8e8">forced</span></div>')
    grid = f'<div class="tl-group" style="grid-template-columns:repeat({min(columns, len(trajs))},minmax(0,1fr))">'
    return f'<style>{_CSS}</style>{head}{grid}{"".join(cells)}</div>'


class GroupView:
    """Notebook wrapper: `GroupView(trajs, tok, advantages=...)` renders group_view_html."""

    def __init__(self, trajs: list[Trajectory], tokenizer, **kw):
        self.trajs, self.tokenizer, self.kw = trajs, tokenizer, kw

    def _repr_html_(self) -> str:
        return group_view_html(self.trajs, self.tokenizer, **self.kw)


class TokenView:
    """Notebook wrapper: `TokenView(traj, tok)` as the last expression renders the coloured tokens."""

    def __init__(self, traj: Trajectory, tokenizer, **kw):
        self.traj, self.tokenizer, self.kw = traj, tokenizer, kw

    def _repr_html_(self) -> str:
        return token_view_html(self.traj, self.tokenizer, **self.kw)
