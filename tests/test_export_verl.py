"""`tao-lab export-verl`: a tao_lab config <-> the verl keys of the tao_lab_verl plugin (main env, no verl).

That the exported keys compose with verl's own Hydra config and reach the plugin is checked in the
plugin's env: tests/test_verl_plugin.py::test_exported_overrides_compose_with_verl_and_reach_the_plugin.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from tao_lab import cli
from tao_lab.export_verl import (NEVER_BINDS, FIXED, KNOBS, export_verl, flatten, hydra_value, import_verl,
                                 load_run_config, not_carried)
from tao_lab.methods.arms import ARMS, HOOKS
from tao_lab.presets import make_config
from tao_lab.records import RunStore
from tao_lab.train_config import TrainConfig, config_to_dict

# A value different from both TrainConfig's default and the test_tiny/tao config, for every knob.
NON_DEFAULT = {
    "model path": "Qwen/Qwen2.5-1.5B-Instruct", "LoRA rank": 8, "LoRA alpha": 64,
    "LoRA target modules": "q_proj,v_proj", "gradient checkpointing": True, "seed": 7,
    "B (groups per update)": 32, "G (group size)": 16, "temperature": 0.7, "top_p": 0.95,
    "response length": 4096, "protocol": "tags", "max turns": 10, "observation chars": 1024,
    "observation tokens": 128, "tool timeout (s)": 7.5, "silent call is a failure": False,
    "shaping kind": "additive", "shaping coef": 0.2, "shaping gate": "all_tokens", "additive alpha": 0.3,
    "additive kappa": 3.0, "Filter B": False, "sampling rounds (dynamic refill)": 4, "Filter A": "mask",
    "clip low": 0.1, "clip high": 0.4, "dual clip c": 5.0, "loss aggregation": "seq_mean_token_mean",
    "Dr. GRPO normaliser": 2048, "KL (k3)": 0.04, "entropy coeff": 0.001, "lr": 3e-6,
    "weight decay": 0.1, "Adam betas": (0.9, 0.95), "grad clip": 0.5, "std normalisation": "none",
    "update epochs": 2, "micro-batch": 8, "total steps": 300,
}
KNOB = {k.name: k for k in KNOBS}
BASE = make_config("test_tiny", "tao")


def carried(cfg) -> dict:
    """Every knob's tao_lab value as verl can hold it (Filter A drop becomes mask: listed as lost)."""
    vals = {k.name: k.get(cfg) for k in KNOBS if k.name != "model path"}  # a bundled name becomes a hub id
    return vals | {"Filter A": "mask"} if vals["Filter A"] == "drop" else vals


def test_every_knob_has_a_non_default_value_in_this_test():
    assert set(NON_DEFAULT) == set(KNOB)


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_a_knob_round_trips_through_verl_with_a_non_default_value(name):
    knob, value = KNOB[name], NON_DEFAULT[name]
    assert knob.get(BASE) != value and knob.get(TrainConfig()) != value
    cfg = knob.put(BASE, value)
    flat = export_verl(cfg).flat
    assert set(knob.keys) <= set(flat)
    back = import_verl(flat, TrainConfig())  # from defaults: only the export can bring the value back
    assert knob.get(back) == value
    # and every other knob came back unchanged too
    assert carried(back) == carried(cfg)


def test_the_off_values_round_trip_lora_dual_clip_grad_clip_and_filter_a():
    cfg = KNOB["Filter A"].put(KNOB["dual clip c"].put(KNOB["LoRA rank"].put(BASE, 0), None), "off")
    cfg = KNOB["grad clip"].put(cfg, 0.0)
    flat = export_verl(cfg).flat
    assert flat["actor_rollout_ref.model.lora_rank"] == 0 and flat["actor_rollout_ref.actor.clip_ratio_c"] == NEVER_BINDS
    assert flat["actor_rollout_ref.actor.optim.clip_grad"] == NEVER_BINDS  # verl's max_norm 0 would zero the grads
    back = import_verl(flat, TrainConfig())
    assert not back.model.lora and back.loss.dual_clip is None and "filter_a" not in back.filter.rules
    assert back.optim.grad_clip == 0.0


