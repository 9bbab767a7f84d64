"""Function calling on BFCL: ToolExpander's own setting (METHODS.md §6b).

Reading order: the data (wheel → categories → tasks) → the call protocol (`parse_calls`) → BFCL's
AST rules (`check`) → the ToolRL-style reward → the Trainer reward_fn and evaluation helpers.

Data. The `bfcl-eval` wheel on PyPI (Apache-2.0) ships the BFCL v4 question files and their
`possible_answer` files. `fetch_wheel` pip-downloads it without installing it (installing would pin
numpy 1.x and pull many SDKs), checks its sha256 and `read_category` reads the JSON lines straight
out of the zip. Four non-live single-turn Python categories: simple_python (one function, one call),
multiple (several functions, one call), parallel (one function, several calls), parallel_multiple.
`load_bfcl` splits train/test by a hash of the question id, so the two never share a question.

Protocol [recon, the tag form of METHODS §6b]: the task declares its functions (JSON schema in the
user message) and the model answers with

    <tool_call>[{"name": "fn", "arguments": {"param": value}}]</tool_call>

`parse_calls` turns that into a list of calls or raises `CallError` saying what is wrong (never
anything else). Nothing is executed: BFCL's non-live categories are scored by matching, not by
running the functions.

Scoring. `check` re-implements BFCL's AST checker for Python (bfcl_eval/eval_checker/ast_eval):
the call count must match; a call must name the expected function, give every required parameter,
no parameter outside the schema or the possible answer, values of the declared type (an int is
accepted for a float) and among the allowed ones (strings compared lower-cased without spaces and
",./-_*^"; lists element-wise; dicts key by key), and leave out only parameters whose allowed
values include "" (optional). Parallel calls match the gold calls in any order. The wheel's own
checker imports its model registry (heavy), so it is not used at run time; tests/test_bfcl.py runs
it with stubbed imports and checks that both agree.

Reward [recon, ToolRL-style]: R = R_format + R_correct (+0.01 self-example, ToolExpander),
R_format ∈ {0, 1} (a well-formed tool-call block), R_correct = 2·S − 3 ∈ [−3, 3] with S = name
Jaccard + parameter-key match + value match, each in [0, 1]. Trajectory.correct is BFCL's verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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


class CallError(ValueError):
    """The completion holds no well-formed tool call; the message says what is wrong."""


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
    """Tasks of the spec's categories in one split (category order, then file order)."""
    if split not in ("train", "test"):
        raise ValueError(f"BFCL split {split!r}: 'train' or 'test'")
    wheel = wheel or fetch_wheel()
    tasks = [to_task(r) for cat in parse_spec(spec) for r in read_category(wheel, cat)]
    return [t for t in tasks if t.meta["split"] == split]


def is_bfcl(task) -> bool:
    return (getattr(task, "meta", None) or {}).get("format") == "bfcl"


# ----------------------------------------------------------------------------------------------
# The call protocol

_BLOCK_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_calls(text: str) -> list[dict[str, Any]]:
    """Every call in the completion's <tool_call> blocks, in order: [{"name", "arguments"}].

    Raises CallError (only) when there is no block, a block is unclosed or not JSON, or a call is
    not {"name": non-empty string, "arguments": object}. A single object instead of a list is
    accepted as one call [recon: lenient for weak models, as most chat templates allow it].
    """
    text = text if isinstance(text, str) else ""
    blocks = _BLOCK_RE.findall(text)
    if not blocks:
        if "<tool_call>" in text:
            raise CallError("unclosed <tool_call>: the block has no </tool_call>")
        raise CallError("no <tool_call>…</tool_call> block in the completion")
    calls: list[dict[str, Any]] = []
    for k, block in enumerate(blocks):
        try:
            data = json.loads(block)
        except json.JSONDecodeError as e:
            raise CallError(f"block {k}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        except RecursionError:
            raise CallError(f"block {k}: JSON nested too deeply") from None
        for j, call in enumerate([data] if isinstance(data, dict) else data if isinstance(data, list) else [None]):
            where = f"block {k} call {j}"
            if call is None:
                raise CallError(f"block {k}: expected a JSON list of calls, got {type(data).__name__}")
            if not isinstance(call, dict):
                raise CallError(f"{where}: expected an object with 'name' and 'arguments', got {type(call).__name__}")
            if not isinstance(call.get("name"), str) or not call["name"].strip():
                raise CallError(f"{where}: 'name' must be a non-empty string, got {call.get('name')!r}")
            args = call.get("arguments", {})
            if not isinstance(args, dict):
                raise CallError(f"{where}: 'arguments' must be an object, got {type(args).__name__}")
            extra = sorted(set(call) - {"name", "arguments"})
            if extra:
                raise CallError(f"{where}: unknown keys {extra} (only 'name' and 'arguments')")
            calls.append({"name": call["name"], "arguments": args})
    if not calls:
        raise CallError("the <tool_call> list is empty")
    return calls


# ----------------------------------------------------------------------------------------------
# BFCL's AST rules for Python (re-implemented; agreement tested against the wheel's checker)

PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
            "dict": dict, "any": str}
