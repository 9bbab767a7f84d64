"""`tao-lab et-agent`: ET-Agent's phases in order, resumable between and within phases.

    flywheel   Flywheel on the first `questions` training tasks (round 0 + `rounds` rounds) with the
               run's policy and rollout config -> OUT/flywheel (rounds, selected SFT set)
    sft        phase 1: sft.SFTRun on OUT/flywheel/selected, ET-Agent's code settings (3 epochs,
               cosine LR, warm-up 0.1) -> OUT/sft; then the flywheel questions are rolled out again
               with the new adapter and compared with round 0 (OUT/phase1.json: accuracy, call
               distribution, success rate, every behaviour metric). Skipped, and said so, when the
               flywheel found no correct trajectory.
    rl         phase 2: trainer.Trainer with method et_agent (Pareto prompts, stage reward) for
               stages × stage_steps steps, starting from the SFT adapter -> OUT/rl

OUT/pipeline.json records the finished phases; a rerun skips them. Inside a phase the flywheel
resumes from its stored rounds, SFT and RL from their newest checkpoints.

The same three calls by hand (what the command does):

    fw = Flywheel(model, tok, tasks, cfg.rollout, FlywheelConfig(), out_dir="OUT/flywheel").run()
    SFTRun(SFTConfig(data="OUT/flywheel/selected", epochs=3, schedule="cosine", warmup_ratio=0.1,
                     model=cfg.model, out_dir="OUT/sft")).train()
    model, tok = load_sft_policy("OUT/sft", cfg.model)
    Trainer(make_config(preset, "et_agent", [...]), "OUT/rl", model=model, tok=tok).train()
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

PHASES = ("flywheel", "sft", "rl")


def _state(out: Path) -> dict:
    p = out / "pipeline.json"
    return json.loads(p.read_text()) if p.exists() else {"done": [], "notes": {}}


def _mark(out: Path, state: dict, phase: str, note: str = "") -> None:
    state["done"].append(phase)
    if note:
        state["notes"][phase] = note
    (out / "pipeline.json").write_text(json.dumps(state, indent=2))


def _has_checkpoint(run_dir: Path) -> bool:
    from .. import checkpoint as ckpt
    return ckpt.latest_path(run_dir) is not None


def phase_flywheel(cfg, out: Path, fcfg, questions: int, progress: bool):
    from ..tasks import load_tasks
    from ..models import load_model
    from .et_agent_flywheel import Flywheel

    tasks = load_tasks(cfg.data.tasks, split=cfg.data.split, limit=cfg.data.limit)[:questions]
    model, tok = load_model(cfg.model, cfg.seed)
    fw = Flywheel(model, tok, tasks, cfg.rollout, fcfg, reward_cfg=cfg.reward, out_dir=out / "flywheel")
    fw.run(progress=progress)
    n = len(fw.sft_examples())
    return fw, f"{n} correct demonstrations from {len(tasks)} questions"


def _heldout_before_after(cfg, model, tok, n: int, k: int = 2) -> dict:
    """Phase 1 on held-out questions (data.eval_tasks or data.tasks, eval_split): the policy with its
    adapter switched off (the base the flywheel sampled from, unless model.init_adapter was set) and
    with the SFT adapter. The flywheel's own questions are what the SFT saw; these are not."""
    import torch

    from ..behaviour import behaviour_metrics, calls_histogram
    from ..evaluate import EvalConfig, evaluate
    from ..tasks import load_tasks

    ecfg = EvalConfig(tasks=cfg.data.eval_tasks or cfg.data.tasks, split=cfg.data.eval_split, limit=n, k=k,
                      max_turns=cfg.rollout.max_turns, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)
    held = load_tasks(ecfg.tasks, split=ecfg.split, limit=ecfg.limit)
    with torch.no_grad(), model.disable_adapter():
        before, mb = evaluate(model, tok, held, ecfg, cfg.rollout, reward=cfg.reward)
    with torch.no_grad():
        after, ma = evaluate(model, tok, held, ecfg, cfg.rollout, reward=cfg.reward)
    return {"tasks": ecfg.tasks, "split": ecfg.split, "n_tasks": len(held), "k": k,
            "before": behaviour_metrics(before), "after": behaviour_metrics(after),
            "calls_before": calls_histogram(before), "calls_after": calls_histogram(after),
            f"avg@{k}_before": mb[f"eval/avg@{k}"], f"avg@{k}_after": ma[f"eval/avg@{k}"]}


