"""ET-Agent (METHODS.md §3): behaviour metrics, NSGA-II Pareto sampling, the stage reward, the arm in
the Trainer, and the flywheel's operations on a scripted policy in the real sandbox."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from tao_lab import behaviour as B
from tao_lab.methods import et_agent as E
from fakes import ByteTokenizer, ScriptedPolicy
from tao_lab.records import RunStore, ToolCall, Trajectory
from train_helpers import one_thread  # noqa: F401


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


# ----------------------------------------------------------------------------------------------
# NSGA-II on hand-made points, the post-filter, the selection


POINTS = np.array([(3, 0), (2.5, 1), (1, 2), (0, 3), (1, 1), (0, 0), (2, 0.5)], dtype=float)


def test_nondominated_fronts_of_a_hand_made_point_set():
    assert E.dominates((2.5, 1), (1, 1)) and not E.dominates((1, 1), (1, 1)) and not E.dominates((3, 0), (0, 3))
    assert E.nondominated_fronts(POINTS) == [[0, 1, 2, 3], [4, 6], [5]]


def test_crowding_distance_boundaries_are_infinite_inner_points_sum_normalised_gaps():
    d = E.crowding_distance(POINTS[[0, 1, 2, 3]])
    # obj 0 sorted 0, 1, 2.5, 3 (range 3); obj 1 sorted 0, 1, 2, 3 (range 3)
    assert np.isinf(d[0]) and np.isinf(d[3])
    assert d[1] == pytest.approx((3 - 1) / 3 + (2 - 0) / 3) and d[2] == pytest.approx((2.5 - 0) / 3 + (3 - 1) / 3)
    flat = E.crowding_distance(np.array([(1, 0), (2, 0), (4, 0), (5, 0)], dtype=float))   # obj 1 skipped
    assert np.isinf(flat[0]) and np.isinf(flat[3]) and flat[1] == pytest.approx(3 / 4) and flat[2] == pytest.approx(3 / 4)
    assert np.isinf(E.crowding_distance(POINTS[:2])).all()


def test_pareto_select_fills_whole_fronts_then_cuts_the_last_by_crowding():
    assert E.pareto_select(POINTS, 3) == [0, 2, 3]            # both boundaries, then the wider inner point
    assert E.pareto_select(POINTS, 5) == [0, 1, 2, 3, 4]      # front 1 ties (both inf): lower index
    assert E.pareto_select(POINTS, 6) == [0, 1, 2, 3, 4, 6] and E.pareto_select(POINTS, 99) == list(range(7))


def test_objectives_are_population_variances_and_the_post_filter_keeps_mixed_outcomes():
    assert E.question_objectives([0, 2], [True, False]) == (1.0, 0.25)
    assert E.mixed_outcome([True, False]) and not E.mixed_outcome([True, True]) and not E.mixed_outcome([False])
    stats = {"a": {"calls": [0, 4, 0, 4], "correct": [1, 1, 1, 1]},    # front 0 by calls, never wrong
             "b": {"calls": [1, 1, 1, 1], "correct": [1, 0, 1, 0]},    # front 0 by correctness
             "c": {"calls": [1, 2, 1, 2], "correct": [1, 0, 0, 0]},    # front 0, crowded between them
             "d": {"calls": [1, 1, 1, 1], "correct": [0, 0, 0, 0]}}
    assert E.select_questions(stats, 2, post_filter=False) == ["a", "b"]   # c's crowding is finite
    assert E.select_questions(stats, 2) == ["b"]
    assert E.select_questions(stats, 3) == ["b", "c"]
    f = E.pareto_frame(stats, 2)
    assert f.set_index("task_id")["front"].to_dict() == {"a": 0, "b": 0, "c": 0, "d": 1}
    assert f.selected.tolist() == [False, True, False, False] and f.pareto.tolist() == [True, True, False, False]
    assert "layer" in E.pareto_chart(f).to_dict() or E.pareto_chart(f).to_dict()["mark"]


# ----------------------------------------------------------------------------------------------
# ParetoSource: probe, select, serve; state round trip


@dataclass
class Q:
    id: str
    prompt: str = ""
    answer: str = ""


def probe_rollouts(batch, outcome):
    """Two rollouts per task; outcome(task_id) -> (calls per rollout, correct per rollout)."""
    out = []
    for t in batch.tasks:
        calls, correct = outcome(t.id)
        for c, ok in zip(calls, correct):
            out.append(traj(t.id, ["x", *[_call(f"print({i})", str(i)) for i in range(c)]], ok))
    return out


def mixed_if_even(task_id):
    i = int(task_id[1:])
    return ([0, 2], [True, False]) if i % 2 == 0 else ([1, 1], [True, True])


def test_pareto_source_probes_selects_serves_and_resumes_exactly():
    tasks = [Q(f"q{i}") for i in range(8)]
    cfg = E.EtAgentConfig(stage_steps=4, candidates=4, budget=4)
    src = E.ParetoSource(tasks, cfg, seed=3)
    b1 = src.next_batch(1, 2)
    assert b1.info["source/probe"] == 1 and b1.info["source/stage"] == 0
    assert src.observe(1, b1, probe_rollouts(b1, mixed_if_even)) == {}
    b2 = src.next_batch(2, 2)
    m = src.observe(2, b2, probe_rollouts(b2, mixed_if_even))
    probed = {t.id for t in b1.tasks + b2.tasks}
    assert len(probed) == 4 and m["source/probed_questions"] == 4
    want = sorted(q for q in probed if int(q[1:]) % 2 == 0)      # the mixed ones survive the post-filter
    assert sorted(tasks[i].id for i in src.state["selected"]) == want and m["source/fallback"] == 0
    saved = src.state_dict()
    b3 = src.next_batch(3, 2)
    assert b3.info["source/probe"] == 0 and {t.id for t in b3.tasks} <= set(want)
    again = E.ParetoSource(tasks, cfg, seed=3)
    again.load_state_dict(saved)
    assert [t.id for t in again.next_batch(3, 2).tasks] == [t.id for t in b3.tasks]
    b5 = src.next_batch(5, 2)                                     # a new stage probes again
    assert b5.info["source/stage"] == 1 and b5.info["source/probe"] == 1 and src.state["selected"] is None


def test_pareto_source_falls_back_to_the_candidates_when_no_question_has_mixed_outcomes():
    src = E.ParetoSource([Q(f"q{i}") for i in range(4)], E.EtAgentConfig(candidates=2, budget=2), seed=0)
    b = src.next_batch(1, 2)
    m = src.observe(1, b, probe_rollouts(b, lambda q: ([1, 1], [True, True])))
    assert m["source/fallback"] == 1 and m["source/selected"] == 0
    assert sorted(src.state["selected"]) == sorted(src.state["candidates"])


# ----------------------------------------------------------------------------------------------
# StageReward: σ annealed within each stage, paper vs code settings


def test_stage_reward_anneals_sigma_within_each_stage_and_restarts_it():
    from tao_lab.rewards import RewardConfig

    paper = E.StageReward(RewardConfig(), E.EtAgentConfig(stage_steps=3))
    assert [paper.sigmas(s) for s in (1, 2, 3, 4)] == [(0.2, 0.5), (0.1, 0.25), (0.0, 0.0), (0.2, 0.5)]
    code = E.StageReward(RewardConfig(), E.EtAgentConfig(stage_steps=3, sigmas="code"))
    assert code.sigmas(1) == (0.0, 0.0)
    flat = E.StageReward(RewardConfig(), E.EtAgentConfig(stage_steps=3, anneal=False))
    assert flat.sigmas(3) == (0.2, 0.5)

    def group():       # one group, both correct: 1 call vs 2 calls (the leaner one earns more while σ > 0)
        code_ = "```python\nprint(6*7)\n```"
        a = traj("q", [code_, _call("print(6*7)", "42"), " \\boxed{42}"], None)
        b = traj("q", [code_, _call("print(6*7)", "42"), code_, _call("print(42)", "42"), " \\boxed{42}"], None)
        for t in (a, b):
            t.answer = "42"
        return [a, b]

    g = group()
    r, m = paper(g, 1)
    assert r[0] > 1 > r[1] and m["reward/sigma_tool_eff"] == 0.2 and all(t.correct for t in g)
    g = group()
    r, m = paper(g, 3)
    assert r == [1.0, 1.0] and m["reward/stage_step"] == 3
    assert m["behaviour/calls_mean"] == 1.5 and m["behaviour/redundant_rate"] == 0.0   # both outputs (42) are used
    assert paper(group(), 4)[0] == paper(group(), 1)[0]
    with pytest.raises(ValueError, match="EtAgentConfig.sigmas"):
        E.EtAgentConfig(sigmas="both")


# ----------------------------------------------------------------------------------------------
# The arm in the Trainer (test_tiny): hooks resolved, stages logged, the source checkpointed


def test_trainer_runs_the_et_agent_arm_with_its_source_and_stage_reward(tmp_path, one_thread):
    from tao_lab import trainer as T
    from tao_lab.presets import make_config

    cfg = make_config("test_tiny", "et_agent", ["run.steps=3", "et_agent.stage_steps=2", "et_agent.candidates=2",
                                                "et_agent.budget=2"])
    assert cfg.reward.efficiency and cfg.reward.format_penalty == 1.0 and cfg.filter.rules == ()
    with T.Trainer(cfg, tmp_path) as tr:
        assert isinstance(tr.prompt_source, E.ParetoSource) and isinstance(tr.reward_fn, E.StageReward)
        logs = tr.train()
    m = [lg.metrics for lg in logs]
    assert [x["source/stage"] for x in m] == [0, 0, 1] and [x["source/probe"] for x in m] == [1, 0, 1]
    assert [x["reward/sigma_tool_eff"] for x in m] == [0.2, 0.0, 0.2]
    assert m[0]["source/probed_questions"] == 2 and "source/fallback" in m[0]
    # a random tiny model never answers: R = f_fmt = -1 everywhere, and the verifier says wrong
    assert all(t.reward == -1.0 and t.correct is False for lg in logs for t in lg.trajs)
    with T.Trainer.resume(tmp_path) as again:                 # the source's state is checkpointed
        assert again.prompt_source.state_dict() == tr.prompt_source.state_dict()
        assert again.prompt_source.state["stage"] == 1


# ----------------------------------------------------------------------------------------------
# The flywheel: every operation on a scripted policy, real sandbox, real verifier


class FirstMatchPolicy(ScriptedPolicy):
    """Writes the first of its prompt's candidate completions that the text so far is a prefix of
    (tool observations included, as the sandbox prints them), then end-of-sequence. Deterministic:
    a forced prefix (a cut, a hint) decides which candidate the continuation follows."""

    def _next(self, text):
        prompt = next(p for p in self.scripts if text.startswith(p))
        done = text[len(prompt):]
        for c in self.scripts[prompt]:
            if c.startswith(done) and len(c) > len(done):
                return c.encode()[len(done.encode())]
        return self.tok.eos_token_id


CALL42, OBS42 = "```python\nprint(6*7)\n```", "\nCode execution result: 42\n"
CALLERR, OBSERR = "```python\nprint(1/0)\n```", "\nCode execution result: ZeroDivisionError: division by zero\n"
HINT = "Wait, let me check this with Python."
A = CALL42 + OBS42 + "```python\nprint(6 * 7)\n```" + OBS42 + " so \\boxed{42}"        # right, a repeated call
C = CALL42 + OBS42 + CALLERR + OBSERR + " \\boxed{0}"                                   # wrong after a failed call
C_HINT = CALL42 + OBS42 + CALLERR + OBSERR + " " + HINT + "\n" + CALL42 + OBS42 + " so \\boxed{42}"
D, D_HINT = "\\boxed{41}", HINT + "\n" + CALL42 + OBS42 + " so \\boxed{42}"             # no call, wrong
SCRIPTS = {"Q1: 6*7?\n": [A], "Q2: 6*7?\n": [C, C_HINT], "Q3: 6*7?\n": [D, D_HINT]}


def mask_of(*parts):
    """(text, trainable) pieces -> per-byte mask, + the sampled end-of-sequence token (trainable)."""
    return [int(m) for text, m in parts for _ in text.encode()] + [1]


@pytest.fixture(scope="module")
def pool():
    from tao_lab.sandbox import SandboxConfig, SandboxPool

    with SandboxPool(max_workers=2, config=SandboxConfig(timeout_s=2.0)) as p:
        yield p


def make_flywheel(pool, out_dir, rounds=1, editor=None):
    from tao_lab.methods.et_agent_flywheel import Flywheel, FlywheelConfig
    from tao_lab.rollout import RolloutConfig

    tok = ByteTokenizer()
    tasks = [Q(f"q{i + 1}", p, "42") for i, p in enumerate(SCRIPTS)]
    rcfg = RolloutConfig(group_size=1, backend="recompute", max_new_tokens=400, max_turns=3)
    return Flywheel(FirstMatchPolicy(tok, SCRIPTS), tok, tasks, rcfg, FlywheelConfig(rounds=rounds, init_samples=1),
                    pool=pool, prompts=list(SCRIPTS), out_dir=out_dir, editor=editor)


def test_a_flywheel_round_rerolls_cuts_corrects_and_hints_with_exact_masks(pool, tmp_path):
    fw = make_flywheel(pool, tmp_path).run()
    f = fw.frame()
    assert f.groupby("task_id")["op"].apply(list).to_dict() == {
        "q1": ["initial", "rerollout", "redundancy_cut"], "q2": ["initial", "correction", "hint"],
        "q3": ["initial", "correction", "hint"]}
    buf = {q: [e.traj for e in fw.buffers[q]] for q in fw.buffers}
    assert [t.text for t in buf["q1"]] == [A, A, A] and all(t.correct for t in buf["q1"])
    # redundancy cut: before the turn of the repeated call; the policy regenerates it in the sandbox
    cut = buf["q1"][2]
    assert cut.prefix_len == len((CALL42 + OBS42).encode()) and cut.mask[:cut.prefix_len] == [0] * cut.prefix_len
    assert cut.tool_calls[0].in_prefix and not cut.tool_calls[1].in_prefix and cut.tool_calls[1].stdout == "42\n"
    # self-correction: cut before the failed call's turn; the policy repeats it (deterministic), still wrong
    assert buf["q2"][1].prefix_len == len((CALL42 + OBS42).encode()) and buf["q2"][1].text == C
    assert not buf["q2"][1].correct and buf["q2"][1].tool_calls[1].status == "error"
    # hint: cut before the final answer, hint forced, +4 turns let it call again and answer right
    h2, h3 = buf["q2"][2], buf["q3"][2]
    assert h2.text == C_HINT and h2.correct and h2.n_tool_calls == 3 and h2.n_turns == 4       # > max_turns=3
    assert h3.text == D_HINT and h3.correct and h3.prefix_len == len(HINT)
    assert buf["q3"][1].text == D and buf["q3"][1].prefix_len == 0
    # phase 1's set: the best correct trajectory per question, its demonstration mask
    best = fw.best()
    assert {q: e.op for q, e in best.items()} == {"q1": "initial", "q2": "hint", "q3": "hint"}
    assert best["q3"].demo_mask == mask_of((HINT + "\n" + CALL42, 1), (OBS42, 0), (" so \\boxed{42}", 1))
    assert best["q2"].demo_mask == mask_of((CALL42, 1), (OBS42, 0), (CALLERR, 1), (OBSERR, 0),
                                           (" " + HINT + "\n" + CALL42, 1), (OBS42, 0), (" so \\boxed{42}", 1))
    sel = RunStore(tmp_path / "selected").read_step_frame(1)
    assert sorted(sel["op"]) == ["hint", "hint", "initial"] and sel["correct"].all()
    assert [t.mask for t in fw.sft_examples()] == [e.demo_mask for e in best.values()]


def test_an_editor_makes_the_cut_instead_of_the_rule_and_its_text_is_trained(pool):
    from tao_lab.branches import Prefix

    def editor(traj, op):      # a "stronger model": rewrite q2's wrong answer from scratch
        if traj.task_id == "q2" and op == "hint":
            ids = list(HINT.encode())
            return Prefix(token_ids=ids, turn_idx=[0] * len(ids), source="editor")
        return None            # everything else: the rule

    fw = make_flywheel(pool, None, editor=editor).run()
    e = fw.buffers["q2"][2]
    assert e.op == "hint" and e.traj.text == HINT and e.traj.prefix_len == len(HINT)   # the policy has no
    assert e.demo_mask == [1] * len(HINT) + [1]      # continuation for it: end-of-sequence, trained
    assert fw.buffers["q3"][2].traj.text == D_HINT    # the rule still made q3's hint


def test_the_flywheel_resumes_from_its_stored_rounds(pool, tmp_path):
    fw = make_flywheel(pool, tmp_path).run()
    again = make_flywheel(pool, tmp_path, rounds=2)
    assert again.rounds_done == 1 and again.frame().equals(fw.frame())
    again.run()
    f = again.frame()
    # round 2 expands q3's hinted answer: its one call is used, so there is nothing to cut
    assert f["round"].max() == 2 and f.groupby("task_id").size().to_dict() == {"q1": 5, "q2": 5, "q3": 4}
    assert again.skipped == {"redundancy_cut": 1}
    assert make_flywheel(pool, tmp_path, rounds=2).frame().equals(f)


# ----------------------------------------------------------------------------------------------
# The pipeline command: flywheel -> SFT -> RL, finished phases skipped on a rerun


def test_the_pipeline_runs_its_phases_in_order_and_a_rerun_skips_the_finished_ones(tmp_path, one_thread, capsys):
    from tao_lab.cli import main
    from tao_lab.methods.et_agent_pipeline import run_pipeline

    args = ["et-agent", "--preset", "test_tiny", "--questions", "2", "--rounds", "1", "--init-samples", "1",
            "--out", str(tmp_path), "--quiet-bar", "--set", "et_agent.stages=2", "et_agent.stage_steps=2",
            "et_agent.candidates=2", "et_agent.budget=2"]
    assert main(args) == 0
    state = json.loads((tmp_path / "pipeline.json").read_text())
    assert state["done"] == ["flywheel", "sft", "rl"]
    # a random tiny model never answers: no demonstration, so phase 1 is skipped and says why
    assert "skipped" in state["notes"]["sft"] and "from the base policy" in state["notes"]["rl"]
    f = RunStore(tmp_path / "flywheel" / "rounds").trajectories()
    assert sorted(f["op"].unique()) == ["correction", "initial"] and len(f) == 4
    m = RunStore(tmp_path / "rl").metrics()
    assert m["step"].tolist() == [1, 2, 3, 4] and m["source/stage"].tolist() == [0, 0, 1, 1]
    capsys.readouterr()
    again = run_pipeline(tmp_path, "test_tiny", progress=False)          # every phase done: nothing runs
    assert again["done"] == state["done"] and len(RunStore(tmp_path / "rl").metrics()) == 4
    assert "warning" in capsys.readouterr().err                           # other settings than the stored ones


def test_the_pipeline_stops_after_the_phase_it_is_told(tmp_path, one_thread):
    from tao_lab.methods.et_agent_flywheel import FlywheelConfig
    from tao_lab.methods.et_agent_pipeline import run_pipeline

    state = run_pipeline(tmp_path, "test_tiny", fcfg=FlywheelConfig(rounds=0, init_samples=1), questions=1,
                         progress=False, until="flywheel")
    assert state["done"] == ["flywheel"] and not (tmp_path / "sft").exists() and not (tmp_path / "rl").exists()
    with pytest.raises(ValueError, match="until"):
        run_pipeline(tmp_path, "test_tiny", until="phase2")


def test_the_et_agent_grid_spec_builds_a_config_for_every_arm(tmp_path):
    from pathlib import Path

    from tao_lab.grid import load_spec, make_cell_config

    spec = load_spec(Path(__file__).resolve().parents[1] / "experiments" / "et_agent.toml")
    cfgs = {a.name: make_cell_config(spec, a, 0, tmp_path / a.name) for a in spec.arms}
    assert cfgs["grpo"].method == "grpo" and not cfgs["grpo"].reward.efficiency
    assert cfgs["et_agent"].et_agent.sigmas == "paper" and cfgs["et_agent_sigma0"].et_agent.sigmas == "code"
    assert all(c.run.steps == c.et_agent.stages * c.et_agent.stage_steps for c in cfgs.values())


def test_phase_one_fine_tunes_on_the_flywheel_set_and_reports_behaviour_before_and_after(pool, tmp_path, one_thread):
    from tao_lab.methods.et_agent_pipeline import phase_sft
    from tao_lab.presets import make_config

    fw = make_flywheel(pool, tmp_path / "flywheel").run()
    cfg = make_config("test_tiny", "et_agent")          # its tiny random Llama is the policy phase 1 trains
    note = phase_sft(cfg, tmp_path, fw, ["batch_size=4"], progress=False, heldout=2)
    sft = RunStore(tmp_path / "sft")
    assert [t.mask for t in sft.read_step(0)] == [t.mask for t in fw.sft_examples()]   # the demonstration masks
    assert len(sft.metrics()) == 3 and all(math.isfinite(x) for x in sft.metrics()["loss"])     # ceil(3 epochs x 3 examples / batch 4)
    assert sft.read_config()["sft"]["schedule"] == "cosine" and sft.read_config()["sft"]["warmup_ratio"] == 0.1
    report = json.loads((tmp_path / "phase1.json").read_text())
    assert report["before"]["accuracy"] == pytest.approx(1 / 3) and report["calls_before"] == {"0": 1, "2": 2}
    assert report["after"]["n"] == 3 and "accuracy" in note
    held = report["heldout"]           # the held-out questions, never the flywheel's own, before and after
    assert (held["tasks"], held["split"], held["n_tasks"], held["k"]) == ("arith-L1", "test", 2, 2)
    assert held["before"]["n"] == held["after"]["n"] == 4 and "held-out (2 x 2)" in note
