"""`tao-lab` command line: fetch-model, rollout, train, resume, eval, report, demo, grid, compare.

Each subcommand is a thin wrapper over library calls a notebook could make itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
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

    try:   # bad input fails here, before the model loads
        tasks = load_tasks(args.tasks, split=args.split, limit=args.n)
        cfg = RolloutConfig(group_size=args.group, max_new_tokens=args.max_new_tokens, template=args.template,
                            protocol=args.protocol, temperature=args.temperature, seed=args.seed)
    except ValueError as e:
        return _error(e)
    out = Path(args.out)
    model, tok = load_policy(args.model, lora=False)
    model.eval()
    with SandboxPool(config=SandboxConfig(timeout_s=cfg.tool_timeout_s)) as pool:
        trajs, stats, rm = _rollout_run(model, tok, tasks, cfg, out, 0, pool, args.template)
    print(_summary_line(args.template, trajs, stats, rm))
    print(f"run store: {out}")
    return 0


def _print_step(log) -> None:
    m = log.metrics
    extra = f" (skipped: {log.skip_reason})" if log.skipped else ""
    print(f"step {log.step:3d} | reward {m.get('reward/mean', float('nan')):.3f} | accuracy "
          f"{m.get('reward/accuracy', float('nan')):.2f} | tool success {m.get('tool/success_rate', float('nan')):.2f}"
          f" | Filter-B drop {m.get('filter/b_drop_rate', 0):.2f} | {m['time/step_s']:.0f} s{extra}", flush=True)


def _eval_line(label: str, m: dict) -> str:
    k = int(m["eval/k"])
    return (f"{label:>8s}: avg@{k} {m[f'eval/avg@{k}']:.3f} | pass@{k} {m[f'eval/pass@{k}']:.3f} | "
            f"tool used {m['tool/used_rate']:.2f} | tool success {m['tool/success_rate']:.2f} | "
            f"{m['time/eval_s']:.0f} s")


def cmd_train(args) -> int:
    from . import rundir
    from .presets import make_config
    from .trainer import Trainer

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    if args.steps is not None:
        overrides.append(f"run.steps={args.steps}")
    if args.work:
        overrides.append(f"work={args.work}")
    if args.tasks:
        overrides.append(f"data.tasks={args.tasks}")
    try:
        cfg = make_config(args.preset, args.method, overrides)
        _check_tasks(cfg.data)    # bad input fails here, before the model loads
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.run.out_dir)
    rundir.check_fresh(out)    # before the model loads; main() prints the RunDirError
    if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        print(f"error: {out} already holds a run; continue it with `tao-lab resume {out}` or pass --out NEW_DIR",
              file=sys.stderr)
        return 2
    print(f"{cfg.method} on {cfg.data.tasks} with {cfg.model.name}: {cfg.run.steps} steps, work={cfg.work} -> {out}",
          file=sys.stderr)
    with Trainer(cfg, out, on_step=_print_step if args.quiet_bar else None) as tr:
        tr.train(progress=not args.quiet_bar)
    print(f"run store: {out}  (report: tao-lab report {out})")
    return 0


def _check_tasks(data) -> None:
    """Load the training and held-out task sets of a DataConfig once (a file read), so that a wrong
    name fails in a second with one line instead of after the model has loaded."""
    from .tasks import load_tasks

    load_tasks(data.tasks, split=data.split, limit=data.limit)
    if data.eval_tasks:
        load_tasks(data.eval_tasks, split=data.eval_split)


def cmd_resume(args) -> int:
    from .trainer import Trainer

    with Trainer.resume(args.run_dir, steps=args.steps, on_step=_print_step if args.quiet_bar else None) as tr:
        print(f"resuming {args.run_dir} after step {tr.state.step} (target {tr.cfg.run.steps})", file=sys.stderr)
        tr.train(progress=not args.quiet_bar)
    print(f"run store: {args.run_dir}")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import EvalConfig, evaluate, load_trained, save_eval, trained_config
    from .models import load_policy
    from .rollout import RolloutConfig
    from .tasks import DEFAULT_TASKS, load_tasks

    try:   # bad input fails here, before the model loads
        # a run is evaluated on its own held-out source unless --tasks/--split say otherwise
        run_cfg = trained_config(args.run)[0] if args.run else None
        src = args.tasks or (run_cfg.data.eval_tasks or run_cfg.data.tasks if run_cfg else DEFAULT_TASKS)
        split = args.split or (run_cfg.data.eval_split if run_cfg else "test")
        ecfg = EvalConfig(tasks=src, split=split, limit=args.n, k=args.k,
                          max_new_tokens=args.max_new_tokens, seed=args.seed)
        tasks = load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit)
    except (ValueError, FileNotFoundError) as e:
        return _error(e)
    if args.run:
        model, tok, cfg, step = load_trained(args.run)
        rollout, label = cfg.rollout, args.label or f"step_{step:06d}"
        where = Path(args.run)
    else:
        model, tok = load_policy(args.model, lora=False)
        rollout, label, where = RolloutConfig(), args.label or "base", Path(args.out)
    trajs, metrics = evaluate(model, tok, tasks, ecfg, rollout, progress=True)   # tqdm on stderr, with ETA
    path = save_eval(where, label, trajs, metrics, config={"eval": ecfg.__dict__, "model": args.run or args.model})
    print(_eval_line(label, metrics))
    print(f"saved: {path}")
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.run_dir, args.out)
    print(path)
    return 0


DEMO_MARK = ".tao_lab_demo"   # the demo clears only folders it made (or empty ones): nothing else is lost


DEMO_OUT = "runs/demo"


def _check_demo_folder(out: Path) -> None:
    from .rundir import started
    # the default folder holding a run is an older version's demo (made before the marker existed)
    older_demo = out == Path(DEMO_OUT) and started(out)
    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARK).exists() and not older_demo:
        raise ValueError(f"{out} is not empty and was not made by `tao-lab demo`; the demo clears its folder, "
                         f"so pass --out NEW_DIR (or remove {out} yourself)")


def cmd_demo(args) -> int:
    """`make demo`: a short TAO-RL run (cpu_demo) on the bundled tasks, a held-out evaluation before
    and after, and a self-contained HTML report."""
    from .models import fetch_model
    from .presets import make_config
    from .report import write_report
    from .tasks import load_tasks
    from .evaluate import EvalConfig, evaluate, save_eval
    from .trainer import Trainer

    t0 = time.perf_counter()
    overrides = [f"run.out_dir={args.out}", f"run.steps={args.steps}", f"seed={args.seed}"] \
        + ([f"data.tasks={args.tasks}"] if args.tasks else []) + list(args.set or [])
    try:   # bad input fails here, before the folder is cleared and the model loads
        cfg = make_config("cpu_demo", "tao", overrides)
        _check_tasks(cfg.data)
        out = Path(cfg.run.out_dir)
        _check_demo_folder(out)
    except ValueError as e:
        return _error(e)
    fetch_model()
    if out.exists():
        import shutil
        shutil.rmtree(out)   # the demo always starts fresh (in a folder an earlier demo made)
    out.mkdir(parents=True)
    (out / DEMO_MARK).write_text("made by `tao-lab demo`, which clears this folder when it runs again\n")
    ecfg = EvalConfig(tasks=cfg.data.eval_tasks or cfg.data.tasks, split=cfg.data.eval_split,
                      limit=args.eval_n, k=args.eval_k, max_turns=cfg.rollout.max_turns,
                      max_new_tokens=cfg.rollout.max_new_tokens)
    held_out = load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit)
    with Trainer(cfg, out, on_step=_print_step) as tr:
        print(f"TAO-RL demo: {cfg.model.name} + LoRA r={cfg.model.lora_r}, {cfg.data.tasks}, {cfg.run.steps} "
              f"steps of {cfg.data.prompts_per_step} groups x G={cfg.rollout.group_size} -> {out}", flush=True)
        lines = []
        for label in ("before", "after"):
            if label == "after":
                tr.train()
            trajs, m = evaluate(tr.model, tr.tok, held_out, ecfg, cfg.rollout, pool=tr.pool, reward=cfg.reward,
                                progress=True)
            save_eval(out, f"step_{tr.state.step:06d}", trajs, m, config={"eval": ecfg.__dict__})
            lines.append(_eval_line(label, m))
            print(lines[-1], flush=True)
    report = write_report(out)
    print("\n".join(["", f"held-out {ecfg.tasks}/{ecfg.split}, {ecfg.limit} tasks x k={ecfg.k}:"] + lines))
    print(f"\nreport: {report}\nrun store: {out}   ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def cmd_grid(args) -> int:
    """`tao-lab grid SPEC --out DIR` runs (or resumes) a grid; `tao-lab grid status DIR` shows it."""
    from .grid import format_status, load_spec, run_grid, status

    if args.spec == "status":
        if not args.dir:
            print("error: tao-lab grid status DIR", file=sys.stderr)
            return 2
        print(format_status(status(args.dir), args.dir))
        return 0
    try:
        spec = load_spec(args.spec)
        if args.work:
            spec = replace(spec, work=args.work)
        out = args.out or str(Path("runs") / Path(args.spec).stem)
        print(f"grid {args.spec}: work={spec.work} -> {out}", file=sys.stderr)
        counts = run_grid(spec, out, jobs=args.jobs, threads=args.threads, isolate=not args.in_process)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_status(status(out), out))
    print(f"this call: {counts}   (compare: tao-lab compare {out})")
    return 1 if counts["failed"] else 0


def cmd_compare(args) -> int:
    from .compare import write_comparison

    try:
        paths = write_comparison(args.paths, args.out, n_boot=args.n_boot, level=args.level, seed=args.seed,
                                 work=args.work)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(paths["sentences"])
    print(f"html: {paths['html']}\ncsv:  {paths['csv']}")
    return 0


def cmd_sft(args) -> int:
    """`tao-lab sft`: the supervised stage (tao_lab/sft.py); `--resume RUN_DIR` continues one."""
    from . import sft
    from .presets import PRESETS

    if args.resume:
        run = sft.SFTRun.resume(args.resume, steps=args.steps)
    else:
        if args.preset not in PRESETS:
            print(f"error: unknown preset {args.preset!r}; choose from {list(PRESETS)}", file=sys.stderr)
            return 2
        overrides = [f"data={args.data}", f"out_dir={args.out}"] + ([f"steps={args.steps}"] if args.steps else [])
        try:
            cfg = sft.apply_overrides(sft.SFTConfig(model=PRESETS[args.preset]().model), overrides + list(args.set or []))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if (Path(cfg.out_dir) / "checkpoints").is_dir() and any((Path(cfg.out_dir) / "checkpoints").iterdir()):
            print(f"error: {cfg.out_dir} already holds a run; continue it with `tao-lab sft --resume {cfg.out_dir}`",
                  file=sys.stderr)
            return 2
        run = sft.SFTRun(cfg)
        print(f"sft on {cfg.data}: {run.data_counts} -> {cfg.out_dir}", file=sys.stderr)
    before = run.nll()
    run.train(progress=not args.quiet_bar)
    print(f"NLL of the training set: {before:.3f} -> {run.nll():.3f}; run store: {run.store.path}")
    return 0


def cmd_export_verl(args) -> int:
    from .export_verl import run_export

    try:
        return run_export(args.run_dir, args.out)
    except ValueError as e:   # a folder that is not a training run, a config verl can't take
        return _error(e)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is nothing to show (a flag that is
    off, a None that means "not given") or the help text already says it in words."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _tasks_help() -> str:
    from .tasks import bundled_names
    return f"task set: a bundled one ({', '.join(bundled_names())}), a JSONL file, or hf:NAME[:CONFIG[:SPLIT]]"


def build_parser() -> argparse.ArgumentParser:
    from .filters import WORK_MODES
    p = argparse.ArgumentParser(prog="tao-lab", description=__doc__, formatter_class=_HelpWithDefaults)
    sub = p.add_subparsers(dest="cmd", required=True)
    _add_run_commands(sub, WORK_MODES)
    _add_experiment_commands(sub, WORK_MODES)
    for command in sub.choices.values():       # every subcommand's --help shows the defaults
        command.formatter_class = _HelpWithDefaults
    return p


def _add_run_commands(sub, work_modes) -> None:
    """One run: fetch-model, rollout, train, resume, eval, report, demo."""
    from .tasks import DEFAULT_TASKS
    f = sub.add_parser("fetch-model", help="fetch and cache the embedded default model; print its folder")
    f.add_argument("--force", action="store_true", help="fetch again even if cached")
    f.set_defaults(fn=cmd_fetch_model)

    r = sub.add_parser("rollout", help="roll out a task set with the tool and save a run store")
    r.add_argument("--model", default="smollm2-135m", help="model name or folder")
    r.add_argument("--tasks", default=DEFAULT_TASKS, help=_tasks_help())
    r.add_argument("--split", default="test", help="train | test (bundled sets)")
    r.add_argument("--n", type=int, default=8, help="number of tasks")
    r.add_argument("--group", type=int, default=4, help="episodes per task (G)")
    r.add_argument("--max-new-tokens", type=int, default=256, help="completion budget per episode")
    r.add_argument("--template", default="few_shot", choices=["zero_shot", "few_shot"], help="prompt template")
    r.add_argument("--protocol", default="fenced", choices=["fenced", "tags"], help="how a tool call is written")
    r.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    r.add_argument("--seed", type=int, default=0, help="sampling seed")
    r.add_argument("--out", default="runs/rollout", help="run store folder")
    r.set_defaults(fn=cmd_rollout)

    t = sub.add_parser("train", help="train with a preset and method; --set section.field=value overrides")
    t.add_argument("--preset", default="cpu_demo", help="cpu_demo | gpu_qlora | test_tiny (presets.py)")
    t.add_argument("--method", default="tao",
                   help="grpo | simpletir | tao | tao_code | dapo | e3tir | et_agent | toolexpander "
                        "(methods/arms.py)")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="e.g. shaping.coef=0.05 rollout.group_size=4")
    t.add_argument("--steps", type=int, default=None, help="shortcut for --set run.steps=N (default: the preset's)")
    t.add_argument("--out", default=None, help="shortcut for --set run.out_dir=DIR (default: runs/PRESET)")
    t.add_argument("--tasks", default=None, help=f"shortcut for --set data.tasks=...; {_tasks_help()} "
                   f"(default: the preset's: {DEFAULT_TASKS} for cpu_demo)")
    t.add_argument("--quiet-bar", action="store_true", help="one line per step instead of a progress bar")
    t.add_argument("--work", default=None, choices=work_modes,
                   help="equal_groups (default: B groups per update for every arm) | equal_rollouts")
    t.set_defaults(fn=cmd_train)

    rs = sub.add_parser("resume", help="continue a run from its newest complete checkpoint")
    rs.add_argument("run_dir", help="a training run folder")
    rs.add_argument("--steps", type=int, default=None, help="new total number of steps (default: the run's)")
    rs.add_argument("--quiet-bar", action="store_true", help="one line per step instead of a progress bar")
    rs.set_defaults(fn=cmd_resume)

    e = sub.add_parser("eval", help="Avg@k / Pass@k and tool telemetry on held-out tasks, saved as a run")
    e.add_argument("--run", default=None, help="a training run folder: evaluate its newest checkpoint")
    e.add_argument("--model", default="smollm2-135m", help="without --run: a model to evaluate as it is")
    e.add_argument("--tasks", default=None, help=_tasks_help() + f"; default: with --run the run's held-out "
                   f"source (data.eval_tasks, else data.tasks), else {DEFAULT_TASKS}")
    e.add_argument("--split", default=None, help="train | test (bundled sets); default: the run's data.eval_split "
                   "with --run, test without")
    e.add_argument("--n", type=int, default=16, help="number of tasks")
    e.add_argument("--k", type=int, default=4, help="samples per task")
    e.add_argument("--max-new-tokens", type=int, default=256, help="completion budget per episode")
    e.add_argument("--seed", type=int, default=1234, help="sampling seed (keep it for before/after pairs)")
    e.add_argument("--label", default=None, help="name of the saved evaluation (default: step_NNNNNN / base)")
    e.add_argument("--out", default="runs/eval", help="without --run: where to save")
    e.set_defaults(fn=cmd_eval)

    rp = sub.add_parser("report", help="write one self-contained HTML page for a run")
    rp.add_argument("run_dir", help="a training run folder")
    rp.add_argument("--out", default=None, help="HTML file (default RUN_DIR/report.html)")
    rp.set_defaults(fn=cmd_report)

    d = sub.add_parser("demo", help="short TAO-RL run on the embedded model with eval before/after + report")
    d.add_argument("--tasks", default=DEFAULT_TASKS, help=_tasks_help())
    d.add_argument("--steps", type=int, default=6, help="training steps")
    d.add_argument("--eval-n", type=int, default=8, help="held-out tasks evaluated before and after")
    d.add_argument("--eval-k", type=int, default=4, help="samples per held-out task")
    d.add_argument("--seed", type=int, default=0, help="run seed")
    d.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra config overrides")
    d.add_argument("--out", default=DEMO_OUT, 
                   help="run folder (cleared first if an earlier demo made it: the demo starts fresh; "
                   "any other non-empty folder is refused)")
    d.set_defaults(fn=cmd_demo)


def _add_experiment_commands(sub, work_modes) -> None:
    """Several runs or another stage: grid, compare, sft, et-agent, export-verl."""
    g = sub.add_parser("grid", help="run or resume an experiment grid (arms x seeds); `grid status DIR` shows progress")
    g.add_argument("spec", help="a .toml/.json grid spec, or the word `status`")
    g.add_argument("dir", nargs="?", default=None, help="with `status`: the grid folder")
    g.add_argument("--out", default=None, help="grid folder (default runs/<spec name>)")
    g.add_argument("--jobs", type=int, default=1, help="cells at a time (jobs x threads <= cores)")
    g.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    g.add_argument("--in-process", action="store_true", help="run the cells one by one in this process")
    g.add_argument("--work", default=None, choices=work_modes,
                   help="override the spec's work: equal_groups | equal_rollouts (an old grid ran equal_rollouts)")
    g.set_defaults(fn=cmd_grid)

    c = sub.add_parser("compare", help="HTML page + tidy CSV comparing runs or grids, with bootstrap intervals")
    c.add_argument("paths", nargs="+", help="grid folders and/or run folders")
    c.add_argument("--out", default=None, help="output folder (default: the first path)")
    c.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    c.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    c.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    c.add_argument("--work", default=None, choices=work_modes,
                   help="compare only the runs made under this work mode (printed beside every number)")
    c.set_defaults(fn=cmd_compare)

    sf = sub.add_parser("sft", help="supervised fine-tuning of the adapter on demonstrations or a run's correct rollouts")
    sf.add_argument("--data", default="demos", help="demos | demos:tags | FILE.jsonl | RUN_DIR[:STEPS]")
    sf.add_argument("--preset", default="cpu_demo", help="the model of this train preset (cpu_demo | gpu_qlora | test_tiny)")
    sf.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="SFTConfig fields, e.g. lr=1e-4 model.lora_r=8")
    sf.add_argument("--steps", type=int, default=None, help="shortcut for --set steps=N")
    sf.add_argument("--out", default="runs/sft", help="run folder")
    sf.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an SFT run from its newest checkpoint")
    sf.add_argument("--quiet-bar", action="store_true", help="one line per step instead of a progress bar")
    sf.set_defaults(fn=cmd_sft)

    from .methods.et_agent_pipeline import add_arguments as et_agent_arguments
    et_agent_arguments(sub.add_parser("et-agent", help="ET-Agent's phases in order: data flywheel -> SFT -> "
                                      "behaviour-calibration RL stages (resumable)"))

    xv = sub.add_parser("export-verl", help="a run's config as the verl command / config file (plugins/verl)")
    xv.add_argument("run_dir", help="a run folder (its config.json)")
    xv.add_argument("--out", default=None, metavar="FILE", help="also write a standalone verl YAML config here")
    xv.set_defaults(fn=cmd_export_verl, threads_note=False)  # stdout is a script: no thread note


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tao_lab import threads

    # once, before any model is built (TAO_LAB_THREADS overrides)
    threads.apply(verbose=getattr(args, "threads_note", True))
    from .checkpoint import CheckpointError
    from .rundir import RunDirError
    from .runstore_repair import RunStoreError
    from .tasks import TaskError

    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (TaskError, RunDirError, RunStoreError, CheckpointError, FileNotFoundError) as e:
        return _error(e)   # bad input or a damaged run: one line naming it, no traceback


def _error(e: BaseException) -> int:
    msg = str(e) if not isinstance(e, FileNotFoundError) or not e.filename else f"{e.strerror}: {e.filename}"
    print(f"error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
