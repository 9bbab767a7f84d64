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
(episode.py holds an episode's state and applies these rules; this module runs the batch.)

Recorded per token (records.Trajectory): id, mask (1 sampled / 0 forced), logprob and
full-vocabulary entropy of the temperature-scaled distribution the token was sampled from (from the
logits the decode step already computed; no second pass), turn index, and the post-tool gate
(sampled tokens of a turn that follows a tool call; METHODS.md §1.2). With top_p < 1 the token is
drawn from the nucleus, but logprob/entropy are those of the full temperature-scaled distribution,
which is what the training forward pass recomputes. Token ids in, token ids out: earlier text is
never re-tokenised.

Speed (DESIGN.md §7): each distinct prompt is prefilled once and its KV cache forked to its G rows;
before that, token prefixes several prompts share (the system text; the few-shot demonstrations of
tasks of one kind) are prefilled once and forked, so each prompt prefills only what is its own
(cfg.shared_prefix, prefix.prefix_tree_plan); the cache is preallocated (engine.KVEngine); sandbox calls
run concurrently in a warm pool.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .engine import KVEngine, make_engine
from .quant import QUANTIZE_MODES, rollout_model
from .branches import BranchPolicy, Prefix
from .episode import Episode, after_sample, finish_call
from .prefix import prefix_tree_plan
from .records import Trajectory
from .sandbox.common import DEFAULT_TIMEOUT_S


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
    tool_timeout_s: float = DEFAULT_TIMEOUT_S  # wall-clock limit per tool call (TAO-RL code: 3 s)
    obs_max_chars: int = 512         # observation text, head+tail truncated to this many characters
    obs_max_tokens: int = 256        # ... and to this many tokens
    silent_is_failure: bool = True   # a call that prints nothing counts as failed (TAO-RL code)
    template: str = "few_shot"       # prompt template for tasks.render_prompt
    n_demos: int = 2                 # demonstrations in the few-shot template
    backend: str = "auto"            # "kv" (fast, Llama-family), "recompute" (any model), "auto"
    seed: int | None = None          # sampling seed; None = torch's global RNG
    ignore_eos: bool = False         # benchmarks only: keep sampling past end-of-sequence
    quantize: str = "none"           # "int8": sample from an int8 copy of the policy (quant.py; needs
    #                                  UpdateConfig.is_correction="tis" in training); "none": the policy
    shared_prefix: bool = True       # KV engine: prefill token prefixes that prompts share once
    #   and fork them (prefix_tree_plan). Same tokens as without it (logits equal to fp32 rounding,
    #   tested) and less prefill work (README: rollout throughput); False = each prompt whole

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
        checks.flag(self, "tools", "silent_is_failure", "ignore_eos", "shared_prefix")
        checks.choice(self, "quantize", QUANTIZE_MODES)


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
    prefix_tokens: int = 0           # forced prefix tokens (mask 0) over all rows
    shared_prompt_tokens: int = 0    # prompt tokens not prefilled: a shared prefix forked instead
    n_branches: int = 0              # forks at a position > 0 (branch_policy)
    fresh_rows: int = 0              # forks at position 0: new rows from the prompt
    branch_refused: int = 0          # forks refused: no free row, unknown source, or bad position
    quantize_s: float = 0.0          # building the int8 copy (RolloutConfig.quantize); part of wall_s
    finish: dict = field(default_factory=dict)

    @property
    def sampled_tokens_per_s(self) -> float:
        return self.sampled_tokens / self.wall_s if self.wall_s else 0.0

    def as_metrics(self, prefix: str = "rollout/") -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "finish"}
        d["sampled_tokens_per_s"] = self.sampled_tokens_per_s
        d.update({f"finish/{k}": v for k, v in self.finish.items()})
        return {prefix + k: v for k, v in d.items()}



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


def _trigger(tok, model, protocol: str) -> torch.Tensor:
    vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") \
        and model.get_output_embeddings() is not None else len(tok)
    chars = "`" if protocol == "fenced" else ">"
    key = (id(tok), vocab, chars)
    if key not in _TRIGGERS:
        _TRIGGERS[key] = _trigger_table(tok, vocab, chars)
    return _TRIGGERS[key]


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


