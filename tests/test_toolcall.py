"""Tool-call parsing and observation formatting on realistic model text (both protocols)."""

from __future__ import annotations

import pytest

from tao_lab.sandbox import ExecResult
from tao_lab.toolcall import (PROTOCOLS, cut_after_call, find_tool_call, format_observation,
                              has_boxed, is_valid_call, is_void_turn, observation_text,
                              truncate_middle)

F = "`" * 3  # a fence, kept out of the literal text so this file reads cleanly


def _res(stdout: str = "", stderr: str = "", status: str = "ok") -> ExecResult:
    return ExecResult(status, stdout, stderr, 0.01, "rlimits", 0 if status == "ok" else 1, False, False)


MODEL_TURN = (
    "To find the product of 347 and 829, I'll compute it with `python` rather than by hand.\n"
    f"{F}python\n"
    "def mul(a, b):\n"
    "    return a * b\n"
    "\n"
    "print(mul(347, 829))\n"
    f"{F}\n"
)


# ---------------------------------------------------------------------------------------------
# Fenced protocol


def test_a_fenced_python_block_is_found_with_its_multiline_code():
    m = find_tool_call(MODEL_TURN)
    assert m.protocol == "fenced"
    assert m.code == "def mul(a, b):\n    return a * b\n\nprint(mul(347, 829))"
    assert MODEL_TURN[m.start:m.start + 9] == f"{F}python"
    assert MODEL_TURN[m.end - 3:m.end] == F and MODEL_TURN[m.end:] == "\n"


@pytest.mark.parametrize("info", ["python", "py", "", "Python", "python  "])
def test_python_py_and_bare_fences_open_a_call(info):
    m = find_tool_call(f"Compute:\n{F}{info}\nprint(2 ** 10)\n{F}")
    assert m is not None and m.code == "print(2 ** 10)"


def test_an_opening_fence_after_text_on_the_same_line_opens_a_call():
    assert find_tool_call(f"I'll check: {F}python\nprint(7 * 6)\n{F}").code == "print(7 * 6)"


def test_a_python3_info_string_is_another_language_as_in_the_reference():
    assert find_tool_call(f"{F}python3\nprint(1)\n{F}") is None


def test_inline_code_in_prose_is_not_a_call():
    text = "Use `x = 2` and then ```x * 3``` mentally; no code block here."
    assert find_tool_call(text) is None


def test_the_first_of_two_calls_is_found():
    text = f"{F}python\nprint(1)\n{F}\nNow again:\n{F}python\nprint(2)\n{F}"
    m = find_tool_call(text)
    assert m.code == "print(1)" and text[m.end:].startswith("\nNow again")


def test_an_unclosed_fence_is_not_a_call_yet():
    assert find_tool_call(f"Let me check.\n{F}python\nimport math\nprint(math.factorial(20))\n") is None
    assert find_tool_call(f"Let me check.\n{F}python") is None


def test_a_fence_glued_to_the_last_code_line_does_not_close_the_block():
    assert find_tool_call(f"{F}python\nprint(347 * 829){F}") is None


def test_a_closing_fence_at_the_end_of_the_text_closes_the_call():
    text = f"{F}python\nprint(1)\n{F}"  # generation stopped right on the fence
    assert find_tool_call(text).end == len(text)


def test_a_closing_fence_with_surrounding_spaces_closes_the_call():
    m = find_tool_call(f"{F}python\nprint(1)\n  {F}  \nmore")
    assert m is not None and m.code == "print(1)"


def test_crlf_text_is_parsed_and_the_code_gets_lf_line_ends():
    text = f"Sure.\r\n{F}python\r\nx = 6\r\nprint(x * 7)\r\n{F}\r\n"
    m = find_tool_call(text)
    assert m.code == "x = 6\nprint(x * 7)" and text[m.end - 3:m.end] == F


def test_a_block_in_another_language_is_skipped_whole():
    text = f"First the shell:\n{F}bash\nls -la\n{F}\nthen python:\n{F}python\nprint(3)\n{F}"
    assert find_tool_call(text).code == "print(3)"
    assert find_tool_call(f"{F}output\n42\n{F}") is None


def test_indented_code_is_dedented():
    body = "    total = 0\n    for i in range(4):\n        total += i\n    print(total)\n"
    m = find_tool_call(f"{F}py\n{body}{F}")
    assert m.code == "total = 0\nfor i in range(4):\n    total += i\nprint(total)"


def test_an_empty_block_is_a_call_with_empty_code():
    assert find_tool_call(f"{F}python\n{F}").code == ""


