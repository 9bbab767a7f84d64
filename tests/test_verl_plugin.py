"""The verl plugin (plugins/verl, package tao_lab_verl) against the real verl 0.9.1, on CPU.

These run in the plugin's own env: `make test-verl` (builds .venv-verl with `make verl`). In tao_lab's
main env verl is not installed (it needs transformers < 5.11) and the module is skipped, saying so.
What needs a GPU (vLLM rollout, FSDP update) is benchmarks/verl_gpu_smoke.sh.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed here: run `make test-verl` (plugin env .venv-verl)")
tao_lab_verl = pytest.importorskip("tao_lab_verl", reason="tao_lab_verl not installed: run `make verl`")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tao_lab import filters  # noqa: E402
from tao_lab.advantages import ShapingConfig, group_advantages, shape_advantages  # noqa: E402
from tao_lab.records import RunStore  # noqa: E402
from tao_lab.sandbox import run_code  # noqa: E402
from tao_lab_verl.agent_loop import episode_config, episode_extra_fields, filter_a_weight  # noqa: E402
from tao_lab_verl.episode import EpisodeConfig, run_episode  # noqa: E402
from tao_lab_verl.reward import compute_score  # noqa: E402
from tao_lab_verl.trainer import shaping_config, tao_shape  # noqa: E402
from fakes import ByteTokenizer  # noqa: E402
from runstore_fixture import make_trajectories  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "verl_tao.yaml"


def scripted(turns: list[str], tok):
    """A generator that writes `turns` in order (one engine request each), then EOS."""
    queue = [tok.encode(t) for t in turns]

    async def generate(ids, room):
        return (queue.pop(0) if queue else [tok.eos_token_id]), None
    return generate


def episode(turns: list[str], **cfg):
    tok = ByteTokenizer()
    return asyncio.run(run_episode(scripted(turns, tok), tok, tok.encode("Q: 6*7?\n"),
                                   EpisodeConfig(**cfg), lambda code: run_code(code, timeout_s=5.0),
                                   eos_ids={tok.eos_token_id}))


# ----------------------------------------------------------------------------------------------
# Registration


def test_verl_finds_the_plugin_through_its_entry_point_group():
    names = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert names.get("tao_lab") == "tao_lab_verl"


def test_verl_registries_resolve_the_plugin_names():
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.v1 import get_trainer_cls

    assert get_trainer_cls(tao_lab_verl.TRAINER_NAME).__name__ == "TaoTrainerSync"
    assert _agent_loop_registry[tao_lab_verl.AGENT_NAME]["_target_"] == "tao_lab_verl.agent_loop.TaoToolAgentLoop"


# ----------------------------------------------------------------------------------------------
# The episode: a scripted response through the real sandbox


def test_a_scripted_tool_call_runs_in_the_real_sandbox_and_its_output_is_forced():
    tr = episode(["Let me compute.\n```python\nprint(6 * 7)\n```\n", "So \\boxed{42}"])
    assert [c.stdout for c in tr.tool_calls] == ["42\n"] and tr.tool_calls[0].valid
    obs = "\nCode execution result: 42\n"
    start = tr.text.index(obs)
    assert tr.mask[start:start + len(obs)] == [0] * len(obs)  # byte tokenizer: 1 char = 1 token
    assert tr.finish_reason == "boxed"


def test_the_post_tool_gate_marks_only_sampled_tokens_of_the_turn_after_the_call():
    tr = episode(["```python\nprint(1)\n```\n", "ok \\boxed{1}"])
    first_turn = [g for g, k in zip(tr.post_tool, tr.turn_idx) if k == 0]
    second = [(g, m) for g, m, k in zip(tr.post_tool, tr.mask, tr.turn_idx) if k == 1]
    assert not any(first_turn) and second and all(g == m for g, m in second)


def test_a_stop_on_an_opening_fence_continues_the_same_turn():
    tr = episode(["```\n", "print(2 + 3)\n```\n", "\\boxed{5}"])
    assert [c.code for c in tr.tool_calls] == ["print(2 + 3)"] and tr.n_turns == 2


def test_filter_a_masks_an_episode_whose_every_call_failed():
    tr = episode(["```python\nprint(x)\n```\n", "\\boxed{1}"])
    assert not tr.tool_calls[0].valid and "NameError" in tr.tool_calls[0].stderr
    assert filter_a_weight(tr, "mask") == 0.0 and filter_a_weight(tr, "off") == 1.0


def test_an_episode_that_never_called_a_tool_is_not_masked_by_filter_a():
    tr = episode(["\\boxed{42}"])
    assert tr.n_tool_calls == 0 and filter_a_weight(tr, "mask") == 1.0


def test_the_token_budget_ends_an_episode_as_truncated():
    tr = episode(["x" * 50], response_length=20)
    assert tr.finish_reason == "token_budget" and tr.truncated and len(tr.token_ids) == 20


# ----------------------------------------------------------------------------------------------
# Reward: verified score + binary accuracy


def test_the_reward_reads_an_answer_printed_by_the_tool():
    tr = episode(["```python\nprint('\\\\boxed{42}')\n```\n"])
    out = compute_score("tao", tr.text, "42", episode_extra_fields(tr, 1.0))
    assert out["score"] == 1.0 and out["acc"] == 1.0 and out["tao_no_episode"] == 0.0


def test_the_reward_without_an_agent_loop_record_scores_the_text_and_says_so():
    out = compute_score("tao", "so \\boxed{41}", "42", {})
    assert out["acc"] == 0.0 and out["tao_no_episode"] == 1.0


# ----------------------------------------------------------------------------------------------
# The advantage hook on verl's own batch type equals tao_lab on the same stored rollouts


def _stored_rollouts(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_step(1, make_trajectories(seed=3))
    return store.read_step(1)


def _verl_batch(trajs):
    from verl import DataProto

    T = max(len(t.token_ids) for t in trajs)
    B = len(trajs)
    mask = torch.zeros(B, T, dtype=torch.int64)
    rewards = torch.zeros(B, T)
    entropy = torch.zeros(B, T)
    for b, t in enumerate(trajs):
        n = len(t.token_ids)
        mask[b, :n] = torch.tensor(t.mask) * int(filter_a_weight(t, "mask"))  # what the agent loop returns
        rewards[b, n - 1] = t.reward                                        # verl: score on the last token
        entropy[b, :n] = torch.tensor(t.entropies)
    data = DataProto.from_dict(tensors={"response_mask": mask, "token_level_rewards": rewards, "entropy": entropy},
                               non_tensors={"uid": np.array([str(t.group_id) for t in trajs], dtype=object)})
    return data, [t.post_tool for t in trajs]


def _tao_lab_reference(trajs, cfg: ShapingConfig):
    res = filters.apply(trajs, filters.FilterConfig(rules=("filter_a",), filter_a_mode="mask"))
    assert len(res.index) == len(trajs)  # mask mode keeps every row
    T = max(len(t.token_ids) for t in trajs)
    pad = lambda xs: torch.tensor([list(x) + [0] * (T - len(x)) for x in xs], dtype=torch.float32)  # noqa: E731
    mask = pad([t.mask for t in trajs]) * torch.tensor(res.weights, dtype=torch.float32)[:, None]
    adv, _ = group_advantages(torch.tensor([t.reward for t in trajs]), torch.tensor([t.group_id for t in trajs]))
    adv_t, _ = shape_advantages(adv, pad([t.entropies for t in trajs]), mask, pad([t.post_tool for t in trajs]), cfg)
    return adv_t * (mask > 0)


@pytest.mark.parametrize("cfg", [ShapingConfig(), ShapingConfig(gate="all_tokens", coef=0.2),
                                 ShapingConfig(kind="additive")], ids=["paper", "all_tokens", "additive"])
def test_verl_grpo_plus_the_hook_equals_tao_lab_on_stored_rollouts(tmp_path, cfg):
    from verl.trainer.ppo.ray_trainer import compute_advantage

    trajs = _stored_rollouts(tmp_path)
    data, post_tool = _verl_batch(trajs)
    data = compute_advantage(data, adv_estimator="grpo", norm_adv_by_std_in_grpo=True)
    adv_t, metrics = tao_shape(data.batch["advantages"], data.batch["entropy"], data.batch["response_mask"],
                               post_tool, cfg)
    torch.testing.assert_close(adv_t, _tao_lab_reference(trajs, cfg), atol=1e-6, rtol=0)
    assert metrics["tao/shaping/gated_tokens"] > 0


# ----------------------------------------------------------------------------------------------
# The cluster config composes with verl's own config machinery


@pytest.fixture(scope="module")
def composed():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(EXAMPLE.parent), version_base=None):
        cfg = compose(config_name=EXAMPLE.stem, overrides=["actor_rollout_ref.model.path=/models/x"])
    GlobalHydra.instance().clear()
    return cfg


def test_the_example_config_composes_and_validates_with_verl(composed):
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass

    algo = omega_conf_to_dataclass(composed.algorithm, AlgoConfig)
    assert algo.adv_estimator == "grpo" and algo.filter_groups.metric == "acc"
    assert composed.trainer.v1.trainer_mode == tao_lab_verl.TRAINER_NAME
    assert composed.actor_rollout_ref.rollout.agent.default_agent_loop == tao_lab_verl.AGENT_NAME


def test_the_example_config_feeds_the_plugin_its_settings(composed):
    ep, mode = episode_config(composed)
    assert ep.response_length == composed.actor_rollout_ref.rollout.response_length and mode == "mask"
    assert shaping_config(composed) == ShapingConfig()


def test_verl_loads_the_reward_function_named_in_the_example(composed):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(composed)
    out = fn(data_source="tao", solution_str="\\boxed{42}", ground_truth="42", extra_info={})
    assert out["acc"] == 1.0


def test_unreachable_shaping_variants_are_refused_by_name():
    from omegaconf import OmegaConf

    for key, value in (("detach", False), ("z_scope", "micro_batch"), ("empty_gate_fallback", True)):
        with pytest.raises(ValueError, match=key):
            shaping_config(OmegaConf.create({"tao": {"shaping": {key: value}}}))


def test_the_dataset_writer_gives_verl_its_columns_for_the_plugins_agent_loop(tmp_path):
    from tao_lab_verl.dataset import tasks_frame

    df = tasks_frame("arith-L1", "train", limit=3)
    assert len(df) == 3 and set(df.agent_name) == {tao_lab_verl.AGENT_NAME}
    assert df.prompt[0][-1]["role"] == "user" and df.reward_model[0]["ground_truth"]


# ----------------------------------------------------------------------------------------------
# `tao-lab export-verl`: the exported keys compose with verl's config and reach the plugin


def _tuned_run_config():
    from tao_lab.presets import make_config

    from dataclasses import replace

    cfg = make_config("cpu_demo", "tao", [
        "model.name=Qwen/Qwen2.5-1.5B-Instruct", "model.target_modules=q_proj,v_proj", "seed=7",
        "rollout.protocol=tags", "rollout.max_turns=7", "rollout.obs_max_chars=1024", "rollout.obs_max_tokens=128",
        "rollout.tool_timeout_s=7.5", "rollout.silent_is_failure=false", "rollout.max_new_tokens=3000",
        "rollout.group_size=6", "rollout.temperature=0.7", "shaping.kind=additive", "shaping.coef=0.2",
        "shaping.gate=all_tokens", "shaping.alpha=0.3", "shaping.kappa=3.0", "filter.filter_a_mode=mask",
        "loss.beta=0.04", "loss.dual_clip=5.0", "optim.lr=3e-6", "update.adv_std=none"])
    return replace(cfg, optim=replace(cfg.optim, betas=(0.9, 0.95)))


def _compose(config_dir: Path, name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def _reaches_the_plugin(composed, cfg):
    from omegaconf import OmegaConf
    from tao_lab.export_verl import KNOBS, flatten, import_verl
    from tao_lab.train_config import TrainConfig
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass

    algo = omega_conf_to_dataclass(composed.algorithm, AlgoConfig)  # verl's own validation
    assert algo.filter_groups.enable and algo.filter_groups.metric == "acc" and not algo.norm_adv_by_std_in_grpo
    ep, mode = episode_config(composed)  # what the agent loop will run with
    r = cfg.rollout
    assert ep == EpisodeConfig(protocol=r.protocol, max_turns=r.max_turns, response_length=r.max_new_tokens,
                               obs_max_chars=r.obs_max_chars, obs_max_tokens=r.obs_max_tokens,
                               tool_timeout_s=r.tool_timeout_s, silent_is_failure=r.silent_is_failure)
    assert mode == "mask"
    assert shaping_config(composed) == cfg.shaping  # what the trainer hook will reshape with
    back = import_verl(flatten(OmegaConf.to_container(composed, resolve=True)), TrainConfig())
    assert {k.name: k.get(back) for k in KNOBS} == {k.name: k.get(cfg) for k in KNOBS}  # every knob, back


def test_exported_overrides_compose_with_verl_and_reach_the_plugin(tmp_path):
    from tao_lab.export_verl import export_verl, to_yaml

    cfg = _tuned_run_config()
    exp = export_verl(cfg)
    _reaches_the_plugin(_compose(EXAMPLE.parent, EXAMPLE.stem, exp.overrides()), cfg)  # overrides of the example
    (tmp_path / "exported.yaml").write_text(to_yaml(exp))
    _reaches_the_plugin(_compose(tmp_path, "exported", []), cfg)                     # the standalone file


def test_the_dataset_command_export_verl_prints_writes_the_runs_protocol(tmp_path):
    import pandas as pd
    from tao_lab_verl.dataset import main

    main(["arith-L1", "train", str(tmp_path / "t.parquet"), "2", "--protocol", "tags", "--template", "zero_shot"])
    df = pd.read_parquet(tmp_path / "t.parquet")
    system = df.prompt[0][0]["content"]
    assert len(df) == 2 and "<python>" in system and "```python" not in system


def test_the_printed_launch_line_parses_through_bash_and_verls_own_entry_point(tmp_path):
    """The script `tao-lab export-verl` prints, run as a user would (bash, then verl's main_ppo
    Hydra CLI) up to the composed config (`--cfg job` prints it instead of training)."""
    import subprocess
    import sys

    import yaml
    from tao_lab.export_verl import KNOBS, command, export_verl, flatten, import_verl
    from tao_lab.train_config import TrainConfig

    cfg = _tuned_run_config()
    script = command(export_verl(cfg), cfg).replace(".venv-verl/bin/python", sys.executable)
    launch = "\n".join(line for line in script.splitlines() if "tao_lab_verl.dataset" not in line)
    proc = subprocess.run(["bash", "-c", launch.rstrip() + " --cfg job"], cwd=EXAMPLE.parents[1],
                          env={**__import__("os").environ, "DATA": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    composed = yaml.safe_load(proc.stdout)
    assert composed["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    assert composed["data"]["train_files"] == f"{tmp_path}/train.parquet"
    back = import_verl(flatten(composed), TrainConfig())
    assert {k.name: k.get(back) for k in KNOBS} == {k.name: k.get(cfg) for k in KNOBS}