NESTED_TYPES = ("array", "tuple")          # BFCL checks the item type of these, one level deep


@dataclass
class Verdict:
    """BFCL's answer for one completion: valid, else the error type (BFCL's names) and why."""

    valid: bool
    error_type: str = ""
    error: str = ""


OK = Verdict(True)


def standardize(s: str) -> str:
    """BFCL's string normaliser: drop spaces and ",./-_*^", lower-case, ' -> "."""
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _std(x):
    return standardize(x) if isinstance(x, str) else x


def _answer_type(options: list):
    """The type of the first non-optional allowed value (None when all are "")."""
    return next((type(a) for a in options if a != ""), None)


def _type_check(value, options: list, expected: type, nested: type | None) -> tuple[bool, bool]:
    """(type ok, is_variable) as BFCL's type_checker: a value of the allowed values' own type also
    passes (BFCL calls it a variable); array/tuple items are checked one level deep."""
    a_type = _answer_type(options)
    is_variable = a_type is not None and a_type != expected
    if type(value) == expected:
        if nested is None:
            return True, is_variable
        for option in options:          # every item must fit the option's items (a "" option fits)
            if not isinstance(option, list) or all(
                    _type_check(item, option, nested, None)[0] for item in value):
                return True, is_variable
        return False, is_variable
    if a_type is not None and type(value) == a_type:
        return True, True
    return False, is_variable


def _dict_ok(value: dict, options: list) -> bool:
    for option in options:
        if option == "":
            continue
        if all(k in option and _std(v) in [_std(a) for a in option[k]] for k, v in value.items()) and \
                all(k in value or "" in opts for k, opts in option.items()):
            return True
    return False


def _list_dict_ok(value: list, options: list) -> bool:
    return any(len(value) == len(option) and all(_dict_ok(v, [o]) for v, o in zip(value, option))
               for option in options)


def _value_check(name: str, value, options: list, schema: dict) -> Verdict:
    """One parameter against its schema entry and allowed values (BFCL's simple_function_checker body)."""
    decl = schema.get("type")
    if decl not in PY_TYPES:
        return Verdict(False, "type_error:unknown_declared_type",
                       f"schema type {decl!r} of {name!r} is not a Python BFCL type")
    expected = PY_TYPES[decl]
    nested = PY_TYPES.get((schema.get("items") or {}).get("type")) if decl in NESTED_TYPES else None
    if decl == "float" and type(value) is int:
        value = float(value)                       # Python's int -> float is allowed
    type_ok, is_variable = _type_check(value, options, expected, nested)
    if not type_ok:
        return Verdict(False, "type_error:simple", f"{name!r}: expected {decl}, got {type(value).__name__} {value!r}")
    if not is_variable:
        if expected is dict:
            ok = _dict_ok(value, options)
            return OK if ok else Verdict(False, "value_error:dict", f"{name!r}: {value!r} not allowed")
        if expected is list and nested is dict:
            ok = _list_dict_ok(value, options)
            return OK if ok else Verdict(False, "value_error:list_dict", f"{name!r}: {value!r} not allowed")
        if expected is str:
            allowed = [standardize(a) for a in options if isinstance(a, str)]
            return OK if standardize(value) in allowed else Verdict(
                False, "value_error:string", f"{name!r}: {value!r} is not one of {options} (case-insensitive)")
        if expected is list:
            allowed = [[_std(x) for x in option] for option in options]
            return OK if [_std(x) for x in value] in allowed else Verdict(
                False, "value_error:list/tuple", f"{name!r}: {value!r} is not one of {options}")
    if value not in options:
        return Verdict(False, "value_error:others", f"{name!r}: {value!r} is not one of {options}")
    return OK