def test_cut_after_call_drops_a_fake_result_the_model_wrote():
    text = MODEL_TURN + "Code execution result: 280000\nSo the answer is \\boxed{280000}."
    turn = cut_after_call(text)
    assert turn == MODEL_TURN.rstrip("\n") and "280000" not in turn


def test_cut_after_call_leaves_text_without_a_call_unchanged():
    text = "I think the answer is 42."
    assert cut_after_call(text) == text


def test_a_fake_result_with_no_call_before_it_is_not_a_call():
    text = "Code execution result: 287663\nSo the answer is 287663."
    assert find_tool_call(text) is None and is_void_turn(text)


# ---------------------------------------------------------------------------------------------
# Tags protocol


def test_a_tags_call_is_found_with_its_code():
    text = "<think>I need 2^100 exactly.</think>\n<python>\nprint(2 ** 100)\n</python>"
    m = find_tool_call(text, "tags")
    assert (m.protocol, m.code) == ("tags", "print(2 ** 100)")
    assert text[m.start:].startswith("<python>") and m.end == len(text)


def test_an_unclosed_python_tag_is_not_a_call_yet():
    assert find_tool_call("<python>\nprint(1)\n", "tags") is None


def test_a_python_tag_with_attributes_is_not_a_call():
    assert find_tool_call('<python lang="3">\nprint(1)\n</python>', "tags") is None


def test_cut_after_call_drops_a_fake_result_tag():
    text = "<python>print(6 * 7)</python>\n<result>\n41\n</result>\n<answer>41</answer>"
    assert cut_after_call(text, "tags") == "<python>print(6 * 7)</python>"


def test_the_protocols_do_not_read_each_other():
    assert find_tool_call(MODEL_TURN, "tags") is None
    assert find_tool_call("<python>print(1)</python>", "fenced") is None


def test_an_unknown_protocol_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="fenced"):
        find_tool_call("x", "xml")
    assert PROTOCOLS == ("fenced", "tags")


# ---------------------------------------------------------------------------------------------
# Observations


def test_truncate_middle_keeps_short_text_and_cuts_long_text_to_size():
    assert truncate_middle("short", 512) == "short"
    s = "H" * 400 + "m" * 1000 + "T" * 400
    out = truncate_middle(s, 512)
    assert len(out) == 512 and out.startswith("H" * 254) and out.endswith("T" * 253)
    assert " ... " in out and "m" not in out


def test_the_observation_is_the_last_stderr_line_when_stderr_is_not_empty():
    res = _res(stdout="partial\n", status="error",
               stderr="Traceback (most recent call last):\n  File \"<tool>\", line 1\nKeyError: 'x'\n\n")
    assert observation_text(res) == "KeyError: 'x'"


def test_the_observation_is_stdout_without_trailing_newlines():
    assert observation_text(_res(stdout="287663\n\n")) == "287663"


def test_a_silent_call_shows_the_placeholder():
    assert observation_text(_res()) == ""
    assert observation_text(_res(), silent_placeholder="(no output)") == "(no output)"


def test_format_observation_in_both_protocols():
    res = _res(stdout="42\n")
    assert format_observation(res, "fenced") == "\nCode execution result: 42\n"
    assert format_observation(res, "tags") == "\n<result>\n42\n</result>\n"


def test_format_observation_truncates_long_output():
    obs = format_observation(_res(stdout="9" * 5000), "fenced", max_chars=100)
    assert obs == "\nCode execution result: " + truncate_middle("9" * 5000, 100) + "\n"


@pytest.mark.parametrize("stdout, stderr, status, strict, lenient", [
    ("42\n", "", "ok", True, True),              # printed a result
    ("", "", "ok", False, True),                 # printed nothing: a failure unless switched off
    ("42\n", "warning: x\n", "ok", False, False),  # anything on stderr fails the call
    ("", "TimeoutError: ...\n", "timeout", False, False),
    ("", "", "error", False, False),             # silent non-zero exit is never valid
])
def test_is_valid_call_follows_tao_rl(stdout, stderr, status, strict, lenient):
    res = _res(stdout, stderr, status)
    assert is_valid_call(res) is strict
    assert is_valid_call(res, silent_is_failure=False) is lenient


def test_boxed_and_void_turns():
    assert has_boxed("so \\boxed{12}") and not has_boxed("boxed{12}")
    assert is_void_turn("Hmm, let me think.")
    assert not is_void_turn("The answer is \\boxed{7}.")
    assert not is_void_turn(MODEL_TURN)
    assert is_void_turn(MODEL_TURN, "tags")
