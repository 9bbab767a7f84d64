"""Answer extraction, verification and reward functions (tao_lab/rewards.py)."""

import math
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import pytest

from tao_lab import rewards
from tao_lab.records import ToolCall, Trajectory
from tao_lab.methods.et_agent import annealed_sigma, calibration, et_agent_rewards, group_zscore
from tao_lab.methods.toolexpander import has_self_example
from tao_lab.rewards import (RewardConfig, RewardStats, VerifierProcess, extract_answer, extract_boxed,
                             find_answer, parse_number, score, verify)


def traj(text, answer="42", group=0, calls=(), n_tokens=0):
    return Trajectory(task_id="t", group_id=group, prompt_ids=[1], token_ids=[7] * n_tokens,
                      mask=[1] * n_tokens, logprobs=[0.0] * n_tokens, entropies=[0.0] * n_tokens,
                      turn_idx=[0] * n_tokens, post_tool=[0] * n_tokens, text=text, answer=answer,
                      tool_calls=list(calls))


def call(stdout, observation=None):
    obs = observation if observation is not None else f"Code execution result: {stdout}\n"
    return ToolCall(turn=0, protocol="fenced", code="print(1)", status="ok", stdout=stdout, stderr="",
                    duration_s=0.01, tier="rlimits", observation=obs, valid=True)


# ---------------------------------------------------------------------------------------------- extraction

def test_extract_boxed_returns_the_last_box_with_nested_braces():
    assert extract_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"


def test_extract_boxed_skips_an_unclosed_box_and_keeps_the_previous_one():
    assert extract_boxed(r"\boxed{12} and later \boxed{13") == "12"


def test_extract_boxed_reads_the_braceless_form_up_to_whitespace():
    assert extract_boxed(r"so the answer is $\boxed 5$.") == "5"
    assert extract_boxed(r"hence \boxed 7.") == "7"


def test_extract_boxed_treats_an_empty_box_as_no_answer():
    assert extract_boxed(r"put the final answer in \boxed{}") is None
    assert extract_boxed("no box here") is None
    assert extract_boxed(None) is None


def test_extract_boxed_ignores_escaped_braces_when_matching():
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_extract_boxed_reads_fbox_but_not_longer_command_names():
    assert extract_boxed(r"\fbox{9}") == "9"
    assert extract_boxed(r"\boxedtext{9}") is None


def test_extract_answer_reads_gsm8k_final_answer_without_thousands_commas():
    assert extract_answer("He pays 2 * 725 = <<2*725=1450>>1450\n#### 1,450,000") == "1450000"
    assert extract_answer("no marker", style="gsm8k") is None


def test_extract_answer_reads_the_last_box_of_a_math_solution():
    sol = r"We get $\boxed{3}$ first, but in fact $x = \boxed{\dfrac{3}{4}}$."
    assert extract_answer(sol, style="math") == r"\dfrac{3}{4}"
    assert extract_answer(sol) == r"\dfrac{3}{4}"  # auto: no #### -> box


def test_self_example_detection_needs_a_non_empty_example_section():
    assert has_self_example("<example>2*3 = 6, so multiplying works</example> now \\boxed{6}")
    assert not has_self_example("<example> </example>")
    assert not has_self_example("for example, 2*3")


# ---------------------------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("text,value", [
    ("1,234", 1234), ("$18", 18), ("\\$18.00", 18), ("18.0", 18), ("50\\%", 50), ("50%", 50),
    ("-3", -3), ("\u22123", -3), ("\\frac{1}{2}", Fraction(1, 2)), ("\\dfrac{3}{4}", Fraction(3, 4)),
    ("3/4", Fraction(3, 4)), ("1e5", 100000), ("\\text{42}", 42), ("1{,}000", 1000), (" 7 ", 7),
])
def test_parse_number_reads_plain_numbers_in_common_notations(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["x+1", "(1, 2)", "1,2", "\\sqrt{2}", "1e99999", "3/0", ""])
def test_parse_number_refuses_what_is_not_a_plain_number(text):
    assert parse_number(text) is None


def test_verify_compares_integers_exactly_even_when_huge():
    big = str(76 ** 38)
    stats = RewardStats()
    assert verify(big, big, stats=stats)
    assert not verify(str(76 ** 38 + 1), big, stats=stats)
    assert stats.numeric == 2 and stats.symbolic == 0


def test_verify_tolerates_float_noise_but_not_a_near_miss():
    assert verify("2.9999999999999996", "3")
    assert verify("0.3333333", "\\frac{1}{3}")
    assert not verify("3.14", "3.14159")


