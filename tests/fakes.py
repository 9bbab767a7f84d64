"""Test doubles for rollout logic: a byte-level tokenizer and a scripted policy.

These exist *in addition to* the tests on real models (tiny random Llama, embedded SmolLM2): they
let a test decide exactly what the "model" writes, so every episode exit can be driven on purpose.
"""

from __future__ import annotations

import torch


class ByteTokenizer:
    """ids 0-255 are bytes; 256 = end of sequence; 257 = padding."""

    eos_token_id = 256
    pad_token_id = 257
    eos_token = "<eos>"

    def __len__(self) -> int:
        return 258

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        data = bytes(i for i in ids if i < 256)
        text = data.decode("utf-8", errors="replace")
        if not skip_special_tokens and any(i == 256 for i in ids):
            text += self.eos_token
        return text


class ScriptedPolicy(torch.nn.Module):
    """Writes a fixed script, one byte per step, whatever it is sampled at (logit margin 50).

    scripts: {prompt text: [turn 0 text, turn 1 text, ...]}. The policy finds its place from the
    text it is given: which prompt, how many tool observations came back, how much of the current
    turn is written. After the last turn it emits end-of-sequence.
    """

    def __init__(self, tokenizer: ByteTokenizer, scripts: dict[str, list[str]], protocol: str = "fenced"):
        super().__init__()
        self.tok, self.scripts, self.protocol = tokenizer, scripts, protocol
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def _next(self, text: str) -> int:
        prompt = next(p for p in self.scripts if text.startswith(p))
        done = text[len(prompt):]
        marker, end = ("Code execution result:", "\n") if self.protocol == "fenced" else ("<result>", "</result>\n")
        k = done.count(marker)
        if k:
            cut = done.rfind(marker)
            done = done[done.index(end, cut + len(marker)) + len(end):]
        turns = self.scripts[prompt]
        if k >= len(turns) or len(done) >= len(turns[k]):
            return self.tok.eos_token_id
        return turns[k].encode()[len(done.encode())]

    def forward(self, input_ids, attention_mask=None, **_):
        self.calls += 1
        B, T = input_ids.shape
        logits = torch.zeros(B, T, len(self.tok))
        lens = attention_mask.sum(1) if attention_mask is not None else torch.full((B,), T)
        for b in range(B):
            text = self.tok.decode(input_ids[b, :lens[b]].tolist(), skip_special_tokens=True)
            logits[b, lens[b] - 1, self._next(text)] = 50.0
        return type("Out", (), {"logits": logits})()