def check_call(call: dict, function: dict, gold: dict) -> Verdict:
    """One call against one function schema and one gold entry {name: {param: allowed values}}."""
    (gold_name, options), = gold.items()
    params = function["parameters"]
    props, required = params.get("properties", {}), params.get("required", [])
    if call["name"] != function["name"]:
        return Verdict(False, "simple_function_checker:wrong_func_name",
                       f"called {call['name']!r}, expected {function['name']!r}")
    args = call["arguments"]
    missing = [p for p in required if p not in args]
    if missing:
        return Verdict(False, "simple_function_checker:missing_required", f"missing required parameter {missing[0]!r}")
    for name, value in args.items():
        if name not in props or name not in options:
            return Verdict(False, "simple_function_checker:unexpected_param", f"unexpected parameter {name!r}")
        v = _value_check(name, value, options[name], props[name])
        if not v.valid:
            return v
    absent = [p for p, allowed in options.items() if p not in args and "" not in allowed]
    if absent:
        return Verdict(False, "simple_function_checker:missing_optional",
                       f"parameter {absent[0]!r} left out but it is not optional")
    return OK


def _describe(functions: list, name: str) -> dict | None:
    return next((f for f in functions if f["name"] == name), None)


def check(calls: list[dict], task) -> Verdict:
    """BFCL's AST verdict for parsed calls on a task (category decides simple / multiple / parallel)."""
    functions, gold, category = task.meta["functions"], task.meta["ground_truth"], task.meta["category"]
    if len(calls) != len(gold):
        return Verdict(False, "wrong_count", f"{len(calls)} calls, expected {len(gold)}")
    if "parallel" in category:                     # any order: each gold call takes one unused call
        used: set[int] = set()
        for i, g in enumerate(gold):
            fn = _describe(functions, next(iter(g)))
            last = Verdict(False, "parallel:cannot_find_match", f"no call matches gold call {i}")
            for j, call in enumerate(calls):
                if j in used:
                    continue
                last = check_call(call, fn, g)
                if last.valid:
                    used.add(j)
                    break
            if not last.valid:
                return Verdict(False, "parallel:cannot_find_match", f"no call matches gold call {i} ({last.error})")
        return OK
    fn = _describe(functions, next(iter(gold[0]))) if "multiple" in category else functions[0]
    return check_call(calls[0], fn, gold[0])


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
        props = ((_describe(task.meta["functions"], name) or {}).get("parameters") or {}).get("properties", {})
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
# ToolRL-style reward [recon]: R_format ∈ {0, 1} + R_correct ∈ [-3, 3]


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _pair_scores(call: dict, gold: dict, function: dict | None) -> tuple[float, float]:
    """(key match, value match) of one call against one gold call, each in [0, 1].

    keys: |P ∩ allowed| / |P ∪ required| (an allowed optional key neither helps nor hurts);
    values: the share of that union whose value passes BFCL's check for the parameter."""
    (_, options), = gold.items()
    args = call["arguments"]
    given, allowed = set(args), set(options)
    required = {k for k, v in options.items() if "" not in v}
    union = given | required
    if not union:
        return 1.0, 1.0
    props = (function or {}).get("parameters", {}).get("properties", {})
    good = sum(1 for k in given & allowed if k in props and _value_check(k, args[k], options[k], props[k]).valid)
    return len(given & allowed) / len(union), good / len(union)


def correctness_score(calls: list[dict], task) -> float:
    """S = name Jaccard + key match + value match ∈ [0, 3]; gold calls matched greedily to calls of
    the same name (best first), scores averaged over max(#calls, #gold) so extra calls cost."""
    gold, functions = task.meta["ground_truth"], task.meta["functions"]
    s_name = _jaccard({c["name"] for c in calls}, {next(iter(g)) for g in gold})
    used: set[int] = set()
    keys = values = 0.0
    for g in gold:
        name = next(iter(g))
        options = [(sum(_pair_scores(c, g, _describe(functions, name))), j, c)
                   for j, c in enumerate(calls) if j not in used and c["name"] == name]
        if options:
            _, j, c = max(options, key=lambda o: (o[0], -o[1]))
            used.add(j)
            k, v = _pair_scores(c, g, _describe(functions, name))
            keys, values = keys + k, values + v
    n = max(len(calls), len(gold))
    return s_name + keys / n + values / n


@dataclass
class Score:
    """One completion on one BFCL task."""

    verdict: Verdict
    r_format: float
    r_correct: float
    calls: list | None = None

    @property
    def reward(self) -> float:
        return self.r_format + self.r_correct


def score_text(text: str, task) -> Score:
    """Parse, check (BFCL's verdict) and reward one completion. Never raises on model output."""
    try:
        calls = parse_calls(text)
    except CallError as e:
        return Score(Verdict(False, "format", str(e)), 0.0, -3.0)
    verdict = check(calls, task)
    r_correct = 3.0 if verdict.valid else 2.0 * correctness_score(calls, task) - 3.0
    return Score(verdict, 1.0, r_correct, calls)


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
