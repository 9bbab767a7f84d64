"""A scripted policy that is also a real, differentiable model: a tiny random Llama + LoRA whose
logits get a large bias toward the scripted next byte.

Rollouts follow the script (so tool calls really happen, valid or failing, in the real sandbox),
while every log-prob and entropy of the training forward comes from the Llama's real logits plus
the bias, and carries gradient into the LoRA weights.

Script: {question: {first byte: [turn 0, turn 1, ...]}}. At the first completion token the bias
is put on every variant's first byte equally, so the sampler picks a variant at random (a group
gets different episodes); from then on the variant is known from the completion's first byte.
"""

from __future__ import annotations

import torch

from fakes import ByteTokenizer

ASSISTANT = "<assistant>\n"
OBS = ("Code execution result:", "\n")   # fenced protocol (toolcall.format_observation)


class ChatByteTokenizer(ByteTokenizer):
    """ByteTokenizer with a plain chat template, so tasks.render_prompt works on it."""

    chat_template = "byte"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages)
        return text + (ASSISTANT if add_generation_prompt else "")


class BiasedScriptPolicy(torch.nn.Module):
    """inner (a peft LoRA model over ChatByteTokenizer's 258 ids) + `margin` on the scripted byte."""

    def __init__(self, inner, tok: ChatByteTokenizer, scripts: dict[str, dict[str, list[str]]],
                 margin: float = 20.0):
        super().__init__()
        self.inner, self.tok, self.scripts, self.margin = inner, tok, scripts, margin

    def disable_adapter(self):
        return self.inner.disable_adapter()

    def save_pretrained(self, path, **kw):
        return self.inner.save_pretrained(path, **kw)

    def next_bytes(self, text: str) -> list[int]:
        """The scripted next token(s) after `text` ([] inside the prompt)."""
        if ASSISTANT not in text:
            return []
        head, done = text.split(ASSISTANT, 1)
        variants = next((v for q, v in self.scripts.items() if q in head), None)
        if variants is None:
            return []
        if not done:
            return [ord(k) for k in variants]
        turns = variants.get(done[0])
        if turns is None:
            return [self.tok.eos_token_id]
        k = done.count(OBS[0])
        if k >= len(turns):
            return [self.tok.eos_token_id]
        turn = turns[k].encode()
        if k:
            # after the forced observation (which ends with a newline; turns start with a space):
            # the written part of turn k is the longest prefix of it that the text ends with
            rest = done[done.rfind(OBS[0]):].encode()
            j = max(j for j in range(len(turn) + 1) if rest.endswith(turn[:j]))
        else:
            j = len(done.encode())
        return [self.tok.eos_token_id] if j >= len(turn) else [turn[j]]

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kw):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kw)
        logits = out.logits                                  # (B, K, V)
        B, T = input_ids.shape
        K = logits.shape[1]
        lens = attention_mask.sum(1).tolist() if attention_mask is not None else [T] * B
        bias = torch.zeros_like(logits)
        for b in range(B):
            # sampling (no grad) only reads the last real position; training reads every kept one
            first = T - K if torch.is_grad_enabled() else lens[b] - 1
            for pos in range(max(first, T - K), lens[b]):
                for i in self.next_bytes(self.tok.decode(input_ids[b, :pos + 1].tolist(), skip_special_tokens=True)):
                    bias[b, pos - (T - K), i] = self.margin
        out.logits = logits + bias
        return out
