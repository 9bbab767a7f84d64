"""What the trainer and checkpoint tests share: a reward a random tiny model can follow, the tiny
config, a snapshot of the adapter, and one torch thread."""

from __future__ import annotations

import pytest
import torch

from tao_lab.presets import make_config


def alternating_reward(trajs, step):
    """Every group has one rewarded and one unrewarded member (never degenerate), so every step has
    non-zero advantages whatever the model writes."""
    r = [float(t.sample_idx % 2) for t in trajs]
    for t, x in zip(trajs, r):
        t.reward = x
    return r, {"reward/mean": sum(r) / len(r)}


def tiny_cfg(*extra, method="tao"):
    # a random model always hits the token budget, so the overlong rule would drop every group
    return make_config("test_tiny", method, ["filter.rules=filter_b", *extra])


def adapter(model):
    """A detached copy of the trainable (adapter) parameters, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and lose a lot when the 2 cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pool():
    """One warm sandbox pool for a module's trainers (Trainer(pool=...)): each Trainer would start its own."""
    from tao_lab.sandbox import SandboxConfig, SandboxPool

    p = SandboxPool(config=SandboxConfig())
    yield p
    p.close()
