"""Checkpoints: atomic writes, crash leftovers ignored, pruning, interrupt, exact resume."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tao_lab import checkpoint as ckpt
from tao_lab import trainer as T
from tao_lab.evaluate import load_trained
from tao_lab.train_config import config_from_dict
from tao_lab.records import RunStore
from train_helpers import adapter, alternating_reward, one_thread, tiny_cfg  # noqa: F401


def cfg(steps=3, save_every=1, *extra):
    return tiny_cfg(f"run.steps={steps}", f"run.save_every={save_every}", *extra)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Three uninterrupted steps: (run dir, adapter after step 3)."""
    run = tmp_path_factory.mktemp("straight")
    with T.Trainer(cfg(3, 1, "run.keep_checkpoints=5"), run, reward_fn=alternating_reward) as tr:
        tr.train()
        return run, adapter(tr.model)


def test_resumed_run_uses_the_same_prompts_and_reaches_the_same_weights(straight, tmp_path):
    run, want = straight
    with T.Trainer(cfg(2, 2), tmp_path, reward_fn=alternating_reward) as tr:
        tr.train()
    with T.Trainer.resume(tmp_path, steps=3, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 2
        tr.train()
        got = adapter(tr.model)
    a, b = RunStore(run).read_step_frame(3), RunStore(tmp_path).read_step_frame(3)
    assert a["task_id"].tolist() == b["task_id"].tolist()
    assert a["token_ids"].map(list).tolist() == b["token_ids"].map(list).tolist()
    assert all(torch.allclose(want[n], got[n], atol=1e-6) for n in want)
    assert RunStore(tmp_path).metrics()["step"].tolist() == [1, 2, 3]


def test_a_leftover_temp_dir_is_ignored_and_the_last_complete_checkpoint_loads(straight):
    run, _ = straight
    junk = run / "checkpoints" / ".tmp-step_000004-999-deadbeef"
    junk.mkdir()
    (junk / "optimizer.pt").write_bytes(b"half")
    partial = run / "checkpoints" / "step_000005"       # a folder without the COMPLETE marker
    partial.mkdir()
    assert ckpt.latest(run) == 3
    model, _, _, step = load_trained(run)
    assert step == 3


def test_a_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    with T.Trainer(cfg(2, 1), tmp_path, reward_fn=alternating_reward) as tr:
        tr.step()
        real_save = torch.save

        def dies_on_the_optimizer(obj, f, *a, **k):
            if str(f).endswith("optimizer.pt"):
                raise OSError("disk full (simulated crash mid-write)")
            return real_save(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", dies_on_the_optimizer)
        with pytest.raises(OSError, match="simulated"):
            tr.step()                                   # step 2 trains, then its checkpoint dies
        monkeypatch.undo()
    assert ckpt.complete_steps(tmp_path) == [1]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    with T.Trainer.resume(tmp_path, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 1
        assert RunStore(tmp_path).metrics()["step"].tolist() == [1]   # step 2's line was dropped


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    with T.Trainer(cfg(3, 1, "run.keep_checkpoints=2"), tmp_path, reward_fn=alternating_reward) as tr:
        tr.train()
    assert ckpt.complete_steps(tmp_path) == [2, 3]


def test_sigterm_between_steps_checkpoints_the_last_completed_step(tmp_path):
    def kill_after_first(log):
        if log.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with T.Trainer(cfg(3, 10), tmp_path, reward_fn=alternating_reward, on_step=kill_after_first) as tr:
        with pytest.raises(KeyboardInterrupt):
            tr.train()
    assert ckpt.complete_steps(tmp_path) == [1]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # the handler is restored
    state = ckpt.read_state(ckpt.latest_path(tmp_path))
    assert state["state"] == {"step": 1, "source": {"cursor": 2}}


def test_sigterm_right_after_an_optimizer_step_lets_the_step_finish_before_checkpointing(tmp_path):
    with T.Trainer(cfg(3, 10), tmp_path, reward_fn=alternating_reward) as tr:
        tr.step()
        real_step = tr.optimizer.step

        def step_then_signal(*a, **k):
            out = real_step(*a, **k)
            os.kill(os.getpid(), signal.SIGTERM)   # arrives with the weights already updated
            return out

        tr.optimizer.step = step_then_signal
        with pytest.raises(KeyboardInterrupt):
            tr.train()
        weights = adapter(tr.model)
    assert ckpt.complete_steps(tmp_path) == [2]            # step 2 was committed, not half-applied
    assert RunStore(tmp_path).metrics()["step"].tolist() == [1, 2]
    with T.Trainer.resume(tmp_path, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 2
        assert all(torch.equal(weights[n], p) for n, p in adapter(tr.model).items())


def test_checkpoint_holds_adapter_optimizer_scheduler_rng_and_config(straight):
    run, _ = straight
    path = ckpt.latest_path(run)
    names = {p.name for p in path.iterdir()}
    assert {"adapter", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json", ckpt.MARKER} <= names
    assert (path / "adapter" / "adapter_model.safetensors").exists()
    state = ckpt.read_state(path)
    assert config_from_dict(state["config"]).run.steps == 3
