"""The loop's hooks (hooks.py) through the real Trainer on test_tiny: a custom prompt source is used,
checkpointed and resumed exactly; a failed step gives its draw back; a shaped reward never makes a
wrong answer correct; an advantage hook's per-token advantages reach the update; old checkpoints
(a bare data cursor) resume."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest
import torch

from runstore_fixture import make_trajectory
from tao_lab import checkpoint as ckpt
from tao_lab import compare
from tao_lab import trainer as T
from tao_lab.evaluate import save_eval
from tao_lab.hooks import PromptBatch, seeded_order
from tao_lab.records import RunStore
from tao_lab.rewards import RewardConfig, score
from tao_lab.update import compute_advantages
from train_helpers import adapter, alternating_reward, one_thread, pool, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class ReplaySource:
    """A curriculum whose state depends on the rollouts: a group whose first tokens sum to an even
    number is queued and served again first (at most half a batch), the rest come from the seeded
    stream. Its state (cursor + queue) is more than a cursor, so an exact resume needs state_dict."""

    def __init__(self, tasks, seed=0):
        self.tasks, self.seed, self.cursor, self.queue = list(tasks), seed, 0, []
        self.drawn: list[list[str]] = []       # what next_batch returned, per call (not state)

    def next_batch(self, step, k):
        replay, self.queue = self.queue[:k // 2], self.queue[k // 2:]
        idx, self.cursor = seeded_order(len(self.tasks), self.cursor, k - len(replay), self.seed)
        tasks = [self.tasks[i] for i in replay + idx]
        self.drawn.append([t.id for t in tasks])
        return PromptBatch(tasks, info={"src/replayed": len(replay)})

    def observe(self, step, batch, trajs):
        first: dict[int, int] = {}
        for t in trajs:
            first[t.group_id] = first.get(t.group_id, 0) + (t.token_ids[0] if t.token_ids else 0)
        ids = {t.id: i for i, t in enumerate(self.tasks)}
        queued = [ids[batch.tasks[g].id] for g, v in sorted(first.items()) if v % 2 == 0]
        self.queue += queued
        return {"src/queued": len(queued)}

    def state_dict(self):
        return {"cursor": self.cursor, "queue": list(self.queue)}

    def load_state_dict(self, state):
        self.cursor, self.queue = int(state["cursor"]), list(state["queue"])


def cfg(steps=3, *extra):
    return tiny_cfg(f"run.steps={steps}", "run.save_every=1", "run.keep_checkpoints=5", *extra)


def task_ids(run, step):
    f = RunStore(run).read_step_frame(step)
    return f.drop_duplicates("group_id")["task_id"].tolist()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, pool):
    """Three uninterrupted steps with ReplaySource: (run dir, source, adapter after step 3)."""
    run = tmp_path_factory.mktemp("straight")
    from tao_lab.tasks import load_tasks
    tasks = load_tasks("arith-L1", split="train", limit=16)
    src = ReplaySource(tasks)
    with T.Trainer(cfg(3), run, tasks=tasks, prompt_source=src, pool=pool, reward_fn=alternating_reward) as tr:
        logs = tr.train()
        return run, tasks, src, logs, adapter(tr.model)


def test_a_custom_prompt_source_feeds_every_step_and_its_state_is_checkpointed(straight):
    run, tasks, src, logs, _ = straight
    for s in (1, 2, 3):
        assert task_ids(run, s) == src.drawn[s - 1]             # the rollouts are the source's prompts
    assert sum(log.metrics["src/replayed"] for log in logs) > 0  # the queue did feed later steps
    assert sum(log.metrics["src/queued"] for log in logs) == len(src.queue) + sum(
        log.metrics["src/replayed"] for log in logs)                # observe() saw every step
    saved = ckpt.read_state(ckpt.latest_path(run))["state"]
    assert saved["source"] == src.state_dict() and saved["step"] == 3
    step2 = ckpt.read_state(run / "checkpoints" / "step_000002")["state"]["source"]
    assert step2["cursor"] < src.cursor or step2["queue"] != src.queue


def test_an_interrupted_run_resumes_with_exactly_the_prompts_and_weights_of_the_straight_run(straight, tmp_path, pool):
    run, tasks, _, _, want = straight

    def interrupt_at_3(trajs, step):
        if step == 3:                                       # mid-step: after the source has drawn
            raise KeyboardInterrupt
        return alternating_reward(trajs, step)

    with T.Trainer(cfg(3), tmp_path, tasks=tasks, prompt_source=ReplaySource(tasks), pool=pool,
                   reward_fn=interrupt_at_3) as tr:
        with pytest.raises(KeyboardInterrupt):
            tr.train()
    assert ckpt.latest(tmp_path) == 2
    src = ReplaySource(tasks)
    with T.Trainer.resume(tmp_path, tasks=tasks, prompt_source=src, pool=pool, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 2 and src.state_dict() == tr.state.source
        tr.train()
        got = adapter(tr.model)
    assert [task_ids(tmp_path, s) for s in (1, 2, 3)] == [task_ids(run, s) for s in (1, 2, 3)]
    assert all(torch.allclose(want[n], got[n], atol=1e-6) for n in want)


def test_a_step_that_raises_midway_gives_its_draw_back_and_the_retry_draws_the_same_prompts(straight, tmp_path, pool):
    run, tasks, _, _, _ = straight
    fail = {"left": 1}

    def flaky(trajs, step):
        if step == 2 and fail["left"]:
            fail["left"] -= 1
            raise RuntimeError("reward server down")
        return alternating_reward(trajs, step)

    src = ReplaySource(tasks)
    with T.Trainer(cfg(3), tmp_path, tasks=tasks, prompt_source=src, pool=pool, reward_fn=flaky) as tr:
        tr.step()
        after_1 = src.state_dict()
        with pytest.raises(RuntimeError, match="reward server"):
            tr.step()
        assert src.state_dict() == after_1 and tr.state.step == 1
        tr.step()
    assert src.drawn[1] == src.drawn[2] == task_ids(run, 2)    # failed draw, retry, straight run


def test_a_shaped_reward_never_makes_a_wrong_answer_correct(tmp_path, pool):
    def bonus(trajs, step):           # the verifier's reward plus a format bonus on odd samples
        rewards, metrics = score(trajs, RewardConfig(), step=step)
        for t in trajs:
            t.reward += 0.5 * (t.sample_idx % 2)
        return [t.reward for t in trajs], metrics

    with T.Trainer(cfg(1), tmp_path, pool=pool, reward_fn=bonus) as tr:
        log = tr.step()
    trajs = log.trajs                 # a random tiny model never answers right
    assert all(t.correct is False for t in trajs) and any(t.reward > 0 for t in trajs)
    m = log.metrics
    assert m["reward/accuracy"] == 0.0 and m["groups/all_wrong_rate"] == 1.0
    assert m["groups/all_correct_rate"] == 0.0 and m["groups/degenerate_rate"] == 0.0  # rewards differ
    stored = RunStore(tmp_path).read_step_frame(1)
    assert not stored["correct"].any() and (stored["reward"] > 0).any()
    # an evaluation store of such trajectories: Avg@k in the comparison comes from the verdicts
    rng = random.Random(0)
    evals = [make_trajectory(g, k, 0.5 * (k % 2), rng) for g in range(2) for k in range(2)]
    for t in evals:
        t.correct = False
    save_eval(tmp_path, "step_000001", evals, {"eval/k": 2})
    assert compare._eval_samples(tmp_path)["correct"].sum() == 0


def _one_step_grad_norm(run, pool, advantage_fn=None):
    with T.Trainer(cfg(1), run, pool=pool, reward_fn=alternating_reward, advantage_fn=advantage_fn) as tr:
        return tr.step().metrics["update/grad_norm"]


def test_per_token_advantages_of_an_advantage_hook_reach_the_update(tmp_path, pool):
    def token_level(scale, first_half_only=False):
        def fn(trajs, fres, std):
            batch, adv, metrics = compute_advantages(trajs, fres, std)
            rows = []
            for a, t in zip(batch.adv, batch.trajs):
                x = torch.full((len(t.token_ids),), float(a) * scale)
                if first_half_only:
                    x[len(x) // 2:] = 0.0
                rows.append(x)
            batch.token_adv = rows
            return batch, adv, {**metrics, "adv/hook": 1.0}
        return fn

    base = _one_step_grad_norm(tmp_path / "a", pool)
    same = _one_step_grad_norm(tmp_path / "b", pool, token_level(1.0))
    double = _one_step_grad_norm(tmp_path / "c", pool, token_level(2.0))
    half = _one_step_grad_norm(tmp_path / "d", pool, token_level(1.0, first_half_only=True))
    assert base > 0
    assert same == pytest.approx(base, rel=1e-5)        # broadcasting the row advantage changes nothing
    assert double == pytest.approx(2 * base, rel=1e-3)  # the loss is linear in A at ratio 1
    assert abs(half - base) > 1e-3 * base               # and the per-token values are the ones used


def test_a_checkpoint_with_a_bare_cursor_resumes_like_the_straight_run(tmp_path, pool):
    straight, old = tmp_path / "straight", tmp_path / "old"
    with T.Trainer(cfg(2), straight, pool=pool, reward_fn=alternating_reward) as tr:
        tr.train()
    with T.Trainer(cfg(1), old, pool=pool, reward_fn=alternating_reward) as tr:
        tr.train()
    path = ckpt.latest_path(old)
    saved = json.loads((path / "state.json").read_text())
    cursor = saved["state"]["source"]["cursor"]
    saved["state"] = {"step": 1, "cursor": cursor}            # the format before prompt sources,
    (path / "state.json").write_text(json.dumps(saved))
    (path / ckpt.MANIFEST).unlink()                           # which also predates manifests
    assert T.TrainState.from_saved(saved["state"]) == T.TrainState(step=1, source={"cursor": cursor})
    with T.Trainer.resume(old, steps=2, pool=pool, reward_fn=alternating_reward) as tr:
        assert tr.prompt_source.cursor == cursor
        tr.train()
    assert task_ids(old, 2) == task_ids(straight, 2)


def test_runs_stored_before_verdicts_fall_back_to_reward_with_a_warning():
    from tao_lab.records import LegacyCorrectnessWarning, correct_column, is_correct
    old = make_trajectory(0, 0, 1.0, random.Random(0))
    old.correct = None
    with pytest.warns(LegacyCorrectnessWarning):
        assert is_correct(old)
    with pytest.warns(LegacyCorrectnessWarning):
        assert correct_column(pd.DataFrame({"reward": [1.0, 0.0, 0.01]})).tolist() == [True, False, True]
