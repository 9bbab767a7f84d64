"""ET-Agent's self-evolving data flywheel, rule-based on one machine [paper][code], and phase 1's data.

Per question a buffer of trajectories grows over rounds (code: 3). Round 0 rolls out
`init_samples` trajectories per question. Each later round takes, per question, the best trajectory
not yet expanded (correct first, then fewer tool calls, then shorter) and expands it:

    correct    re-rollout       a fresh rollout of the question (no prefix) [paper]
               redundancy_cut   cut before the turn of its first redundant call (behaviour.py's
                                rule [recon]: a repeated call, or a valid call whose output is never
                                used) and let the policy regenerate from there [paper]
    incorrect  correction       cut before the turn of its first failed call, else before its final
                                turn, and regenerate [paper: self-correction]
               hint             cut before its final answer (or after its last observation, or
                                before a turn that neither called nor answered), append "Wait, let
                                me check this with Python." and raise the turn budget by 4 [code]

Every new row goes through rollout.generate with a forced prefix (branches.prefix_from_trajectory),
so its tool calls run in the real sandbox, and the verifier (rewards.mark_correct) judges it; it is
added to its question's buffer with its provenance (op, round, parent). The code rewrites steps
with a 72B model; here the cuts are rules and the regeneration is the policy itself. An optional
`editor(traj, op) -> branches.Prefix | None` lets a stronger model (or a person) make the cut
instead; None falls back to the rule.

Phase 1 data [recon]: per question the best trajectory of its buffer, if correct, is an SFT
example. A regenerated row's prefix was forced (mask 0) in the rollout, but as a demonstration it
is the model's text: `demo_mask` marks the kept prefix's model text and the hint trainable (1) and
every tool observation not trainable (0), so sft.SFTRun learns the whole corrected trajectory.

Stored (`save` / `Flywheel(..., out_dir=...)` resumes from it):
    out_dir/rounds/steps/step_{round}.parquet   every row of that round, with op, round, parent,
                                                buffer index and demo_mask columns
    out_dir/selected/steps/step_000001.parquet  the SFT set (demo masks as `mask`), with op / round:
                                                `tao-lab sft --set data=out_dir/selected` reads it
    out_dir/flywheel.json                       rounds done and which buffer entries were expanded
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..behaviour import first_redundant_call
from ..branches import Prefix, prefix_from_trajectory
from ..records import RunStore, Trajectory, is_correct, trajectory_from_row

OPS = ("rerollout", "redundancy_cut", "correction", "hint")
HINT = "Wait, let me check this with Python."   # [paper]


@dataclass
class FlywheelConfig:
    rounds: int = 3                  # expansion rounds after round 0 [code: 3]
    init_samples: int = 2            # round 0 rollouts per question
    ops: tuple[str, ...] = OPS       # which operations run (an ablation drops some)
    hint: str = HINT                 # injected text [paper]
    hint_extra_turns: int = 4        # turn budget raised after a hint [code: +4]
    min_room: int = 8                # a cut that leaves fewer new tokens than this is skipped (counted)
    seed: int = 0                    # rollout seed of round r is seed + r

    def __post_init__(self):
        from .. import checks

        checks.number(self, "rounds", lo=0, integer=True)
        checks.number(self, "init_samples", lo=1, integer=True)
        checks.number(self, "hint_extra_turns", lo=0, integer=True)
        checks.number(self, "min_room", lo=1, integer=True)
        checks.number(self, "seed", lo=0, integer=True)
        self.ops = tuple(self.ops)
        bad = [o for o in self.ops if o not in OPS]
        if bad or not self.ops:
            raise ValueError(f"FlywheelConfig.ops={self.ops!r}: choose a non-empty subset of {OPS}")


@dataclass
class Entry:
    """One trajectory in a question's buffer, with its provenance."""

    traj: Trajectory
    op: str                          # "initial" or one of OPS
    round: int
    parent: int | None = None        # index of the expanded entry in the same buffer
    expanded: bool = False
    demo_mask: list[int] = field(default_factory=list)   # the SFT mask (module doc)


def rank_key(e: Entry) -> tuple:
    """Best first: correct, then fewer tool calls, then shorter (completion tokens)."""
    return (not is_correct(e.traj), e.traj.n_tool_calls, len(e.traj.token_ids), e.round)


# ----------------------------------------------------------------------------------------------
# Cut points (completion positions), pure over a trajectory


def turn_start(traj: Trajectory, turn: int) -> int:
    return next((i for i, k in enumerate(traj.turn_idx) if k >= turn), len(traj.token_ids))


def redundancy_pos(traj: Trajectory) -> int | None:
    """Before the turn of the first redundant call, or None when no call is redundant."""
    k = first_redundant_call(traj)
    return None if k is None else turn_start(traj, traj.tool_calls[k].turn)


def correction_pos(traj: Trajectory) -> int:
    """Before the turn of the first failed call, else before the final turn."""
    failed = next((c for c in traj.tool_calls if not c.valid), None)
    last = traj.turn_idx[-1] if traj.turn_idx else 0
    return turn_start(traj, failed.turn if failed else last)


