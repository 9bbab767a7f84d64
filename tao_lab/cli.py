"""`tao-lab` command line: fetch-model, rollout, demo (train / eval / report join as they land).

Each subcommand is a thin wrapper over library calls a notebook could make itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def cmd_fetch_model(args) -> int:
    from .models import fetch_model

    t = time.perf_counter()
    path = fetch_model(force=args.force)
    print(path)
    print(f"(ready in {time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return 0


def _rollout_run(model, tok, tasks, cfg, out_dir: Path, step: int, pool, label: str):
    from .records import RunStore
    from .rewards import RewardConfig, score
    from .rollout import generate

    trajs, stats = generate(model, tok, tasks, cfg, pool=pool, progress=True)
    rewards, rmetrics = score(trajs, RewardConfig())
    store = RunStore(out_dir)
    store.write_step(step, trajs, template=[label] * len(trajs))
    store.append_metrics({"step": step, "label": label, **stats.as_metrics(), **rmetrics})
    return trajs, stats, rmetrics


def _summary_line(label, trajs, stats, rmetrics) -> str:
    n = len(trajs)
    with_call = sum(t.n_tool_calls > 0 for t in trajs)
    valid = sum(t.n_valid_calls for t in trajs)
    calls = sum(t.n_tool_calls for t in trajs)
    acc = sum((t.reward or 0) for t in trajs) / n
    return (f"{label:10s} episodes {n:3d} | used the tool {with_call / n:6.1%} | valid calls "
            f"{valid}/{calls} | accuracy {acc:6.1%} | {stats.sampled_tokens_per_s:6.1f} sampled tok/s")


def cmd_rollout(args) -> int:
    from .models import load_policy
    from .rollout import RolloutConfig
    from .sandbox import SandboxConfig, SandboxPool
    from .tasks import load_tasks

    model, tok = load_policy(args.model, lora=False)
    model.eval()
    tasks = load_tasks(args.tasks, split=args.split, limit=args.n)
    out = Path(args.out)
    cfg = RolloutConfig(group_size=args.group, max_new_tokens=args.max_new_tokens, template=args.template,
                        protocol=args.protocol, temperature=args.temperature, seed=args.seed)
    with SandboxPool(config=SandboxConfig(timeout_s=cfg.tool_timeout_s)) as pool:
        trajs, stats, rm = _rollout_run(model, tok, tasks, cfg, out, 0, pool, args.template)
    print(_summary_line(args.template, trajs, stats, rm))
    print(f"run store: {out}")
    return 0


def cmd_demo(args) -> int:
    """The walkthrough, headless: the sandbox, then zero-shot vs few-shot rollouts on the embedded
    model, saved as a run store with an HTML token view of one episode."""
    from .models import load_policy
    from .tokenview import token_view_html
    from .rollout import RolloutConfig
    from .sandbox import SandboxConfig, SandboxPool, run_code
    from .tasks import load_tasks

    out = Path(args.out)
    res = run_code("print(sum(i * i for i in range(10**5)))")
    print(f"sandbox: status={res.status} tier={res.tier} stdout={res.stdout.strip()!r} "
          f"in {res.duration_s * 1000:.0f} ms")
    model, tok = load_policy("smollm2-135m", lora=False)
    model.eval()
    tasks = load_tasks(args.tasks, split="test", limit=args.n)
    lines, best = [], None
    with SandboxPool(config=SandboxConfig(timeout_s=3.0)) as pool:
        for step, template in enumerate(("zero_shot", "few_shot")):
            cfg = RolloutConfig(group_size=args.group, max_new_tokens=args.max_new_tokens,
                                template=template, seed=args.seed)
            trajs, stats, rm = _rollout_run(model, tok, tasks, cfg, out, step, pool, template)
            lines.append(_summary_line(template, trajs, stats, rm))
            with_calls = [t for t in trajs if t.n_tool_calls]
            if with_calls:
                best = max(with_calls, key=lambda t: (t.reward or 0, t.n_valid_calls))
    print("\n".join(lines))
    if best is not None:
        html = out / "episode.html"
        html.write_text(token_view_html(best, tok, color_by="entropy", standalone=True))
        print(f"token view of one episode: {html}")
    print(f"run store: {out}  (read it back with tao_lab.records.RunStore)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tao-lab", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch-model", help="fetch and cache the embedded default model; print its folder")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    f.set_defaults(fn=cmd_fetch_model)

    r = sub.add_parser("rollout", help="roll out a task set with the tool and save a run store")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--tasks", default="arith-L2")
    r.add_argument("--split", default="test")
    r.add_argument("--n", type=int, default=8, help="number of tasks")
    r.add_argument("--group", type=int, default=4, help="episodes per task (G)")
    r.add_argument("--max-new-tokens", type=int, default=256)
    r.add_argument("--template", default="few_shot", choices=["zero_shot", "few_shot"])
    r.add_argument("--protocol", default="fenced", choices=["fenced", "tags"])
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", default="runs/rollout")
    r.set_defaults(fn=cmd_rollout)

    d = sub.add_parser("demo", help="headless walkthrough on the embedded model")
    d.add_argument("--tasks", default="arith-L2")
    d.add_argument("--n", type=int, default=8)
    d.add_argument("--group", type=int, default=4)
    d.add_argument("--max-new-tokens", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
