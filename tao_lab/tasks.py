"""Task sets and prompt templates: what the policy is asked, and how the question is put to it.

Reading order: records → loading (bundled sets, JSONL files, Hugging Face datasets) → demonstrations
→ prompt templates.

What is covered
- `load_tasks(source, split, limit, seed)`, one entry point for
  * bundled sets made by `scripts/make_tasks.py` (see data/README.md): "arith-L1" … "arith-L4",
    "word-L1" … "word-L4", or a whole family ("arith", "word" = its four levels in order), each
    with split "train" (200 per level) or "test" (100 per level, disjoint from train);
  * a JSONL file in one of three shapes, recognised per line by its keys:
      tao_lab  {"id", "prompt", "answer", "meta"?}            (id optional: file stem + line)
      GSM8K    {"question", "answer": "... #### 42"}          (answer = after the last ####)
      MATH     {"problem", "solution": "... \\boxed{..}", "answer"?}  (answer, else the last box)
    A malformed line raises `TaskError` naming the file, the line and what was wrong;
  * "hf:NAME[:CONFIG[:SPLIT]]", e.g. "hf:openai/gsm8k:main:test", through the `datasets` package
    (imported only then); offline or without the package it raises `TaskError` saying so.
- Demonstrations (`load_demos`, data/demos.jsonl): solved examples in the fenced and the tags tool
  protocol whose outputs were produced by running their code; few-shot prompts and expert
  trajectories (E3-TIR, ToolExpander) both read them.
- `build_messages(task, template, protocol, n_demos)` → chat messages: a system prompt explaining
  the tool, then (few-shot) demonstrations as earlier user/assistant exchanges, then the task.
  `render_prompt(tokenizer, task, ...)` applies the tokenizer's chat template with
  `add_generation_prompt=True`: the string ends where the assistant's message begins.
  In an episode everything after that point stays inside ONE assistant message — model text, the
  forced "Code execution result: ..." text, more model text — as in SimpleTIR / TAO-RL; the rollout
  never closes the message to insert a tool or user turn.

What is not covered
- Splitting or de-duplicating user files (a file is one split, taken as it is).
- Answer normalisation beyond GSM8K's thousands commas; `rewards.verify` handles equivalence.
- Downloading anything: HF datasets are fetched by `datasets` itself, only when asked.
"""

from __future__ import annotations

import functools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tao_lab.rewards import extract_answer, extract_boxed



def _data_dir() -> Path:
    """The bundled task sets: the checkout's data/ next to tao_lab/ (editable install, a clone), else
    the copy an installed wheel puts under <prefix>/share/tao_lab/data (pyproject's data-files)."""
    import sys
    repo = Path(__file__).resolve().parent.parent / "data"
    if (repo / "demos.jsonl").is_file():
        return repo
    return Path(sys.prefix) / "share" / "tao_lab" / "data"


DATA_DIR = _data_dir()
FAMILIES = ("arith", "word")
LEVELS = (1, 2, 3, 4)
SPLITS = ("train", "test")
PROTOCOLS = ("fenced", "tags")
TEMPLATES = ("zero_shot", "few_shot")
# THE default task set of every command and config (rollout, eval, train's cpu_demo preset, demo,
# DataConfig, EvalConfig), defined once so that `tao-lab eval` measures what `tao-lab train` trained
# on. arith-L3: hard enough that the 135M model is neither always right nor always wrong (mixed
# groups carry the GRPO signal), easy enough that the tool helps. gpu_qlora (a 1.5B model) and
# test_tiny (a random model) choose their own.
DEFAULT_TASKS = "arith-L3"

# ----------------------------------------------------------------------------------------------
# Records


@dataclass
class Task:
    """One question with its gold answer."""

    id: str                 # unique within its source
    prompt: str             # the question as the user asks it
    answer: str             # gold final answer (compared by rewards.verify)
    meta: dict[str, Any] = field(default_factory=dict)  # source, format, family, level, kind, split, line ...