def hint_pos(traj: Trajectory, tok) -> int:
    """Before the final answer the model wrote in its last turn; else after the last observation
    (a trajectory that ended on a tool result); else before the last turn."""
    if not traj.token_ids:
        return 0
    start = turn_start(traj, traj.turn_idx[-1])
    ids = traj.token_ids[start:]
    text = tok.decode(ids, skip_special_tokens=True)
    i = text.find("\\boxed")
    if i >= 0 and traj.mask[-1] == 1:
        q = max(q for q in range(len(ids) + 1) if len(tok.decode(ids[:q], skip_special_tokens=True)) <= i)
        return start + q
    return len(traj.token_ids) if traj.mask[-1] == 0 else start


def demo_mask_of(parent_demo: list[int], kept: int, child: Trajectory) -> list[int]:
    """The child's SFT mask: the `kept` tokens copied from the parent as the parent's demo mask shows
    them, the rest of the prefix (a hint, an editor's rewrite) trainable, then the child's own
    sampled (1) / observation (0) tokens."""
    n = child.prefix_len
    return list(parent_demo[:kept]) + [1] * (n - kept) + list(child.mask[n:])


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ----------------------------------------------------------------------------------------------
# The flywheel


class Flywheel:
    """Buffers per question, rounds of expansion, the SFT set. `run()` does every round (resuming
    from out_dir when it holds earlier rounds); `round()` does one."""

    def __init__(self, model, tok, tasks: Sequence, rollout_cfg, cfg: FlywheelConfig | None = None, *,
                 pool=None, reward_cfg=None, prompts: Sequence[str] | None = None,
                 editor: Callable[[Trajectory, str], Prefix | None] | None = None, out_dir=None):
        self.model, self.tok, self.tasks = model, tok, list(tasks)
        if not self.tasks:
            raise ValueError("Flywheel: no tasks")
        self.rollout_cfg, self.cfg = rollout_cfg, cfg or FlywheelConfig()
        self.pool, self.reward_cfg, self.editor = pool, reward_cfg, editor
        self.prompts = list(prompts) if prompts is not None else None
        self.buffers: dict[str, list[Entry]] = {t.id: [] for t in self.tasks}
        self.rounds_done = -1                 # round 0 is the initial rollout
        self.skipped: dict[str, int] = {}
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None and (self.out_dir / "flywheel.json").exists():
            self._load()

    # -- one round
    def plan(self) -> list[tuple[int, Prefix | None, str, int | None, int]]:
        """This round's rows: (task index, prefix, op, parent entry index, tokens kept from the
        parent). Round 0: the initial rollouts."""
        if self.rounds_done < 0:
            return [(i, None, "initial", None, 0) for i in range(len(self.tasks)) for _ in range(self.cfg.init_samples)]
        rows = []
        for i, task in enumerate(self.tasks):
            buf = self.buffers[task.id]
            todo = [j for j, e in enumerate(buf) if not e.expanded]
            if not todo:
                continue
            j = min(todo, key=lambda j: rank_key(buf[j]))
            buf[j].expanded = True
            ops = ("rerollout", "redundancy_cut") if is_correct(buf[j].traj) else ("correction", "hint")
            for op in (o for o in ops if o in self.cfg.ops):
                p = self._prefix(buf[j].traj, op)
                if p is False:
                    self.skipped[op] = self.skipped.get(op, 0) + 1
                else:
                    kept = 0 if p is None else common_prefix(p.token_ids, buf[j].traj.token_ids)
                    if op == "hint" and p is not None and self.editor is None:
                        kept = len(p.token_ids) - len(self._hint_ids())   # the cut, exactly
                    rows.append((i, p, op, j, kept))
        return rows

    def _hint_ids(self) -> list[int]:
        return self.tok.encode(self.cfg.hint, add_special_tokens=False)

    def _prefix(self, traj: Trajectory, op: str) -> Prefix | None | bool:
        """The forced start of a row made by `op` from `traj` (None: from the prompt; False: skip)."""
        if self.editor is not None and (p := self.editor(traj, op)) is not None:
            return p
        if op == "rerollout":
            return None
        if op == "redundancy_cut":
            pos = redundancy_pos(traj)
            if pos is None:
                return False                  # nothing redundant to cut
            p = prefix_from_trajectory(traj, pos)
        elif op == "correction":
            p = prefix_from_trajectory(traj, correction_pos(traj))
        else:
            p = prefix_from_trajectory(traj, hint_pos(traj, self.tok), hint_ids=self._hint_ids(),
                                       extra_turns=self.cfg.hint_extra_turns)
        if len(p.token_ids) + self.cfg.min_room > self.rollout_cfg.max_new_tokens:
            return False
        return p

    def round(self) -> list[Entry]:
        """Plan, roll out in the real sandbox, verify, add to the buffers; returns the new entries."""
        from ..rewards import mark_correct
        from ..rollout import generate

        r = self.rounds_done + 1
        rows = self.plan()
        new: list[Entry] = []
        if rows:
            cfg = replace(self.rollout_cfg, group_size=1, seed=self.cfg.seed + r)
            tasks = [self.tasks[i] for i, *_ in rows]
            prompts = [self.prompts[i] for i, *_ in rows] if self.prompts is not None else None
            trajs, _ = generate(self.model, self.tok, tasks, cfg, pool=self.pool, prompts=prompts,
                                prefixes=[[row[1]] for row in rows], group_offset=1000 * r)
            mark_correct(trajs, self.reward_cfg)
            for (i, p, op, parent, kept), t in zip(rows, trajs):
                buf = self.buffers[self.tasks[i].id]
                demo = list(t.mask) if p is None else demo_mask_of(buf[parent].demo_mask, kept, t)
                e = Entry(t, op, r, parent, demo_mask=demo)
                buf.append(e)
                new.append(e)
        self.rounds_done = r
        if self.out_dir is not None:
            self._save_round(r, new)
        return new

    def run(self, progress: bool = False) -> "Flywheel":
        """Round 0 and cfg.rounds expansion rounds (those already stored in out_dir are kept)."""
        from tqdm.auto import tqdm

        todo = range(self.rounds_done + 1, self.cfg.rounds + 1)
        for _ in tqdm(todo, desc="flywheel rounds", disable=not progress):
            self.round()
        if self.out_dir is not None:
            self.save_selected()
        return self

    # -- results
    def best(self) -> dict[str, Entry]:
        """Per question the best entry of its buffer (rank_key)."""
        return {q: min(buf, key=rank_key) for q, buf in self.buffers.items() if buf}

    def sft_examples(self) -> list[Trajectory]:
        """Phase 1's set: per question its best trajectory if it is correct, demo_mask as its mask."""
        out = []
        for e in self.best().values():
            if is_correct(e.traj) and any(e.demo_mask):
                out.append(replace(e.traj, mask=list(e.demo_mask)))
        return out

    def frame(self):
        """One row per buffer entry: task_id, index, op, round, parent, correct, calls, tokens, best."""
        import pandas as pd

        best = {q: id(e) for q, e in self.best().items()}
        return pd.DataFrame([{
            "task_id": q, "index": j, "op": e.op, "round": e.round, "parent": e.parent,
            "correct": is_correct(e.traj), "n_tool_calls": e.traj.n_tool_calls, "n_tokens": len(e.traj.token_ids),
            "prefix_len": e.traj.prefix_len, "expanded": e.expanded, "best": id(e) == best[q]}
            for q, buf in self.buffers.items() for j, e in enumerate(buf)])

    # -- storage
    def _save_round(self, r: int, new: list[Entry]) -> None:
        if new:
            index = {id(e): j for buf in self.buffers.values() for j, e in enumerate(buf)}
            RunStore(self.out_dir / "rounds").write_step(
                r, [e.traj for e in new], op=[e.op for e in new], round=[e.round for e in new],
                parent=[-1 if e.parent is None else e.parent for e in new],
                index=[index[id(e)] for e in new], demo_mask=[e.demo_mask for e in new])
        expanded = [[q, j] for q, buf in self.buffers.items() for j, e in enumerate(buf) if e.expanded]
        (self.out_dir / "flywheel.json").write_text(json.dumps(
            {"rounds_done": r, "expanded": expanded, "skipped": self.skipped}))

    def save_selected(self) -> Path:
        """Write the SFT set (with op / round / task columns) to out_dir/selected; returns that path."""
        if self.out_dir is None:
            raise ValueError("Flywheel.save_selected: no out_dir was given")
        path = self.out_dir / "selected"
        chosen = [e for e in self.best().values() if is_correct(e.traj) and any(e.demo_mask)]
        if chosen:
            RunStore(path).write_step(1, [replace(e.traj, mask=list(e.demo_mask)) for e in chosen],
                                      op=[e.op for e in chosen], round=[e.round for e in chosen])
        return path

    def _load(self) -> None:
        state = json.loads((self.out_dir / "flywheel.json").read_text())
        store = RunStore(self.out_dir / "rounds")
        for r in store.steps():
            for row in store.read_step_frame(r).sort_values("index").to_dict("records"):
                t = trajectory_from_row(row)
                if t.task_id not in self.buffers:
                    raise ValueError(f"{self.out_dir} holds a flywheel over other questions ({t.task_id!r} is "
                                     "not among the tasks given): pass the same tasks or a new out_dir")
                parent = None if int(row["parent"]) < 0 else int(row["parent"])
                self.buffers[t.task_id].append(Entry(t, row["op"], int(row["round"]), parent,
                                                     demo_mask=[int(x) for x in row["demo_mask"]]))
        for q, j in state["expanded"]:
            self.buffers[q][j].expanded = True
        self.rounds_done, self.skipped = int(state["rounds_done"]), dict(state.get("skipped", {}))