def _topk_entropy(logits: torch.Tensor, temperature: float, k: int) -> torch.Tensor:
    from .methods.arpo import topk_entropy      # ARPO's proxy; imported only when a policy asks
    return topk_entropy(logits, temperature, k)


def generate(model, tokenizer, tasks: Sequence, cfg: RolloutConfig, *, pool=None,
             prompts: Sequence[str] | None = None, group_offset: int = 0, progress: bool = False,
             prefixes: Sequence[Sequence[Prefix | None]] | None = None,
             branch_policy: BranchPolicy | None = None, max_rows: int | None = None):
    """Roll out cfg.group_size episodes per task. Returns (list[Trajectory], RolloutStats).

    prefixes: per task, G entries (branches.Prefix or None): row g of task i starts with
    prefixes[i][g] forced (mask 0); rows sharing a prompt and prefix are prefilled once.
    branch_policy: branches.BranchPolicy, asked once per decode step for Forks; max_rows: rows per
    task (>= G; default G, i.e. no room to fork). Trajectories come out per task, by sample_idx;
    a fork gets the next free sample_idx of its task and records parent / branch_pos.

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
    t0 = time.perf_counter()
    try:
        model = rollout_model(model, cfg.quantize)   # "int8": a quantised copy, rebuilt every call
        quantize_s = time.perf_counter() - t0
        ro = _Rollout(model, tokenizer, tasks, prompts, cfg, pool, group_offset, prefixes,
                      branch_policy, max_rows)
        trajs = ro.run(progress)
    finally:
        if own_pool:
            pool.close()
    stats = ro.stats
    stats.quantize_s = quantize_s
    for tr in trajs:
        tr.text = tokenizer.decode(tr.token_ids, skip_special_tokens=True)
        stats.finish[tr.finish_reason] = stats.finish.get(tr.finish_reason, 0) + 1
    stats.n_episodes = len(trajs)
    stats.wall_s = time.perf_counter() - t0
    return trajs, stats


class _Rollout:
    """One call of generate(): engine rows (M per task, the first G live), the decode loop, forks."""

    def __init__(self, model, tok, tasks, prompts, cfg: RolloutConfig, pool, group_offset: int,
                 prefixes, branch_policy, max_rows: int | None):
        self.tok, self.cfg, self.pool, self.policy = tok, cfg, pool, branch_policy
        self.stats = RolloutStats()
        G = cfg.group_size
        self.M = max_rows or G                      # rows per task: G live at the start + spares
        if self.M < G:
            raise ValueError(f"max_rows={max_rows} must be >= group_size={G}")
        if prefixes is not None and (len(prefixes) != len(tasks) or any(len(p) != G for p in prefixes)):
            raise ValueError(f"prefixes must hold {len(tasks)} lists (one per task) of {G} entries")
        self.gen = torch.Generator().manual_seed(cfg.seed) if cfg.seed is not None else None
        self.stops = stop_token_ids(tok, model)
        self.trigger = _trigger(tok, model, cfg.protocol)
        self.prompt_ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
        n_slots = self.M * len(tasks)
        capacity = max(map(len, self.prompt_ids)) + cfg.max_new_tokens + 2
        self.engine = make_engine(model, n_slots, capacity, cfg.backend, pad_id=tok.pad_token_id or 0)
        self.dev = getattr(self.engine, "device", torch.device("cpu"))
        self.rows: list[Episode | None] = [None] * n_slots
        for ti, task in enumerate(tasks):
            for g in range(G):
                traj = Trajectory(
                    task_id=task.id, group_id=group_offset + ti, sample_idx=g, prompt_ids=self.prompt_ids[ti],
                    token_ids=[], mask=[], logprobs=[], entropies=[], turn_idx=[], post_tool=[],
                    answer=task.answer, prompt_text=prompts[ti], n_turns=1)
                self.rows[ti * self.M + g] = Episode.start(traj, cfg, ti, prefixes[ti][g] if prefixes else None)
        self.ready: dict[int, torch.Tensor] = {}   # slot -> fresh logits to sample from

    # -- model forwards
    def forward(self, slots: list[int], chunks: list[list[int]]) -> None:
        """Feed chunks[i] to slot slots[i]; the logits after each last token become ready."""
        t = time.perf_counter()
        n = len(self.rows)
        if isinstance(self.engine, KVEngine) and n // 2 < len(slots) < n:
            # Most rows take part: run them all (idle rows get 0 valid tokens) so the KV engine
            # reads its cache as a view instead of gathering a copy of each participant's rows.
            full = [[] for _ in range(n)]
            for r, c in zip(slots, chunks):
                full[r] = c
            out = self._forward_rows(list(range(n)), [c or [0] for c in full], [len(c) for c in full])
            out = out[torch.tensor(slots, device=out.device)]
        else:
            out = self._forward_rows(slots, chunks, [len(c) for c in chunks])
        self.stats.forward_s += time.perf_counter() - t
        self.ready.update(zip(slots, out))

    def _forward_rows(self, slots: list[int], chunks: list[list[int]], n_valid: list[int]) -> torch.Tensor:
        width = max(map(len, chunks))
        toks = torch.full((len(chunks), width), self.tok.pad_token_id or 0, dtype=torch.long)
        for i, c in enumerate(chunks):
            toks[i, :len(c)] = torch.tensor(c)
        return self.engine.forward(torch.tensor(slots, device=self.dev), toks.to(self.dev),
                                   torch.tensor(n_valid, device=self.dev))

    def prefill(self) -> None:
        """Prefill each distinct (prompt, prefix) once and fork its cache to the rows that share it.

        With cfg.shared_prefix on the KV engine, a token prefix that several of those sequences
        share is prefilled once, in one row, and forked to the others (positions 0..n-1 hold the
        same tokens, so the same K/V); each then prefills only the rest, at positions n.. (the
        engine's row lengths give the RoPE positions and the causal mask): prefix_tree_plan. The
        recompute engine re-runs whole sequences at every call, so there is nothing to share."""
        first: dict[tuple, int] = {}
        src, dst = [], []
        for s, row in enumerate(self.rows):
            if row is None:
                continue
            key = (row.task, tuple(row.traj.token_ids))
            if key in first:
                src.append(first[key])
                dst.append(s)
            else:
                first[key] = s
        heads = list(first.values())
        seqs = [self.rows[s].traj.full_ids() for s in heads]
        if self.cfg.shared_prefix and isinstance(self.engine, KVEngine):
            fed = 0
            for feeds, forks in prefix_tree_plan(seqs):
                # a head's last feed ends its sequence: the logits it leaves ready are the right ones
                self.forward([heads[i] for i, _, _ in feeds], [seqs[i][a:b] for i, a, b in feeds])
                fed += sum(b - a for _, a, b in feeds)
                if forks:
                    i, j, n = (torch.tensor(c, device=self.dev) for c in zip(*forks))
                    self.engine.fork(torch.tensor(heads, device=self.dev)[i],
                                     torch.tensor(heads, device=self.dev)[j], n)
            self.stats.shared_prompt_tokens = sum(map(len, seqs)) - fed
        else:
            self.forward(heads, seqs)
        self.stats.prefix_tokens += sum(r.traj.prefix_len for r in self.rows if r is not None)
        if dst:
            self.engine.fork(torch.tensor(src, device=self.dev), torch.tensor(dst, device=self.dev))
            for s, d in zip(src, dst):
                self.ready[d] = self.ready[s]

    # -- the loop
    def run(self, progress: bool) -> list[Trajectory]:
        bar = _progress(sum(r is not None for r in self.rows), progress)
        self.prefill()
        while True:
            to_decode = self.sample_ready(bar)
            forced = self.collect_tools(wait=not to_decode, bar=bar)
            if to_decode:
                self.forward(to_decode, [[self.rows[s].traj.token_ids[-1]] for s in to_decode])
            if forced:
                fr = sorted(forced)
                self.forward(fr, [forced[s] for s in fr])
            if self.policy is not None:
                self.apply_forks()     # after the forwards: every row's cache holds its records
            if not self.ready and not any(r is not None and r.waiting for r in self.rows):
                break
        bar.close()
        return [r.traj for r in self.rows if r is not None]

    def sample_ready(self, bar) -> list[int]:
        """Sample one token for every slot with fresh logits; apply the episode rules. Returns the
        slots that keep decoding."""
        if not self.ready:
            return []
        idx = sorted(self.ready)
        logits = torch.stack([self.ready[s] for s in idx])
        toks, lps, ents = sample(logits, self.cfg.temperature, self.cfg.top_p, self.gen)
        self.ready = {}
        keep = []
        k_top = getattr(self.policy, "topk_logprobs", 0)     # a branch policy that reads top-k entropies
        proxy = _topk_entropy(logits, self.cfg.temperature, k_top).tolist() if k_top else None
        for j, (s, t, lp, h) in enumerate(zip(idx, toks.tolist(), lps.tolist(), ents.tolist())):
            row = self.rows[s]
            row.record(t, 1, lp, h)
            if proxy is not None:
                row.topk_entropy[len(row.traj.token_ids) - 1] = proxy[j]
            self.stats.sampled_tokens += 1
            if after_sample(row, t, self.tok, self.cfg, self.stops, self.trigger, self.pool):
                keep.append(s)
            if row.done:
                bar.update(1)
        return keep

    def collect_tools(self, wait: bool, bar) -> dict[int, list[int]]:
        """Finished tool calls -> forced observation tokens per slot (blocks for the first result
        when `wait` and no row can decode)."""
        waiting = [s for s, r in enumerate(self.rows) if r is not None and r.waiting]
        if waiting and wait:
            t = time.perf_counter()
            cf.wait([self.rows[s].future for s in waiting], return_when=cf.FIRST_COMPLETED)
            self.stats.tool_wait_s += time.perf_counter() - t
        forced = {}
        for s in waiting:
            if self.rows[s].future.done():
                obs = finish_call(self.rows[s], self.tok, self.cfg, self.stats)
                if obs:
                    forced[s] = obs
                if self.rows[s].done:
                    bar.update(1)
        return forced

    def apply_forks(self) -> None:
        """Ask the branch policy for forks; place each in a spare slot of its task. A fork copies
        the source's cache truncated to the tokens before position pos - 1 and re-feeds that one
        token, whose logits are the child's first sampling distribution: no re-prefill."""
        by_task = [[r for r in self.rows[t * self.M:(t + 1) * self.M] if r is not None]
                   for t in range(len(self.rows) // self.M)]
        free = [self.M - len(eps) for eps in by_task]
        src, dst, keep = [], [], []
        for f in self.policy(by_task, list(free)):
            parent = next((e for e in by_task[f.task] if e.traj.sample_idx == f.sample_idx), None)
            if parent is None or free[f.task] == 0 or not parent.can_fork(f.pos, self.cfg.max_new_tokens):
                self.stats.branch_refused += 1
                continue
            slot = f.task * self.M + self.M - free[f.task]
            free[f.task] -= 1
            child = parent.fork(f.pos, slot - f.task * self.M, self.cfg.max_turns)
            self.rows[slot] = child
            by_task[f.task].append(child)
            self.stats.n_branches += f.pos > 0
            self.stats.fresh_rows += f.pos == 0
            src.append(self.rows.index(parent))
            dst.append(slot)
            keep.append(len(parent.traj.prompt_ids) + f.pos - 1)
        if dst:
            self.engine.fork(torch.tensor(src, device=self.dev), torch.tensor(dst, device=self.dev),
                             torch.tensor(keep, device=self.dev))
            self.forward(dst, [[self.rows[s].traj.full_ids()[k]] for s, k in zip(dst, keep)])


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

