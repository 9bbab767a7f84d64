"""A tao_lab run's config as the equivalent verl 0.9.1 config (`tao-lab export-verl RUN_DIR`).

A user who tuned knobs in a notebook carries them to a cluster with the tao_lab_verl plugin
(plugins/verl): `export_verl(cfg)` turns a TrainConfig into verl keys -- Hydra overrides for
examples/verl_tao.yaml, or a standalone YAML file -- and `import_verl(flat)` turns verl keys back
into a TrainConfig. One table, KNOBS, holds both conversions of every knob it carries, so the two
directions can't drift apart (tests/test_export_verl.py round-trips each one with a non-default value).

Carried (tao_lab field -> verl key):
    model: path, LoRA rank (0 = full fine-tuning, as verl) / alpha / target modules, gradient checkpointing
    seed -> data.seed + rollout.seed (the same seed, not the same stream: the RNGs differ)
    B -> data.train_batch_size (and ppo_mini_batch_size = B: one optimizer step per batch, as tao_lab),
    G, temperature, top_p, response length, update epochs, micro-batch, total steps
    episode rules -> tao.episode.* (read by the plugin's agent loop): protocol, max turns,
        observation caps, tool timeout, silent-is-failure
    shaping -> tao.shaping.* (the plugin's trainer hook): kind, coef, gate, alpha, kappa
    Filter B on/off -> algorithm.filter_groups.enable (verl's group filter on the binary acc);
        filter.max_rounds -> filter_groups.max_num_gen_batches
    Filter A mask/off -> tao.filter_a_mode
    loss: clip low/high, dual clip c (off = NEVER_BINDS [recon]), aggregation,
        KL k3 (= verl's low_var_kl on the actor loss), entropy coefficient
    optim: lr, weight decay, Adam betas, grad clip (0 = off = NEVER_BINDS)
    update: adv_std unbiased/none -> algorithm.norm_adv_by_std_in_grpo
What verl can't carry is listed by `not_carried(cfg)` with the reason (the CLI prints it on stderr);
the exported value is then the nearest reachable one (e.g. Filter A drop -> mask).
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .train_config import TrainConfig, config_from_dict

NEVER_BINDS = 1e9  # verl always applies the dual clip and the grad clip (max_norm 0 would zero the grads):
                   # a bound this large never binds, which is tao_lab's "off" (None / 0) [recon]
HF_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # bundled name -> the id a cluster loads
AGG = {"token_mean": "token-mean", "seq_mean_token_mean": "seq-mean-token-mean", "drgrpo": "seq-mean-token-sum-norm"}
STD = {"unbiased": True, "none": False}  # verl GRPO: torch.std (unbiased) per group, or no division

# Settings of the plugin itself, the same for every run (examples/verl_tao.yaml holds them too).
FIXED: dict[str, Any] = {
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "algorithm.filter_groups.metric": "acc",
    "actor_rollout_ref.rollout.calculate_log_probs": True,
    "actor_rollout_ref.rollout.agent.default_agent_loop": "tao_tool_agent",
    "reward.custom_reward_function.path": "pkg://tao_lab_verl.reward",
    "reward.custom_reward_function.name": "compute_score",
    "trainer.v1.trainer_mode": "tao_sync",
}


# ----------------------------------------------------------------------------------------------
# The knob table


def _get(path: str) -> Callable[[TrainConfig], Any]:
    section, name = path.split(".") if "." in path else (None, path)
    return lambda cfg: getattr(getattr(cfg, section) if section else cfg, name)


def _put(path: str) -> Callable[[TrainConfig, Any], TrainConfig]:
    if "." not in path:
        return lambda cfg, v: replace(cfg, **{path: v})
    section, name = path.split(".")
    return lambda cfg, v: replace(cfg, **{section: replace(getattr(cfg, section), **{name: v})})


@dataclass(frozen=True)
class Knob:
    """One carried knob: the tao_lab side (get/put on a TrainConfig) and the verl side (keys), with
    to_verl(value) -> {key: value} and to_tao(flat verl config) -> value."""

    name: str
    field: str                                   # the tao_lab field, as `--set` spells it
    keys: tuple[str, ...]                        # the verl keys written (to_tao reads from these)
    get: Callable[[TrainConfig], Any]
    put: Callable[[TrainConfig, Any], TrainConfig]
    to_verl: Callable[[Any], dict[str, Any]]
    to_tao: Callable[[Mapping[str, Any]], Any]


def same(name: str, field: str, *keys: str, cast: Callable = lambda v: v) -> Knob:
    """A knob whose value is the same on both sides (written to every key, read from the first)."""
    return Knob(name, field, keys, _get(field), _put(field), lambda v: {k: v for k in keys},
                lambda f: cast(f[keys[0]]))


def _rules_get(rule: str) -> Callable[[TrainConfig], bool]:
    return lambda cfg: rule in cfg.filter.rules


def _rules_put(cfg: TrainConfig, rule: str, on: bool) -> TrainConfig:
    rules = tuple(r for r in cfg.filter.rules if r != rule) + ((rule,) if on else ())
    order = ("overlong", "void_turn", "filter_b", "filter_a")  # the authors' order (filters.FilterConfig)
    rules = tuple(sorted(rules, key=lambda r: order.index(r) if r in order else len(order)))
    return replace(cfg, filter=replace(cfg.filter, rules=rules))


def _filter_a_get(cfg: TrainConfig) -> str:
    return cfg.filter.filter_a_mode if "filter_a" in cfg.filter.rules else "off"


def _filter_a_put(cfg: TrainConfig, mode: str) -> TrainConfig:
    cfg = _rules_put(cfg, "filter_a", mode != "off")
    return cfg if mode == "off" else replace(cfg, filter=replace(cfg.filter, filter_a_mode=mode))


def _lora_rank_put(cfg: TrainConfig, r: int) -> TrainConfig:
    m = replace(cfg.model, lora=r > 0, lora_r=r) if r > 0 else replace(cfg.model, lora=False)
    return replace(cfg, model=m)


def _modules_to_verl(v: str) -> dict[str, Any]:
    mods = v if v == "all-linear" else [m.strip() for m in v.split(",") if m.strip()]
    return {"actor_rollout_ref.model.target_modules": mods}


def _modules_to_tao(f: Mapping[str, Any]) -> str:
    v = f["actor_rollout_ref.model.target_modules"]
    return v if isinstance(v, str) else ",".join(v)


def _kl_to_verl(beta: float) -> dict[str, Any]:
    return {"actor_rollout_ref.actor.use_kl_loss": beta > 0, "actor_rollout_ref.actor.kl_loss_coef": beta,
            "actor_rollout_ref.actor.kl_loss_type": "low_var_kl"}


def _kl_to_tao(f: Mapping[str, Any]) -> float:
    if not f["actor_rollout_ref.actor.use_kl_loss"]:
        return 0.0
    if f.get("actor_rollout_ref.actor.kl_loss_type", "low_var_kl") not in ("low_var_kl", "k3"):
        raise ValueError(f"actor_rollout_ref.actor.kl_loss_type={f['actor_rollout_ref.actor.kl_loss_type']!r}: "
                         "tao_lab's KL is k3 (verl's low_var_kl)")
    return float(f["actor_rollout_ref.actor.kl_loss_coef"])


def _inverse(table: dict, key: str) -> Callable[[Mapping[str, Any]], Any]:
    def back(f: Mapping[str, Any]):
        hits = [t for t, v in table.items() if v == f[key]]
        if not hits:
            raise ValueError(f"{key}={f[key]!r} has no tao_lab counterpart; choose from {list(table.values())}")
        return hits[0]
    return back


AR, ACT, EP, SH = "actor_rollout_ref", "actor_rollout_ref.actor", "tao.episode", "tao.shaping"

KNOBS: list[Knob] = [
    Knob("model path", "model.name", (f"{AR}.model.path",), _get("model.name"), _put("model.name"),
         lambda v: {f"{AR}.model.path": HF_IDS.get(v, v)}, lambda f: f[f"{AR}.model.path"]),
    Knob("LoRA rank", "model.lora_r", (f"{AR}.model.lora_rank",),
         lambda c: c.model.lora_r if c.model.lora else 0, _lora_rank_put,
         lambda v: {f"{AR}.model.lora_rank": v}, lambda f: int(f[f"{AR}.model.lora_rank"])),
    same("LoRA alpha", "model.lora_alpha", f"{AR}.model.lora_alpha"),
    Knob("LoRA target modules", "model.target_modules", (f"{AR}.model.target_modules",),
         _get("model.target_modules"), _put("model.target_modules"), _modules_to_verl, _modules_to_tao),
    same("gradient checkpointing", "model.gradient_checkpointing", f"{AR}.model.enable_gradient_checkpointing"),
    same("seed", "seed", "data.seed", f"{AR}.rollout.seed", cast=int),
    same("B (groups per update)", "data.prompts_per_step", "data.train_batch_size", f"{ACT}.ppo_mini_batch_size",
         cast=int),
    same("G (group size)", "rollout.group_size", f"{AR}.rollout.n", cast=int),
    same("temperature", "rollout.temperature", f"{AR}.rollout.temperature", cast=float),
    same("top_p", "rollout.top_p", f"{AR}.rollout.top_p", cast=float),
    same("response length", "rollout.max_new_tokens", f"{AR}.rollout.response_length", "data.max_response_length",
         cast=int),
    same("protocol", "rollout.protocol", f"{EP}.protocol"),
    same("max turns", "rollout.max_turns", f"{EP}.max_turns", cast=int),
    same("observation chars", "rollout.obs_max_chars", f"{EP}.obs_max_chars", cast=int),
    same("observation tokens", "rollout.obs_max_tokens", f"{EP}.obs_max_tokens", cast=int),
    same("tool timeout (s)", "rollout.tool_timeout_s", f"{EP}.tool_timeout_s", cast=float),
    same("silent call is a failure", "rollout.silent_is_failure", f"{EP}.silent_is_failure"),
    same("shaping kind", "shaping.kind", f"{SH}.kind"),
    same("shaping coef", "shaping.coef", f"{SH}.coef", cast=float),
    same("shaping gate", "shaping.gate", f"{SH}.gate"),
    same("additive alpha", "shaping.alpha", f"{SH}.alpha", cast=float),
    same("additive kappa", "shaping.kappa", f"{SH}.kappa", cast=float),
    Knob("Filter B", "filter.rules", ("algorithm.filter_groups.enable",), _rules_get("filter_b"),
         lambda c, on: _rules_put(c, "filter_b", on), lambda on: {"algorithm.filter_groups.enable": on},
         lambda f: bool(f["algorithm.filter_groups.enable"])),
    same("sampling rounds (dynamic refill)", "filter.max_rounds", "algorithm.filter_groups.max_num_gen_batches",
         cast=int),
    Knob("Filter A", "filter.rules/filter_a_mode", ("tao.filter_a_mode",), _filter_a_get, _filter_a_put,
         lambda m: {"tao.filter_a_mode": "off" if m == "off" else "mask"}, lambda f: f["tao.filter_a_mode"]),
    same("clip low", "loss.eps_low", f"{ACT}.clip_ratio_low", cast=float),
    same("clip high", "loss.eps_high", f"{ACT}.clip_ratio_high", cast=float),
    Knob("dual clip c", "loss.dual_clip", (f"{ACT}.clip_ratio_c",), _get("loss.dual_clip"), _put("loss.dual_clip"),
         lambda c: {f"{ACT}.clip_ratio_c": NEVER_BINDS if c is None else c},
         lambda f: None if f[f"{ACT}.clip_ratio_c"] >= NEVER_BINDS else float(f[f"{ACT}.clip_ratio_c"])),
    Knob("loss aggregation", "loss.agg", (f"{ACT}.loss_agg_mode",), _get("loss.agg"), _put("loss.agg"),
         lambda a: {f"{ACT}.loss_agg_mode": AGG[a]}, _inverse(AGG, f"{ACT}.loss_agg_mode")),
    same("Dr. GRPO normaliser", "loss.max_len", f"{ACT}.loss_scale_factor"),
    Knob("KL (k3)", "loss.beta", (f"{ACT}.use_kl_loss", f"{ACT}.kl_loss_coef", f"{ACT}.kl_loss_type"),
         _get("loss.beta"), _put("loss.beta"), _kl_to_verl, _kl_to_tao),
    same("entropy coeff", "loss.entropy_coeff", f"{ACT}.entropy_coeff", cast=float),
    same("lr", "optim.lr", f"{ACT}.optim.lr", cast=float),
    same("weight decay", "optim.weight_decay", f"{ACT}.optim.weight_decay", cast=float),
    Knob("Adam betas", "optim.betas", (f"{ACT}.optim.betas",), _get("optim.betas"), _put("optim.betas"),
         lambda b: {f"{ACT}.optim.betas": list(b)}, lambda f: tuple(float(x) for x in f[f"{ACT}.optim.betas"])),
    Knob("grad clip", "optim.grad_clip", (f"{ACT}.optim.clip_grad", f"{ACT}.grad_clip"), _get("optim.grad_clip"),
         _put("optim.grad_clip"),
         lambda g: dict.fromkeys((f"{ACT}.optim.clip_grad", f"{ACT}.grad_clip"), g or NEVER_BINDS),
         lambda f: 0.0 if f[f"{ACT}.optim.clip_grad"] >= NEVER_BINDS else float(f[f"{ACT}.optim.clip_grad"])),
    Knob("std normalisation", "update.adv_std", ("algorithm.norm_adv_by_std_in_grpo",), _get("update.adv_std"),
         _put("update.adv_std"), lambda s: {"algorithm.norm_adv_by_std_in_grpo": STD.get(s, True)},
         _inverse(STD, "algorithm.norm_adv_by_std_in_grpo")),
    same("update epochs", "update.epochs", f"{ACT}.ppo_epochs", cast=int),
    same("micro-batch", "update.micro_batch_size", f"{ACT}.ppo_micro_batch_size_per_gpu",
         f"{AR}.rollout.log_prob_micro_batch_size_per_gpu", cast=int),
    same("total steps", "run.steps", "trainer.total_training_steps", cast=int),
]


# ----------------------------------------------------------------------------------------------
# What verl 0.9.1 (with the plugin) can't carry


def not_carried(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(tao_lab setting, why verl can't carry it) for each setting of `cfg` that the export loses."""
    from .filters import FilterConfig
    from .methods.arms import HOOKS
    from .rewards import RewardConfig

    f, sh, out = cfg.filter, cfg.shaping, []

    def lose(cond: bool, what: str, why: str) -> None:
        if cond:
            out.append((what, why))

    lose("filter_a" in f.rules and f.filter_a_mode == "drop", "filter.filter_a_mode=drop",
         "verl 0.9.1 keeps every rollout row until the update (dropping before the advantage needs a custom "
         "ReplayBuffer); exported as mask mode, the authors' code")
    lose("filter_a" in f.rules and f.filter_a_mode == "mask" and f.filter_a_strength != 1.0,
         f"filter.filter_a_strength={f.filter_a_strength}", "verl's response mask is 0/1: only strength 1")
    lose(f.filter_a_scale_adv, "filter.filter_a_scale_adv=True", "the plugin masks, it does not scale advantages")
    lose("filter_b" in f.rules and f.refill == "duplicate", "filter.refill=duplicate",
         "verl's filter_groups refills with FRESH prompts (DAPO dynamic sampling); duplicating survivors is not "
         "reachable in 0.9.1")
    lose("filter_b" in f.rules and f.refill in ("none", "subsample"), f"filter.refill={f.refill}",
         "verl's filter_groups always samples fresh prompts until B groups survive")
    lose("filter_b" in f.rules and f.std_threshold != FilterConfig.std_threshold,
         f"filter.std_threshold={f.std_threshold}", "verl evicts a group when its acc values are all equal")
    for rule in ("overlong", "void_turn"):
        lose(rule in f.rules, f"filter rule {rule}", "verl has no such group/trajectory rule; rows are trained on")
    lose(cfg.data.oversample != 1.0, f"data.oversample={cfg.data.oversample}",
         "verl rolls out B prompts per batch (filter_groups adds batches only when groups are evicted)")
    lose(cfg.update.adv_std not in STD, f"update.adv_std={cfg.update.adv_std}",
         "verl's GRPO divides by the unbiased group std or by nothing; exported as unbiased")
    lose(sh.kind != "none" and sh.z_scope != "trajectory", f"shaping.z_scope={sh.z_scope}",
         "micro-batch entropy statistics live inside the actor's loss, which verl's policy-loss hook cannot see; "
         "exported as per-trajectory z")
    lose(sh.kind != "none" and not sh.detach, "shaping.detach=False",
         "the current-forward, non-detached entropy is not passed to verl's policy-loss hook; exported detached "
         "(old-policy entropy)")
    lose(sh.kind != "none" and sh.empty_gate_fallback, "shaping.empty_gate_fallback=True",
         "the micro-batch reading; not reachable with per-trajectory z")
    lose(cfg.loss.anti_clip, "loss.anti_clip=True", "AEPO anti-clip needs the gate inside verl's policy loss")
    lose(cfg.loss.agg == "drgrpo", "loss.agg=drgrpo",
         "carried as seq-mean-token-sum-norm, but verl's B counts only rows with a trainable token")
    lose(cfg.model.load_in_4bit, "model.load_in_4bit=True", "verl's FSDP actor has no 4-bit (QLoRA) base weights")
    lose(cfg.model.lora and cfg.model.lora_dropout > 0, f"model.lora_dropout={cfg.model.lora_dropout}",
         "verl 0.9.1 has no LoRA dropout key")
    lose(cfg.optim.schedule != "constant", f"optim.schedule={cfg.optim.schedule}",
         "verl's schedulers are constant / cosine with warm-up: no γ^t decay")
    lose(cfg.optim.optimizer in ("paged_adamw_8bit", "auto"), f"optim.optimizer={cfg.optim.optimizer}",
         "verl's actor uses torch AdamW (tao_lab's auto = paged 8-bit AdamW on CUDA)")
    lose(cfg.reward != RewardConfig(), "reward (non-default)",
         "the plugin's reward function scores with tao_lab.rewards' defaults")
    lose(not cfg.rollout.tools, "rollout.tools=False", "the plugin's agent loop always runs the tool")
    lose(cfg.rollout.quantize != "none", f"rollout.quantize={cfg.rollout.quantize}",
         "tao_lab's int8 copy is a CPU rollout path; verl samples with its own rollout engine")
    lose(cfg.update.is_correction != "none", f"update.is_correction={cfg.update.is_correction}",
         "not mapped onto verl's own rollout-correction keys; exported without the correction")
    lose(cfg.method in HOOKS, f"method={cfg.method} hooks",
         f"{cfg.method}'s prompt source / reward / advantage hooks have no verl counterpart in the plugin")
    lose(cfg.model.name in HF_IDS, f"model.name={cfg.model.name}",
         f"the bundled model (a dequantised GGUF) is exported as its Hugging Face id {HF_IDS.get(cfg.model.name)}")
    return out


