"""The KV-cache engine must give the same next-token logits as a plain forward pass."""

import pytest
import torch

from tao_lab.engine import KVEngine, RecomputeEngine, kv_supported, make_engine


def _reference(model, seq):
    with torch.no_grad():
        return model(input_ids=torch.tensor([seq])).logits[0, -1]


def _drive(engine, model, tol):
    """Prefill ragged prompts, decode, feed a multi-token chunk to one row, fork; compare each time."""
    g = torch.Generator().manual_seed(1)
    V = model.config.vocab_size
    seqs = [torch.randint(0, V, (n,), generator=g).tolist() for n in (7, 12, 5)]
    toks = torch.zeros(3, 12, dtype=torch.long)
    for i, s in enumerate(seqs):
        toks[i, :len(s)] = torch.tensor(s)
    out = engine.forward(torch.arange(3), toks, torch.tensor([7, 12, 5]))
    for i in range(3):
        assert torch.allclose(out[i], _reference(model, seqs[i]), atol=tol)
    for _ in range(3):
        nxt = torch.randint(0, V, (3,), generator=g)
        for i in range(3):
            seqs[i].append(int(nxt[i]))
        out = engine.forward(torch.arange(3), nxt[:, None], torch.ones(3, dtype=torch.long))
        for i in range(3):
            assert torch.allclose(out[i], _reference(model, seqs[i]), atol=tol)
    chunk = torch.randint(0, V, (1, 5), generator=g)
    seqs[1] += chunk[0].tolist()
    out = engine.forward(torch.tensor([1]), chunk, torch.tensor([5]))
    assert torch.allclose(out[0], _reference(model, seqs[1]), atol=tol)
    engine.fork(torch.tensor([1]), torch.tensor([2]))
    seqs[2] = list(seqs[1])
    nxt = torch.randint(0, V, (3,), generator=g)
    for i in range(3):
        seqs[i].append(int(nxt[i]))
    out = engine.forward(torch.arange(3), nxt[:, None], torch.ones(3, dtype=torch.long))
    for i in range(3):
        assert torch.allclose(out[i], _reference(model, seqs[i]), atol=tol)


def test_kv_engine_matches_plain_forward_on_tiny_model(tiny):
    model, _ = tiny
    _drive(KVEngine(model, 3, 64), model, 1e-4)


def test_recompute_engine_matches_plain_forward_on_tiny_model(tiny):
    model, _ = tiny
    _drive(RecomputeEngine(model, 3, 64), model, 1e-5)


def test_kv_engine_matches_plain_forward_through_lora_adapter(tiny):
    from tao_lab.models import ModelConfig, add_lora

    model, _ = tiny
    peft_model = add_lora(model, ModelConfig(lora_r=4, seed=3))
    for p in peft_model.parameters():   # make the adapter non-trivial (B starts at zero)
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    assert kv_supported(peft_model)
    _drive(KVEngine(peft_model, 3, 64), peft_model, 1e-4)


@pytest.mark.parametrize("engine_cls", [KVEngine, RecomputeEngine])
def test_a_prefix_prefilled_once_and_forked_gives_the_same_logits(tiny, engine_cls):
    """The rollout's shared prefix: prefill L tokens in row 0, fork them (lengths=L) to rows 1-2,
    then feed each row its own ragged suffix (right-padded) at positions L..: logits as if each
    whole sequence had been fed at once."""
    model, _ = tiny
    g = torch.Generator().manual_seed(2)
    V = model.config.vocab_size
    common = torch.randint(0, V, (9,), generator=g).tolist()
    suffixes = [torch.randint(0, V, (n,), generator=g).tolist() for n in (1, 4, 2)]
    eng = engine_cls(model, 3, 32)
    eng.forward(torch.tensor([0]), torch.tensor([common]), torch.tensor([9]))
    eng.fork(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([9, 9]))
    toks = torch.zeros(3, 4, dtype=torch.long)
    for i, s in enumerate(suffixes):
        toks[i, :len(s)] = torch.tensor(s)
    out = eng.forward(torch.arange(3), toks, torch.tensor([1, 4, 2]))
    assert eng.lengths.tolist() == [10, 13, 11]
    for i in range(3):
        assert torch.allclose(out[i], _reference(model, common + suffixes[i]), atol=1e-4)


def test_kv_engine_feeds_a_short_chunk_beside_a_long_one_at_the_end_of_its_cache(tiny):
    """Row 0 is one token short of full; row 1 gets 8 tokens in the same call, so row 0's padding
    reaches past the capacity: it goes to the spare position, and both rows' logits stay exact."""
    model, _ = tiny
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, model.config.vocab_size, (n,), generator=g).tolist() for n in (15, 10)]
    eng = KVEngine(model, 2, 16)
    eng.forward(torch.tensor([0]), torch.tensor([seqs[0][:14]]), torch.tensor([14]))
    eng.forward(torch.tensor([1]), torch.tensor([seqs[1][:2]]), torch.tensor([2]))
    toks = torch.zeros(2, 8, dtype=torch.long)
    toks[0, 0], toks[1] = seqs[0][14], torch.tensor(seqs[1][2:])
    out = eng.forward(torch.arange(2), toks, torch.tensor([1, 8]))
    for i in range(2):
        assert torch.allclose(out[i], _reference(model, seqs[i]), atol=1e-4)


def test_kv_engine_refuses_to_overflow_its_capacity(tiny):
    model, _ = tiny
    eng = KVEngine(model, 1, 4)
    with pytest.raises(RuntimeError, match="capacity"):
        eng.forward(torch.tensor([0]), torch.zeros(1, 6, dtype=torch.long), torch.tensor([6]))


def test_make_engine_names_the_backends_on_a_bad_choice(tiny):
    with pytest.raises(ValueError, match="recompute"):
        make_engine(tiny[0], 1, 8, backend="vllm")


@pytest.mark.smoke
def test_kv_engine_matches_plain_forward_on_embedded_model(smol):
    model, _ = smol
    _drive(KVEngine(model, 3, 64), model, 1e-3)
