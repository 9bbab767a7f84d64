"""Function calling on BFCL: ToolExpander's own setting (METHODS.md §6b). The data lives here; the
call protocol, BFCL's AST rules and the reward are bfcl_checker.py.

Reading order: the data (wheel → categories → tasks) → a correct answer per task (`gold_call`,
`demos`) → the Trainer reward_fn and evaluation helpers → a tiny wheel of the same layout.

Data. The `bfcl-eval` wheel on PyPI (Apache-2.0) ships the BFCL v4 question files and their
`possible_answer` files. `fetch_wheel` pip-downloads it without installing it (installing would pin
numpy 1.x and pull many SDKs), checks its sha256 and `read_category` reads the JSON lines straight
out of the zip. Four non-live single-turn Python categories: simple_python (one function, one call),
multiple (several functions, one call), parallel (one function, several calls), parallel_multiple.
`load_bfcl` splits train/test by a hash of the question id, so the two never share a question.
The prompt declares the functions (JSON schemas in the user message) under SYSTEM_PROMPT, which
asks for one <tool_call> JSON list (bfcl_checker.parse_calls reads it).

Scoring (bfcl_checker.py): `check` is BFCL's verdict (Trajectory.correct), `score_text` the
ToolRL-style reward R_format + R_correct; `make_reward_fn` applies them to a step's trajectories.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

from .bfcl_checker import function_named, score_text

WHEEL = "bfcl-eval==2026.3.23"
WHEEL_FILE = "bfcl_eval-2026.3.23-py3-none-any.whl"
WHEEL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
TEST_FRACTION = 0.2          # share of question ids hashed into the test split [recon]
DATA_PREFIX = "bfcl_eval/data/"

SYSTEM_PROMPT = (
    "You are a helpful assistant that calls functions. The user's message lists the available "
    "functions as JSON schemas. Answer with the call or calls that fulfil the request, as one JSON "
    "list between <tool_call> and </tool_call>, for example:\n"
    '<tool_call>[{"name": "function_name", "arguments": {"parameter": "value"}}]</tool_call>\n'
    "Use only the listed functions and parameters. When the request needs several calls, put all "
    "of them in the one list."
)


# ----------------------------------------------------------------------------------------------
# Data


def fetch_wheel() -> Path:
    """The verified bfcl-eval wheel under $TAO_LAB_HOME/downloads (downloaded once, never installed).
    $TAO_LAB_BFCL_WHEEL names another zip of the same layout instead (tests, offline notebooks)."""
    from .models import download_wheel, home_dir

    if os.environ.get("TAO_LAB_BFCL_WHEEL"):
        return Path(os.environ["TAO_LAB_BFCL_WHEEL"])
    return download_wheel(WHEEL, WHEEL_FILE, WHEEL_SHA256, home_dir() / "downloads")


def _json_lines(zf: zipfile.ZipFile, member: str) -> list[dict]:
    try:
        raw = zf.read(member).decode("utf-8")
    except KeyError:
        raise FileNotFoundError(f"{zf.filename} has no {member}: not a bfcl-eval wheel of the expected "
                                "layout") from None
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def read_category(wheel: str | Path, category: str) -> list[dict]:
    """A category's questions, each with its `ground_truth` (possible answers), read from the zip."""
    if category not in CATEGORIES:
        raise ValueError(f"BFCL category {category!r}: choose from {CATEGORIES}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            questions = _json_lines(zf, f"{DATA_PREFIX}BFCL_v4_{category}.json")
            gold = _json_lines(zf, f"{DATA_PREFIX}possible_answer/BFCL_v4_{category}.json")
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel} is not a zip file: delete it and let fetch_wheel() download the wheel "
                         "again") from None
    answers = {a["id"]: a["ground_truth"] for a in gold}
    missing = [q["id"] for q in questions if q["id"] not in answers]
    if missing:
        raise ValueError(f"{wheel}: {len(missing)} {category} questions have no possible answer (first {missing[0]})")
    return [{**q, "ground_truth": answers[q["id"]], "category": category} for q in questions]


