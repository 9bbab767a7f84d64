"""The training loop and the update stage: steps, accumulation, prompt sharing, configs and overrides,
QLoRA on CPU, CLI, one real step of the embedded model."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from tao_lab import train_config as C
from tao_lab import trainer as T
from tao_lab import update as U
from tao_lab.hooks import seeded_order
from tao_lab.models import can_merge
from tao_lab.optim import OptimConfig, make_optimizer
from tao_lab.presets import apply_overrides, make_config
from tao_lab.records import RunStore
from train_helpers import adapter, alternating_reward, one_thread, tiny_cfg  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two steps of test_tiny with the parity reward; (trainer, logs, adapter before)."""
    run = tmp_path_factory.mktemp("tiny_run")
    tr = T.Trainer(tiny_cfg("run.steps=2"), run, reward_fn=alternating_reward)
    before = adapter(tr.model)
    logs = tr.train()
    tr.close()
    return tr, logs, before


def test_a_few_tiny_steps_give_finite_losses_and_change_the_adapter(tiny_run):
    tr, logs, before = tiny_run
    assert len(logs) == 2 and not any(log.skipped for log in logs)
    assert all(math.isfinite(log.metrics["loss/policy"]) for log in logs)
    after = adapter(tr.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_every_step_writes_metrics_and_trajectories_with_filter_decisions(tiny_run):
    tr, logs, _ = tiny_run
    m = RunStore(tr.store.path).metrics()
    assert list(m["step"]) == [1, 2]
    for key in ("reward/mean", "tool/calls_per_traj", "tool/success_rate", "tool/all_failed_rate",
                "tool/void_turn_rate", "filter/b_drop_rate", "filter/b_all_correct_rate", "filter/b_all_wrong_rate",
                "entropy/gate_coverage", "entropy/post_tool_mean", "entropy/other_mean", "shaping/adv_ratio_p50",
                "time/rollout_s", "time/update_s", "mem/peak_rss_mb", "lr"):
        assert key in m.columns, key
    for row, log in zip(m.to_dict("records"), logs):      # the stored values are the step's facts
        t = log.trajs
        assert row["tool/calls_per_traj"] == pytest.approx(sum(x.n_tool_calls for x in t) / len(t))
        assert row["tool/all_failed_rate"] == pytest.approx(
            sum(x.n_tool_calls > 0 and x.n_valid_calls == 0 for x in t) / len(t))
        assert row["filter/b_drop_rate"] == 0.0             # alternating rewards: never a degenerate group
        assert row["entropy/gate_coverage"] == pytest.approx(
            sum(sum(x.post_tool) for x in t) / max(sum(x.n_sampled for x in t), 1))
        assert row["reward/mean"] == pytest.approx(sum(x.reward for x in t) / len(t))
        assert row["lr"] == pytest.approx(tr.cfg.optim.lr)
        assert row["time/rollout_s"] > 0 and row["time/update_s"] > 0 and row["mem/peak_rss_mb"] > 0
        assert row["loss/tokens"] == sum(x.n_sampled for x in t)   # every row trains (weight 1)
    steps = tr.store.read_step_frame(2)
    assert {"keep", "filter_reason", "loss_weight", "advantage"} <= set(steps.columns)
    assert len(steps) == tr.cfg.data.prompts_per_step * tr.cfg.rollout.group_size


def test_rollout_logprobs_agree_with_the_training_forward(tiny_run):
    _, logs, _ = tiny_run
    # first pass over a batch: same weights as the rollout, so the ratio is 1 up to float noise
    assert all(log.metrics["update/logp_rollout_diff_max"] < 1e-4 for log in logs)
    assert all(abs(log.metrics["loss/ratio_mean"] - 1) < 1e-4 for log in logs)


def test_a_step_whose_groups_all_have_equal_rewards_is_skipped_with_its_reason(tmp_path):
    def zeros(trajs, step):
        for t in trajs:
            t.reward = 0.0
        return [0.0] * len(trajs), {}

    with T.Trainer(tiny_cfg("run.steps=1"), tmp_path, reward_fn=zeros) as tr:
        before = adapter(tr.model)
        log = tr.step()
    assert log.skipped and "filter_b/all_wrong" in log.skip_reason
    assert all(torch.equal(before[n], p) for n, p in adapter(tr.model).items())
    assert RunStore(tmp_path).metrics()["skipped"].tolist() == [1]


def test_gradient_accumulation_gives_the_full_batch_gradient_whatever_the_micro_batch_size(tmp_path):
    cfg = tiny_cfg("run.steps=1", "optim.grad_clip=0")
    with T.Trainer(cfg, tmp_path, reward_fn=alternating_reward) as tr:
        tok, model = tr.tok, tr.model
        trajs, _ = T.rollout_stage(model, tok, tr.tasks[:2], cfg.rollout, tr.pool, seed=3)
    alternating_reward(trajs, 1)
    for i, t in enumerate(trajs):                 # make sure the advantages are not all zero
        t.reward = float(i % 2)
    from tao_lab import filters
    fres = filters.apply(trajs, filters.FilterConfig(rules=()))
    batch, _, _ = U.compute_advantages(trajs, fres)
    start = adapter(model)
    params = [p for p in model.parameters() if p.requires_grad]
    moved = []
    for mb in (1, 4):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in start:
                    p.copy_(start[n])
        opt = torch.optim.SGD(params, lr=1.0)      # the step is exactly -grad
        U.update_policy(model, opt, batch, params, tok.pad_token_id, cfg=replace(cfg.update, micro_batch_size=mb),
                        shaping=cfg.shaping, loss=cfg.loss, grad_clip=0.0, temperature=1.0, max_new_tokens=16)
        moved.append({n: p.detach() - start[n] for n, p in model.named_parameters() if n in start})
    assert all(torch.allclose(moved[0][n], moved[1][n], atol=1e-6, rtol=1e-4) for n in start)
    assert any(moved[0][n].abs().max() > 0 for n in start)


def test_sharing_the_prompt_forward_gives_the_same_logprobs_and_gradients_as_full_sequences(tiny):
    from tao_lab.models import ModelConfig, finish_policy
    from tao_lab.records import Trajectory
    model, tok = tiny
    model = finish_policy(model, ModelConfig(lora_r=4)).train()
    with torch.no_grad():                          # an adapter that is not the identity
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, len(tok), (40,), generator=g).tolist()
    trajs = []
    for L in (12, 19, 7):
        ids = torch.randint(0, len(tok), (L,), generator=g).tolist()
        mask = [1] * L
        mask[3:5] = [0, 0]                           # a forced tool-output stretch
        trajs.append(Trajectory("t", 0, prompt, ids, mask, [0.0] * L, [0.0] * L, [0] * L, [0] * L))
    got = {}
    for share in (False, True):
        model.zero_grad()
        mb = U.collate(trajs, [1.0, 0.5, 1.0], tok.pad_token_id, "cpu", share_prompt=share)
        lp, _ = U.forward_logprobs(model, mb, 1.0, 64, entropy_grad=False)
        ((lp * mb.mask).sum() / mb.mask.sum()).backward()
        got[share] = ([lp[i][mb.mask[i] > 0].detach() for i in range(3)],
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got[False][0], got[True][0]))
    assert all(torch.allclose(got[False][1][n], got[True][1][n], atol=1e-6, rtol=1e-4) for n in got[False][1])


