"""GRPO step time and peak memory: tao_lab's Trainer versus TRL's GRPOTrainer, same settings.

Both sides train the embedded SmolLM2-135M-Instruct (fp32, CPU) with the same LoRA (r=16, alpha=32,
all linear layers, no dropout), the same prompts in the same order (few-shot arithmetic prompts,
rendered once with tasks.render_prompt), the same G, learning rate, completion budget and
micro-batching, plain GRPO without tools (no filters, no shaping, no KL, one pass per batch), and
the same model-free reward. To make the work per step identical, every completion is exactly
`max_new_tokens` long: tao_lab samples past end-of-sequence (`RolloutConfig.ignore_eos`), TRL is
given `generation_kwargs={"min_new_tokens": max_new_tokens}`.

A step is everything from drawing the prompts to the optimizer step: generation, reward, advantage,
training forward/backward over the micro-batches. TRL's is timed with a TrainerCallback
(on_step_begin -> on_step_end, generation happens inside it); tao_lab's around `Trainer.step()`.
The first `--warmup` steps are not counted. Each side runs in its own child process of this one
script run, so each reports its own peak RSS (ru_maxrss: model, optimizer, activations and all).
Other processes on a shared machine make wall times drift: `--rounds 2` runs the pair twice in
alternating order (tao, trl, trl, tao), the ratio uses median step times, and the CPU time per
step (process_time) is reported beside the wall time.

    .venv/bin/python benchmarks/grpo_step_vs_trl.py            # prints a table, writes the JSON
    .venv/bin/python benchmarks/grpo_step_vs_trl.py --rounds 2 --threads 1   # the saved result

Differences that remain, stated: TRL's default loss is "dapo" (token-mean over the global batch)
with a symmetric clip 0.2; tao_lab's here is token-mean with clip-higher 0.2/0.28 and dual clip 3 —
the same compute. tao_lab also writes each step to its run store (parquet + JSONL), TRL only logs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = {
    "model": "smollm2-135m", "tasks": "arith-L2", "split": "train", "template": "few_shot", "n_demos": 2,
    "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 128, "micro_batch": 4, "lr": 5e-5,
    "lora_r": 16, "lora_alpha": 32, "temperature": 1.0, "seed": 0,
}
OUT = Path(__file__).resolve().parent / "results" / "grpo_step_vs_trl.json"


def reward_of_text(text: str) -> float:
    """Model-free and cheap, the same function on both sides: 1 if the count of digits is odd."""
    return float(sum(ch.isdigit() for ch in text) % 2)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompt_order(n_steps: int) -> list[int]:
    """Task indices in the order tao_lab's prompt stream draws them (TRL gets the same order)."""
    from tao_lab.hooks import seeded_order
    n = SETTINGS["prompts_per_step"] * n_steps
    return seeded_order(n, 0, n, SETTINGS["seed"])[0]


def run_tao_lab(warmup: int, steps: int, extra: list[str] | None = None) -> dict:
    from tao_lab.presets import make_config
    from tao_lab.trainer import Trainer

    s = SETTINGS
    n = warmup + steps
    cfg = make_config("cpu_demo", "grpo", [
        f"data.tasks={s['tasks']}", f"data.split={s['split']}", f"data.limit={s['prompts_per_step'] * n}",
        f"data.prompts_per_step={s['prompts_per_step']}", "data.oversample=1",
        f"rollout.group_size={s['group_size']}", f"rollout.max_new_tokens={s['max_new_tokens']}",
        f"rollout.template={s['template']}", f"rollout.n_demos={s['n_demos']}", "rollout.tools=false",
        "rollout.ignore_eos=true", f"rollout.temperature={s['temperature']}",
        f"update.micro_batch_size={s['micro_batch']}", f"optim.lr={s['lr']}", "optim.grad_clip=1.0",
        f"model.lora_r={s['lora_r']}", f"model.lora_alpha={s['lora_alpha']}", f"run.steps={n}",
        f"run.save_every={n + 1}", f"seed={s['seed']}", *(extra or [])])

    def reward_fn(trajs, step):
        r = [reward_of_text(t.text) for t in trajs]
        for t, x in zip(trajs, r):
            t.reward = x
        return r, {"reward/mean": sum(r) / len(r)}

    times, cpu, tokens = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, tmp, reward_fn=reward_fn)
        rss_loaded = _rss_mb()
        for _ in range(n):
            t, c = time.perf_counter(), time.process_time()
            log = tr.step()
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            tokens.append(log.metrics["rollout/sampled_tokens"])
        tr.close()
    return {"step_s": times[warmup:], "step_cpu_s": cpu[warmup:], "warmup_s": times[:warmup],
            "sampled_tokens_per_step": tokens[warmup:], "torch_threads": torch.get_num_threads(),
            "rss_after_load_mb": rss_loaded, "peak_rss_mb": _rss_mb(),
            "stage_s_last_step": {k: v for k, v in log.metrics.items() if k.startswith("time/")}}


