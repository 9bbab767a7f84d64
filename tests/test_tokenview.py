"""Token views: forced spans are one block, and a group shares one colour scale."""

from __future__ import annotations

import re

import pytest

from tao_lab.records import Trajectory
from tao_lab.tokenview import group_view_html, token_view_html


def episode(tok, model_text: str, observation: str, entropy: float, sample_idx: int = 0, correct=True) -> Trajectory:
    a = tok.encode(model_text, add_special_tokens=False)
    o = tok.encode(observation, add_special_tokens=False)
    n = len(a) + len(o)
    return Trajectory(task_id="t", group_id=0, prompt_ids=[1], token_ids=a + o, mask=[1] * len(a) + [0] * len(o),
                      logprobs=[-0.5] * len(a) + [0.0] * len(o), entropies=[entropy] * len(a) + [0.0] * len(o),
                      turn_idx=[0] * n, post_tool=[0] * n, reward=float(correct), correct=correct,
                      sample_idx=sample_idx)


def test_a_tool_output_is_one_forced_block_that_reads_as_its_text(smol_tokenizer):
    t = episode(smol_tokenizer, "```python\nprint(96*46)\n```", "\nCode execution result: 4416\n", 1.0)
    assert sum(1 for m in t.mask if not m) > 3           # the observation is several tokens
    page = token_view_html(t, smol_tokenizer)
    blocks = re.findall(r'<span class="f"[^>]*>(.*?)</span>', page, flags=re.S)
    assert len(blocks) == 1 and "4416" in blocks[0]


def test_a_group_shares_one_colour_scale_and_shows_verdict_reward_and_advantage(smol_tokenizer):
    g = [episode(smol_tokenizer, "low", "", 0.5, 0, True), episode(smol_tokenizer, "high", "", 2.0, 1, False)]
    page = group_view_html(g, smol_tokenizer, advantages=[0.7, -0.7])
    assert "2.00 (one scale for the group)" in page
    assert page.count('class="cell"') == 2 and "A = +0.70" in page and "A = -0.70" in page
    assert "correct" in page and "wrong" in page
    # the low-entropy episode is pale on the shared scale; alone, on its own scale, it would be dark red
    low_cell = page.split('class="cell"')[1]
    assert "rgb(200,0,0)" not in low_cell and "rgb(200,0,0)" in token_view_html(g[0], smol_tokenizer)
    with pytest.raises(ValueError, match="1 advantages for 2"):
        group_view_html(g, smol_tokenizer, advantages=[0.1])
