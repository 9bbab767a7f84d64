"""The run's config: one dataclass per stage, composed in TrainConfig, and how it is stored and read back.

    DataConfig, RunConfig      the sections that belong to no single stage module (the others live
                               with their stage: ModelConfig in models.py, RolloutConfig in rollout.py, ...)
    TrainConfig                every section plus the loop's own switches (method, seed, work, ...)
    check_sampler              the one check across sections (int8 rollouts need the IS correction)
    SECTIONS                   section name -> dataclass (config_from_dict; presets' --set)
    config_to_dict / config_from_dict   the JSON form kept in config.json and in every checkpoint
    resumed_config             the config a resumed run continues with (config.json + recorded changes)

The loop (trainer.py) reads the config; the per-step values it derives from it (the step's seeds,
the filter stage's config of a step) are defined there.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields

from . import filters as filters_mod
from .advantages import ShapingConfig
from .config_changes import diff, replay
from .config_changes import read as read_changes
from .loss import LossConfig
from .methods.arpo import ArpoConfig
from .methods.e3tir import E3TIRConfig
from .methods.et_agent import EtAgentConfig
from .methods.toolexpander import ToolExpanderConfig
from .models import ModelConfig
from .optim import OptimConfig
from .records import RunStore
from .rewards import RewardConfig
from .rollout import RolloutConfig
from .tasks import DEFAULT_TASKS
from .update import UpdateConfig


@dataclass
class DataConfig:
    """Which tasks feed training and evaluation, and how many per step."""

    tasks: str = DEFAULT_TASKS       # tasks.load_tasks source: bundled name, JSONL path or hf:...
    split: str | None = "train"      # training split (None for a JSONL file)
    eval_tasks: str | None = None    # held-out source; None = same as `tasks`
    eval_split: str | None = "test"  # held-out split
    limit: int | None = None         # use only the first N training tasks
    prompts_per_step: int = 4        # B: groups per update (the refill target of the filters)
    oversample: float = 1.0          # prompts rolled out per step = ceil(B · oversample) (code: 2-3)

    def __post_init__(self):
        from . import checks

        checks.number(self, "prompts_per_step", lo=1, integer=True)
        checks.number(self, "oversample", lo=1, hi=100)         # 1 = no oversampling (code: 2-3)
        checks.number(self, "limit", lo=1, integer=True, none_ok=True)
        for name in ("tasks", "split", "eval_tasks", "eval_split"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value) or (name == "tasks" and value is None):
                raise ValueError(f"DataConfig.{name}={value!r}: must be a non-empty string"
                                 + ("" if name == "tasks" else " or None"))


@dataclass
class RunConfig:
    """Length of the run, where it is stored, how often it is checkpointed."""

    steps: int = 10                  # trainer steps in total (resume continues up to this)
    out_dir: str = "runs/train"      # run store folder (config, metrics, steps, checkpoints)
    save_every: int = 5              # checkpoint every N steps (and at the end, and on interrupt)
    keep_checkpoints: int = 2        # newest complete checkpoints kept on disk
    store_trajectories: bool = True  # write each step's trajectories (parquet) to the run store

    def __post_init__(self):
        from . import checks

        checks.number(self, "steps", lo=0, integer=True)
        checks.number(self, "save_every", lo=1, integer=True)
        checks.number(self, "keep_checkpoints", lo=1, integer=True)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"RunConfig.out_dir={self.out_dir!r}: must be a non-empty path")
        checks.flag(self, "store_trajectories")


@dataclass
class TrainConfig:
    """Everything a run needs; one field per stage. `seed` seeds every stage (see step_seed)."""

    method: str = "tao"              # the arm (methods/arms.py ARMS sets its switches, HOOKS its hooks)
    seed: int = 0                    # adapter init, task order, sampling and refill all derive from it
    work: str = "equal_groups"       # what arms share per update: filters.WORK_MODES, step_filter_config
    merge_for_rollout: bool = True   # sample from W + s·BA merged (3x fewer matmuls); base restored exactly after
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    filter: filters_mod.FilterConfig = field(default_factory=filters_mod.FilterConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # the seed methods' own knobs (read only by their hooks; see tao_lab/methods/)
    arpo: ArpoConfig = field(default_factory=ArpoConfig)
    e3tir: E3TIRConfig = field(default_factory=E3TIRConfig)
    et_agent: EtAgentConfig = field(default_factory=EtAgentConfig)
    toolexpander: ToolExpanderConfig = field(default_factory=ToolExpanderConfig)

    def __post_init__(self):
        from . import checks

        checks.choice(self, "work", filters_mod.WORK_MODES)
        checks.number(self, "seed", lo=0, integer=True)


def check_sampler(cfg: TrainConfig) -> None:
    """A rollout that does not sample from the policy itself needs the off-policy correction.

    An error, not a warning: without it the int8 sampler's log-probs would enter the loss as the
    old log-probs, so the first pass's ratio would clip on quantisation noise and the gradient be
    biased, silently. (Checked by the Trainer at start and at every step, not in TrainConfig, so
    that `--set` overrides may name the two fields in either order.)"""
    if cfg.rollout.quantize != "none" and cfg.update.is_correction == "none":
        raise ValueError(f"rollout.quantize={cfg.rollout.quantize!r} samples from a quantised copy, not the "
                         "policy: set update.is_correction='tis' (truncated importance sampling)")


# The stage sections of TrainConfig and their dataclasses (used by config_from_dict and --set).
SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig, "reward": RewardConfig,
    "filter": filters_mod.FilterConfig, "shaping": ShapingConfig, "loss": LossConfig,
    "optim": OptimConfig, "update": UpdateConfig, "run": RunConfig,
    "arpo": ArpoConfig, "e3tir": E3TIRConfig, "et_agent": EtAgentConfig, "toolexpander": ToolExpanderConfig,
}


def config_to_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> TrainConfig:
    """Inverse of config_to_dict (lists become tuples where the dataclass wants them). A section a
    stored config lacks (a run made before it existed) takes its defaults."""
    kw = {"work": "equal_rollouts"}      # a stored config without `work` predates it: what it did
    for f in fields(TrainConfig):
        if f.name in SECTIONS:
            kw[f.name] = SECTIONS[f.name](**d.get(f.name, {}))
        elif f.name in d:
            kw[f.name] = d[f.name]
    return TrainConfig(**kw)


def resumed_config(run_dir, saved_config: dict, step: int) -> TrainConfig:
    """The config a run resumed after `step` continues with: the run's first config (config.json)
    with the changes recorded up to step + 1 (the step it redoes) replayed, and the checkpoint's
    run.steps; the checkpoint's config where the run has no config.json. A field changed after the
    last recorded step never ran, so it is not carried over (a warning names it)."""
    store = RunStore(run_dir)
    first = store.read_config().get("train") if (store.path / "config.json").exists() else None
    base = first if first is not None else saved_config
    changes = [c for c in read_changes(run_dir) if c["step"] <= step + 1]
    replayed = config_from_dict(replay(base, changes, step + 1))
    # the run's length is the last invocation's (`tao-lab resume --steps N` lengthened it)
    replayed.run.steps = config_from_dict(saved_config).run.steps
    redone = {c["field"] for c in changes if c["step"] == step + 1} | {"run.steps"}   # after the checkpoint
    unused = [c["field"] for c in diff(config_to_dict(config_from_dict(saved_config)), config_to_dict(replayed))
              if c["field"] not in redone]
    if first is not None and unused:
        warnings.warn(f"resuming {run_dir} after step {step}: {unused} were changed after the last step that "
                      f"ran and are not carried over (change them again on the resumed Trainer)", stacklevel=3)
    return replayed
