"""ET-Agent (METHODS.md §3): behaviour metrics, NSGA-II Pareto sampling, the stage reward, the arm in
the Trainer, and the flywheel's operations on a scripted policy in the real sandbox."""

from __future__ import annotations

import math

import pytest

from tao_lab import behaviour as B
from tao_lab.records import ToolCall, Trajectory


# ----------------------------------------------------------------------------------------------
# Fixture trajectories: model text (mask 1) and tool observations (mask 0), byte tokens


def _call(code, stdout, status="ok", stderr=""):
    obs = f"\nCode execution result: {stdout or stderr}\n"
    return ToolCall(turn=0, protocol="fenced", code=code, status=status, stdout=stdout, stderr=stderr,
                    duration_s=0.0, tier="test", observation=obs, valid=bool(stdout) and not stderr)


def traj(task, pieces, correct):
    """pieces: model strings and ToolCalls, in order -> a Trajectory with the verifier's verdict."""
    text, ids, mask, calls, turn = "", [], [], [], 0
    for p in pieces:
        if isinstance(p, ToolCall):
            p.turn = turn
            calls.append(p)
            piece, m = p.observation, 0
            turn += 1
        else:
            piece, m = p, 1
        text += piece
        ids += list(piece.encode())
        mask += [m] * len(piece.encode())
    return Trajectory(task_id=task, group_id=0, prompt_ids=[], token_ids=ids, mask=mask,
                      logprobs=[0.0] * len(ids), entropies=[0.0] * len(ids), turn_idx=[0] * len(ids),
                      post_tool=[0] * len(ids), text=text, tool_calls=calls, correct=correct)


def fixture_trajectories():
    code = "```python\nprint(6*7)\n```"
    return [
        # q1: one used call, correct (sampled: len(code) + len(" so \boxed{42}") )
        traj("q1", [code, _call("print(6*7)", "42"), " so \\boxed{42}"], True),
        # q1: the same call twice (second is a repeat), correct
        traj("q1", [code, _call("print(6*7)", "42"), code, _call("print(6 * 7)", "42"), " \\boxed{42}"], True),
        # q2: a call whose output is never used (prints 5, answers 9), then wrong
        traj("q2", [code, _call("print(2+3)", "5"), " hmm \\boxed{9}"], False),
        # q2: a crashing call (aborted, not redundant), wrong
        traj("q2", [code, _call("1/0", "", status="error", stderr="ZeroDivisionError"), " \\boxed{1}"], False),
        # q3: no call, wrong (insufficient); q3: no call, correct
        traj("q3", ["\\boxed{3}"], False),
        traj("q3", ["\\boxed{4}"], True),
    ]


def test_redundant_calls_flag_repeats_and_unused_outputs_and_never_failed_calls():
    t = fixture_trajectories()
    assert B.redundant_calls(t[0]) == [False]
    assert B.redundant_calls(t[1]) == [False, True]       # whitespace differs, same code: a repeat
    assert B.redundant_calls(t[2]) == [True]              # printed 5, the model never uses it
    assert B.redundant_calls(t[3]) == [False]             # failed: aborted, not redundant
    assert B.first_redundant_call(t[1]) == 1 and B.first_redundant_call(t[0]) is None


def test_an_output_holding_the_boxed_answer_or_a_reused_line_is_used():
    assert B.output_used("\\boxed{7}", "")
    assert B.output_used("42.0", "the answer is 42")
    assert B.output_used("yes\n", "it says yes, so")
    assert not B.output_used("yes", "no")


def test_behaviour_metrics_exact_values_on_fixture_trajectories():
    t = fixture_trajectories()
    m = B.behaviour_metrics(t)
    sampled = sum(x.n_sampled for x in t)
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(3 / 6)
    # q1: acc 1, mean calls 1.5 -> 2/3; q2: acc 0 -> 0; q3: acc 0.5, no calls -> 0.5
    assert m["effi"] == pytest.approx((2 / 3 + 0 + 0.5) / 3)
    assert m["success_exec_rate"] == pytest.approx(4 / 5)
    assert m["aborted_rate"] == pytest.approx(1 / 5)
    assert m["redundant_rate"] == pytest.approx(2 / 5)
    assert m["insufficient_rate"] == pytest.approx(1 / 6)
    assert m["length_per_correct"] == pytest.approx(sampled / 3)
    assert m["calls_per_correct"] == pytest.approx(5 / 3) and m["calls_mean"] == pytest.approx(5 / 6)
    assert B.calls_histogram(t) == {0: 2, 1: 3, 2: 1}


def test_rates_over_calls_are_nan_without_calls_and_correctness_is_the_verifiers():
    t = [traj("q", ["\\boxed{1}"], False)]
    m = B.behaviour_metrics(t)
    assert math.isnan(m["success_exec_rate"]) and math.isnan(m["redundant_rate"])
    assert math.isnan(m["length_per_correct"]) and m["insufficient_rate"] == 1.0
    t[0].reward = 5.0                                     # a shaped reward never makes it correct
    assert B.behaviour_metrics(t)["accuracy"] == 0.0


def test_radar_frame_closes_each_polygon_points_axis_zero_up_and_scores_the_best_run_at_the_rim():
    t = fixture_trajectories()
    table = B.behaviour_frame({"all": t, "correct only": [x for x in t if x.correct]})
    pts = B.radar_frame(table)
    for _, g in pts.groupby("run"):
        assert len(g) == len(B.METRICS) + 1
        assert (g.iloc[0][["x", "y"]] == g.iloc[-1][["x", "y"]]).all()
    acc = pts[(pts.metric == "accuracy") & (pts.run == "correct only")].iloc[0]
    assert acc.score == 1.0 and acc.x == pytest.approx(0.0) and acc.y == pytest.approx(1.0)
    spec = B.radar_chart(table).to_dict()
    assert "layer" in spec
    assert B.behaviour_bars(table).to_dict()["facet"]
