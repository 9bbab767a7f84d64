"""Shared fixtures: the embedded model (smoke tier) and tiny random models (fast tier)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakes.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, fp32, no adapter, eval mode."""
    from tao_lab.models import load_policy

    model, tok = load_policy("smollm2-135m", lora=False)
    return model.eval(), tok


@pytest.fixture(scope="session")
def smol_tokenizer():
    from tao_lab.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture()
def tiny(smol_tokenizer):
    """(tiny random Llama, the embedded tokenizer): real architecture, seconds to run."""
    from tao_lab.models import tiny_model

    return tiny_model(vocab_size=len(smol_tokenizer), seed=0), smol_tokenizer


@pytest.fixture()
def gen():
    return torch.Generator().manual_seed(0)
