"""Function calling on BFCL (tao_lab/bfcl.py, its checker tao_lab/bfcl_checker.py): data read from a
wheel-layout zip, the tool-call parser, BFCL's AST rules, the ToolRL-style reward, evaluation, and
`--method toolexpander` on BFCL.
Fast tests use a small zip in the wheel's layout; the smoke test reads the real bfcl-eval wheel and
checks that tao_lab's checker agrees with the wheel's own on every question."""

from __future__ import annotations

import collections
import json
import random
import sys
import types

import pytest
import torch

from e2e_policy import ASSISTANT, ChatByteTokenizer
from tao_lab import bfcl, bfcl_checker
from tao_lab.bfcl import gold_call, gold_text
from tao_lab.bfcl_checker import CallError, check, parse_calls, score_text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    return bfcl.write_sample_wheel(tmp_path_factory.mktemp("bfcl") / "sample.whl")


@pytest.fixture(scope="module")
def by_id(wheel):
    return {t.id: t for split in ("train", "test") for t in bfcl.load_bfcl("bfcl", split, wheel)}


def calls_text(*calls):
    return "<tool_call>" + json.dumps(list(calls)) + "</tool_call>"


# -- data


def test_categories_load_from_the_zip_with_a_split_that_never_shares_a_question(wheel, monkeypatch):
    train, test = bfcl.load_bfcl("bfcl", "train", wheel), bfcl.load_bfcl("bfcl", "test", wheel)
    assert {t.id for t in train} & {t.id for t in test} == set()
    assert len(train) + len(test) == sum(len(v) for v in bfcl.SAMPLE.values())
    assert all(bfcl.split_of(t.id) == "train" for t in train)           # a hash of the id: stable
    cats = [t.meta["category"] for t in train]                           # interleaved, so a first-N
    assert len(set(cats[:len(set(cats))])) == len(set(cats)) > 1         # (--n, eval_n) has every category
    t = next(t for t in train if t.id == "multiple_0")
    assert t.meta["category"] == "multiple" and len(t.meta["functions"]) == 2 and "stock_price" in t.prompt
    assert json.loads(t.answer) == t.meta["ground_truth"] and t.meta["system"] == bfcl.SYSTEM_PROMPT
    monkeypatch.setenv("TAO_LAB_BFCL_WHEEL", str(wheel))
    from tao_lab.tasks import build_messages, load_tasks
    got = load_tasks("bfcl:simple_python,parallel", split="test")
    assert [x.id for x in got] == ["simple_python_0", "simple_python_1", "simple_python_2"]
    msgs = build_messages(got[0], "few_shot", "fenced", 2)               # no math demonstrations
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"] == bfcl.SYSTEM_PROMPT
    with pytest.raises(ValueError, match="unknown categories"):
        bfcl.parse_spec("bfcl:simple_java")
    with pytest.raises(ValueError, match="choose from"):
        bfcl.read_category(wheel, "live_simple")


def test_a_broken_or_foreign_zip_is_refused_with_a_clear_error(tmp_path):
    import zipfile
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        bfcl.read_category(junk, "simple_python")
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(FileNotFoundError, match="not a bfcl-eval wheel"):
        bfcl.read_category(other, "simple_python")


# -- the call protocol


def test_parse_calls_reads_lists_single_objects_and_several_blocks():
    one = {"name": "f", "arguments": {"x": 1}}
    assert parse_calls("think first " + calls_text(one)) == [one]
    assert parse_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>') == [one]
    assert parse_calls(calls_text(one) + " and " + calls_text({"name": "g"})) == [one, {"name": "g", "arguments": {}}]


