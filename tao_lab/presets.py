"""Presets (sizes for a machine) x methods (which switches are on), and `--set key=value` overrides.

A config is built in exactly three visible steps, in this order:

    make_config(preset, method, overrides)
        1. PRESETS[preset]()          sizes: model, batch, budgets, steps  (cpu_demo, gpu_qlora, test_tiny)
        2. METHODS[method](cfg)       the algorithm's switches: filters, shaping, refill
        3. apply_overrides(cfg, ...)  "section.field=value" strings, each validated by its dataclass

Methods: the arms of tao_lab/methods/arms.py (ARMS, here METHODS), whose docstring lists their switches.

Presets:
    cpu_demo    the embedded SmolLM2-135M, LoRA r=16 on all linear layers, fp32; sizes chosen so a
                step takes about a minute on 2 CPU cores
    gpu_qlora   Qwen/Qwen2.5-1.5B-Instruct (needs the hub once), 4-bit NF4 + double quantisation,
                LoRA on all linear layers, bf16 compute, gradient checkpointing, 8-bit paged AdamW.
                Peak memory ≈ 4.7 GiB by `qlora_memory_estimate` (formula below): an 8 GB consumer GPU.
    test_tiny   a tiny random Llama built in-process (ModelConfig.name="tiny-random"), seconds a step.
                A random model never stops, so every episode is overlong and real rewards are 0: with
                the TAO-RL filters every step is skipped (and says why). Tests pass
                `filter.rules=filter_b` and their own reward function (Trainer(reward_fn=...)).
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import fields, replace
from typing import Callable, Sequence

from .filters import FilterConfig
from .methods.arms import ARMS as METHODS
from .models import TINY_MODEL, ModelConfig
from .rollout import RolloutConfig
from .tasks import DEFAULT_TASKS
from .optim import OptimConfig
from .train_config import SECTIONS, DataConfig, RunConfig, TrainConfig
from .update import UpdateConfig

# ----------------------------------------------------------------------------------------------
# Presets: sizes


def cpu_demo() -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name="smollm2-135m", dtype="float32", lora=True, lora_r=16, lora_alpha=32),
        data=DataConfig(tasks=DEFAULT_TASKS, split="train", eval_split="test", prompts_per_step=2, oversample=2.0),
        rollout=RolloutConfig(group_size=4, max_new_tokens=192, max_turns=3, temperature=1.0,
                              template="few_shot", n_demos=2),
        filter=FilterConfig(min_n=2),            # G=4: one overlong member must not drop its group
        optim=OptimConfig(lr=1e-4, optimizer="adamw"),
        update=UpdateConfig(micro_batch_size=4),
        run=RunConfig(steps=8, out_dir="runs/cpu_demo", save_every=4),
    )


def gpu_qlora() -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name="Qwen/Qwen2.5-1.5B-Instruct", dtype="bfloat16", lora=True, lora_r=16,
                          lora_alpha=32, target_modules="all-linear", load_in_4bit=True, double_quant=True,
                          gradient_checkpointing=True),
        data=DataConfig(tasks="word", split="train", eval_split="test", prompts_per_step=4, oversample=2.0),
        rollout=RolloutConfig(group_size=8, max_new_tokens=1024, max_turns=5, temperature=1.0,
                              template="few_shot", n_demos=2),
        filter=FilterConfig(min_n=4),
        optim=OptimConfig(lr=1e-5, optimizer="auto"),   # auto = 8-bit paged AdamW on CUDA
        update=UpdateConfig(micro_batch_size=2),        # the (b, L, 151936) logits dominate the update
        run=RunConfig(steps=200, out_dir="runs/gpu_qlora", save_every=20),
    )


def test_tiny() -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name=TINY_MODEL, lora=True, lora_r=4, lora_alpha=8),
        data=DataConfig(tasks="arith-L1", split="train", limit=16, prompts_per_step=2, oversample=1.0),
        rollout=RolloutConfig(group_size=2, max_new_tokens=16, max_turns=2, template="zero_shot"),
        filter=FilterConfig(min_n=1),
        optim=OptimConfig(lr=1e-2, optimizer="adamw"),
        update=UpdateConfig(micro_batch_size=2),
        run=RunConfig(steps=3, out_dir="runs/test_tiny", save_every=1),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {"cpu_demo": cpu_demo, "gpu_qlora": gpu_qlora, "test_tiny": test_tiny}

def make_config(preset: str = "cpu_demo", method: str = "tao", overrides: Sequence[str] = ()) -> TrainConfig:
    """preset sizes -> method switches -> `--set` overrides (see the module docstring)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    return apply_overrides(METHODS[method](PRESETS[preset]()), overrides)


# ----------------------------------------------------------------------------------------------
# --set key=value

# Set by the trainer from other fields, so a value given here would be ignored: refuse it instead.
DERIVED = {
    "model.seed": "it is the run's `seed`: use --set seed=N",
    "rollout.seed": "each step's sampling seed derives from the run's `seed`: use --set seed=N",
    "filter.seed": "each step's refill seed derives from the run's `seed`: use --set seed=N",
    "filter.target_groups": "it is data.prompts_per_step (B): use --set data.prompts_per_step=N",
    "method": "the method is chosen with --method (it sets several switches at once)",
}