@dataclass
class Demo:
    """A solved example: the assistant message that answers `prompt` with the tool."""

    id: str
    protocol: str           # "fenced" or "tags"
    prompt: str
    answer: str
    completion: str         # full assistant message: prose, tool call, observation, ..., \boxed{answer}
    steps: list[dict[str, str]]  # [{"code", "output"}] in order: the tool calls and what they printed
    meta: dict[str, Any] = field(default_factory=dict)  # family, level, kind, n_tool_calls


class TaskError(ValueError):
    """A task source could not be read; the message says which source, where, and how to fix it."""


# ----------------------------------------------------------------------------------------------
# Loading


def bundled_names() -> list[str]:
    return [f"{f}-L{lv}" for f in FAMILIES for lv in LEVELS] + list(FAMILIES)


def load_tasks(source: str | Path, split: str | None = None, limit: int | None = None,
               seed: int | None = None, data_dir: str | Path | None = None) -> list[Task]:
    """Load tasks from a bundled set name, a JSONL path or "hf:NAME[:CONFIG[:SPLIT]]".

    split: bundled sets: "train" (default) or "test"; HF: the split unless the spec names one;
    a file is one split already, so split is ignored for a path (every command has a default
    split, and a path must work with it).
    seed: shuffle with random.Random(seed) before `limit` (None keeps file order).
    limit: keep the first `limit` tasks (an integer >= 1, or None for all).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TaskError(f"limit must be an integer >= 1 (or None for all tasks), got {limit!r}")
    src = str(source)
    if src.startswith("hf:"):
        tasks = _load_hf(src, split)
    elif src == "bfcl" or src.startswith("bfcl:"):     # function calling (tao_lab/bfcl.py)
        from .bfcl import load_bfcl
        tasks = load_bfcl(src, split or "train")
    elif src in bundled_names():
        tasks = _load_bundled(src, split or "train", Path(data_dir) if data_dir else DATA_DIR)
    elif Path(src).is_file():
        tasks = load_jsonl(src)   # one split already: `split` does not apply
    else:
        raise TaskError(f"unknown task source {src!r}: not a bundled set ({', '.join(bundled_names())}), "
                        f"not an existing file, and not 'hf:NAME[:CONFIG[:SPLIT]]'")
    if seed is not None:
        random.Random(seed).shuffle(tasks)
    return tasks if limit is None else tasks[:limit]


def _load_bundled(name: str, split: str, data_dir: Path) -> list[Task]:
    if split not in SPLITS:
        raise TaskError(f"bundled set {name!r} has splits {SPLITS}, got split={split!r}")
    family, _, level = name.partition("-L")
    levels = [int(level)] if level else list(LEVELS)
    tasks = []
    for lv in levels:
        path = data_dir / f"{family}_L{lv}_{split}.jsonl"
        if not path.is_file():
            raise TaskError(f"bundled file {path} is missing; regenerate data/ with "
                            f"`python scripts/make_tasks.py`")
        for t in load_jsonl(path):
            t.meta["source"] = f"bundled:{family}-L{lv}"
            tasks.append(t)
    return tasks


def _text(value: Any, key: str, where: str) -> str:
    """A field as text: strings as they are, numbers written out; anything else is an error."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):   # json reads NaN / Infinity literals; "nan" is no answer
            raise TaskError(f"{where}: field {key!r} is {value!r}, not a finite number")
        return str(value)
    raise TaskError(f"{where}: field {key!r} must be a string or a number, got {type(value).__name__}")


