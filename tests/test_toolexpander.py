"""ToolExpander (methods/toolexpander.py): hard-sample replacement and reversion through the real
rollout and verifier, N counted across steps, resume, own demonstrations, the self-example rule, and
`--method toolexpander` in the Trainer."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from e2e_policy import ASSISTANT, ChatByteTokenizer
from tao_lab.methods.toolexpander import (SELF_EXAMPLE_INSTRUCTION, HardSampleSource, has_self_example,
                                          self_example_check)
from tao_lab.presets import make_config
from tao_lab.rewards import score
from tao_lab.rollout import generate
from tao_lab.tasks import load_tasks


class DemoGatedPolicy(torch.nn.Module):
    """Right only when the prompt holds demonstrations (an assistant message before the question's),
    otherwise it boxes a wrong number. One byte a step, logit margin 50, like tests/fakes.py."""

    def __init__(self, tok: ChatByteTokenizer, answers: dict[str, str]):
        super().__init__()
        self.tok, self.answers = tok, answers
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def script(self, head: str) -> str:
        question = head[head.rfind("<user>\n") + len("<user>\n"):].strip()
        if head.count(ASSISTANT) >= 1:        # a demonstration's assistant turn precedes the question
            return f"Like the examples. \\boxed{{{self.answers[question]}}}"
        return "I guess. \\boxed{-1}"

    def _next(self, text: str) -> int:
        cut = text.rfind(ASSISTANT)
        head, done = text[:cut], text[cut + len(ASSISTANT):]
        out = self.script(head).encode()
        return self.tok.eos_token_id if len(done.encode()) >= len(out) else out[len(done.encode())]

    def forward(self, input_ids, attention_mask=None, **_):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, len(self.tok))
        lens = attention_mask.sum(1) if attention_mask is not None else torch.full((B,), T)
        for b in range(B):
            text = self.tok.decode(input_ids[b, :lens[b]].tolist(), skip_special_tokens=True)
            logits[b, lens[b] - 1, self._next(text)] = 50.0
        return type("Out", (), {"logits": logits})()


@pytest.fixture(scope="module")
def arith():
    """Four real bundled tasks of kinds that have bundled demonstrations."""
    tasks = load_tasks("arith-L1", split="train")
    picked, kinds = [], {}
    for t in tasks:
        if kinds.get(t.meta["kind"], 0) < 2 and t.meta["kind"] in ("mul", "mod"):
            kinds[t.meta["kind"]] = kinds.get(t.meta["kind"], 0) + 1
            picked.append(t)
    return picked


def source_for(tasks, *sets, G=2):
    cfg = make_config("test_tiny", "toolexpander", [f"rollout.group_size={G}", "rollout.tools=false", *sets])
    return HardSampleSource(tasks, ChatByteTokenizer(), cfg), cfg


def step(source, policy, cfg, s, k=None):
    """One prompt-source step the way the Trainer runs it: draw, roll out, verify, observe."""
    batch = source.next_batch(s, k or len(source.tasks))
    ro = replace(cfg.rollout, backend="recompute", seed=s, max_new_tokens=64)
    trajs, _ = generate(policy, source.tok, batch.tasks, ro, prompts=batch.prompts)
    score(trajs, cfg.reward)
    return batch, trajs, source.observe(s, batch, trajs)


def test_a_hard_task_is_replaced_by_demonstrations_and_reverts_once_solved(arith):
    src, cfg = source_for(arith, "toolexpander.hard_rollouts=2")
    policy = DemoGatedPolicy(src.tok, {t.prompt: t.answer for t in arith})
    b1, t1, m1 = step(src, policy, cfg, 1)
    assert not any(t.correct for t in t1) and m1["source/all_wrong_plain"] == 1.0
    assert m1["source/hard"] == len(arith) and m1["source/replaced"] == len(arith)   # 2 of 2 wrong: hard
    assert SELF_EXAMPLE_INSTRUCTION in b1.prompts[0] and b1.prompts[0].count(ASSISTANT) == 1
    b2, t2, m2 = step(src, policy, cfg, 2)
    assert b2.info["source/replaced_in_batch"] == len(arith)
    assert all(p.count(ASSISTANT) == 1 + cfg.toolexpander.n_demos for p in b2.prompts)
    kinds = {t.id: t.meta["kind"] for t in arith}
    for task, prompt in zip(b2.tasks, b2.prompts):      # demonstrations of the same kind
        assert any(d in prompt for d in _demo_prompts(kinds[task.id]))
    assert all(t.correct for t in t2) and m2["source/all_wrong_replaced"] == 0.0
    assert m2["source/reverted"] == len(arith) and src.replaced == {} and src.windows == {}
    b3, _, _ = step(src, policy, cfg, 3)                 # back to the plain prompt
    assert all(p.count(ASSISTANT) == 1 for p in b3.prompts)
    # plain again, wrong again: after N = 2 fresh plain failures the tasks are hard once more
    assert [r["pool"] for r in src.rounds] == [len(arith), 0, len(arith)]
    assert [r["reverted"] for r in src.rounds] == [0, len(arith), 0]


def _demo_prompts(kind):
    from tao_lab.tasks import load_demos
    return [d.prompt for d in load_demos(protocol="fenced") if d.meta["kind"] == kind]


def test_n_counts_plain_rollouts_across_steps_and_a_correct_one_clears_hardness(arith):
    src, cfg = source_for(arith[:2], "toolexpander.hard_rollouts=5")
    policy = DemoGatedPolicy(src.tok, {t.prompt: t.answer for t in arith})
    for s in (1, 2):                                     # 2 + 2 wrong rollouts < N = 5: not hard yet
        _, _, m = step(src, policy, cfg, s)
        assert m["source/hard"] == 0 and not src.replaced
    assert all(len(w) == 4 for w in src.windows.values())
    _, _, m = step(src, policy, cfg, 3)                  # 6 wrong, window keeps the last 5: hard
    assert all(len(w) == 5 for w in src.windows.values()) and m["source/replaced"] == 2
    tid = arith[0].id                                    # one correct verdict in the window: not hard
    src.replaced.clear()
    src.windows[tid][-1] = True
    assert src.hard_tasks() == [arith[1].id]


def test_round_steps_delays_the_check_to_the_round_boundary(arith):
    src, cfg = source_for(arith[:2], "toolexpander.hard_rollouts=2", "toolexpander.round_steps=2")
    policy = DemoGatedPolicy(src.tok, {t.prompt: t.answer for t in arith})
    _, _, m1 = step(src, policy, cfg, 1)
    assert "source/hard" not in m1 and not src.replaced and not src.rounds
    _, _, m2 = step(src, policy, cfg, 2)
    assert m2["source/replaced"] == 2 and len(src.rounds) == 1 and src.rounds[0]["all_wrong_plain"] == 1.0
    _, _, m3 = step(src, policy, cfg, 2)                 # observed again in the same step: no new round
    assert "source/hard" not in m3 and len(src.rounds) == 1


def test_replace_hard_off_only_tracks_hardness(arith):
    src, cfg = source_for(arith[:2], "toolexpander.hard_rollouts=2", "toolexpander.replace_hard=false")
    policy = DemoGatedPolicy(src.tok, {t.prompt: t.answer for t in arith})
    step(src, policy, cfg, 1)
    b, _, m = step(src, policy, cfg, 2)
    assert m["source/hard"] == 2 and m["source/replaced"] == 0 and b.info["source/replaced_in_batch"] == 0


def test_a_resumed_source_sees_the_same_pool_and_draws_the_same_prompts(arith):
    src, cfg = source_for(arith, "toolexpander.hard_rollouts=2", "toolexpander.demos=own")
    policy = DemoGatedPolicy(src.tok, {t.prompt: t.answer for t in arith})
    step(src, policy, cfg, 1, k=3)
    state = json.loads(json.dumps(src.state_dict()))     # what the checkpoint stores
    assert state["replaced"] and state["windows"] and state["rounds"]
    twin, _ = source_for(arith, "toolexpander.hard_rollouts=2", "toolexpander.demos=own")
    twin.load_state_dict(state)
    a, b = src.next_batch(2, 3), twin.next_batch(2, 3)
    assert [t.id for t in a.tasks] == [t.id for t in b.tasks] and a.prompts == b.prompts and a.info == b.info
    assert twin.state_dict() == src.state_dict()
    twin.load_state_dict({"cursor": 7})                  # a SeededStream checkpoint: cursor only
    assert twin.cursor == 7 and twin.replaced == {} and twin.rounds == []


def test_own_demos_put_the_runs_correct_answers_first(arith):
    mul = [t for t in arith if t.meta["kind"] == "mul"]
    src, cfg = source_for(mul, "toolexpander.hard_rollouts=2", "toolexpander.demos=own", "toolexpander.n_demos=1")
    policy = DemoGatedPolicy(src.tok, {t.prompt: t.answer for t in arith})
    step(src, policy, cfg, 1)                            # both wrong -> both replaced (bundled demos)
    _, t2, _ = step(src, policy, cfg, 2)                 # solved with demos: remembered, reverted
    assert set(src.own) == {t.id for t in mul}
    src.replaced[mul[0].id] = 3                          # hard again: the own answer to mul[1] comes first
    prompt = src.replaced_prompt(mul[0])
    own_text = next(t.text for t in t2 if t.task_id == mul[1].id)
    assert mul[1].prompt in prompt and own_text in prompt
    assert all(d.prompt not in prompt for d in src.demo_pool)      # k = 1: no bundled one left
    bundled, _ = source_for(mul, "toolexpander.n_demos=1")
    bundled.own = src.own
    assert mul[1].prompt not in bundled.replaced_prompt(mul[0])    # demos="bundled" ignores the store


@pytest.mark.parametrize("text, ok, why", [
    ("<example>2*3 = 6, so multiplying works</example> now \\boxed{6}", True, "ok"),
    ("<example>If a box holds 4 apples, 3 boxes hold 12.</example> So multiply. \\boxed{12}", True, "ok"),
    ("no example here \\boxed{6}", False, "no <example>"),
    ("<example>a b c d</example> x <example>e f g h</example> y \\boxed{1}", False, "exactly one"),
    ("<example>2*3 = 6, so it works \\boxed{6}", False, "exactly one"),
    ("</example>2*3 = 6 so multiply<example> \\boxed{6}", False, "before <example>"),
    ("\\boxed{6} <example>2*3 = 6, so multiplying works</example> checks", False, "before the answer"),
    ("```python\nprint(6)\n```\nCode execution result: 6\n<example>2*3 = 6 so it works</example> ok \\boxed{6}",
     False, "before a tool result"),
    ("<example>six</example> so \\boxed{6}", False, "1 words"),
    ("<example>2*3 = 6, so multiplying works</example>\\boxed{6}", False, "no analysis"),
])
def test_self_example_check_cases(text, ok, why):
    verdict, reason = self_example_check(text)
    assert verdict is ok and why in reason and has_self_example(text) is ok


def test_a_copy_of_the_prompt_is_not_a_self_example():
    prompt = "What is the remainder when 48913 is divided by 41?"
    copied = "<example>What is the remainder when 48913 is divided by 41?</example> so \\boxed{0}"
    own = "<example>The remainder of 10 divided by 3 is 1.</example> so the same way \\boxed{0}"
    ok, reason = self_example_check(copied, prompt)
    assert not ok and "copies the prompt" in reason and not has_self_example(copied, prompt)
    assert has_self_example(copied) and has_self_example(own, prompt)
    assert not has_self_example(f"<example>{SELF_EXAMPLE_INSTRUCTION}</example> ok \\boxed{{1}}", SELF_EXAMPLE_INSTRUCTION)


def test_config_rejects_bad_values_naming_the_field():
    from tao_lab.methods.toolexpander import ToolExpanderConfig
    with pytest.raises(ValueError, match="ToolExpanderConfig.demos='mine'"):
        ToolExpanderConfig(demos="mine")
    with pytest.raises(ValueError, match="hard_rollouts"):
        ToolExpanderConfig(hard_rollouts=0)


def tiny_policy(cfg, tok):
    """A fresh tiny random Llama + LoRA (the test_tiny model) over the session's tokenizer."""
    from tao_lab.models import finish_policy, tiny_model
    return finish_policy(tiny_model(vocab_size=len(tok), seed=cfg.seed), replace(cfg.model, seed=cfg.seed))


def test_trainer_runs_method_toolexpander_on_test_tiny_with_exponential_lr(tmp_path, smol_tokenizer):
    from tao_lab.trainer import Trainer

    cfg = make_config("test_tiny", "toolexpander", ["run.steps=3", "toolexpander.hard_rollouts=2",
                                                    "data.limit=2", "rollout.max_new_tokens=8"])
    assert cfg.loss.beta == 0 and cfg.reward.self_example_bonus == 0.01 and cfg.optim.schedule == "exponential"
    torch.set_num_threads(1)
    tok = smol_tokenizer
    with Trainer(cfg, tmp_path / "run", model=tiny_policy(cfg, tok), tok=tok) as tr:
        assert isinstance(tr.prompt_source, HardSampleSource)
        logs = tr.train()
        state = tr.state.source
    lrs = [log.metrics["lr"] for log in logs]
    assert lrs == pytest.approx([cfg.optim.lr * cfg.optim.gamma ** i for i in range(3)])
    # a random model is never right: both tasks are hard after their first group of 2, then replaced
    assert logs[0].metrics["source/replaced"] == 2 and logs[1].metrics["source/replaced_in_batch"] == 2
    assert math.isclose(logs[1].metrics["source/all_wrong_replaced"], 1.0)
    assert len(state["rounds"]) == 3 and set(state["replaced"]) == {t.id for t in tr.tasks}
    resumed = Trainer.resume(tmp_path / "run", steps=3, model=tiny_policy(cfg, tok), tok=tok)
    assert resumed.prompt_source.state_dict() == state
    resumed.close()


@pytest.mark.parametrize("name", ["toolexpander_vs_grpo", "toolexpander_vs_grpo_bfcl"])
def test_the_experiment_grids_build_their_cells(name, tmp_path):
    from pathlib import Path
    from tao_lab.grid import load_spec, make_cell_config
    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments" / f"{name}.toml")
    cfgs = {a.name: make_cell_config(spec, a, 0, tmp_path) for a in spec.arms}
    assert cfgs["grpo"].optim.schedule == "constant" and cfgs["toolexpander"].optim.schedule == "exponential"
    assert cfgs["toolexpander"].data.tasks == cfgs["grpo"].data.tasks
