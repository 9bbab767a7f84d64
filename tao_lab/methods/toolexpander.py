"""ToolExpander: GRPO for weak models [paper: arXiv 2510.07737; no public code].

A weak model's GRPO groups are often all wrong: every member gets reward 0, the group-normalised
advantage is 0 on every token, and the step learns nothing from that prompt. ToolExpander changes
four stages of the loop:

1. the *prompt source* — Dynamic Multi-Round Hard Sampling [paper]. A task is *hard* when none of
   its last N rollouts (N = 10 [paper]) is correct. Every round the hard tasks are re-checked and a
   hard task's prompt is replaced by a few-shot-augmented one (k solved demonstrations of the same
   kind) [paper: "replaced by high-quality few-shot demonstrations"]; how the demonstrations are
   chosen and inserted is [recon]: the bundled demonstrations of the task's kind (tasks.py), or,
   with demos="own", the run's own correct answers to other tasks of that kind first. A replaced
   task goes back to its plain prompt as soon as one of its augmented rollouts is correct [recon]
   and must then fail N plain rollouts again to be replaced again. Normal training rollouts count
   toward N, so the check costs no extra rollouts [recon]. `HardSampleSource` below.
2. the *schedule* — exponential LR decay lr_t = lr_0·γ^t [paper]; γ is not given: 0.98 per step
   [recon] (the LR halves about every 34 steps, ends a 100-step run at 13 % of lr_0: late updates are
   damped without freezing the early ones).
3. the *loss* — GRPO without the KL term (beta = 0) [paper]. The paper "adjusts the clip
   coefficients" but does not give them: the arm keeps the shared clip-higher 0.2 / 0.28 switches
   (`loss.eps_low`, `loss.eps_high`), labelled [unknown in the paper].
4. the *reward* — +0.01 when the model writes and analyses an example of its own before answering
   [paper]; the detection rule `self_example_check` is [recon] (below), the prompt that invites it
   is `SELF_EXAMPLE_INSTRUCTION` [recon].

Function calling (the paper's setting) lives in tao_lab/bfcl.py; `build_hooks` uses its reward
when the training tasks come from BFCL.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..hooks import PromptBatch, seeded_order

DEMO_SOURCES = ("bundled", "own")


@dataclass
class ToolExpanderConfig:
    """Hard-sample replacement knobs (TrainConfig section `toolexpander`)."""

    hard_rollouts: int = 10          # N: a task is hard when none of its last N plain rollouts is correct [paper]
    round_steps: int = 1             # trainer steps per hardness round [recon: the paper re-checks "every round"]
    n_demos: int = 2                 # k solved demonstrations added to a hard task's prompt [recon]
    demos: str = "bundled"           # "bundled" (tasks.py demos) | "own" (the run's correct answers first) [recon]
    replace_hard: bool = True        # False: track hardness only (telemetry), never replace
    revert: bool = True              # a replaced task reverts when one augmented rollout is correct [recon]
    self_example_prompt: bool = True  # add SELF_EXAMPLE_INSTRUCTION to the system prompt [recon]

    def __post_init__(self):
        from .. import checks

        checks.number(self, "hard_rollouts", lo=1, integer=True)
        checks.number(self, "round_steps", lo=1, integer=True)
        checks.number(self, "n_demos", lo=1, integer=True)
        checks.choice(self, "demos", DEMO_SOURCES)
        checks.flag(self, "replace_hard", "revert", "self_example_prompt")


# ----------------------------------------------------------------------------------------------
# Self-exemplifying thinking [paper: the +0.01 bonus; recon: the prompt and the detection rule]

SELF_EXAMPLE_INSTRUCTION = (
    "Before you solve the problem, make up one short example of your own that is like it, write it "
    "between <example> and </example>, and say in a sentence what the example shows. Then solve the "
    "problem."
)

_OPEN, _CLOSE = "<example>", "</example>"
_ANSWER_RE = re.compile(r"\\boxed\s*\{|<answer>|<tool_call>")          # fenced / tags / function calling
_TOOL_RESULT_RE = re.compile(r"Code execution result:|<result>")       # the forced observation markers
_WORD_RE = re.compile(r"\w+")
MIN_EXAMPLE_WORDS = 4        # [recon] shorter is not an example ("<example>x</example>")
MAX_COPY_OVERLAP = 0.6       # [recon] share of the example's word trigrams that may occur in the prompt


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = _WORD_RE.findall(text.lower())
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def self_example_check(text: str, prompt: str = "", min_words: int = MIN_EXAMPLE_WORDS,
                       max_overlap: float = MAX_COPY_OVERLAP) -> tuple[bool, str]:
    """[recon] Did the completion write and analyse an example of its own? -> (verdict, reason).

    Counts only when all hold (each closes a way to game the +0.01):
      exactly one <example>…</example> section (no repeats to farm, no unclosed tag);
      it ends before the answer (\\boxed{ / <answer> / <tool_call>) and before the first tool result
        (an "example" written after seeing the answer is not self-exemplifying);
      it has at least `min_words` words;
      some analysis (at least one word) follows it before the answer;
      it is not a copy of the prompt: at most `max_overlap` of its word trigrams occur in `prompt`
        (the rendered prompt: question, demonstrations, instruction).
    """
    text = text or ""
    n_open, n_close = text.count(_OPEN), text.count(_CLOSE)
    if n_open == 0 and n_close == 0:
        return False, "no <example> section"
    if n_open != 1 or n_close != 1:
        return False, f"{n_open} <example> and {n_close} </example> tags: exactly one section counts"
    start, end = text.index(_OPEN), text.index(_CLOSE)
    if end < start:
        return False, "</example> comes before <example>"
    body = text[start + len(_OPEN):end]
    for name, rx in (("the answer", _ANSWER_RE), ("a tool result", _TOOL_RESULT_RE)):
        m = rx.search(text)
        if m and m.start() < end + len(_CLOSE):
            return False, f"the example does not end before {name}"
    n_words = len(_WORD_RE.findall(body))
    if n_words < min_words:
        return False, f"the example has {n_words} words (< {min_words})"
    after = text[end + len(_CLOSE):]
    stop = min([m.start() for rx in (_ANSWER_RE, _TOOL_RESULT_RE) if (m := rx.search(after))], default=len(after))
    if not _WORD_RE.search(after[:stop]):
        return False, "no analysis after the example"
    grams = _trigrams(body)
    if grams and prompt:
        overlap = len(grams & _trigrams(prompt)) / len(grams)
        if overlap > max_overlap:
            return False, f"copies the prompt ({overlap:.0%} of its word trigrams are in the prompt)"
    return True, "ok"


def has_self_example(text: str, prompt: str = "") -> bool:
    """The boolean form of `self_example_check` (what rewards.score adds the bonus on)."""
    return self_example_check(text, prompt)[0]


# ----------------------------------------------------------------------------------------------
# Dynamic multi-round hard sampling [paper; details recon]


def task_kind(task) -> str:
    """What "the same kind" means for demonstrations: the task's kind, BFCL category, or family."""
    meta = task.meta or {}
    return str(meta.get("kind") or meta.get("category") or meta.get("family") or "any")


def all_wrong_rate(verdicts_by_group: Sequence[Sequence[bool]]) -> float:
    """Share of groups in which no member is correct (their GRPO advantages are all 0)."""
    groups = [g for g in verdicts_by_group if len(g)]
    return sum(not any(g) for g in groups) / len(groups) if groups else 0.0


class HardSampleSource:
    """A hooks.PromptSource: seeded_order over the tasks; hard tasks get few-shot-augmented prompts.

    State (JSON, checkpointed by the Trainer): the cursor, per task the window of its last N plain
    verdicts, the replaced tasks (task id -> round replaced), the own-demonstration store (task id ->
    a correct completion), the finished rounds and the running round's counters.
    `demo_pool`: the bundled demonstrations (default tasks.load_demos(); bfcl.demos for BFCL tasks).
    """

    def __init__(self, tasks: Sequence, tok, cfg, demo_pool: Sequence | None = None):
        from ..tasks import load_demos

        self.tasks, self.tok, self.cfg = list(tasks), tok, cfg
        self.tx: ToolExpanderConfig = cfg.toolexpander
        self.seed = int(cfg.seed)
        self.by_id = {t.id: t for t in self.tasks}
        if len(self.by_id) != len(self.tasks):
            raise ValueError("HardSampleSource: task ids must be unique (hardness is tracked per id)")
        self.demo_pool = list(demo_pool) if demo_pool is not None else load_demos(protocol=cfg.rollout.protocol)
        self._plain_cache: dict[str, str] = {}
        self.load_state_dict({"cursor": 0})

    # -- rendering
    def _messages(self, task, extra: list) -> list[dict[str, str]]:
        """system [+ instruction], the template's own demonstrations, then `extra` ones, then the task."""
        from ..tasks import build_messages

        ro = self.cfg.rollout
        n_plain = ro.n_demos if ro.template == "few_shot" else 0
        messages = build_messages(task, "few_shot" if n_plain else "zero_shot", ro.protocol, n_plain,
                                  demos=self.demo_pool)
        if self.tx.self_example_prompt:
            messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + SELF_EXAMPLE_INSTRUCTION}
        shown = {m["content"] for m in messages[1:-1] if m["role"] == "user"}
        for d in extra:                 # [recon] the added demonstrations sit right before the question
            if d.prompt not in shown:
                messages[-1:-1] = [{"role": "user", "content": d.prompt},
                                   {"role": "assistant", "content": d.completion}]
        return messages

    def _render(self, messages) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def plain_prompt(self, task) -> str:
        if task.id not in self._plain_cache:
            self._plain_cache[task.id] = self._render(self._messages(task, []))
        return self._plain_cache[task.id]

    def own_demos(self, task) -> list:
        """The run's own correct answers to other tasks of the same kind, oldest first [recon]."""
        from ..tasks import Demo

        kind = task_kind(task)
        return [Demo(id=f"own-{tid}", protocol=self.cfg.rollout.protocol, prompt=d["prompt"], answer=d["answer"],
                     completion=d["completion"], steps=[], meta={"kind": kind, "family": d.get("family")})
                for tid, d in self.own.items() if d["kind"] == kind and tid != task.id]

    def replaced_prompt(self, task) -> str:
        """The hard task's few-shot-augmented prompt: k demonstrations of its kind before the question."""
        from ..tasks import select_demos

        ro = self.cfg.rollout
        plain = self._messages(task, [])
        shown = {m["content"] for m in plain[1:-1] if m["role"] == "user"}
        own = self.own_demos(task) if self.tx.demos == "own" else []
        pool = [d for d in own + self.demo_pool
                if d.protocol == ro.protocol and d.prompt not in shown and d.prompt != task.prompt]
        picked = select_demos(task, pool, min(self.tx.n_demos, len(pool)), ro.protocol)
        return self._render(self._messages(task, picked))

    # -- the PromptSource protocol
    def next_batch(self, step: int, k: int) -> PromptBatch:
        idx, self.cursor = seeded_order(len(self.tasks), self.cursor, k, self.seed)
        tasks = [self.tasks[i] for i in idx]
        prompts = [self.replaced_prompt(t) if t.id in self.replaced else self.plain_prompt(t) for t in tasks]
        info = {"data/cursor": self.cursor, "data/epoch": self.cursor / len(self.tasks),
                "source/replaced_in_batch": sum(t.id in self.replaced for t in tasks),
                "source/replaced_pool": len(self.replaced)}
        return PromptBatch(tasks, prompts=prompts, info=info)

    def observe(self, step: int, batch: PromptBatch, trajs: list) -> dict[str, float]:
        from ..records import is_correct

        N, cur = self.tx.hard_rollouts, self.current
        groups: dict[tuple[str, bool], list[bool]] = {}
        for i, task in enumerate(batch.tasks):
            augmented = batch.prompts is not None and batch.prompts[i] != self.plain_prompt(task)
            groups.setdefault((task.id, augmented), [])
        for t in trajs:
            key = next((k for k in ((t.task_id, False), (t.task_id, True)) if k in groups), None)
            if key is not None:
                groups[key].append(is_correct(t))
                if is_correct(t) and t.task_id not in self.own:
                    self._remember(t)
        plain = [v for (tid, aug), v in groups.items() if not aug]
        augmented = [v for (tid, aug), v in groups.items() if aug]
        for (tid, aug), verdicts in groups.items():
            if not aug:
                self.windows[tid] = (self.windows.get(tid, []) + [bool(v) for v in verdicts])[-N:]
            elif any(verdicts) and self.tx.revert and tid in self.replaced:
                del self.replaced[tid]             # it stopped being hard: back to the plain prompt
                self.windows.pop(tid, None)        # ... and must fail N plain rollouts again
                cur["reverted"] += 1
        cur["groups_plain"] += len(plain)
        cur["all_wrong_plain"] += sum(not any(v) for v in plain if v)
        cur["groups_replaced"] += len(augmented)
        cur["all_wrong_replaced"] += sum(not any(v) for v in augmented if v)
        metrics = {"source/all_wrong_rate": all_wrong_rate(plain + augmented)}
        if plain:                      # a rate over no groups would read as "none all wrong"
            metrics["source/all_wrong_plain"] = all_wrong_rate(plain)
        if augmented:
            metrics["source/all_wrong_replaced"] = all_wrong_rate(augmented)
        closed = bool(self.rounds) and self.rounds[-1]["step"] == step   # a refill loop observes twice
        if step % self.tx.round_steps == 0 and not closed:
            metrics.update(self.check_round(step))
        return metrics

    def _remember(self, traj) -> None:
        task = self.by_id.get(traj.task_id)
        if task is not None:
            self.own[task.id] = {"prompt": task.prompt, "answer": task.answer, "completion": traj.text,
                                 "kind": task_kind(task), "family": (task.meta or {}).get("family")}

    def hard_tasks(self) -> list[str]:
        """Tasks whose last N plain rollouts are all wrong (a full window, none correct)."""
        N = self.tx.hard_rollouts
        return sorted(tid for tid, w in self.windows.items() if len(w) >= N and not any(w))

    def check_round(self, step: int) -> dict[str, float]:
        """A round boundary: replace the hard tasks, close the round's telemetry record."""
        hard = [tid for tid in self.hard_tasks() if tid not in self.replaced]
        new = hard if self.tx.replace_hard else []
        for tid in new:
            self.replaced[tid] = len(self.rounds) + 1
        cur = self.current
        rec = {"round": len(self.rounds) + 1, "step": step, "hard": len(hard) + len(self.replaced) - len(new),
               "replaced": len(new), "reverted": cur["reverted"], "pool": len(self.replaced),
               "all_wrong_plain": cur["all_wrong_plain"] / cur["groups_plain"] if cur["groups_plain"] else None,
               "all_wrong_replaced": (cur["all_wrong_replaced"] / cur["groups_replaced"]
                                      if cur["groups_replaced"] else None)}
        self.rounds.append(rec)
        self.current = _new_round()
        return {f"source/{k}": float(v) for k, v in rec.items() if v is not None and k != "step"}

    def state_dict(self) -> dict[str, Any]:
        state = {"cursor": self.cursor, "windows": self.windows, "replaced": self.replaced, "own": self.own,
                 "rounds": self.rounds, "current": self.current}
        return json.loads(json.dumps(state))          # a deep, JSON-clean copy

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state_dict (or SeededStream's bare {"cursor"}: a run switched to ToolExpander)."""
        state = json.loads(json.dumps(state))
        self.cursor = int(state["cursor"])
        self.windows = {k: [bool(x) for x in v] for k, v in state.get("windows", {}).items()}
        self.replaced = {k: int(v) for k, v in state.get("replaced", {}).items()}
        self.own = dict(state.get("own", {}))
        self.rounds = list(state.get("rounds", []))
        self.current = {**_new_round(), **state.get("current", {})}


def _new_round() -> dict[str, int]:
    return {"reverted": 0, "groups_plain": 0, "all_wrong_plain": 0, "groups_replaced": 0, "all_wrong_replaced": 0}


# ----------------------------------------------------------------------------------------------
# The arm and its hooks

GAMMA = 0.98   # [recon] the paper's γ is unknown; see the module docstring


def toolexpander_arm(cfg):
    """ToolExpander's switches on a sized config: GRPO (no filter, no shaping) [paper], no KL
    (beta 0) [paper], lr_t = lr_0·γ^t with γ = 0.98 [paper: exponential decay; recon: γ], +0.01
    self-example bonus [paper]. Clip coefficients: the shared 0.2 / 0.28 [the paper's are unknown]."""
    return replace(cfg, method="toolexpander",
                   filter=replace(cfg.filter, rules=(), refill="none"),
                   shaping=replace(cfg.shaping, kind="none"),
                   loss=replace(cfg.loss, beta=0.0),
                   optim=replace(cfg.optim, schedule="exponential", gamma=GAMMA),
                   reward=replace(cfg.reward, self_example_bonus=0.01))


def build_hooks(cfg, tasks, tok):
    """methods.arms.HOOKS["toolexpander"]: the hard-sample prompt source (+ BFCL's reward on BFCL tasks)."""
    from ..hooks import MethodHooks

    tasks = list(tasks)
    if tasks and all((t.meta or {}).get("format") == "bfcl" for t in tasks):
        from .. import bfcl

        return MethodHooks(prompt_source=HardSampleSource(tasks, tok, cfg, demo_pool=bfcl.demos(tasks)),
                           reward_fn=bfcl.make_reward_fn(tasks, cfg.reward.self_example_bonus))
    return MethodHooks(prompt_source=HardSampleSource(tasks, tok, cfg))
