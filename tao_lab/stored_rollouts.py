"""Sample once into a run store, reuse after: the held-out rollouts notebooks 03 and 04 share.

Both notebooks study one set of few-shot tool rollouts of the embedded model. `sample_or_load`
samples, scores and stores them the first time and reads them back every time after; `store_name`
names the folder after the settings, so smoke and full size never mix.
"""

from __future__ import annotations

from pathlib import Path

from .records import Trajectory
from .rollout import RolloutConfig, generate


def store_name(sources: list[str], n_per_source: int, group_size: int, max_new_tokens: int, seed: int = 1) -> str:
    """The folder name of sample_or_load's store: the settings, so smoke and full size never mix."""
    return f"nb_tool_{n_per_source * len(sources)}x{group_size}_{max_new_tokens}_s{seed}"


def sample_or_load(sources: list[str], n_per_source: int, group_size: int, max_new_tokens: int,
                   seed: int = 1, run_dir: str | Path | None = None, progress: bool = True
                   ) -> tuple[list[Trajectory], Path]:
    """Few-shot tool rollouts of the embedded model on held-out tasks, stored once and then reused.

    The run store at `run_dir` (default: rundir.notebook_run_dir(store_name(...)), a folder named
    after the settings under $TAO_LAB_RUN_DIR, else under runs/ next to the notebook) is read when
    it has a step; otherwise the rollouts are sampled, scored and written there. Delete the folder
    to sample anew. Returns (trajectories, run_dir).
    """
    from .records import RunStore
    from .rundir import notebook_run_dir

    run_dir = Path(run_dir or notebook_run_dir(store_name(sources, n_per_source, group_size, max_new_tokens, seed)))
    store = RunStore(run_dir)
    if store.steps():
        trajs = store.read_step(store.steps()[0])
        print(f"loaded {len(trajs)} stored trajectories from {run_dir}")
        return trajs, run_dir

    from .models import load_policy
    from .rewards import score
    from .tasks import load_tasks

    model, tok = load_policy("smollm2-135m", lora=False)
    tasks = [t for s in sources for t in load_tasks(s, split="test", limit=n_per_source)]
    cfg = RolloutConfig(group_size=group_size, max_new_tokens=max_new_tokens, template="few_shot", seed=seed)
    trajs, stats = generate(model.eval(), tok, tasks, cfg, progress=progress)
    _, reward_metrics = score(trajs)
    store.write_config({"sources": sources, "n_per_source": n_per_source, "rollout": cfg.__dict__})
    store.write_step(0, trajs)
    store.append_metrics({"step": 0, **stats.as_metrics(), **reward_metrics})
    print(f"sampled {len(trajs)} episodes in {stats.wall_s:.0f} s "
          f"({stats.sampled_tokens_per_s:.0f} sampled tokens/s); stored in {run_dir}")
    return trajs, run_dir
