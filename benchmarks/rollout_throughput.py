"""Rollout throughput: tao_lab's decode loop vs transformers' generate, side by side in one run.

Same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), same prompts (4 tasks rendered with the
few-shot template, ~250 tokens each), G = 8 samples per prompt, 128 new tokens, temperature 1.0,
plain generation without tools. Both sides are forced to produce exactly 128 tokens per sequence
(HF: min_new_tokens; tao_lab: ignore_eos), so the work is identical and tokens/s compare directly.
Also measures this machine's fp32 matmul rate and the fraction of it each decode loop reaches.
--prefix-ab adds a third arm in the same interleaved run: tao_lab with RolloutConfig.shared_prefix
off (every prompt prefilled whole), to price the shared few-shot prefix; its share of the work grows
as --new-tokens shrinks (--new-tokens 1 times the prefills alone).

    .venv/bin/python benchmarks/rollout_throughput.py [--repeats 2] [--new-tokens 128] [--threads N]
                                                      [--prefix-ab] [--quantize int8]

--quantize int8 adds an arm, tao_lab's rollout from the int8 copy of the model (quant.py; the
copy is rebuilt in every repeat and its build time counts, as in training), and reports how far its
sampled tokens' log-probs are from the fp32 policy's: mean |Δlogp| and the truncated importance
weights min(π_fp32/π_int8, 2) the update would apply (loss.truncated_is_weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from tao_lab.models import load_policy
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.tasks import load_tasks, render_prompt

RESULTS = Path(__file__).parent / "results" / "rollout_throughput.json"
NO_PREFIX = "tao_lab.rollout[shared_prefix=False]"
INT8 = "tao_lab.rollout int8"


def matmul_gflops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_token(model, ctx: int) -> float:
    """Forward FLOPs for one new token: 2 x (weight matmuls incl. lm_head) + attention over ctx."""
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())  # tied embedding counted once = lm_head
    attn = 4 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * ctx
    return 2 * n_params + attn


def run_hf(model, tok, prompts, G, new_tokens, seed):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             num_return_sequences=G, pad_token_id=tok.pad_token_id)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    n_new = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return n_new, dt, cpu


def run_tao(model, tok, tasks, prompts, G, new_tokens, seed, shared_prefix=True, quantize="none", keep=None):
    cfg = RolloutConfig(group_size=G, max_new_tokens=new_tokens, temperature=1.0, tools=False,
                        ignore_eos=True, seed=seed, shared_prefix=shared_prefix, quantize=quantize)
    t, c = time.perf_counter(), time.process_time()
    trajs, stats = generate(model, tok, tasks, cfg, prompts=prompts)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    if keep is not None:
        keep.extend(trajs)
    return stats.sampled_tokens, dt, cpu, stats.shared_prompt_tokens


def logprob_gap(model, tok, trajs) -> dict:
    """The fp32 policy's log-probs of the int8 sampler's tokens, one training-style forward per
    prompt: mean / max |Δlogp| and the truncated IS weights' statistics over the sampled tokens."""
    from tao_lab.loss import truncated_is_weights
    from tao_lab.update import collate, forward_logprobs, plan_micro_batches

    diffs, policy, sampler, masks = [], [], [], []
    with torch.no_grad():
        for idx in plan_micro_batches(trajs, 8, share_prompt=True):
            mb = collate([trajs[i] for i in idx], [1.0] * len(idx), tok.pad_token_id, "cpu", share_prompt=True)
            logp, _ = forward_logprobs(model, mb, 1.0, 128, entropy_grad=False)
            m = mb.mask > 0
            diffs.append((logp - mb.old_logp)[m].abs())
            policy.append(logp[m]), sampler.append(mb.old_logp[m]), masks.append(mb.mask[m])
    d = torch.cat(diffs)
    _, isw = truncated_is_weights(torch.cat(policy)[None], torch.cat(sampler)[None], torch.cat(masks)[None], 2.0)
    return {"tokens": d.numel(), "abs_logp_diff_mean": float(d.mean()), "abs_logp_diff_p99": float(d.quantile(0.99)),
            "abs_logp_diff_max": float(d.max()), **{k.replace("loss/", ""): v for k, v in isw.items()}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--out", default=str(RESULTS), help="result JSON (default: the saved result)")
    ap.add_argument("--prefix-ab", action="store_true",
                    help="also run tao_lab with shared_prefix=False, interleaved, and report ratios")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for both sides (0 = torch's default). On a shared, busy machine "
                         "1 avoids OpenMP spin-wait collapse; the ratio is what to read")
    ap.add_argument("--quantize", choices=("none", "int8"), default="none",
                    help="int8: add an arm sampling from the int8 copy of the model (quant.py)")
    args = ap.parse_args()
    if args.threads:
        from tao_lab import threads      # through the library's policy: load_policy applies it, and a bare
        threads.apply(args.threads)      # torch.set_num_threads here was overridden by its auto choice
    torch.manual_seed(0)
    model, tok = load_policy("smollm2-135m", lora=False)
    model.eval()
    tasks = load_tasks("arith-L2", split="train", limit=args.n_prompts)
    prompts = [render_prompt(tok, t, template="few_shot", protocol="fenced", n_demos=2) for t in tasks]
    plen = [len(tok.encode(p, add_special_tokens=False)) for p in prompts]
    gflops = matmul_gflops()
    # warm-up both (first calls pay one-off allocation / trigger-table costs)
    run_tao(model, tok, tasks, prompts, 2, 8, 0)
    run_hf(model, tok, prompts[:1], 2, 8, 0)
    arms = {"transformers.generate": lambda rep: run_hf(model, tok, prompts, args.group, args.new_tokens, rep),
            "tao_lab.rollout": lambda rep: run_tao(model, tok, tasks, prompts, args.group, args.new_tokens, rep)}
    if args.prefix_ab:
        arms[NO_PREFIX] = lambda rep: run_tao(model, tok, tasks, prompts, args.group, args.new_tokens, rep,
                                              shared_prefix=False)
    int8_trajs: list = []
    if args.quantize == "int8":
        run_tao(model, tok, tasks, prompts, 2, 8, 0, quantize="int8")
        arms[INT8] = lambda rep: run_tao(model, tok, tasks, prompts, args.group, args.new_tokens, rep,
                                         quantize="int8", keep=int8_trajs)
    rows, shared = [], 0
    names = list(arms)
    for rep in range(args.repeats):  # interleave so machine noise hits every arm alike, and rotate the
        # order: an arm run right after generate was seen to pay for it (allocator state)
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            n_tok, dt, cpu, *extra = arms[name](rep)
            shared = max([shared, *extra])
            rows.append({"impl": name, "rep": rep, "tokens": n_tok, "seconds": dt, "cpu_seconds": cpu,
                         "tokens_per_s": n_tok / dt})
            print(f"{name:36s} rep {rep}: {n_tok} tokens in {dt:6.2f} s = {n_tok / dt:7.1f} tok/s "
                  f"(process CPU {cpu:6.2f} s)", flush=True)
    ctx = sum(plen) / len(plen) + args.new_tokens / 2
    fpt = flops_per_token(model, int(ctx))
    summary = {}
    for name in arms:
        rates = [r["tokens_per_s"] for r in rows if r["impl"] == name]
        best = max(rates)
        summary[name] = {"tokens_per_s": best, "median_tokens_per_s": statistics.median(rates),
                         "gflops": best * fpt / 1e9, "fraction_of_matmul_peak": best * fpt / 1e9 / gflops}
    speedup = summary["tao_lab.rollout"]["tokens_per_s"] / summary["transformers.generate"]["tokens_per_s"]
    result = {"settings": {"model": "smollm2-135m fp32", "n_prompts": args.n_prompts, "G": args.group,
                           "new_tokens": args.new_tokens, "prompt_tokens": plen, "temperature": 1.0,
                           "tools": False, "threads": torch.get_num_threads(), "shared_prompt_tokens": shared},
              "machine": {"platform": platform.platform(), "fp32_matmul_gflops": gflops,
                          "torch": torch.__version__},
              "runs": rows, "summary": summary, "speedup": speedup}
    if args.prefix_ab:   # best over best, and the paired ratio of each repeat (robust to load drifts)
        result["shared_prefix_speedup"] = summary["tao_lab.rollout"]["tokens_per_s"] / summary[NO_PREFIX]["tokens_per_s"]
        for key, field in (("", "seconds"), ("_cpu", "cpu_seconds")):   # CPU time: less load-sensitive
            secs = {(r["impl"], r["rep"]): r[field] for r in rows}
            result[f"shared_prefix_speedup{key}_per_repeat"] = [secs[NO_PREFIX, k] / secs["tao_lab.rollout", k]
                                                                for k in range(args.repeats)]
    if int8_trajs:
        base = summary["tao_lab.rollout"]["tokens_per_s"]
        per_rep = [next(r["tokens_per_s"] for r in rows if r["impl"] == INT8 and r["rep"] == k)
                   / next(r["tokens_per_s"] for r in rows if r["impl"] == "tao_lab.rollout" and r["rep"] == k)
                   for k in range(args.repeats)]      # neighbours in time: the least noisy reading
        result["int8"] = {"speedup_vs_fp32": summary[INT8]["tokens_per_s"] / base,
                          "speedup_vs_fp32_per_repeat": per_rep,
                          "speedup_vs_generate": summary[INT8]["tokens_per_s"]
                          / summary["transformers.generate"]["tokens_per_s"],
                          "logprob_gap": logprob_gap(model, tok, int8_trajs)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nprompt tokens {plen} (shared prefix {shared}); fp32 matmul {gflops:.1f} GFLOP/s; "
          f"forward {fpt / 1e6:.0f} MFLOP/token")
    print(f"{'impl (best of repeats)':36s} {'tok/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s} {'/ generate':>10s} "
          f"{'median tok/s':>13s}")
    hf = summary["transformers.generate"]["tokens_per_s"]
    for name, s in summary.items():
        print(f"{name:36s} {s['tokens_per_s']:8.1f} {s['gflops']:8.1f} {100 * s['fraction_of_matmul_peak']:6.1f}% "
              f"{s['tokens_per_s'] / hf:9.2f}x {s['median_tokens_per_s']:13.1f}")
    print(f"speedup tao_lab / transformers: {speedup:.2f}x  -> {out}")
    if args.prefix_ab:
        per, cpu = (", ".join(f"{x:.2f}x" for x in result[f"shared_prefix_speedup{k}_per_repeat"]) for k in ("", "_cpu"))
        print(f"speedup shared prefix on / off: {result['shared_prefix_speedup']:.3f}x (per repeat: {per}; "
              f"process CPU time per repeat: {cpu})")
    if int8_trajs:
        q = result["int8"]
        print(f"int8 / tao_lab fp32: {q['speedup_vs_fp32']:.2f}x (best of each; per repeat "
              + ", ".join(f"{x:.2f}x" for x in q["speedup_vs_fp32_per_repeat"])
              + f")   int8 / transformers: {q['speedup_vs_generate']:.2f}x")
        print("int8 sampler vs fp32 policy on its sampled tokens: "
              + ", ".join(f"{k} {v:.4g}" for k, v in q["logprob_gap"].items()))


if __name__ == "__main__":
    main()