def split_of(qid: str, test_fraction: float = TEST_FRACTION) -> str:
    """"train" or "test" from a hash of the question id: stable across versions and machines."""
    h = int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16) / 16 ** 8
    return "test" if h < test_fraction else "train"


def to_task(record: dict):
    """A BFCL question -> tasks.Task: the user turn plus the function schemas; gold in meta."""
    from .tasks import Task

    turns = record["question"][0]                       # single-turn categories: one conversation
    question = "\n".join(m["content"] for m in turns if m["role"] == "user")
    prompt = f"{question}\n\nAvailable functions:\n{json.dumps(record['function'], ensure_ascii=False)}"
    meta = {"format": "bfcl", "category": record["category"], "kind": record["category"], "family": "bfcl",
            "functions": record["function"], "ground_truth": record["ground_truth"], "system": SYSTEM_PROMPT,
            "split": split_of(record["id"]), "source": "bfcl"}
    return Task(record["id"], prompt, json.dumps(record["ground_truth"]), meta)


def parse_spec(spec: str) -> tuple[str, ...]:
    """"bfcl" -> all four categories; "bfcl:simple_python,parallel" -> those."""
    if spec == "bfcl":
        return CATEGORIES
    if not spec.startswith("bfcl:") or not spec[5:]:
        raise ValueError(f"BFCL task spec {spec!r}: write 'bfcl' or 'bfcl:CAT[,CAT]' with CAT in {CATEGORIES}")
    cats = tuple(c.strip() for c in spec[5:].split(","))
    bad = [c for c in cats if c not in CATEGORIES]
    if bad:
        raise ValueError(f"BFCL task spec {spec!r}: unknown categories {bad}; choose from {CATEGORIES}")
    return cats


def load_bfcl(spec: str = "bfcl", split: str = "train", wheel: str | Path | None = None) -> list:
    """Tasks of the spec's categories in one split, the categories interleaved (one of each in turn,
    file order within a category), so that the first N tasks (`--n 16`, a grid's eval_n, data.limit)
    cover every category instead of only the first one."""
    if split not in ("train", "test"):
        raise ValueError(f"BFCL split {split!r}: 'train' or 'test'")
    wheel = wheel or fetch_wheel()
    per_cat = [[t for t in map(to_task, read_category(wheel, cat)) if t.meta["split"] == split]
               for cat in parse_spec(spec)]
    return [c[i] for i in range(max(map(len, per_cat), default=0)) for c in per_cat if i < len(c)]


def is_bfcl(task) -> bool:
    return (getattr(task, "meta", None) or {}).get("format") == "bfcl"


# ----------------------------------------------------------------------------------------------
# A correct answer per task: demonstrations (few-shot prompts, hard-sample replacement) and tests


def _first_allowed(options: dict) -> dict:
    """{param: allowed values} -> {param: the first allowed value}; dict values (and lists of dicts)
    hold allowed values themselves, so they are resolved the same way; all-optional params are left out."""
    def pick(value):
        if isinstance(value, dict):
            return _first_allowed(value)
        if isinstance(value, list) and value and all(isinstance(d, dict) for d in value):
            return [_first_allowed(d) for d in value]
        return value

    return {k: pick(next(a for a in v if a != "")) for k, v in options.items() if any(a != "" for a in v)}


def gold_call(task) -> list[dict]:
    """A correct answer: each gold call with the first allowed value of each parameter. An optional
    parameter outside the function's schema is left out: two parallel_multiple answers (12, 26)
    list one under the wrong function, where BFCL's own rules would call it unexpected."""
    out = []
    for g in task.meta["ground_truth"]:
        (name, options), = g.items()
        schema = function_named(task.meta["functions"], name) or {}
        props = (schema.get("parameters") or {}).get("properties", {})
        keep = {k: v for k, v in options.items() if k in props or "" not in v}
        out.append({"name": name, "arguments": _first_allowed(keep)})
    return out


