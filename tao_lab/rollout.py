"""Batched multi-turn generation with a Python tool, recording everything per token.

`generate(model, tokenizer, tasks, cfg)` samples G episodes per task. In an episode the model writes
text; when it closes a tool call (a fenced python block, or `<python>...</python>`), the turn is cut
right there, the code runs in the sandbox pool, and the observation is appended as *forced* tokens
(never sampled, mask 0); then the model continues in the next turn. All G x tasks rows decode in one
batch; a row waiting on its tool call simply sits out the decode steps until its result arrives,
while the other rows keep going.

Episode rules (METHODS.md §0, SimpleTIR / TAO-RL):
  - a turn ends at a complete tool call, at end-of-sequence, or at the token budget;
  - the episode ends with `boxed` when `\\boxed{` is in the turn's model text or the tool's stdout;
  - a turn that ends with neither a tool call nor `\\boxed{` is a *void turn*: the episode ends;
  - after `max_turns` turns (tool observation appended) the episode ends with `max_turns`;
  - hitting `max_new_tokens` (sampled + forced tokens) ends it with `token_budget`, truncated=True.

Recorded per token (records.Trajectory): id, mask (1 sampled / 0 forced), logprob and
full-vocabulary entropy of the temperature-scaled distribution the token was sampled from (from the
logits the decode step already computed; no second pass), turn index, and the post-tool gate
(sampled tokens of a turn that follows a tool call; METHODS.md §1.2). With top_p < 1 the token is
drawn from the nucleus, but logprob/entropy are those of the full temperature-scaled distribution,
which is what the training forward pass recomputes. Token ids in, token ids out: earlier text is
never re-tokenised.

Speed (DESIGN.md §7): each distinct prompt is prefilled once and its KV cache forked to its G rows;
the cache is preallocated (engine.KVEngine); sandbox calls run concurrently in a warm pool.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .engine import KVEngine, make_engine
from .records import ToolCall, Trajectory
from .toolcall import find_tool_call, format_observation, has_boxed, is_valid_call


@dataclass
class RolloutConfig:
    """How episodes are sampled."""

    group_size: int = 8              # G: episodes per task
    max_new_tokens: int = 512        # completion budget per episode, sampled + forced tokens
    max_turns: int = 5               # assistant turns per episode (5 train, 10 eval in the papers)
    temperature: float = 1.0         # sampling temperature; 0 = greedy (records then use T=1)
    top_p: float = 1.0               # nucleus sampling; 1.0 = full distribution
    protocol: str = "fenced"         # tool-call syntax: "fenced" (```python) or "tags" (<python>)
    tools: bool = True               # False: plain generation, a tool call does not end the turn
    tool_timeout_s: float = 3.0      # wall-clock limit per tool call (TAO-RL code: 3 s)
    obs_max_chars: int = 512         # observation text, head+tail truncated to this many characters
    obs_max_tokens: int = 256        # ... and to this many tokens
    silent_is_failure: bool = True   # a call that prints nothing counts as failed (TAO-RL code)
    template: str = "few_shot"       # prompt template for tasks.render_prompt
    n_demos: int = 2                 # demonstrations in the few-shot template
    backend: str = "auto"            # "kv" (fast, Llama-family), "recompute" (any model), "auto"
    seed: int | None = None          # sampling seed; None = torch's global RNG
    ignore_eos: bool = False         # benchmarks only: keep sampling past end-of-sequence

    def __post_init__(self):
        from . import checks
        from .tasks import TEMPLATES

        for name in ("group_size", "max_new_tokens", "max_turns"):
            checks.number(self, name, lo=1, integer=True)
        checks.number(self, "temperature", lo=0, hi=10)
        checks.number(self, "top_p", lo=0, hi=1, lo_open=True)
        checks.choice(self, "protocol", ("fenced", "tags"))
        checks.number(self, "tool_timeout_s", lo=0, hi=3600, lo_open=True)
        checks.number(self, "obs_max_chars", lo=16, integer=True)
        checks.number(self, "obs_max_tokens", lo=8, integer=True)
        checks.choice(self, "template", TEMPLATES)       # typos fail here, not after the model loaded
        checks.number(self, "n_demos", lo=0, integer=True)
        checks.choice(self, "backend", ("auto", "kv", "recompute"))   # engine.make_engine's variants
        checks.number(self, "seed", lo=0, integer=True, none_ok=True)
        checks.flag(self, "tools", "silent_is_failure", "ignore_eos")


@dataclass
class RolloutStats:
    """Counters for one call of generate()."""

    n_episodes: int = 0
    sampled_tokens: int = 0
    forced_tokens: int = 0
    wall_s: float = 0.0
    forward_s: float = 0.0           # time inside model forwards
    tool_wait_s: float = 0.0         # time blocked with every live row waiting on a tool
    n_tool_calls: int = 0
    n_valid_calls: int = 0
    obs_truncated: int = 0           # observations cut to obs_max_chars / obs_max_tokens
    finish: dict = field(default_factory=dict)

    @property
    def sampled_tokens_per_s(self) -> float:
        return self.sampled_tokens / self.wall_s if self.wall_s else 0.0

    def as_metrics(self, prefix: str = "rollout/") -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "finish"}
        d["sampled_tokens_per_s"] = self.sampled_tokens_per_s
        d.update({f"finish/{k}": v for k, v in self.finish.items()})
        return {prefix + k: v for k, v in d.items()}


@dataclass
class _Row:
    """Mutable state of one episode while it is being generated."""

    traj: Trajectory
    turn_start: int = 0              # index in traj.token_ids where the current turn began
    future: cf.Future | None = None  # pending tool call
    call_code: str = ""
    boxed_in_turn: bool = False      # the turn that made the pending call already wrote \boxed{
    done: bool = False


def stop_token_ids(tokenizer, model=None) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


def _trigger_table(tokenizer, vocab: int, chars: str) -> torch.Tensor:
    """(V,) bool: does token id decode to text containing any of `chars`? Cheap pre-filter that
    spares decoding the turn after every token."""
    table = torch.zeros(vocab, dtype=torch.bool)
    for i in range(min(vocab, len(tokenizer))):
        piece = tokenizer.decode([i])
        table[i] = any(c in piece for c in chars)
    return table


_TRIGGERS: dict[tuple, torch.Tensor] = {}


def sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None):
    """logits (R, V) -> (token (R,), logprob (R,), entropy (R,)) at the sampling temperature."""
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)        # (R, V)
    entropy = -(logp.exp() * logp).sum(-1)                                # full-vocabulary
    if temperature == 0:
        tok = logp.argmax(-1)
    else:
        probs = logp.exp()
        if top_p < 1.0:
            sp, si = probs.sort(-1, descending=True)
            drop = sp.cumsum(-1) - sp > top_p                             # keep the smallest nucleus
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
        # inverse-CDF sampling: one uniform per row. torch.multinomial draws an exponential per
        # vocabulary entry, which was ~10% of a decode step at batch 32.
        cdf = probs.cumsum(-1)
        u = torch.rand(probs.shape[0], 1, generator=gen) * cdf[:, -1:]
        tok = torch.searchsorted(cdf, u).clamp_(max=probs.shape[-1] - 1).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1), entropy


def generate(model, tokenizer, tasks: Sequence, cfg: RolloutConfig, *, pool=None,
             prompts: Sequence[str] | None = None, group_offset: int = 0, progress: bool = False):
    """Roll out cfg.group_size episodes per task. Returns (list[Trajectory], RolloutStats).

    tasks: tasks.Task objects (id, prompt, answer); prompts: optional already-rendered prompt
    strings, one per task (default: tasks.render_prompt with cfg.template / cfg.n_demos).
    pool: a sandbox.SandboxPool to reuse (a fresh one is made and closed otherwise).
    """
    if prompts is None:
        from .tasks import render_prompt
        prompts = [render_prompt(tokenizer, t, template=cfg.template, protocol=cfg.protocol,
                                 n_demos=cfg.n_demos) for t in tasks]
    if len(prompts) != len(tasks):
        raise ValueError(f"{len(prompts)} prompts for {len(tasks)} tasks")
    own_pool = pool is None and cfg.tools
    if own_pool:
        from .sandbox import SandboxConfig, SandboxPool
        pool = SandboxPool(config=SandboxConfig(timeout_s=cfg.tool_timeout_s))
    try:
        return _generate(model, tokenizer, tasks, prompts, cfg, pool, group_offset, progress)
    finally:
        if own_pool:
            pool.close()


def _generate(model, tok, tasks, prompts, cfg: RolloutConfig, pool, group_offset, progress):
    t0 = time.perf_counter()
    stats = RolloutStats()
    G, n_tasks = cfg.group_size, len(tasks)
    n = G * n_tasks
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
    stops = stop_token_ids(tok, model)
    vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") \
        and model.get_output_embeddings() is not None else len(tok)
    chars = "`" if cfg.protocol == "fenced" else ">"
    key = (id(tok), vocab, chars)
    if key not in _TRIGGERS:
        _TRIGGERS[key] = _trigger_table(tok, vocab, chars)
    trigger = _TRIGGERS[key]

    prompt_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    capacity = max(map(len, prompt_ids)) + cfg.max_new_tokens + 2
    engine = make_engine(model, n, capacity, cfg.backend, pad_id=tok.pad_token_id or 0)
    rows = []
    for ti, task in enumerate(tasks):
        for g in range(G):
            rows.append(_Row(Trajectory(
                task_id=task.id, group_id=group_offset + ti, sample_idx=g, prompt_ids=prompt_ids[ti],
                token_ids=[], mask=[], logprobs=[], entropies=[], turn_idx=[], post_tool=[],
                answer=task.answer, prompt_text=prompts[ti], n_turns=1)))

    def forward(row_idx: list[int], chunks: list[list[int]]) -> torch.Tensor:
        """Feed chunks[i] to row row_idx[i]; (len(row_idx), V) logits after each last token."""
        t = time.perf_counter()
        if isinstance(engine, KVEngine) and len(row_idx) > n // 2 and len(row_idx) < n:
            # Most rows take part: run them all (idle rows get 0 valid tokens) so the KV engine
            # reads its cache as a view instead of gathering a copy of each participant's rows.
            full = [[] for _ in range(n)]
            for r, c in zip(row_idx, chunks):
                full[r] = c
            t_out = _forward_rows(list(range(n)), [c or [0] for c in full], [len(c) for c in full])
            stats.forward_s += time.perf_counter() - t
            return t_out[torch.tensor(row_idx)]
        out = _forward_rows(row_idx, chunks, [len(c) for c in chunks])
        stats.forward_s += time.perf_counter() - t
        return out

    def _forward_rows(row_idx: list[int], chunks: list[list[int]], n_valid: list[int]) -> torch.Tensor:
        width = max(map(len, chunks))
        toks = torch.full((len(chunks), width), tok.pad_token_id or 0, dtype=torch.long)
        for i, c in enumerate(chunks):
            toks[i, :len(c)] = torch.tensor(c)
        nv = torch.tensor(n_valid)
        dev = getattr(engine, "device", torch.device("cpu"))
        return engine.forward(torch.tensor(row_idx, device=dev), toks.to(dev), nv.to(dev))

    # Prefill each distinct prompt once, then fork its cache to the other G-1 rows of its group.
    firsts = list(range(0, n, G))
    first_logits = forward(firsts, prompt_ids)                                  # (n_tasks, V)
    if G > 1:
        src = torch.tensor([f for f in firsts for _ in range(G - 1)])
        dst = torch.tensor([f + g for f in firsts for g in range(1, G)])
        dev = getattr(engine, "device", torch.device("cpu"))
        engine.fork(src.to(dev), dst.to(dev))
    ready = {r: first_logits[r // G] for r in range(n)}   # rows with fresh logits to sample from

    bar = _progress(n, progress)
    while True:
        # 1. sample one token for every row that has fresh logits, and apply the episode rules
        to_decode: list[int] = []
        if ready:
            idx = sorted(ready)
            logits = torch.stack([ready[r] for r in idx])
            toks, lps, ents = sample(logits, cfg.temperature, cfg.top_p, gen)
            ready = {}
            for r, t, lp, h in zip(idx, toks.tolist(), lps.tolist(), ents.tolist()):
                row = rows[r]
                _record(row.traj, t, 1, lp, h)
                stats.sampled_tokens += 1
                if _after_sample(row, t, tok, cfg, stops, trigger, pool, stats):
                    to_decode.append(r)
                if row.done:
                    bar.update(1)
        # 2. collect finished tool calls and queue their observations as forced tokens
        forced: dict[int, list[int]] = {}
        waiting = [r for r, row in enumerate(rows) if row.future is not None]
        if waiting and not to_decode:
            t = time.perf_counter()    # every live row waits on a tool: block for the first result
            cf.wait([rows[r].future for r in waiting], return_when=cf.FIRST_COMPLETED)
            stats.tool_wait_s += time.perf_counter() - t
        for r in waiting:
            if rows[r].future.done():
                obs = _finish_call(rows[r], tok, cfg, stats)
                if obs:
                    forced[r] = obs
                if rows[r].done:
                    bar.update(1)
        # 3. one forward for the decoding rows, one for the rows receiving tool output
        if to_decode:
            out = forward(to_decode, [[rows[r].traj.token_ids[-1]] for r in to_decode])
            ready.update(zip(to_decode, out))
        if forced:
            fr = sorted(forced)
            out = forward(fr, [forced[r] for r in fr])
            ready.update(zip(fr, out))
        if not ready and not any(row.future is not None for row in rows):
            break
    bar.close()

    trajs = [row.traj for row in rows]
    for tr in trajs:
        tr.text = tok.decode(tr.token_ids, skip_special_tokens=True)
        stats.finish[tr.finish_reason] = stats.finish.get(tr.finish_reason, 0) + 1
    stats.n_episodes = n
    stats.wall_s = time.perf_counter() - t0
    return trajs, stats


def _record(tr: Trajectory, token: int, mask: int, logprob: float, entropy: float) -> None:
    tr.token_ids.append(token)
    tr.mask.append(mask)
    tr.logprobs.append(logprob if mask else 0.0)
    tr.entropies.append(entropy if mask else 0.0)
    turn = tr.n_turns - 1
    tr.turn_idx.append(turn)
    # post-tool gate: sampled tokens of a turn that follows a turn with a tool call. Turns only
    # advance past a tool call, so every turn after the first qualifies (METHODS.md §1.2).
    tr.post_tool.append(int(mask == 1 and turn >= 1))


def _end(row: _Row, reason: str) -> None:
    row.done = True
    row.traj.finish_reason = reason
    row.traj.truncated = reason == "token_budget"


def _after_sample(row: _Row, token: int, tok, cfg: RolloutConfig, stops, trigger, pool, stats) -> bool:
    """Apply the episode rules after a sampled token. True = keep decoding this row."""
    tr = row.traj
    if token in stops and not cfg.ignore_eos:
        turn_text = tok.decode(tr.token_ids[row.turn_start:], skip_special_tokens=True)
        if has_boxed(turn_text):
            _end(row, "boxed")
        else:
            tr.void_turn = True
            _end(row, "void_turn" if cfg.tools else "eos")
        return False
    if cfg.tools and bool(trigger[token]):
        turn_text = tok.decode(tr.token_ids[row.turn_start:], skip_special_tokens=True)
        call = find_tool_call(turn_text, cfg.protocol)
        if call is not None:
            row.call_code = call.code
            row.future = pool.submit(call.code)
            row.boxed_in_turn = has_boxed(turn_text[:call.start])
            return False
    if len(tr.token_ids) >= cfg.max_new_tokens:
        _end(row, "token_budget")
        return False
    return True


def _finish_call(row: _Row, tok, cfg: RolloutConfig, stats: RolloutStats) -> list[int]:
    """Turn a completed tool call into forced observation tokens and apply the turn-end rules."""
    tr = row.traj
    res = row.future.result()
    row.future = None
    obs = format_observation(res, cfg.protocol, max_chars=cfg.obs_max_chars)
    ids = tok.encode(obs, add_special_tokens=False)
    if len(ids) > cfg.obs_max_tokens:       # head + tail, as the character truncation
        h = cfg.obs_max_tokens // 2
        ids = ids[:h] + ids[-(cfg.obs_max_tokens - h):]
        stats.obs_truncated += 1
    room = cfg.max_new_tokens - len(tr.token_ids)
    cut = len(ids) > room
    ids = ids[:max(room, 0)]
    valid = is_valid_call(res, silent_is_failure=cfg.silent_is_failure)
    tr.tool_calls.append(ToolCall(
        turn=tr.n_turns - 1, protocol=cfg.protocol, code=row.call_code, status=res.status,
        stdout=res.stdout, stderr=res.stderr, duration_s=res.duration_s, tier=res.tier,
        observation=tok.decode(ids), valid=valid))
    stats.n_tool_calls += 1
    stats.n_valid_calls += int(valid)
    stats.forced_tokens += len(ids)
    for t in ids:
        _record(tr, t, 0, 0.0, 0.0)
    if cut:
        _end(row, "token_budget")
    elif row.boxed_in_turn or has_boxed(res.stdout):
        _end(row, "boxed")
    elif tr.n_turns >= cfg.max_turns:
        _end(row, "max_turns")
    else:
        tr.n_turns += 1                     # the next turn starts after the observation
        row.turn_start = len(tr.token_ids)
        # the call's closing token was sampled but never fed to the model: feed it first
        return [tr.token_ids[-len(ids) - 1]] + ids if ids else [tr.token_ids[-1]]
    return []


class _NoBar:
    def update(self, n):  # noqa: D401 - tiny stand-in when progress is off
        pass

    def close(self):
        pass


def _progress(total: int, on: bool):
    if not on:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="episodes", unit="ep")


def finish_counts(trajs: Sequence[Trajectory]) -> dict[str, int]:
    return dict(Counter(t.finish_reason for t in trajs))


# ----------------------------------------------------------------------------------------------
# Sample once into a run store, reuse after (notebooks 03 and 04 share one)


def sample_or_load(sources: list[str], n_per_source: int, group_size: int, max_new_tokens: int,
                   seed: int = 1, run_dir: str | Path | None = None, progress: bool = True
                   ) -> tuple[list[Trajectory], Path]:
    """Few-shot tool rollouts of the embedded model on held-out tasks, stored once and then reused.

    The run store at `run_dir` (default: $TAO_LAB_RUN_DIR, else one named after the settings under
    tao_lab's home) is read when it has a step; otherwise the rollouts are sampled, scored and
    written there. Delete the folder to sample anew. Returns (trajectories, run_dir).
    """
    from .models import home_dir
    from .records import RunStore

    run_dir = Path(run_dir or os.environ.get("TAO_LAB_RUN_DIR") or home_dir() / "runs" /
                   f"nb_tool_{n_per_source * len(sources)}x{group_size}_{max_new_tokens}_s{seed}")
    store = RunStore(run_dir)
    if store.steps():
        trajs = store.read_step(store.steps()[0])
        print(f"loaded {len(trajs)} stored trajectories from {run_dir}")
        return trajs, run_dir

    from .models import load_policy
    from .rewards import score
    from .tasks import load_tasks

    model, tok = load_policy("smollm2-135m", lora=False)
    tasks = [t for s in sources for t in load_tasks(s, split="test", limit=n_per_source)]
    cfg = RolloutConfig(group_size=group_size, max_new_tokens=max_new_tokens, template="few_shot", seed=seed)
    trajs, stats = generate(model.eval(), tok, tasks, cfg, progress=progress)
    _, reward_metrics = score(trajs)
    store.write_config({"sources": sources, "n_per_source": n_per_source, "rollout": cfg.__dict__})
    store.write_step(0, trajs)
    store.append_metrics({"step": 0, **stats.as_metrics(), **reward_metrics})
    print(f"sampled {len(trajs)} episodes in {stats.wall_s:.0f} s "
          f"({stats.sampled_tokens_per_s:.0f} sampled tokens/s); stored in {run_dir}")
    return trajs, run_dir