def run_trl(warmup: int, steps: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tao_lab.models import load_policy
    from tao_lab.tasks import load_tasks, render_prompt

    s = SETTINGS
    n = warmup + steps
    model, tok = load_policy(s["model"], lora=False)
    tasks = load_tasks(s["tasks"], split=s["split"], limit=s["prompts_per_step"] * n)
    prompts = [render_prompt(tok, tasks[i], template=s["template"], n_demos=s["n_demos"]) for i in _prompt_order(n)]
    data = Dataset.from_dict({"prompt": prompts})

    def reward_fn(completions, **_):
        return [reward_of_text(c) for c in completions]

    times, cpu, t0 = [], [], [0.0, 0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            t0[:] = [time.perf_counter(), time.process_time()]

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - t0[0])
            cpu.append(time.process_time() - t0[1])

    lengths = []

    class Lengths(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=s["micro_batch"],
            gradient_accumulation_steps=s["prompts_per_step"] * s["group_size"] // s["micro_batch"],
            num_generations=s["group_size"], max_completion_length=s["max_new_tokens"],
            generation_kwargs={"min_new_tokens": s["max_new_tokens"]}, temperature=s["temperature"],
            learning_rate=s["lr"], lr_scheduler_type="constant", max_grad_norm=1.0, beta=0.0, num_iterations=1,
            max_steps=n, use_cpu=True, bf16=False, gradient_checkpointing=False, shuffle_dataset=False,
            logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=s["seed"],
            dataloader_num_workers=0)
        lora = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=data,
                              processing_class=tok, peft_config=lora, callbacks=[Timer(), Lengths()])
        rss_loaded = _rss_mb()
        trainer.train()
    return {"step_s": times[warmup:], "step_cpu_s": cpu[warmup:], "warmup_s": times[:warmup],
            "torch_threads": torch.get_num_threads(),
            "sampled_tokens_per_step": [ln * s["prompts_per_step"] * s["group_size"] for ln in lengths[warmup:]],
            "rss_after_load_mb": rss_loaded, "peak_rss_mb": _rss_mb()}


