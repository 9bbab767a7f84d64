"""Plain GRPO versus TAO-RL on the embedded model, several seeds, on CPU: curves and held-out accuracy.

    nohup nice -n 10 .venv/bin/python scripts/compare_methods.py > runs/compare/log.txt 2>&1 &

What it does, for each seed (seed-major, so a grid cut short still has both methods per seed):
  - trains `cpu_demo` with --method grpo and with --method tao on the same task level, the same
    rollouts budget per step (both roll out B x oversample prompts; GRPO trains on every group,
    TAO-RL filters and refills to B), the same seed (same initial adapter, same prompt stream);
  - evaluates the trained adapter on the held-out split (Avg@k, Pass@k, tool telemetry).
The base model is evaluated once (a fresh LoRA adapter is the identity, so "before" is the same for
every run). Runs live in runs/compare/<method>_s<seed>/ and are resumable: rerunning the command
skips finished runs and resumes interrupted ones from their checkpoint.

After every finished run it rewrites benchmarks/results/compare_methods.json (per-step curves of
reward, tool-call validity, the share of degenerate groups — what Filter B drops — and post-tool
entropy; held-out accuracy before/after; means over seeds) and compare_methods.svg (the chart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CURVES = {"reward/mean": "rollout reward", "tool/success_rate": "tool-call validity",
          "groups/degenerate_rate": "degenerate groups (Filter-B drop rate)",
          "entropy/post_tool_mean": "post-tool entropy (nats)"}


def run_one(method: str, seed: int, args, out: Path) -> dict:
    """Train (or resume / skip) one run, then evaluate it; returns its summary row."""
    from tao_lab import checkpoint
    from tao_lab.presets import make_config
    from tao_lab.trainer import Trainer

    run = out / f"{method}_s{seed}"
    overrides = [f"data.tasks={args.tasks}", f"run.steps={args.steps}", f"run.out_dir={run}", f"seed={seed}",
                 f"run.save_every={args.save_every}"] + list(args.set or [])
    cfg = make_config("cpu_demo", method, overrides)
    done = checkpoint.latest(run) or 0
    t = time.perf_counter()
    if done < args.steps:
        tr = Trainer.resume(run) if done else Trainer(cfg, run)
        with tr:
            tr.on_step = lambda log: print(f"  {method} s{seed} step {log.step}: reward "
                                           f"{log.metrics.get('reward/mean', float('nan')):.3f} "
                                           f"({log.metrics['time/step_s']:.0f} s)" + (" skipped" if log.skipped else ""),
                                           flush=True)
            tr.train()
    eval_dir = run / "evals" / f"step_{args.steps:06d}"
    if not (eval_dir / "metrics.jsonl").exists():
        evaluate_run(run, args)
    return {"method": method, "seed": seed, "run": str(run), "train_s": time.perf_counter() - t}


def _eval_cfg(args):
    from tao_lab.evaluate import EvalConfig
    return EvalConfig(tasks=args.tasks, split="test", limit=args.eval_n, k=args.eval_k, max_turns=3,
                      max_new_tokens=args.max_new_tokens)


def evaluate_run(run: Path, args) -> dict:
    from tao_lab.tasks import load_tasks
    from tao_lab.evaluate import evaluate, load_trained, save_eval

    model, tok, cfg, step = load_trained(run)
    ecfg = _eval_cfg(args)
    trajs, m = evaluate(model, tok, load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit), ecfg, cfg.rollout)
    save_eval(run, f"step_{step:06d}", trajs, m, config={"eval": ecfg.__dict__})
    return m


def evaluate_base(out: Path, args) -> dict:
    """Held-out accuracy of the base model (= every run at step 0), computed once."""
    from tao_lab.models import load_policy
    from tao_lab.presets import make_config
    from tao_lab.records import RunStore
    from tao_lab.tasks import load_tasks
    from tao_lab.evaluate import evaluate, save_eval

    base = out / "base"
    store = RunStore(base / "evals" / "step_000000")
    if not store.metrics().empty:
        return store.metrics().iloc[-1].to_dict()
    cfg = make_config("cpu_demo", "tao", [f"data.tasks={args.tasks}"])
    model, tok = load_policy(cfg.model.name, lora=False)
    ecfg = _eval_cfg(args)
    trajs, m = evaluate(model.eval(), tok, load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit), ecfg, cfg.rollout)
    save_eval(base, "step_000000", trajs, m, config={"eval": ecfg.__dict__})
    return m


def summarise(out: Path, args, base: dict, rows: list[dict]) -> dict:
    from tao_lab.records import RunStore

    k = args.eval_k
    curves, finals = [], []
    for r in rows:
        m = RunStore(r["run"]).metrics()
        if m.empty:
            continue
        for col, label in CURVES.items():
            if col in m:
                for s, v in zip(m["step"], m[col]):
                    curves.append({"method": r["method"], "seed": r["seed"], "step": int(s), "metric": label,
                                   "value": None if pd.isna(v) else float(v)})
        ev = RunStore(Path(r["run"]) / "evals" / f"step_{args.steps:06d}").metrics()
        after = ev.iloc[-1].to_dict() if not ev.empty else {}
        finals.append({"method": r["method"], "seed": r["seed"], "steps": int(m["step"].max()),
                       "skipped_steps": int(m["skipped"].sum()), "train_s": float(m["time/step_s"].sum()),
                       f"heldout_avg@{k}_after": after.get(f"eval/avg@{k}"),
                       f"heldout_pass@{k}_after": after.get(f"eval/pass@{k}"),
                       "heldout_tool_success_after": after.get("tool/success_rate"),
                       **{f"last3_{c}": float(m[c].tail(3).mean()) for c in CURVES if c in m}})
    fin = pd.DataFrame(finals)
    by_method = {}
    for meth, g in (fin.groupby("method") if not fin.empty else []):
        cols = [c for c in g.columns if c not in ("method", "seed") and g[c].notna().any()]
        by_method[meth] = {"n_seeds": int(len(g)), **{
            c: {"mean": float(g[c].mean()), "sd": float(g[c].std(ddof=1)) if len(g) > 1 else None} for c in cols}}
    doc = {"command": "nice -n 10 .venv/bin/python scripts/compare_methods.py " + " ".join(sys.argv[1:]),
           "settings": vars(args), "heldout_before": {f"avg@{k}": base.get(f"eval/avg@{k}"),
                                                      f"pass@{k}": base.get(f"eval/pass@{k}"),
                                                      "tool_success": base.get("tool/success_rate")},
           "runs": finals, "by_method": by_method, "curves": curves,
           "grid_planned": [f"{m}_s{s}" for s in args.seeds for m in args.methods],
           "grid_done": [f"{f['method']}_s{f['seed']}" for f in finals if f["steps"] >= args.steps]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compare_methods.json").write_text(json.dumps(doc, indent=2, default=float))
    _chart(pd.DataFrame(curves), RESULTS / "compare_methods.svg")
    return doc


def _chart(curves: pd.DataFrame, path: Path) -> None:
    """Mean over seeds (line) and each seed (faint) per metric and method."""
    if curves.empty:
        return
    import altair as alt
    import vl_convert as vlc
    colour = alt.Color("method:N", scale=alt.Scale(domain=["grpo", "tao"], range=["#7f7f7f", "#d62728"]))
    base = alt.Chart().encode(x=alt.X("step:Q"), color=colour)
    seeds = base.mark_line(opacity=0.25, strokeWidth=1).encode(y=alt.Y("value:Q", title=None), detail="seed:N")
    mean = base.mark_line(strokeWidth=2.5, point=True).encode(y="mean(value):Q")
    chart = alt.layer(seeds, mean, data=curves).properties(width=260, height=150).facet(
        facet=alt.Facet("metric:N", title=None), columns=2).resolve_scale(y="independent").properties(
        title="GRPO vs TAO-RL on CPU (SmolLM2-135M + LoRA), mean over seeds")
    path.write_text(vlc.vegalite_to_svg(chart.to_dict()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="arith-L3", help="bundled level where the base model is weak but not at zero")
    ap.add_argument("--methods", nargs="+", default=["grpo", "tao"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=8, help="held-out tasks")
    ap.add_argument("--eval-k", type=int, default=4, help="samples per held-out task")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="eval completion budget (as cpu_demo's rollouts)")
    ap.add_argument("--set", nargs="*", help="extra overrides for every run (section.field=value)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare"))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 because a niced background job on 2 shared cores loses most of its "
                         "time in thread barriers with 2 (measured 0.6 ms vs 5.6 ms for the same matmul)")
    ap.add_argument("--summarise-only", action="store_true", help="rewrite the JSON and chart from runs on disk")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.summarise_only:
        from tao_lab.records import RunStore
        base = RunStore(out / "base" / "evals" / "step_000000").metrics().iloc[-1].to_dict()
        rows = [{"method": m, "seed": sd, "run": str(out / f"{m}_s{sd}")} for sd in args.seeds for m in args.methods
                if (out / f"{m}_s{sd}" / "metrics.jsonl").exists()]
        doc = summarise(out, args, base, rows)
        print(json.dumps(doc["by_method"], indent=1, default=float))
        return 0
    print(f"base model evaluation on {args.tasks}/test ...", flush=True)
    base = evaluate_base(out, args)
    print(f"  before: avg@{args.eval_k} {base.get(f'eval/avg@{args.eval_k}'):.3f}", flush=True)
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            print(f"{method} seed {seed} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            rows.append(run_one(method, seed, args, out))
            doc = summarise(out, args, base, rows)
            print(json.dumps(doc["by_method"], default=float)[:800], flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; {RESULTS / 'compare_methods.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
