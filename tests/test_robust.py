"""Issue 13, "Bad input" and "Runs that survive crashes and corruption": each defect found by probing
as a careless user and a crashing machine, one regression test each.

Bad input gets one line naming what is wrong (`error: ...`, exit 2) before any model loads; a run
folder either resumes from its newest intact checkpoint (or from step 0, said so) or is refused with
the command that works; a damaged file is named, skipped or repaired, never a raw traceback.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from tao_lab import checkpoint as ckpt
from tao_lab import rundir
from tao_lab import trainer as T
from tao_lab.cli import main
from tao_lab.records import RunStore
from tao_lab.runstore_repair import RunStoreError, RunStoreWarning
from tao_lab.tasks import TaskError, load_demos, load_tasks
from train_helpers import alternating_reward, one_thread, tiny_cfg  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _tasks_file(tmp_path, lines: list[bytes], name="mine.jsonl"):
    p = tmp_path / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


GOOD = [b'{"id": "a", "prompt": "What is 2+3?", "answer": "5"}',
        b'{"id": "b", "prompt": "What is 4*5?", "answer": 20}']


# ----------------------------------------------------------------------------------------------
# Bad input


def test_a_jsonl_path_loads_with_the_default_split_of_every_command(tmp_path):
    # eval/rollout default --split test, train data.split=train: a file is one split, so both work
    path = _tasks_file(tmp_path, GOOD)
    for split in ("test", "train", None):
        assert [t.id for t in load_tasks(path, split=split)] == ["a", "b"]
    cfg = tiny_cfg(f"data.tasks={path}", "run.steps=1")
    with T.Trainer(cfg, tmp_path / "run", reward_fn=alternating_reward) as tr:
        assert [t.answer for t in tr.tasks] == ["5", "20"]


@pytest.mark.smoke
def test_rollout_and_eval_on_the_embedded_model_take_a_jsonl_path(tmp_path, capsys):
    path = _tasks_file(tmp_path, GOOD)
    small = ["--n", "1", "--max-new-tokens", "8"]
    assert main(["rollout", "--tasks", str(path), "--group", "1", "--out", str(tmp_path / "ro"), *small]) == 0
    assert main(["eval", "--tasks", str(path), "--k", "1", "--out", str(tmp_path / "ev"), *small]) == 0
    assert RunStore(tmp_path / "ro").read_step(0)[0].task_id == "a"
    assert "avg@1" in capsys.readouterr().out


def test_a_non_utf8_task_file_is_named_with_its_line_and_column(tmp_path):
    path = _tasks_file(tmp_path, [GOOD[0], b'{"prompt": "caf\xe9?", "answer": "1"}'])
    with pytest.raises(TaskError, match=rf"{path.name}:2: not UTF-8 \(byte b'\\xe9' at column 16\)"):
        load_tasks(path)
    bom = _tasks_file(tmp_path, [b"\xef\xbb\xbf" + GOOD[0]], name="bom.jsonl")
    assert load_tasks(bom)[0].id == "a"       # a BOM (Windows editors) is fine
    demos = _tasks_file(tmp_path, [b'{"id": "d\xff"}'], name="demos.jsonl")
    with pytest.raises(TaskError, match=r"demos.jsonl:1: not UTF-8"):
        load_demos(demos)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_answer_is_refused_not_read_as_text(tmp_path, literal):
    path = _tasks_file(tmp_path, [GOOD[0], b'{"prompt": "x?", "answer": %s}' % literal.encode()])
    with pytest.raises(TaskError, match=rf":2: field 'answer' is .*not a finite number"):
        load_tasks(path)


def test_rollout_with_bad_input_says_error_before_loading_any_model(tmp_path, capsys, monkeypatch):
    import tao_lab.models as models

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_policy", no_model)
    bad = _tasks_file(tmp_path, [b'{"prompt": "\xff", "answer": "1"}'], name="bad.jsonl")
    for argv, says in ((["rollout", "--tasks", str(bad)], "bad.jsonl:1: not UTF-8"),
                       (["rollout", "--n", "-5"], "limit must be an integer >= 1"),
                       (["eval", "--tasks", str(bad)], "bad.jsonl:1: not UTF-8"),
                       (["eval", "--k", "0"], "k"),
                       (["rollout", "--tasks", str(tmp_path / "missing.jsonl")], "unknown task source")):
        assert main(argv + ["--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("override, field", [
    ("shaping.coef=-1e9", "ShapingConfig.coef"), ("shaping.coef=nan", "ShapingConfig.coef"),
    ("optim.grad_clip=nan", "OptimConfig.grad_clip"), ("optim.lr=1e9", "OptimConfig.lr"),
    ("rollout.temperature=inf", "RolloutConfig.temperature"),
    ("rollout.obs_max_chars=-1", "RolloutConfig.obs_max_chars"), ("data.limit=-5", "DataConfig.limit")])
def test_every_out_of_range_number_the_issue_lists_is_refused_naming_its_field(tmp_path, capsys, override, field):
    assert main(["train", "--preset", "test_tiny", "--out", str(tmp_path / "r"), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and field in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_report_on_a_missing_folder_says_so_and_creates_nothing(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "error: " in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()
    RunStore(tmp_path / "nope2").metrics()        # reading a store never writes
    assert not (tmp_path / "nope2").exists()


# ----------------------------------------------------------------------------------------------
# Runs that survive crashes and corruption


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A finished 2-step run with a checkpoint after each step."""
    run = tmp_path_factory.mktemp("two") / "run"
    with T.Trainer(tiny_cfg("run.steps=2", "run.save_every=1"), run, reward_fn=alternating_reward) as tr:
        tr.train()
    assert ckpt.complete_steps(run) == [1, 2]
    return run


