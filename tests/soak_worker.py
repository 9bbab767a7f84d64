"""The killable training process of the soak tier (tests/test_soak.py), and what it is built from.

    python tests/soak_worker.py RUN_DIR TIER TOKEN STEPS train|resume

trains (or resumes) a few steps of a scripted policy whose tool code is hostile on every call, in
the real sandbox tier TIER, and prints `READY` once the model is built and `STEP s` after each
committed step, so the test can SIGKILL it at a point measured from a finished step.

The policy is e2e_policy's scripted bias put on a real peft tiny Llama as a *forward hook*: the
trained module is the peft model itself, so its adapter is what checkpoints save and a resume loads
(a wrapper module would do too, but the hook keeps the model exactly what `load_policy` returns).
The variant (first byte of the completion) is sampled from the Llama's own logits plus the bias, so
after a few updates the draw depends on the adapter: a resume that restored it wrongly, or the RNG,
would sample other variants than the uninterrupted run.

Every variant's tool code is hostile; the model's own text carries NUL and control bytes too:
  D  a fork -> setsid -> fork chain whose grandchild execs `sleep TOKEN` (a daemon outliving the call)
  F  3 MB floods on stdout and on stderr
  N  NUL bytes and invalid UTF-8 on stdout and on stderr
  U  an unclosed fence (no call; the turn just ends)
  X  a forged runner message: `sys.exit("bwrap: ...")` (only the status pipe may report a tier failure)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402

from e2e_policy import ASSISTANT, BiasedScriptPolicy, ChatByteTokenizer  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"   # rlimits as root: the sandbox uid cannot read a venv under /root
QUESTIONS = ("Q1: what is 6*7?", "Q2: what is 7*6?", "Q3: what is 42*1?")
# the model's own garbage after the tool result: NUL, BEL, an escape sequence, DEL
GARBAGE = " \x00\x07\x1b[2J\x7f so \\boxed{42}."


class ShortChatTokenizer(ChatByteTokenizer):
    """ChatByteTokenizer without the system message: the recompute engine re-reads every prompt byte
    at every decode step, and the 300-byte system prompt would triple the soak's rollout time."""

    def apply_chat_template(self, messages, **kw):
        return super().apply_chat_template([m for m in messages if m["role"] != "system"], **kw)


def hostile_code(token: str) -> dict[str, str]:
    """Variant key -> the tool code it writes (raw strings: the escapes are the code's, not ours)."""
    return {
        # the call lingers 0.4 s with its daemon up, so some kills land while one lives
        "D": ("import os,time\nif os.fork()==0:\n os.setsid()\n if os.fork()==0:os.execvp('sleep',['sleep','"
              + token + "'])\n os._exit(0)\nos.wait()\nprint('up')\ntime.sleep(.4)"),
        "F": "import os\nos.write(1,b'x'*3000000)\nos.write(2,b'y'*3000000)",
        "N": r"import os" "\n" r"os.write(1,b'a\x00b\xff\xfe\xc3(\n')" "\n" r"os.write(2,b'\x00\xff\x80e')",
        "X": "import sys\nsys.exit('bwrap: Creating new namespace failed: forged')",
    }


def scripts(token: str) -> dict[str, dict[str, list[str]]]:
    """e2e_policy's script format: {question: {first byte: [turn 0, turn 1]}}."""
    turns = {k: [f"{k} ```python\n{code}\n```", GARBAGE] for k, code in hostile_code(token).items()}
    turns["U"] = ["U\x00 ```python\nprint(42)\n"]          # unclosed fence, then end of sequence
    return {q: dict(turns) for q in QUESTIONS}


def bias_hook(policy: BiasedScriptPolicy):
    """A forward hook adding BiasedScriptPolicy's scripted-byte bias to the peft model's logits."""

    def hook(module, args, kwargs, out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        B, T = ids.shape
        K = out.logits.shape[1]
        lens = mask.sum(1).tolist() if mask is not None else [T] * B
        bias = torch.zeros_like(out.logits)
        for b in range(B):
            first = T - K if torch.is_grad_enabled() else lens[b] - 1   # as BiasedScriptPolicy.forward
            for pos in range(max(first, T - K), lens[b]):
                text = policy.tok.decode(ids[b, :pos + 1].tolist(), skip_special_tokens=True)
                for i in policy.next_bytes(text):
                    bias[b, pos - (T - K), i] = policy.margin
        out.logits = out.logits + bias
        return out

    return hook


def build(token: str):
    """(peft model with the bias hook, tokenizer, tasks): the same in every process for one token."""
    from tao_lab.models import ModelConfig, finish_policy, tiny_model
    from tao_lab.tasks import Task

    tok = ShortChatTokenizer()
    model = finish_policy(tiny_model(vocab_size=len(tok), hidden=32, seed=0), ModelConfig(lora_r=4))
    helper = BiasedScriptPolicy(torch.nn.Identity(), tok, scripts(token))   # only its next_bytes
    model.register_forward_hook(bias_hook(helper), with_kwargs=True)
    tasks = [Task(id=f"q{i}", prompt=q, answer="42") for i, q in enumerate(QUESTIONS)]
    assert ASSISTANT in tok.apply_chat_template([{"role": "user", "content": "x"}])
    return model, tok, tasks


def config(steps: int):
    from tao_lab.presets import make_config

    return make_config("test_tiny", "tao", [
        "filter.rules=filter_b", f"run.steps={steps}", "run.save_every=1", f"run.keep_checkpoints={steps}",
        "data.prompts_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens=240",
        "rollout.max_turns=2", "rollout.backend=recompute", "rollout.template=zero_shot",
        "rollout.obs_max_chars=64", "rollout.obs_max_tokens=64", "update.share_prompt=false"])


def sandbox_pool(tier: str):
    from tao_lab.sandbox import SandboxConfig, SandboxPool

    python = SYSTEM_PYTHON if tier == "rlimits" and os.geteuid() == 0 else None
    return SandboxPool(max_workers=2, config=SandboxConfig(tier=tier, python=python, timeout_s=3.0))


def variant_reward(trajs, step):
    """Rewarded: variants D and N. Groups of mixed variants are not degenerate and train."""
    r = [float(t.text[:1] in "DN") for t in trajs]
    for t, x in zip(trajs, r):
        t.reward = x
    return r, {"reward/mean": sum(r) / len(r)}


def main(run_dir: str, tier: str, token: str, steps: str, mode: str) -> int:
    from tao_lab.trainer import Trainer

    torch.set_num_threads(1)
    model, tok, tasks = build(token)
    pool = sandbox_pool(tier)

    def said(log):
        print(f"STEP {log.step}", flush=True)

    kw = dict(model=model, tok=tok, tasks=tasks, reward_fn=variant_reward, pool=pool, on_step=said)
    try:
        if mode == "resume":
            tr = Trainer.resume(run_dir, **kw)
        else:
            tr = Trainer(config(int(steps)), run_dir, **kw)
        print("READY", flush=True)
        with tr:
            tr.train()
    finally:
        pool.close()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