# ----------------------------------------------------------------------------------------------
# Export and import


@dataclass
class VerlExport:
    """The verl keys of one tao_lab config: `flat` ({dotted key: value}) and what was lost."""

    flat: dict[str, Any]
    not_carried: list[tuple[str, str]]

    def overrides(self) -> list[str]:
        """Hydra overrides (as Python's compose() or the shell, before quoting, takes them)."""
        return [f"{k}={hydra_value(v)}" for k, v in self.flat.items()]

    def nested(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for key, value in self.flat.items():
            *parents, leaf = key.split(".")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return tree


def export_verl(cfg: TrainConfig) -> VerlExport:
    """TrainConfig -> the verl keys of every knob (plus the plugin's fixed settings) and the losses."""
    flat = dict(FIXED)
    for knob in KNOBS:
        flat.update(knob.to_verl(knob.get(cfg)))
    return VerlExport(flat, not_carried(cfg))


def import_verl(flat: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """verl keys ({dotted key: value}, e.g. from OmegaConf) -> `base` with every knob found set.
    A knob whose keys are missing keeps base's value; the config's own checks run on each field."""
    cfg = base or TrainConfig()
    for knob in KNOBS:
        if all(k in flat for k in knob.keys):
            cfg = knob.put(cfg, knob.to_tao(flat))
    return cfg


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (a verl config as plain containers)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, Mapping) else {key: v})
    return out