def _copy(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", ["adapter/adapter_model.safetensors", "optimizer.pt", "rng.pt", "state.json"])
def test_a_truncated_file_in_the_newest_checkpoint_is_named_and_the_older_one_is_used(two_checkpoints, tmp_path, name):
    run = _copy(two_checkpoints, tmp_path)
    damaged = run / "checkpoints" / "step_000002" / name
    _truncate(damaged)
    assert name in ckpt.verify(damaged.parents[len(name.split("/")) - 1])
    with pytest.warns(ckpt.CheckpointWarning, match=rf"step 2 is damaged: .*{name}.*; using step_000001"):
        assert ckpt.latest_path(run).name == "step_000001"
    loader = {"state.json": ckpt.read_state, "rng.pt": ckpt.read_rng}.get(name)
    if loader is not None:     # a loader names the file instead of a raw JSON / zip error
        with pytest.raises(ckpt.CheckpointError, match=name):
            loader(run / "checkpoints" / "step_000002")


def test_resume_falls_back_to_the_intact_checkpoint_and_redoes_the_step_once(two_checkpoints, tmp_path):
    run = _copy(two_checkpoints, tmp_path)
    _truncate(run / "checkpoints" / "step_000002" / "optimizer.pt")
    with T.Trainer.resume(run, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 1
        assert any("optimizer.pt" in n for n in tr.resume_notes)
        assert any("resuming from the intact checkpoint step_000001" in n for n in tr.resume_notes)
        tr.train()
    assert RunStore(run).metrics()["step"].tolist() == [1, 2]
    assert RunStore(run).steps() == [1, 2] and RunStore(run).problems() == []
    assert ckpt.verify(ckpt.latest_path(run)) is None and ckpt.latest(run) == 2
    assert (run / "checkpoints" / ".damaged-step_000002").is_dir()   # kept for a look, never read


def test_a_partial_metrics_line_and_a_truncated_step_file_are_found_repaired_and_reported(two_checkpoints, tmp_path):
    run = _copy(two_checkpoints, tmp_path)
    store = RunStore(run)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "reward/mean": 0.')           # a kill in the middle of a write
    _truncate(store.step_path(1))
    with pytest.warns(RunStoreWarning, match=r"metrics.jsonl:3: partial last line"):
        assert store.metrics()["step"].tolist() == [1, 2]
    with pytest.raises(RunStoreError, match=r"step_000001.parquet: truncated \(no parquet footer\)"):
        store.read_step(1)                                   # named, not a raw arrow error
    found = store.problems()
    assert any("partial last line" in p for p in found)
    assert any("step_000001.parquet: truncated" in p for p in found)
    notes = store.repair(2)
    assert any("step 1's trajectories are lost" in n for n in notes)
    assert store.steps() == [2] and (run / "steps" / "step_000001.parquet.corrupt").exists()
    assert store.problems() == ["step 1 was lost: truncated (no parquet footer)"]
    assert (run / "metrics.jsonl").read_bytes().endswith(b"\n") and len(store.metrics()) == 2


def test_a_garbled_metrics_line_inside_the_file_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        RunStore(tmp_path).metrics()


def test_metrics_are_strict_json_and_old_nan_literals_still_read(tmp_path):
    store = RunStore(tmp_path / "s")
    store.append_metrics({"step": 1, "a": float("nan"), "b": np.float32("inf"), "c": np.int64(3), "d": 0.5})

    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    row = json.loads((tmp_path / "s" / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert row == {"step": 1, "a": None, "b": None, "c": 3, "d": 0.5}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.jsonl").write_text('{"step": 1, "a": NaN}\n')
    assert math.isnan(RunStore(tmp_path / "old").metrics()["a"][0])


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0_and_train_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    with T.Trainer(tiny_cfg("run.steps=4", "run.save_every=5"), run, reward_fn=alternating_reward) as tr:
        tr.step(), tr.step()                     # two steps logged, then killed: no checkpoint yet
    # `train` into it used to append a second step 1, 2 ([1, 2, 1, 2, ...]); now it names the way on
    assert main(["train", "--preset", "test_tiny", "--out", str(run)]) == 2
    assert f"`tao-lab resume {run}`" in capsys.readouterr().err
    with pytest.raises(rundir.RunDirError, match="tao-lab resume"):   # the library refuses it too
        T.Trainer(tiny_cfg("run.steps=4"), run, reward_fn=alternating_reward)
    (run / "checkpoints" / ".tmp-step_000002-999-deadbeef").mkdir(parents=True)   # killed mid-write
    with T.Trainer.resume(run, steps=2, reward_fn=alternating_reward) as tr:
        assert tr.state.step == 0 and "restarting from step 0" in tr.resume_notes[0]
        tr.train()
    assert RunStore(run).metrics()["step"].tolist() == [1, 2]       # not [1, 2, 1, 2]
    assert RunStore(run).steps() == [1, 2] and ckpt.latest(run) == 2


def test_resume_of_a_folder_without_a_run_names_the_command_that_works(tmp_path, capsys):
    assert main(["resume", str(tmp_path / "empty")]) == 2
    assert f"`tao-lab train --out {tmp_path / 'empty'}`" in capsys.readouterr().err


def test_steps_logged_twice_are_reported_and_repair_keeps_the_last_line_of_each(tmp_path):
    # what a `train` into a folder killed before its first checkpoint used to leave
    lines = [{"step": s, "reward/mean": i} for i, s in enumerate([1, 2, 1, 2, 3, 4])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    store = RunStore(tmp_path)
    assert store.problems() == [f"{tmp_path / 'metrics.jsonl'}: step 1 logged 2 times",
                                f"{tmp_path / 'metrics.jsonl'}: step 2 logged 2 times"]
    assert any("steps [1, 2] were logged more than once" in n for n in store.repair())
    m = store.metrics()
    assert m["step"].tolist() == [1, 2, 3, 4] and m["reward/mean"].tolist() == [2, 3, 4, 5]
    assert store.problems() == []


def test_saving_a_step_whose_checkpoint_is_damaged_writes_it_again(tmp_path):
    import torch

    class Adapter:      # stands in for a peft model: save() only calls save_pretrained
        def save_pretrained(self, path):
            path.mkdir()
            (path / "adapter_model.safetensors").write_bytes(b"w" * 64)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    kw = dict(model=Adapter(), optimizer=opt, scheduler=sched, rng=ckpt.rng_state(), state={}, config={})
    path = ckpt.save(tmp_path, 1, **kw)
    assert json.loads((path / ckpt.MANIFEST).read_text())["optimizer.pt"]["size"] > 0
    _truncate(path / "optimizer.pt")
    assert "optimizer.pt" in ckpt.verify(path)
    assert ckpt.verify(ckpt.save(tmp_path, 1, **kw)) is None      # not taken for "already saved"


def test_notebook_run_dirs_live_under_tao_lab_run_dir_or_runs_next_to_the_notebook(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TAO_LAB_RUN_DIR", raising=False)
    assert rundir.notebook_run_dir("05_training") == tmp_path / "runs" / "05_training"
    monkeypatch.setenv("TAO_LAB_RUN_DIR", str(tmp_path / "all"))
    first, second = rundir.new_run_dir("05_training"), rundir.new_run_dir("05_training")
    assert first.parent == second.parent == tmp_path / "all" / "05_training" and first != second
    assert first.is_dir() and not rundir.started(first)
    with pytest.raises(rundir.RunDirError, match="plain folder name"):
        rundir.notebook_run_dir("../elsewhere")