def test_the_kl_knob_writes_verls_low_var_kl_and_refuses_another_estimator():
    flat = export_verl(KNOB["KL (k3)"].put(BASE, 0.04)).flat
    assert flat["actor_rollout_ref.actor.use_kl_loss"] is True
    assert flat["actor_rollout_ref.actor.kl_loss_type"] == "low_var_kl"
    with pytest.raises(ValueError, match="kl_loss_type"):
        import_verl({**flat, "actor_rollout_ref.actor.kl_loss_type": "mse"})


def test_a_verl_value_with_no_tao_lab_counterpart_is_refused_by_key():
    flat = export_verl(BASE).flat
    with pytest.raises(ValueError, match="loss_agg_mode"):
        import_verl({**flat, "actor_rollout_ref.actor.loss_agg_mode": "token-sum"})


# ----------------------------------------------------------------------------------------------
# The arms' filter switches


@pytest.mark.parametrize("arm,filter_b,filter_a", [
    ("grpo", False, "off"), ("simpletir", False, "off"), ("tao", True, "mask"), ("tao_code", True, "off"),
    ("dapo", True, "off"), ("e3tir", False, "off"), ("et_agent", False, "off"), ("toolexpander", False, "off"),
    ("arpo", False, "off")])
def test_each_arm_exports_its_filter_switches(arm, filter_b, filter_a):
    if arm not in ARMS:
        pytest.skip(f"arm {arm} is not registered in this checkout")
    flat = export_verl(make_config("test_tiny", arm)).flat
    assert flat["algorithm.filter_groups.enable"] is filter_b and flat["tao.filter_a_mode"] == filter_a
    assert {k: flat[k] for k in FIXED} == FIXED  # the plugin's agent loop, reward and trainer mode


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_every_registered_arm_exports_filter_b_and_a_as_its_rules_say(arm):
    cfg = make_config("test_tiny", arm)
    flat = export_verl(cfg).flat
    assert flat["algorithm.filter_groups.enable"] == ("filter_b" in cfg.filter.rules)
    assert flat["tao.filter_a_mode"] == ("mask" if "filter_a" in cfg.filter.rules else "off")
    assert (f"method={arm} hooks" in _lost(cfg)) == (arm in HOOKS)  # an arm's own hooks are named as lost


# ----------------------------------------------------------------------------------------------
# What verl can't carry


def _lost(cfg) -> set[str]:
    return {what for what, _ in not_carried(cfg)}


def test_the_paper_arm_loses_filter_a_drop_and_the_duplicate_refill_with_reasons():
    lost = dict(not_carried(make_config("test_tiny", "tao")))
    assert "exported as mask mode" in lost["filter.filter_a_mode=drop"]
    assert "FRESH prompts" in lost["filter.refill=duplicate"]


def test_the_code_arm_loses_micro_batch_entropy_statistics_and_the_non_detached_entropy():
    assert {"shaping.z_scope=micro_batch", "shaping.detach=False", "shaping.empty_gate_fallback=True"} <= \
        _lost(make_config("test_tiny", "tao_code"))


@pytest.mark.parametrize("field,value,lost", [
    ("loss.anti_clip", True, "loss.anti_clip=True"),
    ("model.load_in_4bit", True, "model.load_in_4bit=True"),
    ("data.oversample", 2.0, "data.oversample=2.0"),
    ("update.adv_std", "biased", "update.adv_std=biased"),
    ("filter.filter_a_strength", 0.5, "filter.filter_a_strength=0.5"),
    ("optim.schedule", "exponential", "optim.schedule=exponential"),
    ("loss.agg", "drgrpo", "loss.agg=drgrpo"),
])
def test_a_setting_verl_cannot_carry_is_listed(field, value, lost):
    section, name = field.split(".")
    cfg = make_config("test_tiny", "tao_code" if name == "filter_a_strength" else "grpo")
    if name == "filter_a_strength":  # mask mode with Filter A on
        cfg = KNOB["Filter A"].put(cfg, "mask")
    cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})
    assert lost in _lost(cfg) and lost not in _lost(make_config("test_tiny", "grpo"))


