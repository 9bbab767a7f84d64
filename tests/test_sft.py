"""The supervised stage (sft.py; its data, sft_data.py): expert text -> masked Trajectory, masked NLL,
the loop, resume, errors."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from tao_lab import checkpoint as ckpt
from tao_lab import sft as S
from tao_lab import sft_data as D
from tao_lab.models import ModelConfig
from tao_lab.tasks import load_demos
from train_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_sft(tmp_path, **kw):
    base = dict(data="demos", model=ModelConfig(name="tiny-random", lora_r=4, lora_alpha=8), steps=4,
                batch_size=4, micro_batch_size=2, lr=1e-2, save_every=2, out_dir=str(tmp_path))
    return S.SFTConfig(**{**base, **kw})


def test_a_demonstration_trains_on_model_text_and_masks_the_tool_observation(smol_tokenizer):
    demo = load_demos(protocol="fenced")[0]
    tr = D.demo_to_trajectory(demo, smol_tokenizer)
    tok = smol_tokenizer
    trained = tok.decode([t for t, m in zip(tr.token_ids, tr.mask) if m])
    forced = tok.decode([t for t, m in zip(tr.token_ids, tr.mask) if not m])
    assert forced == "\nCode execution result: 11382\n"
    assert "print(271 * 42)" in trained and "\\boxed{11382}" in trained
    assert tr.token_ids[-1] == tok.eos_token_id and tr.mask[-1] == 1
    assert tr.n_turns == 2 and tr.n_tool_calls == 1 and tr.tool_calls[0].valid


def test_tags_demonstrations_mask_the_result_block(smol_tokenizer):
    demo = load_demos(protocol="tags")[0]
    tr = D.demo_to_trajectory(demo, smol_tokenizer)
    forced = smol_tokenizer.decode([t for t, m in zip(tr.token_ids, tr.mask) if not m])
    assert forced == "\n<result>\n11382\n</result>\n"


def test_every_bundled_demonstration_converts():
    from tao_lab.models import load_tokenizer
    tok = load_tokenizer()
    demos = load_demos()
    trajs = [D.demo_to_trajectory(d, tok) for d in demos]
    assert all(t.n_tool_calls == len(d.steps) for t, d in zip(trajs, demos))


def test_an_observation_that_differs_from_the_recorded_output_is_an_error():
    with pytest.raises(ValueError, match="tool call 0"):
        D.split_completion("x\n```python\nprint(1)\n```\nCode execution result: 2\ndone", "fenced", ["1"])


def test_without_outputs_the_observation_is_read_by_the_protocol_syntax():
    segs = D.split_completion("a\n<python>\nprint(1)\n</python>\n<result>\n1\n</result>\nb", "tags")
    assert [(s.text, s.forced) for s in segs] == [
        ("a\n<python>\nprint(1)\n</python>", False), ("\n<result>\n1\n</result>\n", True), ("b", False)]


def test_masked_positions_get_exactly_zero_gradient():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.float32)
    loss, n = S.masked_nll(logits, targets, mask)
    loss.backward()
    assert n == 5
    assert torch.all(logits.grad[mask == 0] == 0) and torch.all(logits.grad[mask == 1].abs().sum(-1) > 0)


def test_changing_a_masked_tokens_target_leaves_the_loss_unchanged():
    logits = torch.randn(1, 4, 7)
    targets = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    other = targets.clone()
    other[0, 1], other[0, 3] = 6, 0
    assert S.masked_nll(logits, targets, mask)[0] == S.masked_nll(logits, other, mask)[0]


def test_masked_nll_equals_cross_entropy_token_mean_over_the_mask():
    logits, targets = torch.randn(3, 6, 9), torch.randint(0, 9, (3, 6))
    mask = (torch.rand(3, 6) > 0.4).float()
    s, n = S.masked_nll(logits, targets, mask)
    want = torch.nn.functional.cross_entropy(logits[mask > 0], targets[mask > 0])
    assert torch.allclose(s / n, want)


def test_through_the_model_prompt_and_tool_output_logits_get_no_gradient(tiny, smol_tokenizer):
    from tao_lab.update import collate
    model, tok = tiny
    tr = D.demo_to_trajectory(load_demos(protocol="fenced")[0], tok)
    mb = collate([tr], [1.0], tok.pad_token_id, "cpu")
    logits = model(input_ids=mb.input_ids, logits_to_keep=mb.input_ids.shape[1] - mb.start).logits[:, :-1]
    logits.retain_grad()
    S.masked_nll(logits, mb.targets, mb.mask)[0].backward()
    g = logits.grad.abs().sum(-1)[0]
    assert torch.all(g[mb.mask[0] == 0] == 0) and torch.all(g[mb.mask[0] == 1] > 0)


def test_a_few_tiny_steps_lower_the_nll_of_the_demonstrations(tmp_path):
    run = S.SFTRun(tiny_sft(tmp_path, steps=6))
    before = run.nll()
    logs = run.train()
    assert run.nll() < before - 0.1      # 10.79 -> 10.59 measured (random tiny model, r=4)
    m = run.store.metrics()
    assert list(m["step"]) == [1, 2, 3, 4, 5, 6] and {"loss", "tokens", "lr"} <= set(m.columns)
    assert (m["tokens"] > 0).all() and logs[-1]["loss"] < logs[0]["loss"]
    assert json.loads((tmp_path / "config.json").read_text())["kind"] == "sft"
    assert len(run.store.read_step(0)) == len(load_demos(protocol="fenced"))


def test_a_resumed_sft_run_has_the_uninterrupted_runs_losses(tmp_path):
    straight = S.SFTRun(tiny_sft(tmp_path / "a"))
    straight.train()
    part = S.SFTRun(tiny_sft(tmp_path / "b"))
    part.train(steps=2)
    resumed = S.SFTRun.resume(tmp_path / "b")
    assert resumed.step_no == 2
    resumed.train()
    want = list(straight.store.metrics()["loss"])
    got = list(S.RunStore(tmp_path / "b").metrics()["loss"])
    assert got == want


def test_a_signal_during_a_steps_bookkeeping_waits_until_the_step_is_recorded(tmp_path):
    run = S.SFTRun(tiny_sft(tmp_path, steps=4))
    record, before = run.store.append_metrics, signal.getsignal(signal.SIGTERM)

    def record_after_a_signal(m):
        os.kill(os.getpid(), signal.SIGTERM)       # arrives after the optimizer step, before the metrics
        record(m)

    run.store.append_metrics = record_after_a_signal
    with pytest.raises(KeyboardInterrupt):
        run.train()
    assert run.step_no == 1 and list(run.store.metrics()["step"]) == [1]   # the step finished, then stopped
    assert ckpt.latest(tmp_path) == 1                                       # train() saved it
    assert signal.getsignal(signal.SIGTERM) is before                       # handlers given back


def test_an_sft_adapter_feeds_an_rl_trainer(tmp_path):
    from tao_lab import checkpoint as ckpt
    from tao_lab.trainer import Trainer
    from train_helpers import alternating_reward, tiny_cfg
    run = S.SFTRun(tiny_sft(tmp_path / "sft", steps=2))
    run.train()
    cfg = tiny_cfg("run.steps=1", "model.lora_r=4", "model.lora_alpha=8")
    model, tok = S.load_sft_policy(tmp_path / "sft", cfg.model)
    sft_w = {n: p for n, p in run.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(p, sft_w[n]) for n, p in model.named_parameters() if p.requires_grad)
    with Trainer(cfg, tmp_path / "rl", model=model, tok=tok, reward_fn=alternating_reward) as tr:
        assert not tr.train()[0].skipped
    assert ckpt.latest(tmp_path / "rl") == 1


def test_an_empty_example_set_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        S.SFTRun(tiny_sft(tmp_path), examples=[])


def test_examples_without_trainable_tokens_are_a_clear_error(tmp_path, smol_tokenizer):
    tr = D.demo_to_trajectory(load_demos(protocol="fenced")[0], smol_tokenizer)
    tr.mask = [0] * len(tr.mask)
    with pytest.raises(ValueError, match="trainable"):
        S.SFTRun(tiny_sft(tmp_path), examples=[tr])


def test_a_max_len_below_every_example_says_what_was_dropped(tmp_path, smol_tokenizer):
    with pytest.raises(ValueError, match="too_long"):
        D.load_examples(tiny_sft(tmp_path, max_len=10), smol_tokenizer)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="micro_batch_size"):
        S.SFTConfig(batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="select"):
        S.SFTConfig(select="best")


def test_rejection_sampling_keeps_only_verified_correct_trajectories(tmp_path, smol_tokenizer):
    demos = load_demos(protocol="fenced")[:4]
    trajs = [D.demo_to_trajectory(d, smol_tokenizer) for d in demos]
    trajs[1].text = trajs[1].text.replace("\\boxed{", "\\boxed{9")       # now wrong
    for t in trajs:
        t.reward = 1.0                                                  # a shaped reward would lie
    S.RunStore(tmp_path).write_step(1, trajs)
    kept, counts = D.select_from_run(tmp_path, [1], "correct")
    assert [t.task_id for t in kept] == [demos[i].id for i in (0, 2, 3)]
    assert counts["rejected"] == 1 and counts["correct_verified"] == 4


@pytest.mark.smoke
def test_a_few_steps_on_the_embedded_model_lower_the_demonstrations_nll(tmp_path):
    cfg = S.SFTConfig(data="demos", steps=3, batch_size=4, micro_batch_size=4, lr=1e-3, out_dir=str(tmp_path),
                      model=ModelConfig(lora_r=8, lora_alpha=16))
    run = S.SFTRun(cfg)
    before = run.nll()
    run.train()
    assert run.nll() < before


def test_the_cli_trains_and_resumes_an_sft_run(tmp_path):
    from tao_lab.cli import main
    out = str(tmp_path / "run")
    assert main(["sft", "--preset", "test_tiny", "--steps", "2", "--set", "lr=1e-2", "--out", out, "--quiet-bar"]) == 0
    assert main(["sft", "--resume", out, "--steps", "3", "--quiet-bar"]) == 0
    assert list(S.RunStore(out).metrics()["step"]) == [1, 2, 3]
    assert main(["sft", "--preset", "test_tiny", "--set", "lr=-1", "--out", str(tmp_path / "bad")]) == 2


def test_model_init_adapter_starts_a_train_run_from_the_sft_adapter_and_resume_keeps_its_own(tmp_path):
    from tao_lab.trainer import Trainer
    from train_helpers import alternating_reward, tiny_cfg
    run = S.SFTRun(tiny_sft(tmp_path / "sft", steps=2))
    run.train()
    sft_w = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    cfg = tiny_cfg("run.steps=1", "model.lora_r=4", "model.lora_alpha=8", f"model.init_adapter={tmp_path / 'sft'}")
    with Trainer(cfg, tmp_path / "rl", reward_fn=alternating_reward) as tr:
        assert all(torch.equal(p, sft_w[n]) for n, p in tr.model.named_parameters() if p.requires_grad)
        tr.train()
        trained = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    with Trainer.resume(tmp_path / "rl", steps=1, reward_fn=alternating_reward) as again:
        assert all(torch.equal(p, trained[n]) for n, p in again.model.named_parameters() if p.requires_grad)
    part = S.SFTRun(tiny_sft(tmp_path / "part", steps=4, save_every=1))
    part.train(steps=1)                                            # an SFT run that has not finished
    with pytest.raises(ValueError, match="step 1 of 4"):
        Trainer(tiny_cfg("model.lora_r=4", "model.lora_alpha=8", f"model.init_adapter={tmp_path / 'part'}"), tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="init_adapter"):
        Trainer(tiny_cfg("model.init_adapter=" + str(tmp_path / "nowhere")), tmp_path / "x")


def test_the_experts_source_builds_verified_expert_trajectories_in_the_real_sandbox(smol_tokenizer):
    cfg = S.SFTConfig(data="experts:arith-L1:6", template="few_shot")
    examples, counts = D.load_examples(cfg, smol_tokenizer)
    assert counts["read"] == 6 and counts["examples"] == len(examples) >= 5
    t = examples[0]
    assert t.tool_calls and sum(t.mask) < len(t.mask)            # the observation is forced (mask 0)
    assert "\\boxed{" + t.answer + "}" in smol_tokenizer.decode(t.token_ids)
    with pytest.raises(ValueError, match="experts:TASKS"):
        D.load_examples(S.SFTConfig(data="experts:arith-L1:x"), smol_tokenizer)