@pytest.mark.parametrize("text, words", [
    ("no call at all", "no <tool_call>"),
    ('<tool_call>[{"name": "f"}]', "unclosed"),
    ('<tool_call>[{"name": "f", "arguments": {x: 1}}]</tool_call>', "malformed JSON"),
    ("<tool_call>[{'name': 'f'}]</tool_call>", "malformed JSON"),
    ("<tool_call>42</tool_call>", "expected a JSON list"),
    ('<tool_call>["f"]</tool_call>', "expected an object"),
    ('<tool_call>[{"arguments": {}}]</tool_call>', "'name' must be a non-empty string"),
    ('<tool_call>[{"name": "f", "arguments": [1]}]</tool_call>', "'arguments' must be an object"),
    ('<tool_call>[{"name": "f", "args": {}}]</tool_call>', "unknown keys ['args']"),
    ("<tool_call>[]</tool_call>", "empty"),
    ("<tool_call>" + "[" * 5000 + "]" * 5000 + "</tool_call>", "nested too deeply"),
])
def test_malformed_calls_give_a_clear_call_error(text, words):
    with pytest.raises(CallError, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_calls(text)


def test_random_garbage_raises_call_error_and_nothing_else():
    rng = random.Random(0)
    alphabet = '<>/tool_call[]{}":,name arguments 0123456789truefalsenull\\'
    for _ in range(300):
        text = "<tool_call>" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) + \
               rng.choice(["</tool_call>", ""])
        try:
            parse_calls(text)
        except CallError:
            pass
    assert isinstance(score_text(None, None).verdict, bfcl_checker.Verdict)          # never raises


# -- BFCL's AST rules


def test_gold_calls_pass_and_each_rule_rejects_its_case(by_id):
    for t in by_id.values():
        assert check(gold_call(t), t).valid, t.id
    area = by_id["simple_python_0"]

    def verdict(args, name="triangle_area"):
        return check([{"name": name, "arguments": args}], area)

    assert verdict({"base": 10, "height": 5}).valid                       # optional "unit" left out
    assert verdict({"base": 10, "height": 5, "unit": "Units"}).valid      # strings: case-insensitive
    assert verdict({"base": 10, "height": 5}, "area").error_type.endswith("wrong_func_name")
    assert verdict({"base": 10}).error_type.endswith("missing_required")
    assert verdict({"base": 10, "height": 5, "color": "red"}).error_type.endswith("unexpected_param")
    assert verdict({"base": 10, "height": 6}).error_type == "value_error:others"
    assert verdict({"base": "10", "height": 5}).error_type == "type_error:simple"
    assert verdict({"base": 10.0, "height": 5}).error_type == "type_error:simple"   # float for integer
    assert verdict({"base": 10, "height": 5, "unit": "cm"}).error_type == "value_error:string"
    money = by_id["simple_python_1"]
    assert check([{"name": "convert_currency", "arguments": {"amount": 250, "source": "E.U.R", "target": "usd"}}],
                 money).valid                                             # int for float; ".", case ignored
    book = by_id["simple_python_3"]
    assert not check([{"name": "book_table", "arguments": {"restaurant": "Nopa", "people": 2}}], book).valid
    multi = by_id["multiple_0"]
    assert check([{"name": "stock_price", "arguments": {"ticker": "aapl", "currency": "USD"}}], multi).valid
    assert not check([{"name": "book_table", "arguments": {"restaurant": "x", "people": 1, "time": "1"}}], multi).valid


def test_parallel_calls_match_in_any_order_and_the_count_must_agree(by_id):
    par = by_id["parallel_0"]
    paris, tokyo = ({"name": "get_weather", "arguments": {"city": c}} for c in ("Paris", "Tokyo"))
    assert check([tokyo, paris], par).valid and check([paris, tokyo], par).valid
    assert check([paris], par).error_type == "wrong_count"
    assert check([paris, paris], par).error_type == "parallel:cannot_find_match"
    days = {"name": "get_weather", "arguments": {"city": "Paris", "days": [0]}}
    assert check([days, tokyo], par).valid
    bad_days = {"name": "get_weather", "arguments": {"city": "Paris", "days": ["0"]}}
    assert not check([bad_days, tokyo], par).valid                         # array items are type-checked


# -- the reward