def test_merged_lora_rollout_samples_like_the_adapter_and_restores_the_base_weights_exactly(tiny):
    from tao_lab.models import ModelConfig, finish_policy
    from tao_lab.rollout import RolloutConfig
    from tao_lab.tasks import load_tasks
    model, tok = tiny
    model = finish_policy(model, ModelConfig(lora_r=4))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tasks = load_tasks("arith-L1", split="train", limit=2)
    cfg = RolloutConfig(group_size=2, max_new_tokens=12, tools=False, template="zero_shot")
    plain, _ = T.rollout_stage(model, tok, tasks, cfg, None, seed=5, merge=False)
    merged, _ = T.rollout_stage(model, tok, tasks, cfg, None, seed=5, merge=True)
    assert can_merge(model)
    assert [t.token_ids for t in plain] == [t.token_ids for t in merged]
    assert max(abs(a - b) for p, m in zip(plain, merged) for a, b in zip(p.logprobs, m.logprobs)) < 1e-4
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_kl_to_the_adapter_disabled_model_is_zero_while_the_adapter_is_still_identity(tmp_path):
    # A fresh LoRA adapter has B = 0, so the policy IS the reference model at step 1.
    cfg = tiny_cfg("run.steps=1", "loss.beta=0.1")
    with T.Trainer(cfg, tmp_path, reward_fn=alternating_reward) as tr:
        log = tr.step()
    assert abs(log.metrics["loss/kl_ref"]) < 1e-6


def test_exponential_schedule_multiplies_the_learning_rate_by_gamma_each_step():
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt, sched = make_optimizer(p, OptimConfig(lr=0.1, schedule="exponential", gamma=0.5, optimizer="adamw"))
    lrs = []
    for _ in range(3):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.05, 0.025])


def test_prompt_stream_visits_every_task_once_per_epoch_and_depends_only_on_seed_and_cursor():
    first, cur = seeded_order(10, 0, 6, seed=1)
    second, cur = seeded_order(10, cur, 4, seed=1)
    assert sorted(first + second) == list(range(10))
    again, _ = seeded_order(10, 6, 4, seed=1)
    assert again == second
    assert seeded_order(10, 0, 10, seed=2)[0] != first + second


def test_set_overrides_parse_into_the_field_types():
    cfg = apply_overrides(make_config("test_tiny", "tao"),
                          ["shaping.coef=0.05", "rollout.group_size=4", "filter.rules=filter_b,filter_a",
                           "data.limit=none", "shaping.detach=false", "seed=3"])
    assert cfg.shaping.coef == 0.05 and cfg.rollout.group_size == 4 and cfg.seed == 3
    assert cfg.filter.rules == ("filter_b", "filter_a") and cfg.data.limit is None and cfg.shaping.detach is False


