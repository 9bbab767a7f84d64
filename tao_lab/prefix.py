"""Shared-prefix prefill: which token prefixes of a batch of prompts to prefill once and fork.

A rollout step prefills every distinct prompt before it samples. Few-shot prompts repeat a lot of
tokens: all of them open with the same system text, and tasks of one kind also carry the same
demonstrations (tasks.select_demos picks them per task kind). Prefilling that repeated part once and
forking its KV cache to the rows that share it (engine.KVEngine.fork; positions 0..n-1 hold the same
tokens, so the same K/V) leaves each prompt to prefill only what is its own.

It is a trie, not one global prefix: the prefix all prompts share is usually just the system text,
while subsets share much more (a demonstration). `prefix_tree_plan` walks the token trie of the
prompts top-down and turns it into stages of batched feeds and forks, so every shared prefix, at
every depth, is fed once. Token ids, never text: two prompts that share text can tokenise
differently at the boundary. Used by rollout._Rollout.prefill under RolloutConfig.shared_prefix.
"""

from __future__ import annotations

from typing import Sequence


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token-id prefix all seqs share, capped one short of the shortest
    sequence: every sequence keeps >= 1 token of its own, whose logits start its sampling. Token
    ids, not text: prompts that share text can still tokenise differently at the boundary."""
    n = min(map(len, seqs)) - 1
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != seqs[0][i]), n)
    return max(n, 0)


Stage = tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]


def prefix_tree_plan(seqs: Sequence[Sequence[int]]) -> list[Stage]:
    """Prefill stages that feed every token prefix shared by several seqs only once.

    Walks the token trie of seqs top-down. Each stage is (feeds, forks): feeds (i, a, b) append
    seqs[i][a:b] to row i (one batched forward per stage), then forks (i, j, n) copy row i's first
    n positions to row j. A group of seqs that share a prefix beyond what its rows hold is fed that
    prefix in its first row and forked to the others, then splits by the next token; a group of one
    is fed its remainder. Every seq's last feed ends at its last token (those logits start its
    sampling), and the prefixes stop short of it (common_prefix_len). Few-shot prompts share the
    system text, and tasks of one kind also share their demonstrations (tasks.select_demos).
    """
    stages, groups = [], [(list(range(len(seqs))), 0)]      # (members, tokens their rows hold)
    while groups:
        feeds, forks, nxt = [], [], []
        for members, done in groups:
            if len(members) == 1:
                feeds.append((members[0], done, len(seqs[members[0]])))
                continue
            n = done + common_prefix_len([seqs[i][done:] for i in members])
            if n > done:
                feeds.append((members[0], done, n))
                forks += [(members[0], j, n) for j in members[1:]]
            by_next: dict = {}
            for i in members:   # a seq that ends at n + 1 is a leaf of its own (an exact duplicate too)
                by_next.setdefault(seqs[i][n] if len(seqs[i]) > n + 1 else ("end", i), []).append(i)
            nxt += [(m, n) for m in by_next.values()]
        if feeds:                       # (a group with nothing in common only splits)
            stages.append((feeds, forks))
        groups = nxt
    return stages
