"""E3-TIR's expert trajectories and the anchors cut from them [recon; the paper's expert data is not public].

An *expert trajectory* answers a training task in the task's own protocol: one line of prose, a
correct tool call, the observation exactly as `rollout` would show it, then the boxed answer. Two
sources:

  arith   the bundled arithmetic tasks (data/arith_L*): `scripts/make_tasks.py` writes every prompt
          from a small set of forms, so the expression is read back from the prompt (`arith_code`);
          the code then runs in the REAL sandbox and the expert is kept only if its own boxed answer
          (the printed value) verifies against the gold answer (`rewards.verify`)
  demo    the bundled demonstrations (data/demos.jsonl), kept when their boxed answer verifies

An *anchor* is a prefix of an expert trajectory fed to the policy as forced tokens (mask 0): the
cuts are "after the k-th tool call and its observation" [paper: a step ends at a tool call] and,
optionally, "the prose before the first call" [recon: the only cut a one-call expert has short of
the whole solution]. Cuts are listed shortest first; the dynamic boundary (e3tir.pick_anchors)
chooses among them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..branches import Prefix, prefix_from_text
from ..rewards import extract_boxed, verify
from ..toolcall import find_tool_call, format_observation

PROSE = "I'll compute this with Python."      # the generator's sentence before the code


@dataclass
class Expert:
    """One verified expert trajectory for one task."""

    task_id: str
    prompt: str
    answer: str          # the task's gold answer
    text: str            # the assistant completion: prose, call, observation, ..., \boxed{...}
    n_calls: int
    source: str          # "arith" | "demo"


# ----------------------------------------------------------------------------------------------
# Reading the expression back from a bundled arithmetic prompt

_CHAIN = re.compile(r"(?:What is|Compute|Evaluate) ([\d\s×−+()]+)[?.]")


def arith_code(task) -> str | None:
    """The Python that solves a bundled arithmetic task (meta.kind says which generator made it),
    or None when the prompt is not one of the generator's forms."""
    kind, prompt = task.meta.get("kind"), task.prompt
    n = [int(x) for x in re.findall(r"\d+", prompt)]
    if kind == "chain":
        m = _CHAIN.fullmatch(prompt)
        expr = m.group(1).replace("×", "*").replace("−", "-") if m else None
    else:
        want, make = {
            "mul": (2, lambda a, b: f"{a} * {b}"),
            "mod": (2, lambda a, m: f"{a} % {m}"),
            "mulmod": (3, lambda a, b, m: f"({a} * {b}) % {m}"),
            "pow": (2, lambda a, e: f"{a} ** {e}"),
            "powmod": (3, lambda a, e, m: f"pow({a}, {e}, {m})"),
            "digitsum": (2, lambda a, e: f"sum(int(d) for d in str({a} ** {e}))"),
        }.get(kind, (None, None))
        expr = make(*n) if want is not None and len(n) == want else None
    return None if expr is None else f"print({expr})"


def expert_text(code: str, observation: str, answer: str, protocol: str = "fenced", prose: str = PROSE) -> str:
    """The completion as the bundled demonstrations write it; `observation` is
    toolcall.format_observation's text (it carries its own leading and trailing newline)."""
    if protocol == "fenced":
        return f"{prose}\n```python\n{code}\n```{observation}The answer is \\boxed{{{answer}}}."
    return f"{prose}\n<python>\n{code}\n</python>{observation}<answer>\\boxed{{{answer}}}</answer>"


def build_experts(tasks: Sequence, protocol: str = "fenced", obs_max_chars: int = 512,
                  pool=None) -> tuple[dict[str, Expert], dict[str, int]]:
    """Run each task's expert code in the sandbox and keep the experts that verify.

    pool: a sandbox.SandboxPool (its .map runs the codes in parallel); None runs each code in a fresh
    sandbox (sandbox.run_code). Returns ({task_id: Expert}, counts made / no_solution / wrong_output).
    """
    from ..sandbox import run_code

    counts = {"made": 0, "no_solution": 0, "wrong_output": 0}
    todo = [(t, c) for t in tasks if (c := arith_code(t)) is not None]
    counts["no_solution"] = len(tasks) - len(todo)
    codes = [c for _, c in todo]
    results = pool.map(codes) if pool is not None else [run_code(c) for c in codes]
    out = {}
    for (task, code), res in zip(todo, results):
        printed = res.stdout.strip()
        text = expert_text(code, format_observation(res, protocol, max_chars=obs_max_chars), printed, protocol)
        # the observation must be one line: prefix_from_text reads a fenced observation as one line
        if not res.ok or "\n" in printed or not verify(extract_boxed(text), task.answer):
            counts["wrong_output"] += 1
            continue
        out[task.id] = Expert(task.id, task.prompt, task.answer, text, 1, "arith")
        counts["made"] += 1
    return out, counts


def expert_from_demo(demo) -> Expert | None:
    """A bundled demonstration as an expert (None when its boxed answer does not verify)."""
    if not verify(extract_boxed(demo.completion), demo.answer):
        return None
    return Expert(demo.id, demo.prompt, demo.answer, demo.completion, len(demo.steps), "demo")


# ----------------------------------------------------------------------------------------------
# Anchors


def anchor_cuts(tok, expert: Expert, protocol: str = "fenced", cuts: str = "calls+prose",
                max_tokens: int | None = None, room: int = 8) -> list[Prefix]:
    """The expert's anchor prefixes, shortest first (branches.Prefix: forced tokens, mask 0).

    cuts: "calls" (after each tool call and its observation, but never the whole solution) or
    "calls+prose" (also the prose before the first call). A cut that leaves fewer than `room`
    tokens of `max_tokens` for the policy is dropped (it could not be continued)."""
    out = []
    call = find_tool_call(expert.text, protocol)
    if cuts == "calls+prose" and call is not None and expert.text[:call.start].strip():
        out.append(prefix_from_text(tok, expert.text[:call.start], protocol))
    for k in range(1, expert.n_calls + 1):
        out.append(prefix_from_text(tok, expert.text, protocol, steps=k))
    for p in out:
        p.source = f"expert:{expert.task_id}:" + (f"calls={len(p.tool_calls)}" if p.tool_calls else "prose")
    return [p for p in out if max_tokens is None or len(p.token_ids) + room <= max_tokens]