def hydra_value(v: Any) -> str:
    """A value as Hydra's override grammar reads it back with the same type."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    s = str(v)
    plain = s and all(c.isalnum() or c in "_-./:" for c in s) and s.lower() not in ("true", "false", "null")
    try:
        float(s)
        plain = False  # "1e-5" as a string must stay a string
    except ValueError:
        pass
    return s if plain else "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ----------------------------------------------------------------------------------------------
# Files and the command line


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig a run was started with (RUN_DIR/config.json, or that file itself)."""
    path = Path(run_dir)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json; give a run folder made by `tao-lab train`")
    saved = json.loads(path.read_text())
    if "train" not in saved:
        raise ValueError(f"{path} has no 'train' section: not a training run (an eval or SFT run?)")
    return config_from_dict(saved["train"])


def to_yaml(exp: VerlExport) -> str:
    """A standalone verl config file: verl's ppo_trainer defaults + every exported key."""
    import yaml

    head = {"hydra": {"searchpath": ["pkg://verl.trainer.config"]}, "defaults": ["ppo_trainer", "_self_"]}
    return ("# written by `tao-lab export-verl`; run it with the tao_lab_verl plugin (plugins/verl)\n"
            + yaml.safe_dump(head, sort_keys=False) + yaml.safe_dump(exp.nested(), sort_keys=False))


