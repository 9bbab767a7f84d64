"""BFCL's rules for one completion: parse the <tool_call> block, check the calls as BFCL's AST
checker does, and the ToolRL-style reward. bfcl.py holds the data (wheel, questions, splits, prompts)
and hands these to the Trainer (`make_reward_fn`). Reading order: the call protocol (`parse_calls`)
→ BFCL's AST rules (`check`) → the reward (`score_text`).

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

A task here is a tasks.Task made by bfcl.to_task: meta["functions"] (the schemas), meta["ground_truth"]
(BFCL's possible answers: one {function name: {param: allowed values}} per expected call) and
meta["category"].
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


class CallError(ValueError):
    """The completion holds no well-formed tool call; the message says what is wrong."""


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


def function_named(functions: list, name: str) -> dict | None:
    """The schema of the function called `name` among a task's `functions` (None if there is none)."""
    return next((f for f in functions if f["name"] == name), None)


def check(calls: list[dict], task) -> Verdict:
    """BFCL's AST verdict for parsed calls on a task (category decides simple / multiple / parallel)."""
    functions, gold, category = task.meta["functions"], task.meta["ground_truth"], task.meta["category"]
    if len(calls) != len(gold):
        return Verdict(False, "wrong_count", f"{len(calls)} calls, expected {len(gold)}")
    if "parallel" in category:                     # any order: each gold call takes one unused call
        used: set[int] = set()
        for i, g in enumerate(gold):
            fn = function_named(functions, next(iter(g)))
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
    fn = function_named(functions, next(iter(gold[0]))) if "multiple" in category else functions[0]
    return check_call(calls[0], fn, gold[0])


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
        options = [(sum(_pair_scores(c, g, function_named(functions, name))), j, c)
                   for j, c in enumerate(calls) if j not in used and c["name"] == name]
        if options:
            _, j, c = max(options, key=lambda o: (o[0], -o[1]))
            used.add(j)
            k, v = _pair_scores(c, g, function_named(functions, name))
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