def _child(side: str, warmup: int, steps: int, out: str, threads: int | None, extra: list[str]) -> None:
    if threads:
        from tao_lab import threads as thread_policy   # the library's policy (load_model applies it; a bare
        thread_policy.apply(threads)                   # torch.set_num_threads was overridden by its auto choice)
    result = run_trl(warmup, steps) if side == "trl" else \
        run_tao_lab(warmup, steps, extra if side == "tao_lab_variant" else None)
    Path(out).write_text(json.dumps(result))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--side", choices=["tao_lab", "trl", "tao_lab_variant"], help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--tiny", action="store_true", help="1 prompt x G=2 x 8 tokens: the code path only (gpu_check.sh --dry-run)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in both children (default: torch's)")
    ap.add_argument("--tao-set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="also time a tao_lab variant with these TrainConfig overrides, e.g. "
                         "rollout.quantize=int8 update.is_correction=tis (a third side, same run)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the pair this many times, order alternating (tao,trl), (trl,tao), ...: drifting "
                         "load from other processes then hits both sides alike; per-step times are pooled")
    a = ap.parse_args()
    if a.tiny:
        SETTINGS.update(prompts_per_step=1, group_size=2, max_new_tokens=8, micro_batch=2)
    if a.side:
        _child(a.side, a.warmup, a.steps, a.result, a.threads, a.tao_set)
        return 0
    results: dict[str, dict] = {}
    load = {"start": os.getloadavg()}
    for r in range(a.rounds):
        sides = ("tao_lab", "trl", *(("tao_lab_variant",) if a.tao_set else ()))
        for side in (sides if r % 2 == 0 else sides[::-1]):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                tmp = f.name
            t = time.perf_counter()
            cmd = [sys.executable, __file__, "--side", side, "--warmup", str(a.warmup), "--steps", str(a.steps),
                   "--result", tmp] + (["--threads", str(a.threads)] if a.threads else []) + (["--tiny"] if a.tiny else []) \
                + (["--tao-set", *a.tao_set] if side == "tao_lab_variant" else [])
            subprocess.run(cmd, check=True)
            one = json.loads(Path(tmp).read_text())
            os.unlink(tmp)
            one["process_wall_s"] = time.perf_counter() - t
            load[f"round{r}_after_{side}"] = os.getloadavg()
            if side not in results:
                results[side] = {**one, "rounds": [one]}
            else:
                for k in ("step_s", "step_cpu_s", "warmup_s", "sampled_tokens_per_step"):
                    results[side][k] = results[side][k] + one[k]
                results[side]["peak_rss_mb"] = max(results[side]["peak_rss_mb"], one["peak_rss_mb"])
                results[side]["rounds"].append(one)
    import statistics as st
    for r in results.values():
        r["mean_step_s"] = st.mean(r["step_s"])
        r["median_step_s"] = st.median(r["step_s"])
        r["mean_step_cpu_s"] = st.mean(r["step_cpu_s"])
    tao, trl = results["tao_lab"], results["trl"]
    summary = {"step_time_ratio_tao_over_trl": tao["median_step_s"] / trl["median_step_s"],
               "step_cpu_ratio_tao_over_trl": tao["mean_step_cpu_s"] / trl["mean_step_cpu_s"],
               "peak_rss_ratio_tao_over_trl": tao["peak_rss_mb"] / trl["peak_rss_mb"],
               "target": "tao_lab step <= 0.4 x TRL's, peak RSS <= TRL's"}
    summary["meets_target"] = summary["step_time_ratio_tao_over_trl"] <= 0.4 and summary["peak_rss_ratio_tao_over_trl"] <= 1.0
    if "tao_lab_variant" in results:
        var = results["tao_lab_variant"]
        summary["variant"] = {"overrides": a.tao_set,
                              "step_time_ratio_over_trl": var["median_step_s"] / trl["median_step_s"],
                              "step_cpu_ratio_over_trl": var["mean_step_cpu_s"] / trl["mean_step_cpu_s"],
                              "peak_rss_ratio_over_trl": var["peak_rss_mb"] / trl["peak_rss_mb"]}
    doc = {"settings": SETTINGS, "warmup": a.warmup, "steps": a.steps, "rounds": a.rounds, "results": results, "summary": summary,
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                       "load_average": load},
           "command": "python benchmarks/grpo_step_vs_trl.py " + " ".join(sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(f"\n{'':10s} {'median step s':>13s} {'CPU s/step':>11s} {'steps (s)':>36s} {'tokens/step':>12s} {'peak RSS MB':>12s}")
    for side, r in results.items():
        print(f"{side:10s} {r['median_step_s']:13.1f} {r['mean_step_cpu_s']:11.1f} {' '.join(f'{x:.1f}' for x in r['step_s']):>36s} "
              f"{st.mean(r['sampled_tokens_per_step']) if r['sampled_tokens_per_step'] else float('nan'):12.0f} "
              f"{r['peak_rss_mb']:12.0f}")
    print(f"tao_lab / TRL: median step time x{summary['step_time_ratio_tao_over_trl']:.2f}, CPU time per step "
          f"x{summary['step_cpu_ratio_tao_over_trl']:.2f}, peak RSS "
          f"x{summary['peak_rss_ratio_tao_over_trl']:.2f} (target <= 0.4 and <= 1.0: "
          f"{'met' if summary['meets_target'] else 'NOT met'}); load average {load}")
    if "variant" in summary:
        v = summary["variant"]
        print(f"tao_lab_variant {' '.join(a.tao_set)} / TRL: median step time x{v['step_time_ratio_over_trl']:.2f}, "
              f"CPU time per step x{v['step_cpu_ratio_over_trl']:.2f}, peak RSS x{v['peak_rss_ratio_over_trl']:.2f}")
    print(f"saved {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