def command(exp: VerlExport, cfg: TrainConfig, config_file: str | None = None) -> str:
    """A shell script: write the data as verl parquet, then launch verl on one node with these keys
    (from examples/verl_tao.yaml + overrides, or from `config_file` written by to_yaml)."""
    py = ".venv-verl/bin/python"
    d = cfg.data
    data = [f"{py} -m tao_lab_verl.dataset {shlex.quote(src)} {split or '-'} $DATA/{name}.parquet{limit} "
            f"--template {cfg.rollout.template} --protocol {cfg.rollout.protocol} --n-demos {cfg.rollout.n_demos}"
            for src, split, name, limit in ((d.tasks, d.split, "train", f" {d.limit}" if d.limit else ""),
                                            (d.eval_tasks or d.tasks, d.eval_split, "val", ""))]
    if config_file:
        where = Path(config_file).resolve()
        launch = [f"--config-path={where.parent}", f"--config-name={where.stem}"]
    else:
        launch = ["--config-path=$PWD/examples", "--config-name=verl_tao", *map(shlex.quote, exp.overrides())]
    launch += ["data.train_files=$DATA/train.parquet", "data.val_files=$DATA/val.parquet",
               "actor_rollout_ref.rollout.name=${ENGINE:-vllm}",
               "trainer.n_gpus_per_node=${GPUS:-8}", "trainer.nnodes=${NODES:-1}"]
    return "\n".join([
        f"# tao_lab {cfg.method} run -> verl 0.9.1 + tao_lab_verl (one node; several: `ray start --head` on one,",
        "# `ray start --address=HEAD:6379` on the others, then this on the head with NODES=N)",
        "DATA=${DATA:-data/verl}; mkdir -p $DATA", *data,
        f"{py} -m verl.trainer.main_ppo \\\n  " + " \\\n  ".join(launch), ""])


def run_export(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> int:
    """`tao-lab export-verl`: the launch script on stdout, the knobs verl can't carry on stderr."""
    import sys

    cfg = load_run_config(run_dir)
    exp = export_verl(cfg)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(to_yaml(exp))
        print(f"verl config: {out}", file=sys.stderr)
    if (Path(run_dir) / "config_changes.jsonl").exists():
        exp.not_carried.append(("config_changes.jsonl", "changes made during the run are not applied: "
                                "this is the config the run started with"))
    for what, why in exp.not_carried:
        print(f"not carried: {what} -- {why}", file=sys.stderr)
    print(command(exp, cfg, out))
    return 0