def test_verify_without_a_prediction_is_false():
    assert not verify(None, "3")
    assert not verify("  ", "3")


def test_verify_uses_math_verify_for_symbolic_equivalence():
    stats = RewardStats()
    assert verify(r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", stats=stats)
    assert not verify(r"x^2+1", r"(x+1)^2", stats=stats)
    assert stats.symbolic == 2 and stats.timeouts == 0 and stats.errors == 0


def test_verify_counts_a_timeout_instead_of_raising_and_recovers():
    stats = RewardStats()
    verify("1", "x+1")                           # make sure the child is up: startup is not timed
    t0 = time.perf_counter()
    assert not verify("10^{10^{10}}", "5", timeout_s=1.0, stats=stats)
    assert time.perf_counter() - t0 < 30
    assert stats.timeouts == 1
    assert verify(r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", stats=stats)   # a fresh child answers right


def test_verify_counts_a_verifier_that_cannot_start_as_an_error(monkeypatch):
    monkeypatch.setattr(rewards, "_VERIFIER", VerifierProcess(python="/bin/false"))
    stats = RewardStats()
    assert not verify("x+1", "1+x", stats=stats)
    assert stats.errors == 1 and dict(stats.error_types) == {"RuntimeError": 1}


def test_verify_is_safe_to_call_from_worker_threads():
    cases = [("1,234", "1234", True), (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", True), ("x^2+2x+1", "(x+1)^2", True),
             ("17", "18", False), ("(1,2)", "(1, 2)", True), ("2x", "x+1", False)] * 3
    stats = RewardStats()
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda c: verify(c[0], c[1], stats=stats), cases))
    assert got == [c[2] for c in cases]
    assert stats.numeric + stats.symbolic == len(cases) and stats.errors == 0 and stats.timeouts == 0


# ---------------------------------------------------------------------------------------------- ET-Agent math

def test_calibration_matches_the_formula_by_hand():
    # x = [0, 2], mean 1, sigma 0.5: f = 2/(1+e^-0.5) = 1.244919, 2/(1+e^0.5) = 0.755081
    np.testing.assert_allclose(calibration(np.array([0.0, 2.0]), 0.5), [1.244919, 0.755081], atol=1e-6)
    np.testing.assert_allclose(calibration(np.array([3.0, 9.0]), 0.0), [1.0, 1.0])


def test_group_zscore_uses_population_std_and_gives_zeros_without_spread():
    np.testing.assert_allclose(group_zscore(np.array([100.0, 200.0, 300.0])), [-1.224745, 0.0, 1.224745], atol=1e-6)
    np.testing.assert_array_equal(group_zscore(np.array([5.0, 5.0])), [0.0, 0.0])


def test_et_agent_reward_on_a_small_group_by_hand():
    # tools [1,3,2] mean 2, sigma 0.2: f_tool = 2/(1+e^-0.2) = 1.099668, 1.0 at the mean, 2/(1+e^0.2) = 0.900332
    # lengths [100,200,300] -> z = [-1.224745, 0, 1.224745], sigma 0.5: f_len = 2/(1+e^-0.612372) = 1.296963
    # R = correct * f_tool * f_len - 1 * no_answer
    r, f_tool, f_len = et_agent_rewards(correct=[1, 1, 0], n_tool_calls=[1, 2, 3], lengths=[100, 200, 300],
                                        no_answer=[False, False, True], sigma_tool=0.2, sigma_len=0.5)
    np.testing.assert_allclose(f_tool, [1.099668, 1.0, 0.900332], atol=1e-6)
    np.testing.assert_allclose(f_len, [1.296963, 1.0, 2 - 1.296963], atol=1e-6)
    np.testing.assert_allclose(r, [1.099668 * 1.296963, 1.0, -1.0], atol=1e-5)


def test_annealed_sigma_starts_at_sigma_and_reaches_zero_at_step_t():
    assert annealed_sigma(0.5, step=1, total_steps=10) == 0.5
    assert annealed_sigma(0.5, step=10, total_steps=10) == 0.0
    assert annealed_sigma(0.5, step=25, total_steps=10) == 0.0
    assert math.isclose(annealed_sigma(0.5, step=4, total_steps=10), 0.5 * 6 / 9)
    assert annealed_sigma(0.5, step=0, total_steps=10) == 0.5      # capped at sigma before training
    assert annealed_sigma(0.5, step=1000, total_steps=0) == 0.5    # T = 0: no annealing


# ---------------------------------------------------------------------------------------------- score

def test_score_sets_rewards_and_reports_accuracy():
    trajs = [traj(r"so \boxed{42}"), traj(r"so \boxed{41}"), traj("no idea")]
    rewards_, m = score(trajs)
    assert rewards_ == [1.0, 0.0, 0.0] and [t.reward for t in trajs] == rewards_
    assert m["reward/accuracy"] == pytest.approx(1 / 3) and m["reward/no_answer_rate"] == pytest.approx(1 / 3)
    assert m["reward/verify_numeric"] == 2


def test_score_takes_a_box_printed_by_the_tool_as_the_answer():
    c = call(r"\boxed{42}")
    t = traj('```python\nprint(chr(92) + "boxed{42}")\n```\n' + c.observation, calls=[c])
    _, m = score([t])
    assert t.reward == 1.0 and m["reward/answer_from_tool_rate"] == 1.0
    t2 = traj(t.text, calls=[c])
    score([t2], RewardConfig(answer_in_tool_stdout=False))
    assert t2.reward == 0.0


def test_find_answer_reads_full_stdout_when_the_observation_was_truncated():
    c = call("x" * 600 + r"\boxed{42}", observation="Code execution result: xxx...(truncated)\n")
    t = traj("code\n" + c.observation + "more text", calls=[c])
    assert find_answer(t) == ("42", "tool", 0)


def test_find_answer_prefers_the_later_model_box_over_an_earlier_tool_box():
    c = call(r"\boxed{41}")
    t = traj("code\n" + c.observation + r"Actually \boxed{42}", calls=[c])
    assert find_answer(t) == ("42", "model", 0)


def test_score_counts_observations_it_cannot_find_in_the_text():
    c = call(r"\boxed{42}", observation="Code execution result: something else\n")
    t = traj("text without the observation", calls=[c])
    _, m = score([t])
    assert t.reward == 1.0 and m["reward/observations_not_in_text"] == 1


def test_format_penalty_applies_only_when_there_is_no_answer():
    trajs = [traj(r"\boxed{42}"), traj(r"\boxed{7}"), traj("nothing")]
    rewards_, _ = score(trajs, RewardConfig(format_penalty=0.5))
    assert rewards_ == [1.0, 0.0, -0.5]


def test_score_efficiency_applies_et_agent_per_group():
    g0 = [traj(r"\boxed{42}", group=0, calls=[call("1")] * k, n_tokens=n) for k, n in ((1, 100), (3, 300))]
    g1 = [traj(r"\boxed{42}", group=1, n_tokens=50), traj("none", group=1, n_tokens=10)]
    rewards_, m = score(g0 + g1, RewardConfig.et_agent())
    r0, _, _ = et_agent_rewards([1, 1], [1, 3], [100, 300], [False, False], 0.2, 0.5)
    r1, _, _ = et_agent_rewards([1, 0], [0, 0], [50, 10], [False, True], 0.2, 0.5)
    np.testing.assert_allclose(rewards_, list(r0) + list(r1))
    assert rewards_[0] > 1.0 > rewards_[1] and rewards_[3] == -1.0
    assert m["reward/sigma_tool_eff"] == 0.2


def test_score_efficiency_terms_vanish_at_the_end_of_annealing():
    g = [traj(r"\boxed{42}", calls=[call("1")] * k, n_tokens=n) for k, n in ((1, 100), (4, 400))]
    rewards_, m = score(g, RewardConfig.et_agent(anneal_steps=5), step=5)
    assert rewards_ == [1.0, 1.0] and m["reward/sigma_len_eff"] == 0.0


def test_self_example_bonus_is_added_when_enabled():
    t = traj(r"<example>3*4=12 shows the method</example> so \boxed{42}")
    rewards_, m = score([t], RewardConfig(self_example_bonus=0.01))
    assert rewards_ == [pytest.approx(1.01)] and m["reward/self_example_rate"] == 1.0


def test_score_counts_a_missing_gold_answer_without_raising():
    rewards_, m = score([traj(r"\boxed{42}", answer="")])
    assert rewards_ == [0.0] and m["reward/missing_gold"] == 1


def test_score_of_no_trajectories_is_empty():
    rewards_, m = score([])
    assert rewards_ == [] and m["reward/n"] == 0


@pytest.mark.parametrize("kw", [dict(verify_timeout_s=0), dict(format_penalty=-1), dict(anneal_steps=1),
                                dict(sigma_tool=-0.1), dict(rel_tol=-1)])
def test_reward_config_rejects_out_of_range_values(kw):
    with pytest.raises(ValueError):
        RewardConfig(**kw)
