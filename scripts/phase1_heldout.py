"""ET-Agent's phase 1 on a large paired held-out sample: the base policy vs a phase-1 SFT adapter.

    .venv/bin/python scripts/phase1_heldout.py base --out runs/phase1_heldout
    .venv/bin/python scripts/phase1_heldout.py runs/et_agent_p1/sft --out runs/phase1_heldout

arith-L3 test, 64 tasks x k = 4 (256 samples), the grids' evaluation settings (192 new tokens, 3
turns, seed 1234); each evaluation is saved under OUT/evals/<label> and the second call prints the
per-task paired difference with a bootstrap interval over tasks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tao_lab.evaluate import EvalConfig, evaluate, save_eval
from tao_lab.models import load_policy
from tao_lab.presets import make_config
from tao_lab.records import RunStore, correct_column
from tao_lab.sft import load_sft_policy
from tao_lab.tasks import load_tasks


def per_task(eval_dir: Path):
    t = RunStore(eval_dir).trajectories([0])
    return t.assign(c=correct_column(t).astype(float)).groupby("task_id")["c"].mean()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy", help="'base' or an SFT run folder (tao-lab sft / tao-lab et-agent OUT/sft)")
    ap.add_argument("--out", default="runs/phase1_heldout")
    ap.add_argument("--tasks", default="arith-L3")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    cfg = make_config("cpu_demo", "grpo", [f"data.tasks={args.tasks}"])
    ecfg = EvalConfig(tasks=args.tasks, split="test", limit=args.n, k=args.k, max_turns=3, max_new_tokens=192)
    held = load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit)
    base = args.policy == "base"
    model, tok = load_policy("smollm2-135m", lora=False) if base else load_sft_policy(args.policy, cfg.model, 0)
    label = "base" if base else "sft"
    trajs, m = evaluate(model.eval(), tok, held, ecfg, cfg.rollout, reward=cfg.reward, progress=True)
    save_eval(args.out, label, trajs, m, config={"eval": ecfg.__dict__, "model": args.policy})
    print(label, json.dumps({k: round(v, 4) for k, v in m.items() if k.startswith(("eval/", "behaviour/"))}))
    evals = Path(args.out) / "evals"
    if (evals / "base").is_dir() and (evals / "sft").is_dir():
        d = (per_task(evals / "sft") - per_task(evals / "base")).dropna().to_numpy()
        rng = np.random.default_rng(0)
        boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(5000)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        print(f"sft - base, per-task paired over {len(d)} tasks: {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