def test_toolrl_reward_values(by_id):
    area = by_id["simple_python_0"]
    best = score_text(gold_text(area), area)
    assert best.verdict.valid and (best.r_format, best.r_correct, best.reward) == (1.0, 3.0, 4.0)
    none = score_text("the area is 25", area)
    assert not none.verdict.valid and none.verdict.error_type == "format" and none.reward == -3.0
    # right name and keys, one value wrong: S = 1 + 1 + 1/2 -> R_correct = 2 S - 3 = 2
    half = score_text(calls_text({"name": "triangle_area", "arguments": {"base": 10, "height": 6}}), area)
    assert not half.verdict.valid and half.r_correct == pytest.approx(2.0) and half.reward == pytest.approx(3.0)
    # wrong name: no pair is matched, S = 0 -> -3 (but the format point stays)
    wrong = score_text(calls_text({"name": "square_area", "arguments": {"side": 3}}), area)
    assert wrong.r_format == 1.0 and wrong.r_correct == pytest.approx(-3.0)
    # one of two parallel calls: names match, half the pairs -> S = 1 + 1/2 + 1/2
    par = by_id["parallel_0"]
    one = score_text(calls_text({"name": "get_weather", "arguments": {"city": "Paris"}}), par)
    assert one.r_correct == pytest.approx(1.0)
    extra = score_text(calls_text(*gold_call(par), {"name": "get_weather", "arguments": {"city": "Rome"}}), par)
    assert not extra.verdict.valid and -3.0 < extra.r_correct < 3.0


def test_reward_fn_sets_correct_and_reward_with_the_self_example_bonus(by_id):
    from tao_lab.records import Trajectory
    area = by_id["simple_python_0"]
    texts = [gold_text(area), "<example>A triangle with base 4 and height 2 has area 4.</example> Same here. "
             + gold_text(area), "no idea"]
    trajs = [Trajectory(area.id, 0, [], [], [], [], [], [], [], text=x, answer=area.answer, sample_idx=i)
             for i, x in enumerate(texts)]
    rewards, m = bfcl.make_reward_fn([area], 0.01)(trajs, 1)
    assert rewards == pytest.approx([4.0, 4.01, -3.0]) and [t.correct for t in trajs] == [True, True, False]
    assert m["reward/accuracy"] == pytest.approx(2 / 3) and m["bfcl/error/format"] == 1
    assert m["reward/self_example_rate"] == pytest.approx(1 / 3)


# -- evaluation and training on BFCL


class GoldCaller(torch.nn.Module):
    """Writes the gold call of the question it is asked (byte by byte), or nonsense for odd tasks."""

    def __init__(self, tok, tasks, wrong=()):
        super().__init__()
        self.tok, self.dummy = tok, torch.nn.Parameter(torch.zeros(1))
        self.out = {t.prompt: ("no idea" if t.id in wrong else gold_text(t)) for t in tasks}

    def forward(self, input_ids, attention_mask=None, **_):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, len(self.tok))
        lens = attention_mask.sum(1) if attention_mask is not None else torch.full((B,), T)
        for b in range(B):
            text = self.tok.decode(input_ids[b, :lens[b]].tolist(), skip_special_tokens=True)
            head, done = text.rsplit(ASSISTANT, 1)
            q = head[head.rfind("<user>\n") + 7:].rstrip("\n")
            out = self.out[q].encode()
            n = len(done.encode())
            logits[b, lens[b] - 1, self.tok.eos_token_id if n >= len(out) else out[n]] = 50.0
        return type("Out", (), {"logits": logits})()


def test_evaluate_reports_bfcl_accuracy_per_category(by_id):
    from tao_lab.evaluate import EvalConfig, evaluate
    from tao_lab.rollout import RolloutConfig
    tasks = [by_id[i] for i in ("simple_python_0", "simple_python_1", "parallel_0")]
    tok = ChatByteTokenizer()
    policy = GoldCaller(tok, tasks, wrong={"simple_python_1"})
    ro = RolloutConfig(tools=False, backend="recompute", template="zero_shot")
    _, m = evaluate(policy, tok, tasks, EvalConfig(k=1, max_new_tokens=400), ro, merge=False)
    assert m["eval/bfcl/simple_python"] == 0.5 and m["eval/bfcl/parallel"] == 1.0
    assert m["eval/avg@1"] == pytest.approx(2 / 3) and m["bfcl/format_rate"] == pytest.approx(2 / 3)


