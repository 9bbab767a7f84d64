"""Every config field is checked when the config is built (issue 16 §1, issue 13 "range checks")."""

from __future__ import annotations

import pytest

from tao_lab.advantages import ShapingConfig
from tao_lab.filters import FilterConfig
from tao_lab.loss import LossConfig
from tao_lab.models import ModelConfig
from tao_lab.presets import apply_overrides, make_config
from tao_lab.rewards import RewardConfig
from tao_lab.rollout import RolloutConfig
from tao_lab.optim import OptimConfig
from tao_lab.train_config import DataConfig, RunConfig
from tao_lab.update import UpdateConfig

NAN, INF = float("nan"), float("inf")


# (config class, field, bad value, words the message must contain)
BAD = [
    (ShapingConfig, "coef", -1e9, "[0, 10]"), (ShapingConfig, "coef", NAN, "nan"),
    (ShapingConfig, "kind", "taoo", "'tao'"), (ShapingConfig, "gate", "post-tool", "'post_tool'"),
    (ShapingConfig, "z_scope", "batch", "'trajectory'"), (ShapingConfig, "alpha", INF, "finite"),
    (OptimConfig, "grad_clip", NAN, "nan"), (OptimConfig, "lr", 1e9, "(0, 1]"), (OptimConfig, "lr", 0.0, "(0, 1]"),
    (OptimConfig, "weight_decay", -0.1, "[0, 1]"), (OptimConfig, "schedule", "cosine", "'constant'"),
    (OptimConfig, "betas", (0.9, 1.5), "[0, 1)"),
    (RolloutConfig, "temperature", INF, "nan and inf"), (RolloutConfig, "obs_max_chars", -1, "integer"),
    (RolloutConfig, "template", "fewshot", "'few_shot'"), (RolloutConfig, "backend", "vllm", "'recompute'"),
    (RolloutConfig, "group_size", 2.5, "integer"), (RolloutConfig, "tool_timeout_s", NAN, "nan"),
    (RolloutConfig, "top_p", 0.0, "(0, 1]"), (RolloutConfig, "n_demos", -1, "integer"),
    (DataConfig, "limit", -5, "integer in [1, inf] or None"), (DataConfig, "oversample", NAN, "nan"),
    (DataConfig, "prompts_per_step", 0, "[1, inf]"),
    (RunConfig, "steps", -1, "[0, inf]"), (RunConfig, "save_every", 0, "[1, inf]"),
    (ModelConfig, "dtype", "float8", "'float32'"), (ModelConfig, "lora_dropout", 1.0, "[0, 1)"),
    (ModelConfig, "device", "gpu", "'cuda:N'"), (ModelConfig, "lora_alpha", NAN, "nan"),
    (RewardConfig, "rel_tol", NAN, "nan"), (RewardConfig, "verify_timeout_s", 0, "(0, 3600]"),
    (RewardConfig, "self_example_bonus", INF, "finite"),
    (FilterConfig, "std_threshold", NAN, "nan"), (FilterConfig, "filter_a_strength", 1.5, "[0, 1]"),
    (FilterConfig, "overlong_reward", "none", "'zero'"), (FilterConfig, "target_groups", 0, "or None"),
    (LossConfig, "agg", "mean", "'token_mean'"), (LossConfig, "eps_high", NAN, "nan"),
    (LossConfig, "dual_clip", 1.0, "(1, 1000000.0]"), (LossConfig, "entropy_coeff", -0.001, "[0, 1]"),
    (LossConfig, "beta", INF, "finite"),
    (UpdateConfig, "adv_std", "sample", "'unbiased'"), (UpdateConfig, "micro_batch_size", 0, "[1, inf]"),
    (UpdateConfig, "share_prompt", "false", "True or False"),
    (RolloutConfig, "quantize", "int4", "'int8'"), (UpdateConfig, "is_correction", "vtrace", "'tis'"),
    (UpdateConfig, "is_cap", 0.5, "[1, 1000000.0]"),
]


@pytest.mark.parametrize("cls, name, value, words", BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v, _ in BAD])
def test_a_bad_field_value_fails_at_build_time_naming_the_field_its_value_and_what_is_allowed(cls, name, value, words):
    with pytest.raises(ValueError) as e:
        cls(**{name: value})
    msg = str(e.value)
    assert f"{cls.__name__}.{name}=" in msg and words in msg, msg


@pytest.mark.parametrize("cls", [ShapingConfig, OptimConfig, RolloutConfig, DataConfig, RunConfig, ModelConfig,
                                 RewardConfig, FilterConfig, LossConfig, UpdateConfig])
def test_the_defaults_of_every_config_pass_their_own_checks(cls):
    cls()


@pytest.mark.parametrize("item", ["shaping.coef=-1e9", "shaping.coef=nan", "optim.grad_clip=nan", "optim.lr=1e9",
                                  "rollout.temperature=inf", "rollout.obs_max_chars=-1", "data.limit=-5",
                                  "rollout.template=fewshot", "rollout.backend=vllm"])
def test_issue_13_overrides_get_the_clean_set_message(item):
    key, value = item.split("=")
    with pytest.raises(ValueError) as e:
        apply_overrides(make_config("test_tiny", "tao"), [item])
    msg = str(e.value)
    assert msg.startswith(f"--set {key}={value}: ") and key.split(".")[1] in msg, msg
