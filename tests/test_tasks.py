"""Task loading, the bundled data and its generator, demonstrations and prompt templates (tao_lab/tasks.py)."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tao_lab.rewards import extract_boxed
from tao_lab.tasks import (DATA_DIR, SYSTEM_PROMPTS, Demo, Task, TaskError, build_messages, bundled_names,
                           load_demos, load_tasks, parse_hf_spec, render_prompt, select_demos)

REPO = Path(__file__).resolve().parent.parent
GSM8K = REPO.parent / "shared" / "data" / "gsm8k_test.jsonl"


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- bundled data

def test_bundled_sets_have_their_documented_sizes():
    assert len(load_tasks("arith-L1")) == 200
    assert len(load_tasks("arith-L1", split="test")) == 100
    assert len(load_tasks("word")) == 800 and len(load_tasks("word", split="test")) == 400


def test_bundled_tasks_carry_level_kind_split_and_source():
    t = load_tasks("word-L3", split="test")[0]
    assert t.meta["level"] == 3 and t.meta["split"] == "test" and t.meta["family"] == "word"
    assert t.meta["source"] == "bundled:word-L3" and t.meta["kind"] in {"account", "population", "shopping", "trip"}


def problem_key(prompt, kind):
    """Kind + the numbers in the question: the same problem however it is worded."""
    return kind, tuple(re.findall(r"\d+", prompt))


def test_train_test_and_demos_never_share_a_problem():
    keys = {}
    for name in bundled_names()[:8]:
        for split in ("train", "test"):
            for t in load_tasks(name, split=split):
                keys.setdefault(problem_key(t.prompt, t.meta["kind"]), set()).add(split)
    for d in load_demos():
        if d.protocol == "fenced":   # the tags demo is the same problem
            keys.setdefault(problem_key(d.prompt, d.meta["kind"]), set()).add("demo")
    shared = {k: v for k, v in keys.items() if len(v) > 1}
    assert not shared
    train = {t.prompt for t in load_tasks("arith") + load_tasks("word")}
    test = {t.prompt for t in load_tasks("arith", split="test") + load_tasks("word", split="test")}
    assert not train & test


def test_bundled_answers_are_integers():
    for name in bundled_names()[:8]:
        for split in ("train", "test"):
            assert all(re.fullmatch(r"-?\d+", t.answer) for t in load_tasks(name, split=split))


def test_data_folder_stays_under_one_megabyte():
    assert sum(p.stat().st_size for p in DATA_DIR.iterdir()) < 1_000_000


def test_generator_reproduces_data_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tasks.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in DATA_DIR.iterdir())
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------- demonstrations

def test_demo_outputs_are_what_their_code_prints():
    for d in load_demos():
        for step in d.steps:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(step["code"], {})   # our own generated code, run the way the tool would
            assert buf.getvalue().strip() == step["output"], d.id
        assert d.steps[-1]["output"] == d.answer and extract_boxed(d.completion) == d.answer


def test_demo_completions_follow_their_protocol():
    for d in load_demos():
        if d.protocol == "fenced":
            calls = re.findall(r"```python\n(.*?)\n```\nCode execution result: (.*?)\n", d.completion, re.S)
        else:
            calls = re.findall(r"<python>\n(.*?)\n</python>\n<result>\n(.*?)\n</result>\n", d.completion, re.S)
        assert calls == [(s["code"], s["output"]) for s in d.steps], d.id


def test_every_task_kind_has_a_demo_in_both_protocols():
    kinds = {t.meta["kind"] for n in bundled_names()[:8] for t in load_tasks(n)}
    for protocol in ("fenced", "tags"):
        assert kinds <= {d.meta["kind"] for d in load_demos(protocol=protocol)}
    assert any(d.meta["n_tool_calls"] > 1 for d in load_demos())  # multi-step expert trajectories exist


# ---------------------------------------------------------------------------------------------- files

@pytest.mark.skipif(not GSM8K.exists(), reason=f"{GSM8K} (shared GSM8K test file) is not on this machine")
def test_gsm8k_file_loads_with_its_final_answers():
    tasks = load_tasks(GSM8K)
    assert len(tasks) == 1319
    assert tasks[0].answer == "18" and tasks[0].prompt.startswith("Janet")
    assert tasks[0].meta["format"] == "gsm8k" and tasks[0].meta["line"] == 1
    assert all(re.fullmatch(r"-?\d+", t.answer) for t in tasks)   # "1,450,000" -> "1450000"
    assert len({t.id for t in tasks}) == 1319


def test_math_style_file_takes_the_last_box_with_nested_braces(tmp_path):
    row = {"problem": "Find x.", "solution": r"First $\boxed{1}$; in fact $x = \boxed{\frac{3}{\sqrt{4}}}$."}
    tasks = load_tasks(write_lines(tmp_path / "m.jsonl", [json.dumps(row)]))
    assert tasks[0].answer == r"\frac{3}{\sqrt{4}}" and tasks[0].meta["format"] == "math"


def test_tao_lab_file_keeps_ids_and_meta(tmp_path):
    rows = [{"id": "a", "prompt": "1+1?", "answer": 2, "meta": {"kind": "add"}}, {"prompt": "2+2?", "answer": "4"}]
    tasks = load_tasks(write_lines(tmp_path / "own.jsonl", [json.dumps(r) for r in rows]))
    assert [(t.id, t.answer) for t in tasks] == [("a", "2"), ("own-2", "4")]
    assert tasks[0].meta["kind"] == "add"


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "1+1?", "answer": "2"}', "", '{"prompt": "oops"'])
    with pytest.raises(TaskError, match=rf"{re.escape(str(path))}:3: not valid JSON"):
        load_tasks(path)


def test_a_line_of_unknown_shape_says_which_shapes_are_accepted(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ['{"q": "1+1?", "a": "2"}'])
    with pytest.raises(TaskError, match=r"bad.jsonl:1: keys \['a', 'q'\] match no known shape.*GSM8K.*MATH"):
        load_tasks(path)


def test_gsm8k_answer_without_final_marker_is_an_error(tmp_path):
    path = write_lines(tmp_path / "g.jsonl", ['{"question": "How many?", "answer": "It is 4."}'])
    with pytest.raises(TaskError, match=r"g.jsonl:1: GSM8K-style 'answer' has no final answer after '####'"):
        load_tasks(path)


def test_math_solution_without_box_is_an_error(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", ['{"problem": "x?", "solution": "x is \\\\boxed{3"}'])
    with pytest.raises(TaskError, match=r"m.jsonl:1: MATH-style 'solution' has no complete"):
        load_tasks(path)


def test_duplicate_ids_are_an_error(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", ['{"id": "x", "prompt": "a", "answer": "1"}',
                                              '{"id": "x", "prompt": "b", "answer": "2"}'])
    with pytest.raises(TaskError, match=r"d.jsonl:2: duplicate id 'x' \(first at line 1\)"):
        load_tasks(path)


def test_unknown_source_lists_the_bundled_names():
    with pytest.raises(TaskError, match=r"unknown task source 'arith-L9'.*arith-L1.*word-L4"):
        load_tasks("arith-L9")


def test_a_split_with_a_file_path_is_ignored_because_a_file_is_one_split(tmp_path):
    # every command has a default split (eval/rollout: test, train: train); a path must work with it
    path = write_lines(tmp_path / "t.jsonl", ['{"prompt": "a", "answer": "1"}'])
    assert [t.answer for t in load_tasks(path, split="test")] == ["1"]


def test_seed_shuffles_deterministically_before_limit():
    a = load_tasks("arith-L2", limit=5, seed=3)
    assert [t.id for t in a] == [t.id for t in load_tasks("arith-L2", limit=5, seed=3)]
    assert [t.id for t in a] != [t.id for t in load_tasks("arith-L2", limit=5)]
    assert [t.id for t in load_tasks("arith-L2", limit=2)] == ["arith-L2-train-0000", "arith-L2-train-0001"]


# ---------------------------------------------------------------------------------------------- Hugging Face

def test_hf_spec_parsing():
    assert parse_hf_spec("hf:openai/gsm8k:main:test", None) == ("openai/gsm8k", "main", "test")
    assert parse_hf_spec("hf:HuggingFaceH4/MATH-500::test", None) == ("HuggingFaceH4/MATH-500", None, "test")
    assert parse_hf_spec("hf:openai/gsm8k:main", "test") == ("openai/gsm8k", "main", "test")
    with pytest.raises(TaskError, match="names split 'test' but split='train'"):
        parse_hf_spec("hf:openai/gsm8k:main:test", "train")
    with pytest.raises(TaskError, match="bad Hugging Face spec"):
        parse_hf_spec("hf:a:b:c:d", None)


def test_hf_source_without_the_datasets_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)   # makes `import datasets` fail
    with pytest.raises(TaskError, match="needs the `datasets` package: pip install"):
        load_tasks("hf:openai/gsm8k:main:test")


def test_hf_source_offline_raises_a_clear_error(tmp_path):
    pytest.importorskip("datasets")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = ("from tao_lab.tasks import load_tasks, TaskError\n"
            "try:\n    load_tasks('hf:openai/gsm8k:main:test')\nexcept TaskError as e:\n    print('TaskError:', e)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "TaskError: could not load 'hf:openai/gsm8k:main:test'" in out.stdout and "network" in out.stdout


# ---------------------------------------------------------------------------------------------- prompts

MUL = Task("m", "What is 123 × 456?", "56088", {"family": "arith", "kind": "mul", "level": 2})


def test_zero_shot_is_system_prompt_then_the_question():
    msgs = build_messages(MUL, template="zero_shot")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == MUL.prompt
    assert "```python" in msgs[0]["content"] and "Code execution result:" in msgs[0]["content"]
    assert "\\boxed{}" in msgs[0]["content"]


def test_few_shot_puts_same_kind_demos_as_earlier_exchanges():
    msgs = build_messages(MUL, template="few_shot", n_demos=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    demos = {d.prompt: d for d in load_demos(protocol="fenced")}
    assert all(demos[msgs[i]["content"]].meta["kind"] == "mul" for i in (1, 3))
    assert msgs[2]["content"].startswith("I'll compute this with Python.\n```python\nprint(")


def test_tags_protocol_uses_tag_prompt_and_tag_demos():
    msgs = build_messages(MUL, protocol="tags", n_demos=1)
    assert msgs[0]["content"] == SYSTEM_PROMPTS["tags"] and "<python>" in msgs[2]["content"]


def test_tasks_without_family_get_word_problem_demos():
    gsm = Task("g", "Janet's ducks lay 16 eggs...", "18", {"format": "gsm8k"})
    assert {d.meta["family"] for d in select_demos(gsm, load_demos(), 3)} == {"word"}


def test_asking_for_more_demos_than_exist_is_an_error():
    with pytest.raises(ValueError, match="only 1"):
        select_demos(MUL, [Demo("d", "fenced", "1+1?", "2", "x", [], {})], 2)


def chatml_tokenizer():
    """A real (tiny, word-level) fast tokenizer with a ChatML template like SmolLM2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>")
    tok.chat_template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
                         "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}")
    return tok


def test_render_prompt_ends_where_the_assistant_message_begins():
    text = render_prompt(chatml_tokenizer(), MUL)
    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPTS["fenced"])
    assert text.endswith(f"<|im_start|>user\n{MUL.prompt}<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>assistant\n") == 3   # two demonstrations + the open one


def test_render_prompt_without_chat_template_says_so():
    tok = chatml_tokenizer()
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tok, MUL)


@pytest.mark.smoke
def test_bundled_model_writes_a_python_block_with_two_demonstrations():
    import torch

    from tao_lab.models import load_policy

    model, tok = load_policy("smollm2-135m", lora=False)
    tasks = [t for t in load_tasks("arith-L2", split="test") if t.meta["kind"] == "mul"][:2]
    hits = 0
    for t in tasks:
        ids = tok(render_prompt(tok, t), return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
        hits += "```python" in tok.decode(out[0, ids.shape[1]:])
    assert hits >= 1