def test_trainer_runs_toolexpander_on_bfcl_tasks(tmp_path, wheel, monkeypatch, smol_tokenizer):
    from test_toolexpander import tiny_policy
    from tao_lab.methods.toolexpander import HardSampleSource
    from tao_lab.presets import make_config
    from tao_lab.trainer import Trainer
    monkeypatch.setenv("TAO_LAB_BFCL_WHEEL", str(wheel))
    cfg = make_config("test_tiny", "toolexpander", ["data.tasks=bfcl", "data.limit=2", "run.steps=2",
                                                    "rollout.tools=false", "rollout.max_new_tokens=8",
                                                    "toolexpander.hard_rollouts=2"])
    torch.set_num_threads(1)
    with Trainer(cfg, tmp_path / "run", model=tiny_policy(cfg, smol_tokenizer), tok=smol_tokenizer) as tr:
        assert isinstance(tr.prompt_source, HardSampleSource) and tr.reward_fn is not None
        logs = tr.train()
    m = logs[-1].metrics
    assert "bfcl/format_rate" in m and m["reward/mean"] == pytest.approx(-3.0)   # a random model writes no call
    assert logs[0].metrics["source/replaced"] == 2 and logs[1].metrics["source/replaced_in_batch"] == 2
    replaced = tr.prompt_source.replaced_prompt(tr.tasks[0])
    assert "<tool_call>" in replaced                                   # a gold call of the same category


# -- the real wheel (network once, then cached)


def _wheel_checker(path):
    """The wheel's own ast_checker, imported from the zip with its model registry stubbed out."""
    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = collections.defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))
    saved = {k: v for k, v in sys.modules.items() if k.startswith("bfcl_eval")}
    sys.path.insert(0, str(path))
    sys.modules["bfcl_eval.constants.model_config"] = stub
    try:
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
        return ast_checker, Language.PYTHON
    finally:
        sys.path.remove(str(path))
        for k in [k for k in sys.modules if k.startswith("bfcl_eval")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _mutations(task, rng):
    """The gold call and variants that break (or keep) one rule each."""
    gold = gold_call(task)
    out = [gold, gold[::-1], gold + gold[:1], gold[1:]]
    for i, c in enumerate(gold):
        args = c["arguments"]
        out.append(gold[:i] + [{**c, "name": c["name"] + "_x"}] + gold[i + 1:])
        out.append(gold[:i] + [{**c, "arguments": {**args, "zz_unknown": 1}}] + gold[i + 1:])
        for k, v in args.items():
            variants = [{kk: vv for kk, vv in args.items() if kk != k},
                        {**args, k: str(v) if not isinstance(v, str) else v.upper() + "."},
                        {**args, k: (v + 1) if isinstance(v, (int, float)) and not isinstance(v, bool) else [v]}]
            out += [gold[:i] + [{**c, "arguments": a}] + gold[i + 1:] for a in rng.sample(variants, 2)]
    return out


@pytest.mark.smoke
def test_the_checker_agrees_with_the_wheels_own_on_every_question():
    try:
        path = bfcl.fetch_wheel()
    except RuntimeError as e:
        pytest.skip(f"the bfcl-eval wheel could not be downloaded (offline?): {str(e)[:200]}")
    ast_checker, python = _wheel_checker(path)
    rng = random.Random(0)
    n, disagree = 0, []
    for cat in bfcl.CATEGORIES:
        for rec in bfcl.read_category(path, cat):
            task = bfcl.to_task(rec)
            assert check(gold_call(task), task).valid, task.id
            for calls in _mutations(task, rng):
                ours = check(calls, task).valid
                theirs = ast_checker(rec["function"], [{c["name"]: c["arguments"]} for c in calls],
                                     rec["ground_truth"], python, cat, "tao_lab")["valid"]
                n += 1
                if ours != theirs:
                    disagree.append((task.id, calls, ours, theirs))
    assert n > 5000 and not disagree, disagree[:3]
    sizes = {c: len(bfcl.read_category(path, c)) for c in bfcl.CATEGORIES}
    assert sizes == {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200}


def test_the_grid_reward_fn_finds_any_bfcl_question(wheel, monkeypatch):
    from tao_lab.records import Trajectory
    monkeypatch.setenv("TAO_LAB_BFCL_WHEEL", str(wheel))
    monkeypatch.setattr(bfcl, "_TASKS_BY_ID", {})
    tasks = bfcl.load_bfcl("bfcl", "train", wheel) + bfcl.load_bfcl("bfcl", "test", wheel)
    trajs = [Trajectory(t.id, i, [], [], [], [], [], [], [], text=gold_text(t)) for i, t in enumerate(tasks)]
    rewards, m = bfcl.reward_fn(trajs, 0)
    assert rewards == [4.0] * len(tasks) and m["reward/accuracy"] == 1.0