def phase_sft(cfg, out: Path, fw, sft_overrides: Sequence[str], progress: bool, heldout: int = 16) -> str:
    """Phase 1 and its before/after comparison (the flywheel's questions, and `heldout` held-out
    questions x 2 samples; 0 skips those); returns a note."""
    from ..behaviour import behaviour_metrics, calls_histogram
    from ..rollout import generate
    from ..sft import SFTConfig, SFTRun, apply_overrides

    if not (out / "flywheel" / "selected" / "steps").is_dir():
        return "skipped: the flywheel found no correct trajectory to fine-tune on"
    if _has_checkpoint(out / "sft"):
        run = SFTRun.resume(out / "sft")
    else:
        scfg = SFTConfig(data=str(out / "flywheel" / "selected"), epochs=3, schedule="cosine", warmup_ratio=0.1,
                         model=cfg.model, seed=cfg.seed, out_dir=str(out / "sft"))
        run = SFTRun(apply_overrides(scfg, sft_overrides))
    run.train(progress=progress)
    # what phase 1 did to the tool-call pattern: the flywheel's questions, before (round 0) and after
    before = [e.traj for buf in fw.buffers.values() for e in buf if e.round == 0]
    rcfg = replace(cfg.rollout, group_size=fw.cfg.init_samples, seed=cfg.seed)
    run.model.eval()
    import torch
    with torch.no_grad():
        after, _ = generate(run.model, fw.tok, fw.tasks, rcfg, prompts=fw.prompts)
    from ..rewards import mark_correct
    mark_correct(after, cfg.reward)
    report = {"before": behaviour_metrics(before), "after": behaviour_metrics(after),
              "calls_before": calls_histogram(before), "calls_after": calls_histogram(after)}
    if heldout and hasattr(run.model, "disable_adapter"):
        report["heldout"] = _heldout_before_after(cfg, run.model, run.tok, heldout)
    (out / "phase1.json").write_text(json.dumps(report, indent=2, default=float))
    b, a = report["before"], report["after"]
    note = (f"flywheel questions: accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}, calls/traj "
            f"{b['calls_mean']:.2f} -> {a['calls_mean']:.2f}, success rate {b['success_exec_rate']:.3f} -> "
            f"{a['success_exec_rate']:.3f}")
    if "heldout" in report:
        h = report["heldout"]
        note += (f"; held-out ({h['n_tasks']} x {h['k']}): accuracy {h['before']['accuracy']:.3f} -> "
                 f"{h['after']['accuracy']:.3f}, calls/traj {h['before']['calls_mean']:.2f} -> "
                 f"{h['after']['calls_mean']:.2f}")
    return note


def phase_rl(cfg, out: Path, use_sft: bool, progress: bool) -> str:
    from ..trainer import Trainer

    steps = cfg.et_agent.stages * cfg.et_agent.stage_steps
    cfg = replace(cfg, run=replace(cfg.run, steps=steps, out_dir=str(out / "rl")))
    if _has_checkpoint(out / "rl"):
        tr = Trainer.resume(out / "rl")
    else:
        kw = {}
        if use_sft:
            from ..sft import load_sft_policy
            kw["model"], kw["tok"] = load_sft_policy(out / "sft", cfg.model, cfg.seed)
        tr = Trainer(cfg, out / "rl", **kw)
    with tr:
        logs = tr.train(progress=progress)
    return f"{tr.state.step} steps ({len(logs)} now), {'from the SFT adapter' if use_sft else 'from the base policy'}"