def gold_text(task) -> str:
    return f"<tool_call>{json.dumps(gold_call(task), ensure_ascii=False)}</tool_call>"


def demos(tasks: Sequence, protocol: str = "fenced") -> list:
    """One solved demonstration per BFCL task (its gold call), for few-shot prompts and hard-sample
    replacement; `select_demos` never shows a task its own."""
    from .tasks import Demo

    return [Demo(id=f"bfcl-demo-{t.id}", protocol=protocol, prompt=t.prompt, answer=t.answer, completion=gold_text(t),
                 steps=[], meta={"kind": t.meta["category"], "family": "bfcl"}) for t in tasks if is_bfcl(t)]


# ----------------------------------------------------------------------------------------------
# The Trainer's reward_fn (bfcl_checker.score_text per trajectory) and evaluation per category


def make_reward_fn(tasks: Sequence, self_example_bonus: float = 0.0):
    """A Trainer reward_fn for BFCL tasks: traj.reward = R_format + R_correct (+ bonus when the
    completion writes and analyses its own example [paper: 0.01]); traj.correct = BFCL's verdict."""
    from .methods.toolexpander import has_self_example

    by_id = {t.id: t for t in tasks}

    def reward_fn(trajs, step):
        rewards, fmt, corr, examples, errors = [], [], [], [], {}
        for t in trajs:
            task = by_id.get(t.task_id)
            if task is None:
                raise KeyError(f"BFCL reward: trajectory of unknown task {t.task_id!r}")
            s = score_text(t.text, task)
            ex = has_self_example(t.text, t.prompt_text)
            t.reward, t.correct = s.reward + self_example_bonus * ex, s.verdict.valid
            rewards.append(t.reward)
            fmt.append(s.r_format)
            corr.append(s.r_correct)
            examples.append(ex)
            if not s.verdict.valid:
                errors[s.verdict.error_type] = errors.get(s.verdict.error_type, 0) + 1
        n = max(len(trajs), 1)
        metrics = {"reward/mean": sum(rewards) / n, "reward/accuracy": sum(bool(t.correct) for t in trajs) / n,
                   "reward/self_example_rate": sum(examples) / n, "bfcl/format_rate": sum(fmt) / n,
                   "bfcl/r_correct_mean": sum(corr) / n, **{f"bfcl/error/{k}": v for k, v in errors.items()}}
        return rewards, metrics

    return reward_fn


_TASKS_BY_ID: dict[str, Any] = {}


def reward_fn(trajs, step):
    """`make_reward_fn` over every BFCL question (both splits, loaded once), no self-example bonus:
    for `GridSpec.reward_fn = "tao_lab.bfcl:reward_fn"`, which gives every arm of a BFCL grid the
    same function-calling reward (the loop's default, rewards.score, reads \\boxed answers)."""
    if not _TASKS_BY_ID:
        wheel = fetch_wheel()
        _TASKS_BY_ID.update({t.id: t for split in ("train", "test") for t in load_bfcl("bfcl", split, wheel)})
    return make_reward_fn(list(_TASKS_BY_ID.values()))(trajs, step)


def category_accuracy(trajs: Sequence, tasks: Sequence) -> dict[str, float]:
    """eval/bfcl/<category>: the share of correct samples per category (after a reward_fn ran)."""
    cat = {t.id: t.meta["category"] for t in tasks if is_bfcl(t)}
    hits: dict[str, list[bool]] = {}
    for t in trajs:
        if t.task_id in cat:
            hits.setdefault(cat[t.task_id], []).append(bool(t.correct))
    return {f"eval/bfcl/{c}": sum(v) / len(v) for c, v in sorted(hits.items())}


# ----------------------------------------------------------------------------------------------
# A tiny wheel of the same layout (tests, and the notebook when the network is away)

_BOOK = {"name": "book_table", "description": "Book a restaurant table.",
         "parameters": {"type": "dict", "properties": {
             "restaurant": {"type": "string", "description": "Restaurant name."},
             "people": {"type": "integer", "description": "Number of guests."},
             "time": {"type": "string", "description": "Time of the booking."}},
             "required": ["restaurant", "people", "time"]}}