def row_to_task(row: dict[str, Any], where: str, default_id: str) -> Task:
    """One record (tao_lab, GSM8K or MATH shape) -> Task. `where` names the place for errors."""
    if not isinstance(row, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "prompt" in row and "answer" in row:
        meta = row.get("meta", {})
        if not isinstance(meta, dict):
            raise TaskError(f"{where}: field 'meta' must be an object, got {type(meta).__name__}")
        task = Task(_text(row.get("id", default_id), "id", where), _text(row["prompt"], "prompt", where),
                    _text(row["answer"], "answer", where).strip(), dict(meta))
        task.meta.setdefault("format", "tao_lab")
    elif "question" in row and "answer" in row:
        solution = _text(row["answer"], "answer", where)
        answer = extract_answer(solution, style="gsm8k")
        if answer is None:
            raise TaskError(f"{where}: GSM8K-style 'answer' has no final answer after '####': {solution[-80:]!r}")
        task = Task(_text(row.get("id", default_id), "id", where), _text(row["question"], "question", where),
                    answer, {"format": "gsm8k", "solution": solution})
    elif "problem" in row and ("solution" in row or "answer" in row):
        solution = _text(row.get("solution", ""), "solution", where)
        if "answer" in row:
            answer = _text(row["answer"], "answer", where).strip()
        else:
            answer = extract_boxed(solution)
            if answer is None:
                raise TaskError(f"{where}: MATH-style 'solution' has no complete \\boxed{{...}} and no "
                                f"'answer' field: {solution[-80:]!r}")
        task = Task(_text(row.get("id", row.get("unique_id", default_id)), "id", where),
                    _text(row["problem"], "problem", where), answer, {"format": "math", "solution": solution})
    else:
        raise TaskError(f"{where}: keys {sorted(row)} match no known shape; expected "
                        f"{{'prompt','answer'}} (tao_lab), {{'question','answer'}} (GSM8K) or "
                        f"{{'problem','solution'}} (MATH)")
    if not task.prompt.strip() or not task.answer:
        raise TaskError(f"{where}: empty prompt or answer")
    return task


def _decode_line(raw: bytes, where: str, first: bool) -> str:
    """One line as UTF-8 (a BOM on the first line is allowed); an error names the line and column."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise TaskError(f"{where}: not UTF-8 (byte {raw[e.start:e.start + 1]!r} at column {e.start + 1}); "
                        f"save the file as UTF-8") from None


def load_jsonl(path: str | Path) -> list[Task]:
    """Tasks from a JSONL file; raises TaskError at the first malformed line."""
    path = Path(path)
    tasks, seen = [], {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            line = _decode_line(raw, where, first=lineno == 1)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must "
                                f"be one JSON object") from None
            task = row_to_task(row, where, default_id=f"{path.stem}-{lineno}")
            if task.id in seen:
                raise TaskError(f"{where}: duplicate id {task.id!r} (first at line {seen[task.id]})")
            seen[task.id] = lineno
            task.meta.setdefault("source", str(path))
            task.meta["line"] = lineno
            tasks.append(task)
    if not tasks:
        raise TaskError(f"{path}: no tasks in the file")
    return tasks


def parse_hf_spec(spec: str, split: str | None) -> tuple[str, str | None, str]:
    """"hf:NAME[:CONFIG[:SPLIT]]" -> (name, config or None, split). An empty CONFIG means none."""
    parts = spec[len("hf:"):].split(":")
    if not parts[0] or len(parts) > 3:
        raise TaskError(f"bad Hugging Face spec {spec!r}; write hf:NAME[:CONFIG[:SPLIT]], "
                        f"e.g. hf:openai/gsm8k:main:test or hf:HuggingFaceH4/MATH-500::test")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    spec_split = parts[2] if len(parts) > 2 and parts[2] else None
    if spec_split and split and spec_split != split:
        raise TaskError(f"{spec!r} names split {spec_split!r} but split={split!r} was passed; give one")
    return name, config, spec_split or split or "train"


def _load_hf(spec: str, split: str | None) -> list[Task]:
    name, config, hf_split = parse_hf_spec(spec, split)
    try:
        import datasets
    except ImportError as e:
        raise TaskError(f"{spec!r} needs the `datasets` package: pip install datasets==5.2.0 (it is in "
                        f"tao_lab's dev extra), or load a local JSONL file instead") from e
    try:
        ds = datasets.load_dataset(name, config, split=hf_split)
    except (OSError, ValueError) as e:  # offline / not found / bad config or split
        raise TaskError(f"could not load {spec!r} with datasets.load_dataset({name!r}, {config!r}, "
                        f"split={hf_split!r}): {type(e).__name__}: {e}. Loading from the hub needs the "
                        f"network (or a local datasets cache); offline, pass a local JSONL file.") from e
    tasks = [row_to_task(dict(row), f"{spec} row {i}", default_id=f"{name}-{hf_split}-{i}")
             for i, row in enumerate(ds)]
    for i, t in enumerate(tasks):
        t.meta.update(source=spec, split=hf_split, row=i)
    return tasks


# ----------------------------------------------------------------------------------------------
# Demonstrations


def load_demos(path: str | Path | None = None, protocol: str | None = None) -> list[Demo]:
    """Demonstrations from data/demos.jsonl (or `path`), optionally of one protocol."""
    path = Path(path) if path else DATA_DIR / "demos.jsonl"
    if protocol is not None and protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    demos = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_line(raw, f"{path}:{lineno}", first=lineno == 1)
            if not line.strip():
                continue
            try:
                demo = Demo(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                raise TaskError(f"{path}:{lineno}: not a demonstration record ({e}); expected the "
                                f"fields of tao_lab.tasks.Demo") from None
            if demo.protocol not in PROTOCOLS:
                raise TaskError(f"{path}:{lineno}: protocol {demo.protocol!r} is not one of {PROTOCOLS}")
            if protocol is None or demo.protocol == protocol:
                demos.append(demo)
    return demos


@functools.lru_cache(maxsize=1)
def _bundled_demos() -> tuple[Demo, ...]:
    """data/demos.jsonl, read once per process (build_messages runs once per task)."""
    return tuple(load_demos())


def select_demos(task: Task, demos: Iterable[Demo], n: int, protocol: str = "fenced") -> list[Demo]:
    """The n demonstrations closest to the task: same kind first, then same family, in file order.

    Tasks from outside the bundled sets (GSM8K, MATH) have no family; word-problem demonstrations
    are the closer match for them. A demonstration of the task's own prompt is never chosen.
    """
    family = task.meta.get("family", "word")
    kind = task.meta.get("kind")
    pool = [d for d in demos if d.protocol == protocol and d.prompt != task.prompt]
    if n > len(pool):
        raise ValueError(f"asked for {n} demonstrations but only {len(pool)} in protocol {protocol!r} are usable")

    def closeness(d: Demo) -> int:
        return 2 * (kind is not None and d.meta.get("kind") == kind) + (d.meta.get("family") == family)

    return sorted(pool, key=closeness, reverse=True)[:n]  # sorted is stable: file order within a tie


# ----------------------------------------------------------------------------------------------
# Prompt templates

SYSTEM_PROMPTS = {
    "fenced": (
        "You are a helpful assistant that solves math problems. You can run Python: write code in a "
        "```python code block and print the values you need. The block will be executed and its "
        "output shown to you after \"Code execution result:\". Use the output to continue. Put the "
        "final answer in \\boxed{}."
    ),
    "tags": (
        "You are a helpful assistant that solves math problems. You can run Python: write code "
        "between <python> and </python> and print the values you need. The code will be executed and "
        "its output shown to you between <result> and </result>. Use the output to continue. Put the "
        "final answer in <answer>\\boxed{}</answer>."
    ),
}


def build_messages(task: Task, template: str = "few_shot", protocol: str = "fenced", n_demos: int = 2,
                   demos: list[Demo] | None = None) -> list[dict[str, str]]:
    """Chat messages for one task: system, [demo user, demo assistant] × n_demos, user.

    template: "zero_shot" (no demonstrations) or "few_shot" (`n_demos` chosen by `select_demos`
    from `demos`, default data/demos.jsonl).
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    # a task that brings its own system prompt (BFCL) brings its own demonstrations, or none
    messages = [{"role": "system", "content": task.meta.get("system") or SYSTEM_PROMPTS[protocol]}]
    if template == "few_shot" and n_demos > 0 and (demos is not None or not task.meta.get("system")):
        pool = demos if demos is not None else _bundled_demos()
        for d in select_demos(task, pool, n_demos, protocol):
            messages += [{"role": "user", "content": d.prompt}, {"role": "assistant", "content": d.completion}]
    messages.append({"role": "user", "content": task.prompt})
    return messages


def render_prompt(tokenizer, task: Task, template: str = "few_shot", protocol: str = "fenced",
                  n_demos: int = 2, demos: list[Demo] | None = None) -> str:
    """The prompt text for the policy: chat template applied, ending with the assistant header."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{type(tokenizer).__name__} has no chat template; load an instruct model's "
                         f"tokenizer or set tokenizer.chat_template")
    messages = build_messages(task, template, protocol, n_demos, demos)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