def run_pipeline(out, preset: str = "cpu_demo", overrides: Sequence[str] = (), fcfg=None, questions: int = 16,
                 sft_overrides: Sequence[str] = (), progress: bool = True, until: str = "rl",
                 heldout: int = 16) -> dict:
    """Every phase not yet done, in order, up to and including `until`; returns OUT/pipeline.json's
    content. until="sft" stops after phase 1, so phase 2 can run elsewhere from OUT/sft (e.g. as a grid
    arm with model.init_adapter=OUT/sft, evaluated like every other arm)."""
    if until not in PHASES:
        raise ValueError(f"until={until!r}: one of {PHASES}")
    from ..presets import make_config
    from .et_agent_flywheel import FlywheelConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = make_config(preset, "et_agent", list(overrides))
    fcfg = replace(fcfg or FlywheelConfig(), seed=cfg.seed)
    state = _state(out)
    asked = json.loads(json.dumps({"preset": preset, "overrides": list(overrides), "flywheel": asdict(fcfg),
                                   "questions": questions, "sft_overrides": list(sft_overrides)}))
    if state.setdefault("config", asked) != asked:
        print(f"et-agent: warning: {out} was started with {state['config']}; its finished phases are kept "
              "as they are (use a new --out to run with the new settings)", file=sys.stderr)
    fw = None
    for phase in PHASES[:PHASES.index(until) + 1]:
        if phase in state["done"]:
            continue
        print(f"et-agent: phase {phase}", file=sys.stderr)
        if phase == "flywheel":
            fw, note = phase_flywheel(cfg, out, fcfg, questions, progress)
        elif phase == "sft":
            if fw is None:           # resumed after the flywheel finished: its buffers are on disk
                fw, _ = phase_flywheel(cfg, out, fcfg, questions, progress)
            note = phase_sft(cfg, out, fw, sft_overrides, progress, heldout)
        else:
            note = phase_rl(cfg, out, use_sft="skipped" not in state["notes"].get("sft", "skipped"), progress=progress)
        print(f"et-agent: {phase}: {note}", file=sys.stderr)
        _mark(out, state, phase, note)
    return state


def add_arguments(p) -> None:
    """The `tao-lab et-agent` arguments (cli.py registers the subcommand)."""
    p.add_argument("--preset", default="cpu_demo", help="cpu_demo | gpu_qlora | test_tiny")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides, e.g. et_agent.budget=4")
    p.add_argument("--questions", type=int, default=16, help="training questions the flywheel grows buffers for")
    p.add_argument("--rounds", type=int, default=3, help="flywheel expansion rounds [code: 3]")
    p.add_argument("--init-samples", type=int, default=2, help="flywheel round-0 rollouts per question")
    p.add_argument("--sft-set", nargs="*", metavar="KEY=VALUE", help="SFTConfig overrides for phase 1, e.g. lr=5e-5")
    p.add_argument("--until", default="rl", choices=PHASES, help="last phase to run (sft: stop after phase 1)")
    p.add_argument("--heldout", type=int, default=16,
                   help="held-out questions (x 2 samples) phase 1 is judged on before and after (0: skip)")
    p.add_argument("--out", default="runs/et_agent", help="pipeline folder (one subfolder per phase)")
    p.add_argument("--quiet-bar", action="store_true", help="one line per step instead of a progress bar")
    p.set_defaults(fn=main)


def main(args) -> int:
    from .et_agent_flywheel import FlywheelConfig

    try:
        fcfg = FlywheelConfig(rounds=args.rounds, init_samples=args.init_samples)
        state = run_pipeline(args.out, args.preset, args.set or [], fcfg, args.questions, args.sft_set or [],
                             progress=not args.quiet_bar, until=args.until, heldout=args.heldout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(state["notes"], indent=2))
    return 0
