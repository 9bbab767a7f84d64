"""Language-model forward backends for the rollout: a fast KV-cache engine and a slow reference.

The rollout (rollout.py) owns the episode logic; this file only answers "given these rows and these
new tokens, append them and give me the next-token logits". Two backends share one interface:

`KVEngine` (Llama-family decoders: Llama, SmolLM, Qwen2, Qwen3, Mistral without sliding windows)
  - one preallocated cache per layer, K/V of shape (B, kvH, T_cap, D), and a length per row; every
    row's tokens sit contiguously from position 0, so a row's attention mask is just `j <= pos`.
    Nothing is concatenated per step (transformers' DynamicCache grows by torch.cat, which was ~59%
    of a decode step at batch 32 on this machine, DESIGN.md §7), and attention reads the cache only
    up to the longest live row, not its full capacity.
  - rows advance independently: a decode step feeds one token to every row; a tool observation is
    fed to just the rows that have one, as one multi-token chunk (forced tokens, never sampled).
  - `fork` copies a row's cache to other rows, so each distinct prompt is prefilled once and shared
    by its G samples; with `lengths` it keeps only a leading part (a branch at an earlier position).
  - it calls the model's own submodules (embeddings, q/k/v/o projections, norms, MLP, rotary
    embedding, lm_head), so LoRA (peft) and 4-bit (bitsandbytes) layers work unchanged.
`RecomputeEngine` (any causal LM with `model(input_ids, attention_mask).logits`)
  - no cache: re-runs the whole sequence every step. Slow and simple; it is the reference the fast
    engine is tested against, the backend for unsupported architectures, and what the scripted fake
    policy in the tests plugs into.

Not covered: sliding-window attention beyond the window, encoder-decoder models, multi-GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUPPORTED_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def _decoder(model):
    """(decoder stack, lm_head) of a causal LM, looking through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head, base.config