_STOCK = {"name": "stock_price", "description": "Latest stock price of a company.",
          "parameters": {"type": "dict", "properties": {
              "ticker": {"type": "string", "description": "Stock ticker symbol."},
              "currency": {"type": "string", "description": "Currency of the price, default USD."}},
              "required": ["ticker"]}}
SAMPLE = {
    "simple_python": [
        ({"name": "triangle_area", "description": "Area of a triangle from its base and height.",
          "parameters": {"type": "dict", "properties": {
              "base": {"type": "integer", "description": "The base."},
              "height": {"type": "integer", "description": "The height."},
              "unit": {"type": "string", "description": "Unit of length, default 'units'."}},
              "required": ["base", "height"]}},
         "What is the area of a triangle with base 10 and height 5?",
         [{"triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]),
        ({"name": "convert_currency", "description": "Convert an amount between currencies.",
          "parameters": {"type": "dict", "properties": {
              "amount": {"type": "float", "description": "The amount."},
              "source": {"type": "string", "description": "Currency code to convert from."},
              "target": {"type": "string", "description": "Currency code to convert to."}},
              "required": ["amount", "source", "target"]}},
         "Convert 250 euros to US dollars.",
         [{"convert_currency": {"amount": [250.0], "source": ["EUR", "euro"], "target": ["USD", "US dollar"]}}]),
        (_BOOK, "Book a table for 4 people at Luigi's at 7 pm.",
         [{"book_table": {"restaurant": ["Luigi's"], "people": [4], "time": ["19:00", "7 pm", "7pm"]}}]),
        (_BOOK, "Reserve a table for two at Sakura at 8 pm.",
         [{"book_table": {"restaurant": ["Sakura"], "people": [2], "time": ["20:00", "8 pm", "8pm"]}}]),
    ],
    "multiple": [
        ([_BOOK, _STOCK], "What is Apple's stock price?",
         [{"stock_price": {"ticker": ["AAPL"], "currency": ["", "USD"]}}]),
    ],
    "parallel": [
        ({"name": "get_weather", "description": "Current weather of a city.",
          "parameters": {"type": "dict", "properties": {
              "city": {"type": "string", "description": "City name."},
              "days": {"type": "array", "items": {"type": "integer"}, "description": "Forecast days."}},
              "required": ["city"]}},
         "What is the weather in Paris and in Tokyo?",
         [{"get_weather": {"city": ["Paris"], "days": ["", [0]]}},
          {"get_weather": {"city": ["Tokyo"], "days": ["", [0]]}}]),
    ],
    "parallel_multiple": [
        ([_BOOK, _STOCK], "Get the stock price of Tesla and book a table for 3 at Nopa at 6 pm.",
         [{"stock_price": {"ticker": ["TSLA"], "currency": ["", "USD"]}},
          {"book_table": {"restaurant": ["Nopa"], "people": [3], "time": ["18:00", "6 pm", "6pm"]}}]),
    ],
}


def write_sample_wheel(path: str | Path) -> Path:
    """Write a small zip in the bfcl-eval wheel's layout (the SAMPLE questions above, written for
    tao_lab, not BFCL's) and return its path; read_category / load_bfcl read it like the real wheel."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for cat in CATEGORIES:
            rows = SAMPLE.get(cat, [])
            qs = [{"id": f"{cat}_{i}", "question": [[{"role": "user", "content": q}]],
                   "function": [fn] if isinstance(fn, dict) else fn} for i, (fn, q, _) in enumerate(rows)]
            gs = [{"id": f"{cat}_{i}", "ground_truth": g} for i, (_, _, g) in enumerate(rows)]
            zf.writestr(f"{DATA_PREFIX}BFCL_v4_{cat}.json", "".join(json.dumps(r) + "\n" for r in qs))
            zf.writestr(f"{DATA_PREFIX}possible_answer/BFCL_v4_{cat}.json", "".join(json.dumps(r) + "\n" for r in gs))
    return path
