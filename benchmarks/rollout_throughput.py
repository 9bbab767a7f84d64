"""Rollout throughput: tao_lab's decode loop vs transformers' generate, side by side in one run.

Same model (the embedded SmolLM2-135M-Instruct, fp32, CPU), same prompts (4 tasks rendered with the
few-shot template, ~250 tokens each), G = 8 samples per prompt, 128 new tokens, temperature 1.0,
plain generation without tools. Both sides are forced to produce exactly 128 tokens per sequence
(HF: min_new_tokens; tao_lab: ignore_eos), so the work is identical and tokens/s compare directly.
Also measures this machine's fp32 matmul rate and the fraction of it each decode loop reaches.

    .venv/bin/python benchmarks/rollout_throughput.py [--repeats 2] [--new-tokens 128] [--threads N]
                                                      [--quantize int8]

--quantize int8 adds a third arm, tao_lab's rollout from the int8 copy of the model (quant.py; the
copy is rebuilt in every repeat and its build time counts, as in training), and reports how far its
sampled tokens' log-probs are from the fp32 policy's: mean |Δlogp| and the truncated importance
weights min(π_fp32/π_int8, 2) the update would apply (loss.truncated_is_weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tao_lab.models import load_policy
from tao_lab.rollout import RolloutConfig, generate
from tao_lab.tasks import load_tasks, render_prompt

RESULTS = Path(__file__).parent / "results" / "rollout_throughput.json"


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
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             num_return_sequences=G, pad_token_id=tok.pad_token_id)
    dt = time.perf_counter() - t
    n_new = (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    return n_new, dt


def run_tao(model, tok, tasks, prompts, G, new_tokens, seed, quantize="none", keep=None):
    cfg = RolloutConfig(group_size=G, max_new_tokens=new_tokens, temperature=1.0, tools=False,
                        ignore_eos=True, seed=seed, quantize=quantize)
    t = time.perf_counter()
    trajs, stats = generate(model, tok, tasks, cfg, prompts=prompts)
    dt = time.perf_counter() - t
    if keep is not None:
        keep.extend(trajs)
    return stats.sampled_tokens, dt


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
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for both sides (0 = torch's default). On a shared, busy machine "
                         "1 avoids OpenMP spin-wait collapse; the ratio is what to read")
    ap.add_argument("--quantize", choices=("none", "int8"), default="none",
                    help="int8: add an arm sampling from the int8 copy of the model (quant.py)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
    arms = [("transformers.generate", lambda rep: run_hf(model, tok, prompts, args.group, args.new_tokens, rep)),
            ("tao_lab.rollout", lambda rep: run_tao(model, tok, tasks, prompts, args.group, args.new_tokens, rep))]
    int8_trajs: list = []
    if args.quantize == "int8":
        run_tao(model, tok, tasks, prompts, 2, 8, 0, quantize="int8")
        arms.append(("tao_lab.rollout int8", lambda rep: run_tao(model, tok, tasks, prompts, args.group,
                                                                  args.new_tokens, rep, "int8", int8_trajs)))
    rows = []
    for rep in range(args.repeats):  # interleave so machine noise hits every arm alike
        for name, fn in ((n, lambda f=f: f(rep)) for n, f in arms):
            n_tok, dt = fn()
            rows.append({"impl": name, "rep": rep, "tokens": n_tok, "seconds": dt, "tokens_per_s": n_tok / dt})
            print(f"{name:24s} rep {rep}: {n_tok} tokens in {dt:6.2f} s = {n_tok / dt:7.1f} tok/s", flush=True)
    ctx = sum(plen) / len(plen) + args.new_tokens / 2
    fpt = flops_per_token(model, int(ctx))
    summary = {}
    for name, _ in arms:
        best = max(r["tokens_per_s"] for r in rows if r["impl"] == name)
        summary[name] = {"tokens_per_s": best, "gflops": best * fpt / 1e9,
                         "fraction_of_matmul_peak": best * fpt / 1e9 / gflops}
    speedup = summary["tao_lab.rollout"]["tokens_per_s"] / summary["transformers.generate"]["tokens_per_s"]
    result = {"settings": {"model": "smollm2-135m fp32", "n_prompts": args.n_prompts, "G": args.group,
                           "new_tokens": args.new_tokens, "prompt_tokens": plen, "temperature": 1.0,
                           "tools": False, "threads": torch.get_num_threads()},
              "machine": {"platform": platform.platform(), "fp32_matmul_gflops": gflops,
                          "torch": torch.__version__},
              "runs": rows, "summary": summary, "speedup": speedup}
    if int8_trajs:
        base = summary["tao_lab.rollout"]["tokens_per_s"]
        per_rep = [next(r["tokens_per_s"] for r in rows if r["impl"] == "tao_lab.rollout int8" and r["rep"] == k)
                   / next(r["tokens_per_s"] for r in rows if r["impl"] == "tao_lab.rollout" and r["rep"] == k)
                   for k in range(args.repeats)]      # neighbours in time: the least noisy reading
        result["int8"] = {"speedup_vs_fp32": summary["tao_lab.rollout int8"]["tokens_per_s"] / base,
                          "speedup_vs_fp32_per_repeat": per_rep,
                          "speedup_vs_generate": summary["tao_lab.rollout int8"]["tokens_per_s"]
                          / summary["transformers.generate"]["tokens_per_s"],
                          "logprob_gap": logprob_gap(model, tok, int8_trajs)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nprompt tokens {plen}; fp32 matmul {gflops:.1f} GFLOP/s; forward {fpt / 1e6:.0f} MFLOP/token")
    print(f"{'impl':24s} {'tok/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for name, s in summary.items():
        print(f"{name:24s} {s['tokens_per_s']:8.1f} {s['gflops']:8.1f} {100 * s['fraction_of_matmul_peak']:6.1f}%")
    print(f"speedup tao_lab / transformers: {speedup:.2f}x  -> {out}")
    if int8_trajs:
        q = result["int8"]
        print(f"int8 / tao_lab fp32: {q['speedup_vs_fp32']:.2f}x (best of each; per repeat "
              + ", ".join(f"{x:.2f}x" for x in q["speedup_vs_fp32_per_repeat"])
              + f")   int8 / transformers: {q['speedup_vs_generate']:.2f}x")
        print("int8 sampler vs fp32 policy on its sampled tokens: "
              + ", ".join(f"{k} {v:.4g}" for k, v in q["logprob_gap"].items()))


if __name__ == "__main__":
    main()