def kv_supported(model) -> bool:
    try:
        _, _, config = _decoder(model)
    except AttributeError:
        return False
    sliding = getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None)
    return getattr(config, "model_type", None) in SUPPORTED_TYPES and not sliding


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVEngine:
    """Preallocated per-row KV cache over a Llama-family decoder."""

    def __init__(self, model, n_rows: int, capacity: int):
        self.model = model
        self.decoder, self.lm_head, config = _decoder(model)
        self.layers = list(self.decoder.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.scaling = attn.scaling
        p = next(self.lm_head.parameters())
        self.device = p.device
        self.dtype = torch.float32 if p.dtype not in (torch.float16, torch.bfloat16) else p.dtype
        self.capacity = capacity
        # one spare position past the capacity takes the K/V of padding tokens and is never read
        shape = (n_rows, self.n_kv, capacity + 1, self.head_dim)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.lengths = torch.zeros(n_rows, dtype=torch.long, device=self.device)

    @torch.no_grad()
    def forward(self, rows: torch.Tensor, tokens: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
        """Append tokens to rows and return the logits after each row's last valid token.

        rows: (R,) row indices; tokens: (R, n) ids, right-padded; n_valid: (R,) real tokens per row.
        Returns (R, V) float32 logits. Rows may start at different lengths; padding tokens write
        their K/V to the spare position `capacity`, never read, so a short chunk beside a long one
        needs no room past its row's end.
        """
        R, n = tokens.shape
        start = self.lengths[rows]                                     # (R,)
        pos = start[:, None] + torch.arange(n, device=self.device)     # (R, n)
        end = start + n_valid                                          # (R,)
        if int(end.max()) > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded; raise max_new_tokens slack")
        slot = torch.where(pos < end[:, None], pos, self.capacity)     # (R, n) where K/V are written
        kv_len = int(end.max())
        all_rows = R == self.lengths.numel() and bool((rows == torch.arange(R, device=self.device)).all())
        # attention mask (R, 1, n, kv_len): key j visible to the query at position p iff j <= p
        mask = torch.arange(kv_len, device=self.device)[None, None, None, :] <= pos[:, None, :, None]

        h = self.decoder.embed_tokens(tokens)                          # (R, n, C)
        cos, sin = self.decoder.rotary_emb(h, position_ids=pos)        # (R, n, D)
        cos, sin = cos[:, None].to(self.dtype), sin[:, None].to(self.dtype)
        r_idx = rows[:, None].expand(R, n)
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(R, n, self.n_heads, self.head_dim)
            k = attn.k_proj(x).view(R, n, self.n_kv, self.head_dim)
            v = attn.v_proj(x).view(R, n, self.n_kv, self.head_dim)
            if hasattr(attn, "q_norm"):                                # Qwen3 normalises per head
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (R, H, n, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            K, V = self.k[li], self.v[li]
            K[r_idx, :, slot] = k.transpose(1, 2).to(self.dtype)     # (R, n, kvH, D) into the cache
            V[r_idx, :, slot] = v.transpose(1, 2).to(self.dtype)
            if all_rows:   # decode over the whole batch: a view, no copy
                Kr, Vr = K[:, :, :kv_len], V[:, :, :kv_len]
            else:          # a subset (prefill, tool output): gather just those rows
                Kr, Vr = K[rows, :, :kv_len], V[rows, :, :kv_len]
            o = F.scaled_dot_product_attention(q.to(self.dtype), Kr, Vr, attn_mask=mask,
                                               scale=self.scaling, enable_gqa=self.n_kv != self.n_heads)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(R, n, -1).to(h.dtype))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        last = h[torch.arange(R, device=self.device), n_valid - 1]     # (R, C)
        self.lengths[rows] = start + n_valid
        return self.lm_head(self.decoder.norm(last)).float()

    def fork(self, src: torch.Tensor, dst: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Copy the cache of row src[i] into row dst[i] (shares a prefilled prompt, or branches a
        live row). lengths: (R,) keep only the first lengths[i] positions (fork at an earlier
        position = copy then truncate; no re-prefill). Default: the source's whole length."""
        keep = self.lengths[src] if lengths is None else lengths.to(self.lengths)
        if bool((keep > self.lengths[src]).any()):
            raise ValueError("fork: a kept length exceeds the source row's length")
        n = int(keep.max())
        for K, V in zip(self.k, self.v):
            K[dst, :, :n] = K[src, :, :n]
            V[dst, :, :n] = V[src, :, :n]
        self.lengths[dst] = keep



class RecomputeEngine:
    """Reference backend: no cache, the full sequence through `model(...)` at every call."""

    def __init__(self, model, n_rows: int, capacity: int, pad_id: int = 0):
        self.model = model
        self.capacity = capacity
        self.pad_id = pad_id
        self.seqs: list[list[int]] = [[] for _ in range(n_rows)]
        try:
            self.device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            self.device = torch.device("cpu")

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(s) for s in self.seqs], dtype=torch.long)

    @torch.no_grad()
    def forward(self, rows: torch.Tensor, tokens: torch.Tensor, n_valid: torch.Tensor) -> torch.Tensor:
        rows_l = rows.tolist()
        for r, toks, nv in zip(rows_l, tokens.tolist(), n_valid.tolist()):
            self.seqs[r].extend(toks[:nv])
            if len(self.seqs[r]) > self.capacity:
                raise RuntimeError(f"sequence longer than capacity {self.capacity}")
        lens = [len(self.seqs[r]) for r in rows_l]
        T = max(lens)
        ids = torch.full((len(rows_l), T), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows_l), T), dtype=torch.long)
        for i, r in enumerate(rows_l):           # right padding: positions stay 0..len-1
            ids[i, :lens[i]] = torch.tensor(self.seqs[r])
            att[i, :lens[i]] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits
        return logits[torch.arange(len(rows_l)), torch.tensor(lens) - 1].float()

    def fork(self, src: torch.Tensor, dst: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        keep = [None] * len(src) if lengths is None else lengths.tolist()
        for s, d, n in zip(src.tolist(), dst.tolist(), keep):
            if n is not None and n > len(self.seqs[s]):
                raise ValueError("fork: a kept length exceeds the source row's length")
            self.seqs[d] = list(self.seqs[s][:n])



def make_engine(model, n_rows: int, capacity: int, backend: str = "auto", pad_id: int = 0):
    """'auto' picks the KV engine when the architecture is supported, else the recompute one."""
    if backend == "auto":
        backend = "kv" if kv_supported(model) else "recompute"
    if backend == "kv":
        if not kv_supported(model):
            raise ValueError(f"backend='kv' supports model types {SUPPORTED_TYPES} without sliding "
                             "windows; use backend='recompute' (slow, any causal LM)")
        return KVEngine(model, n_rows, capacity)
    if backend == "recompute":
        return RecomputeEngine(model, n_rows, capacity, pad_id=pad_id)
    raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'kv' or 'recompute'")