@pytest.mark.parametrize("item, words", [
    ("shaping.coeff=0.1", ["shaping.coeff", "did you mean shaping.coef"]),
    ("rollout.group_size=four", ["rollout.group_size", "integer"]),
    ("rollout.group_size=0", ["group_size"]),
    ("filter.filter_a_mode=sometimes", ["filter_a_mode", "'drop'"]),
    ("shapping.coef=0.1", ["unknown section", "did you mean 'shaping'"]),
    ("model.seed=3", ["model.seed", "--set seed="]),
    ("shaping.coef", ["section.field=value"]),
])
def test_invalid_set_overrides_are_rejected_with_a_message_naming_the_field(item, words):
    with pytest.raises(ValueError) as e:
        apply_overrides(make_config("test_tiny", "tao"), [item])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_methods_set_the_switches_of_their_reading():
    paper, code, plain = (make_config("cpu_demo", m) for m in ("tao", "tao_code", "grpo"))
    assert paper.filter.rules == ("overlong", "void_turn", "filter_b", "filter_a") and paper.filter.filter_a_mode == "drop"
    assert (paper.shaping.gate, paper.shaping.z_scope, paper.shaping.detach) == ("post_tool", "trajectory", True)
    assert "filter_a" not in code.filter.rules and code.filter.filter_a_mode == "mask"
    assert (code.shaping.gate, code.shaping.z_scope, code.shaping.detach) == ("all_tokens", "micro_batch", False)
    assert plain.filter.rules == () and plain.shaping.kind == "none"


def test_config_round_trips_through_its_dict():
    cfg = make_config("gpu_qlora", "tao_code", ["shaping.coef=0.2"])
    assert C.config_from_dict(json.loads(json.dumps(C.config_to_dict(cfg)))) == cfg


def test_qlora_memory_estimate_of_gpu_qlora_fits_an_8_gb_gpu():
    from tao_lab.presets import qlora_memory_estimate
    est = qlora_memory_estimate()
    assert 1400 < est["params_linear_M"] + est["params_embedding_M"] < 1700   # Qwen2.5-1.5B: 1.54 B
    assert est["peak_gib"] < 8


def test_a_qlora_step_runs_on_cpu_with_a_4bit_tiny_model(tmp_path, smol_tokenizer):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb
    from tao_lab.models import tiny_model
    path = tmp_path / "tiny4"
    tiny_model(vocab_size=len(smol_tokenizer), seed=0).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    cfg = tiny_cfg("run.steps=1", f"model.name={path}", "model.load_in_4bit=true")
    with T.Trainer(cfg, tmp_path / "run", reward_fn=alternating_reward) as tr:
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in tr.model.modules())
        before = adapter(tr.model)
        log = tr.step()
    assert not log.skipped and math.isfinite(log.metrics["loss/policy"])
    assert any(not torch.equal(before[n], p) for n, p in adapter(tr.model).items())


def test_cli_train_eval_and_report_write_an_offline_html_page(tmp_path, capsys):
    from tao_lab.cli import main
    out = tmp_path / "cli_run"
    assert main(["train", "--preset", "test_tiny", "--steps", "1", "--out", str(out), "--quiet-bar",
                 "--set", "filter.rules=filter_b"]) == 0
    assert main(["eval", "--run", str(out), "--n", "2", "--k", "2", "--max-new-tokens", "8"]) == 0
    assert "avg@2" in capsys.readouterr().out
    import json   # without --tasks a run is judged on its own held-out source (test_tiny: arith-L1 test)
    saved = json.loads((out / "evals" / "step_000001" / "config.json").read_text())["eval"]
    assert (saved["tasks"], saved["split"]) == ("arith-L1", "test")
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "vegaEmbed(" in page and "<script src=" not in page and "tl-view" in page
    assert "after step 1" in page and "pass@2" in page           # the held-out table, in words


def test_cli_train_rejects_a_bad_override_without_starting(tmp_path, capsys):
    from tao_lab.cli import main
    assert main(["train", "--preset", "test_tiny", "--out", str(tmp_path / "x"), "--set", "loss.eps_low=2"]) == 2
    assert "eps_low" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.smoke
def test_one_real_cpu_demo_step_on_the_embedded_model(tmp_path):
    # tiny sizes; plain GRPO so the update runs whatever the rewards are
    cfg = make_config("cpu_demo", "grpo", ["data.prompts_per_step=1", "data.oversample=1", "rollout.group_size=2",
                                           "rollout.max_new_tokens=48", "rollout.max_turns=2", "run.steps=1"])
    with T.Trainer(cfg, tmp_path) as tr:
        log = tr.step()
    m = log.metrics
    assert not log.skipped and math.isfinite(m["loss/policy"])
    assert m["update/logp_rollout_diff_max"] < 1e-3   # KV-engine rollout vs plain forward, fp32
    assert len(tr.store.read_step(1)) == 2