def parse_value(text: str, tp, key: str):
    """Text -> a value of the annotated type `tp` (bool, int, float, str, X | None, tuple[...])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        items = [x.strip() for x in text.split(",") if x.strip()]
        elem = args[0] if args else str
        return tuple(parse_value(x, elem, key) for x in items)
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"--set {key}={text}: {key} is a bool; write true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: {key} is an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: {key} is a number, got {text!r}") from None
    return text


def apply_overrides(cfg: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Apply "section.field=value" (or "seed=N") strings in order; each new value is validated by
    its dataclass, and a bad key or value raises ValueError naming the field and what is allowed."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: write section.field=value, e.g. shaping.coef=0.05")
        key, text = (s.strip() for s in item.split("=", 1))
        if key in DERIVED:
            raise ValueError(f"--set {key}: not settable here, {DERIVED[key]}")
        section, _, name = key.partition(".")
        top = {f.name for f in fields(TrainConfig)} - set(SECTIONS)
        if not name:
            if key not in top:
                raise ValueError(f"--set {key}: unknown key; top-level keys are {sorted(top)}, stage sections "
                                 f"are {list(SECTIONS)} (write section.field=value)")
            cfg = replace(cfg, **{key: parse_value(text, typing.get_type_hints(TrainConfig)[key], key)})
            continue
        if section not in SECTIONS:
            hint = difflib.get_close_matches(section, SECTIONS, n=1)
            raise ValueError(f"--set {key}: unknown section {section!r}"
                             + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; sections: {list(SECTIONS)}")
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        names = [f.name for f in fields(cls)]
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            raise ValueError(f"--set {key}: {cls.__name__} has no field {name!r}"
                             + (f" (did you mean {section}.{hint[0]}?)" if hint else "") + f"; fields: {names}")
        value = parse_value(text, hints[name], key)
        try:
            new = replace(getattr(cfg, section), **{name: value})   # runs the dataclass's own checks
        except ValueError as e:
            raise ValueError(f"--set {key}={text}: {e}") from None
        cfg = replace(cfg, **{section: new})
    return cfg


# ----------------------------------------------------------------------------------------------
# Peak memory of gpu_qlora, from parameter counts


def qlora_memory_estimate(layers: int = 28, hidden: int = 1536, intermediate: int = 8960, heads: int = 12,
                          kv_heads: int = 2, vocab: int = 151_936, lora_r: int = 16, rows: int = 64,
                          prompt_len: int = 512, completion_len: int = 1024, micro_batch: int = 2,
                          cuda_context_gib: float = 0.5) -> dict[str, float]:
    """Peak GPU memory (GiB) of one gpu_qlora step; defaults = Qwen2.5-1.5B-Instruct's architecture.

    With P_lin = linear-layer parameters, P_emb = vocab x hidden (tied embedding/lm_head, kept in
    bf16 by bitsandbytes), P_lora = r x Σ(in + out) over every adapted linear layer, D = hidden/heads,
    T = prompt_len + completion_len, b = micro_batch:

        base weights   P_lin x 0.516 B      NF4: 0.5 B/param + block-64 absmax, double-quantised to
                                            8 bit (1/64 B) + an fp32 constant per 256 blocks
                       + P_emb x 2 B        embedding = lm_head (tied), left in bf16
        adapter        P_lora x 10 B        fp32 weights 4 + fp32 grads 4 + two 8-bit Adam moments 2
        KV cache       rows x layers x 2 x kv_heads x D x T x 2 B      (rollout phase, bf16)
        logits         b x L x V x 8 B      bf16 logits 2 + fp32 chunk copies kept for backward 4
                                            + bf16 grad of the logits 2  (L = completion_len)
        activations    b x T x hidden x layers x 2 B                    (checkpointed layer inputs)
                       + b x T x (4 hidden + 3 intermediate) x 2 B x 2  (one layer recomputed + grads)
        peak = weights + adapter + CUDA context + max(KV cache, logits + activations)

    The rollout and the update do not overlap, so the peak is the larger of the two phases.
    """
    D = hidden // heads
    kv = kv_heads * D
    per_layer_lin = hidden * hidden * 2 + hidden * kv * 2 + hidden * intermediate * 3
    p_lin = layers * per_layer_lin
    p_emb = vocab * hidden
    per_layer_lora = lora_r * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + intermediate) * 3)
    p_lora = layers * per_layer_lora
    T = prompt_len + completion_len
    gib = 2 ** 30
    weights = (p_lin * (0.5 + 0.016) + p_emb * 2) / gib
    adapter = p_lora * (4 + 4 + 2) / gib
    kv_cache = rows * layers * 2 * kv * T * 2 / gib
    logits = micro_batch * completion_len * vocab * 8 / gib
    acts = (micro_batch * T * hidden * layers * 2 + micro_batch * T * (4 * hidden + 3 * intermediate) * 2 * 2) / gib
    update = logits + acts
    return {"params_linear_M": p_lin / 1e6, "params_embedding_M": p_emb / 1e6, "params_lora_M": p_lora / 1e6,
            "weights_gib": weights, "adapter_and_optimizer_gib": adapter, "kv_cache_gib": kv_cache,
            "update_activations_gib": update, "cuda_context_gib": cuda_context_gib,
            "peak_gib": weights + adapter + cuda_context_gib + max(kv_cache, update)}