def test_plain_grpo_on_a_hub_model_loses_nothing():
    cfg = make_config("test_tiny", "grpo", ["model.name=Qwen/Qwen2.5-1.5B-Instruct"])
    assert not_carried(cfg) == []


def test_the_bundled_model_is_exported_as_its_hub_id_and_says_so():
    cfg = make_config("cpu_demo", "grpo")
    assert export_verl(cfg).flat["actor_rollout_ref.model.path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "model.name=smollm2-135m" in _lost(cfg)


def test_hydra_values_keep_their_type():
    assert [hydra_value(v) for v in (None, True, 3, 1e-6, [0.9, 0.95], "all-linear", "1e-5", "a,b", "true")] == \
        ["null", "true", "3", "1e-06", "[0.9,0.95]", "all-linear", "'1e-5'", "'a,b'", "'true'"]


# ----------------------------------------------------------------------------------------------
# The CLI


def _run_dir(tmp_path, cfg):
    RunStore(tmp_path / "run").write_config({"train": config_to_dict(cfg), "versions": {}})
    return tmp_path / "run"


def test_the_cli_prints_the_launch_script_and_the_losses_and_writes_a_config_that_imports_back(tmp_path, capsys):
    cfg = KNOB["temperature"].put(make_config("cpu_demo", "tao"), 0.6)
    run = _run_dir(tmp_path, cfg)
    assert load_run_config(run) == cfg
    out_file = tmp_path / "verl" / "tao_exported.yaml"
    assert cli.main(["export-verl", str(run), "--out", str(out_file)]) == 0
    out, err = capsys.readouterr()
    assert "-m verl.trainer.main_ppo" in out and f"--config-name={out_file.stem}" in out
    assert "-m tao_lab_verl.dataset arith-L3 train" in out
    assert "not carried: filter.filter_a_mode=drop" in err and "not carried: filter.refill=duplicate" in err
    saved = yaml.safe_load(out_file.read_text())
    assert saved["defaults"] == ["ppo_trainer", "_self_"]
    back = import_verl(flatten({k: v for k, v in saved.items() if k not in ("hydra", "defaults")}), TrainConfig())
    assert back.rollout.temperature == 0.6
    assert carried(back) == carried(cfg)


def test_the_cli_without_out_prints_overrides_for_the_example_config(tmp_path, capsys):
    run = _run_dir(tmp_path, make_config("test_tiny", "grpo", ["model.name=Qwen/Qwen2.5-1.5B-Instruct"]))
    assert cli.main(["export-verl", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# tao_lab grpo run")  # stdout is a script: no thread note before it
    assert "--config-name=verl_tao" in out and "algorithm.filter_groups.enable=false" in out
    assert "-m tao_lab_verl.dataset arith-L1 train $DATA/train.parquet 16 --template zero_shot" in out  # limit 16
    assert "'actor_rollout_ref.actor.optim.betas=[0.9,0.999]'" in out and err == ""


def test_the_cli_refuses_a_folder_without_a_training_config_in_one_line(tmp_path, capsys):
    RunStore(tmp_path / "ev").write_config({"eval": {}})
    assert cli.main(["export-verl", str(tmp_path / "ev")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "not a training run" in err
    assert cli.main(["export-verl", str(tmp_path / "nothing")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_a_folder_without_a_training_config_is_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run_config(tmp_path)
    RunStore(tmp_path / "ev").write_config({"eval": {}})
    with pytest.raises(ValueError, match="not a training run"):
        load_run_config(tmp_path / "ev")
