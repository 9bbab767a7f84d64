"""The supervised stage's data: SFT examples as Trajectories, from every source SFTConfig.data names.

sft.py trains on what this module builds; nothing here needs a model, only a tokenizer. Reading order:

    split_completion      expert text -> model / observation segments (toolcall.py finds the calls)
    text_to_trajectory    prompt + expert text + tokenizer -> Trajectory, mask 1 on model text, 0 on
                          tool observations (records.py's convention; the prompt is mask 0 by layout)
    demo_to_trajectory    a tasks.Demo rendered with the RL prompt template, then text_to_trajectory
    select_from_run       rejection sampling: keep a run store's trajectories that were correct
    load_examples         SFTConfig.data -> (trajectories, counts); every drop is counted
    expert_examples       'experts:TASKS[:N]': E3-TIR's generated expert trajectories, verified

(ET-Agent's flywheel hands its selected set to sft.SFTRun directly: et_agent_flywheel.sft_examples.)

Choices, stated once:
  - Observations are tokenised on their own, as the rollout does (episode.finish_call), so an SFT
    example tokenises like the episode the policy would later sample, tool output included.
  - Demonstrations end with the tokenizer's end-of-sequence token (trainable, `SFTConfig.eos`): the
    rollout ends an episode only at EOS, so a policy that never learnt to stop would run on to the
    token budget. Run-store trajectories are kept exactly as sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .records import RunStore, ToolCall, Trajectory
from .toolcall import find_tool_call, format_observation, has_boxed, is_valid_call

if TYPE_CHECKING:       # sft.py imports this module; the config is only read here
    from .sft import SFTConfig

SOURCES_HELP = ("'demos' | 'demos:fenced' | 'demos:tags' (bundled demonstrations), a .jsonl file of "
                "tasks.Demo records, 'experts:TASKS[:N]' (E3-TIR's generated expert trajectories for the "
                "first N training tasks of a bundled arithmetic set, e.g. experts:arith-L3:200), or "
                "RUN_DIR[:STEPS] (a run store; STEPS like 3, 2-5 or 1,4)")


# ----------------------------------------------------------------------------------------------
# Expert text -> Trajectory (pure: text + tokenizer in, record out)


@dataclass(frozen=True)
class Segment:
    """A piece of an expert completion: model text (trained) or a tool observation (forced)."""

    text: str
    forced: bool                     # True: tool observation, mask 0
    code: str = ""                   # model segments that end with a tool call: its code
    output: str | None = None        # observations: the recorded stdout, when it was given


def _recorded_result(output: str):
    from .sandbox import ExecResult
    return ExecResult(status="ok", stdout=output, stderr="", duration_s=0.0, tier="recorded",
                      exit_code=0, stdout_truncated=False, stderr_truncated=False)


def _observation_at(rest: str, protocol: str, output: str | None, k: int) -> str:
    """The observation text that starts `rest` (the text right after tool call k)."""
    if output is not None:
        want = format_observation(_recorded_result(output), protocol)
        if not rest.startswith(want):
            raise ValueError(f"after tool call {k} the text should hold the observation of its recorded "
                             f"output, {want!r}, but reads {rest[:len(want) + 20]!r}")
        return want
    # no recorded output: read the observation by the protocol's syntax (one line when fenced)
    head, close = ("\nCode execution result: ", "\n") if protocol == "fenced" else ("\n<result>\n", "</result>\n")
    if not rest.startswith(head):
        raise ValueError(f"tool call {k} is not followed by an observation ({head!r}); text after it: "
                         f"{rest[:40]!r}")
    end = rest.find(close, len(head))
    return rest if end < 0 else rest[:end + len(close)]


def split_completion(text: str, protocol: str = "fenced",
                     outputs: Sequence[str] | None = None) -> list[Segment]:
    """Cut an expert completion into model segments and observations, in order.

    A model segment runs to the end of a complete tool call (toolcall.find_tool_call); the
    observation that follows must be the one the rollout would append (toolcall.format_observation
    of `outputs[k]` when given, else read by the protocol's syntax: a multi-line fenced output needs
    `outputs`). Raises ValueError naming the call when an observation is missing or different.
    """
    if outputs is not None:
        outputs = list(outputs)
    segs, rest, k = [], text, 0
    while (m := find_tool_call(rest, protocol)) is not None:
        segs.append(Segment(rest[:m.end], False, code=m.code))
        rest = rest[m.end:]
        if outputs is not None and k >= len(outputs):
            raise ValueError(f"the text has more tool calls than the {len(outputs)} recorded outputs")
        out = outputs[k] if outputs is not None else None
        obs = _observation_at(rest, protocol, out, k)
        segs.append(Segment(obs, True, output=out))
        rest = rest[len(obs):]
        k += 1
    if outputs is not None and k != len(outputs):
        raise ValueError(f"the text has {k} tool calls but {len(outputs)} recorded outputs")
    if rest:
        segs.append(Segment(rest, False))
    return segs


def text_to_trajectory(prompt_text: str, completion: str, tokenizer, *, protocol: str = "fenced",
                       outputs: Sequence[str] | None = None, task_id: str = "", answer: str = "",
                       eos: bool = True) -> Trajectory:
    """An expert completion as a Trajectory: mask 1 on model text (and the final EOS), 0 on tool
    observations; turns advance after each observation, as in a rollout."""
    tr = Trajectory(task_id=task_id, group_id=0, prompt_ids=tokenizer.encode(prompt_text, add_special_tokens=False),
                    token_ids=[], mask=[], logprobs=[], entropies=[], turn_idx=[], post_tool=[],
                    text=completion, answer=answer, prompt_text=prompt_text, n_turns=1,
                    finish_reason="boxed" if has_boxed(completion) else "eos")
    segs = split_completion(completion, protocol, outputs)
    for i, seg in enumerate(segs):
        ids = tokenizer.encode(seg.text, add_special_tokens=False)
        if seg.forced:
            prev = segs[i - 1]
            res = _recorded_result(seg.output if seg.output is not None else "")
            tr.tool_calls.append(ToolCall(
                turn=tr.n_turns - 1, protocol=protocol, code=prev.code, status="ok",
                stdout=seg.output if seg.output is not None else "", stderr="", duration_s=0.0,
                tier="recorded", observation=seg.text,
                valid=is_valid_call(res) if seg.output is not None else True))
        _append(tr, ids, 0 if seg.forced else 1)
        if seg.forced and i + 1 < len(segs):
            tr.n_turns += 1                  # the next turn starts after the observation
    if eos and tokenizer.eos_token_id is not None:
        _append(tr, [tokenizer.eos_token_id], 1)
    return tr


def _append(tr: Trajectory, ids: list[int], mask: int) -> None:
    turn = tr.n_turns - 1
    tr.token_ids += ids
    tr.mask += [mask] * len(ids)
    tr.logprobs += [0.0] * len(ids)          # not sampled: no behaviour log-probs to record
    tr.entropies += [0.0] * len(ids)
    tr.turn_idx += [turn] * len(ids)
    # the rollout's post-tool rule (sampled tokens of a turn after a tool call); to be replaced by
    # records.post_tool_gate once that single gate function lands
    tr.post_tool += [int(mask == 1 and turn >= 1)] * len(ids)


def demo_to_trajectory(demo, tokenizer, template: str = "zero_shot", n_demos: int = 2,
                       eos: bool = True) -> Trajectory:
    """A tasks.Demo as the Trajectory of an episode that answered it, under the RL prompt template."""
    from .tasks import Task, render_prompt

    task = Task(id=demo.id, prompt=demo.prompt, answer=demo.answer, meta=dict(demo.meta))
    prompt = render_prompt(tokenizer, task, template=template, protocol=demo.protocol, n_demos=n_demos)
    try:
        return text_to_trajectory(prompt, demo.completion, tokenizer, protocol=demo.protocol,
                                  outputs=[s["output"] for s in demo.steps], task_id=demo.id,
                                  answer=demo.answer, eos=eos)
    except ValueError as e:
        raise ValueError(f"demonstration {demo.id!r}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Selection: which trajectories to train on


def parse_steps(spec: str) -> list[int]:
    """'3' -> [3]; '2-5' -> [2, 3, 4, 5]; '1,4' -> [1, 4]; parts may mix ('1,3-4')."""
    out = []
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        try:
            out += list(range(int(a), int(b) + 1)) if b else [int(a)]
        except ValueError:
            raise ValueError(f"run-store steps {spec!r}: write N, A-B or a comma list such as 1,3-4") from None
    return out


def is_correct(traj: Trajectory, row: dict | None = None) -> tuple[bool, str]:
    """(correct, how): the stored `correct` column when a run has one, else the verifier re-run on the
    stored text (rewards.find_answer + rewards.verify). Never `reward > 0`: shaped rewards lie."""
    from .rewards import find_answer, verify

    stored = (row or {}).get("correct", getattr(traj, "correct", None))
    if stored is not None and stored == stored:          # NaN (missing in an older row) is not stored
        return bool(stored), "stored"
    return verify(find_answer(traj)[0], traj.answer), "verified"


def select_from_run(run_dir, steps: Sequence[int] | None = None, select: str = "correct",
                    min_reward: float = 1.0) -> tuple[list[Trajectory], dict[str, int]]:
    """Rejection sampling over a run store: the trajectories of `steps` (all by default) that pass
    `select`. Returns (kept, counts)."""
    store = RunStore(run_dir)
    have = store.steps()
    steps = have if steps is None else list(steps)
    missing = sorted(set(steps) - set(have))
    if missing:
        raise ValueError(f"{run_dir} has no stored trajectories for steps {missing}; it has {have}")
    kept, counts = [], {"read": 0, "rejected": 0, "correct_stored": 0, "correct_verified": 0}
    for s in steps:
        for row in store.read_step_frame(s).to_dict("records"):
            from .records import trajectory_from_row
            traj = trajectory_from_row(row)
            counts["read"] += 1
            if select == "correct":
                ok, how = is_correct(traj, row)
                counts[f"correct_{how}"] += 1
            elif select == "reward":
                ok = traj.reward is not None and traj.reward >= min_reward
            else:
                ok = True
            if ok:
                kept.append(traj)
            else:
                counts["rejected"] += 1
    return kept, counts


def load_examples(cfg: SFTConfig, tokenizer) -> tuple[list[Trajectory], dict[str, int]]:
    """SFTConfig.data -> (training trajectories, counts of what was read, rejected and dropped)."""
    from .tasks import load_demos

    src = cfg.data
    if src == "demos" or src.startswith("demos:") or src.endswith(".jsonl"):
        path, protocol = (None, cfg.protocol) if src == "demos" else \
            (None, src.split(":", 1)[1]) if src.startswith("demos:") else (src, cfg.protocol)
        demos = load_demos(path, protocol=protocol)
        examples = [demo_to_trajectory(d, tokenizer, cfg.template, cfg.n_demos, cfg.eos) for d in demos]
        counts = {"read": len(demos), "rejected": 0}
    elif src.startswith("experts:"):
        examples, counts = expert_examples(src, cfg, tokenizer)
    else:
        run, _, spec = src.partition(":") if not Path(src).exists() else (src, "", "")
        if not (Path(run) / "steps").is_dir():
            raise ValueError(f"SFTConfig.data={src!r} is not a source: give {SOURCES_HELP}")
        examples, counts = select_from_run(run, parse_steps(spec) if spec else None, cfg.select, cfg.min_reward)
    for i, t in enumerate(examples):
        t.group_id, t.sample_idx = i, 0      # one example per row of the stored SFT set
    return _drop(examples, cfg, counts)


def expert_examples(src: str, cfg: SFTConfig, tokenizer) -> tuple[list[Trajectory], dict[str, int]]:
    """'experts:TASKS[:N]' -> the verified expert trajectories of the first N training tasks
    (methods/e3tir_experts.py: the expert code is read back from the generated prompt and run in the
    real sandbox). E3-TIR's SFT-then-RL baseline trains on these; the E3-TIR arm spends a budget of
    the same kind of data (e3tir.expert_tasks), so both data costs are counted in one unit."""
    from .methods.e3tir_experts import build_experts
    from .tasks import load_tasks, render_prompt

    _, name, n = (src.split(":") + [""])[:3]
    if not name or (n and not n.isdigit()):
        raise ValueError(f"SFTConfig.data={src!r}: write experts:TASKS or experts:TASKS:N (N a count)")
    tasks = load_tasks(name, split="train", limit=int(n) if n else None)
    made, built = build_experts(tasks, cfg.protocol)
    examples = []
    for t in tasks:
        if (e := made.get(t.id)) is not None:
            prompt = render_prompt(tokenizer, t, template=cfg.template, protocol=cfg.protocol, n_demos=cfg.n_demos)
            examples.append(text_to_trajectory(prompt, e.text, tokenizer, protocol=cfg.protocol,
                                               task_id=t.id, answer=t.answer, eos=cfg.eos))
    return examples, {"read": len(tasks), "rejected": built["no_solution"] + built["wrong_output"]}


def _drop(examples: list[Trajectory], cfg: SFTConfig, counts: dict[str, int]):
    kept, seen = [], set()
    counts.update(too_long=0, no_trainable_tokens=0, duplicates=0)
    for t in examples:
        key = (tuple(t.prompt_ids), tuple(t.token_ids))
        if len(t.prompt_ids) + len(t.token_ids) > cfg.max_len:
            counts["too_long"] += 1
        elif t.n_sampled == 0:
            counts["no_trainable_tokens"] += 1
        elif cfg.dedupe and key in seen:
            counts["duplicates"] += 1
        else:
            seen.add(key)
            kept.append(t)
    counts["examples"] = len(kept)
    if not kept:
        raise ValueError(f"no training examples left from SFTConfig.data={cfg.data!r}: {counts}. Loosen "
                         "SFTConfig.select / min_reward, raise max_len, or pick other steps")
    return kept, counts
