"""The `tao-lab` command line as a workshop attendee meets it (issue 17 §5): `--help` shows every
default and the bundled task sets, one default task set for every command, bad input answered with
one line (no traceback) before any model loads, and a progress bar with ETA on `eval`."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tao_lab import cli
from tao_lab.tasks import DEFAULT_TASKS, bundled_names

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and a.default not in (None, False, argparse.SUPPRESS)
            and not isinstance(a, argparse._HelpAction)]


def test_every_subcommands_help_shows_the_default_of_every_option():
    for name, parser in _subcommands().items():
        text = " ".join(parser.format_help().split())          # undo the line wrapping
        for action in _options(parser):
            shown = f"(default: {action.default})" in text or "default" in (action.help or "")
            assert shown, f"`tao-lab {name} --help`: {action.option_strings[0]} hides its default {action.default!r}"


def test_every_task_option_lists_the_bundled_sets_and_the_one_default():
    with_tasks = {n: p for n, p in _subcommands().items() if any("--tasks" in a.option_strings for a in p._actions)}
    assert {"rollout", "eval", "train", "demo"} <= set(with_tasks)
    for name, parser in with_tasks.items():
        text = " ".join(parser.format_help().split())
        assert all(b in text for b in bundled_names()) and DEFAULT_TASKS in text, name


def test_rollout_eval_train_and_demo_default_to_one_task_set():
    from tao_lab.evaluate import EvalConfig
    from tao_lab.presets import make_config
    from tao_lab.train_config import DataConfig

    cmds = _subcommands()
    parsed = {c: cmds[c].get_default("tasks") for c in ("rollout", "eval", "demo")}
    assert parsed == {"rollout": DEFAULT_TASKS, "eval": None, "demo": DEFAULT_TASKS}   # eval: the run's, else:
    assert cli.main(["eval", "--run", "/nonexistent/run"]) == 2                       # (checked before a model)
    assert cmds["train"].get_default("preset") == "cpu_demo"
    assert make_config("cpu_demo", "tao", []).data.tasks == DataConfig().tasks == EvalConfig().tasks == DEFAULT_TASKS


BAD_INPUT = [  # issue 17 §5: each printed a traceback (eval only after 5 s of model loading)
    (["eval", "--tasks", "arith-L9"], "unknown task source 'arith-L9'"),
    (["report", "{tmp}/missing"], "has no metrics.jsonl"),
    (["resume", "{tmp}/no_checkpoints"], "nothing to resume"),
]


def test_bad_input_is_one_line_on_stderr_with_exit_code_2_and_no_traceback(tmp_path):
    (tmp_path / "no_checkpoints").mkdir()
    (tmp_path / "no_checkpoints" / "notes.txt").write_text("not a run")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TAO_LAB_THREADS": "1"}
    # the real entry point, all three at once (each is mostly imports: seconds, not minutes)
    procs = [subprocess.Popen([sys.executable, "-m", "tao_lab.cli", *[a.format(tmp=tmp_path) for a in argv]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for argv, _ in BAD_INPUT]
    for proc, (argv, says) in zip(procs, BAD_INPUT):
        _, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (argv, stderr)
        assert lines[0].startswith("error: ") and says in lines[0] and "Traceback" not in stderr, (argv, stderr)
    assert not (tmp_path / "missing").exists() and not (tmp_path / "runs").exists()   # nothing written


def test_train_and_demo_with_an_unknown_task_set_fail_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import tao_lab.models as models
    import tao_lab.trainer as trainer

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the task set was checked")

    monkeypatch.setattr(trainer, "load_model", no_model)
    monkeypatch.setattr(models, "fetch_model", no_model)
    kept = tmp_path / "demo"
    kept.mkdir()
    (kept / "mine.txt").write_text("the demo must not clear this for a typo")
    for argv in (["train", "--preset", "test_tiny", "--tasks", "arith-L9", "--out", str(tmp_path / "t")],
                 ["train", "--set", "data.eval_tasks=word-L7", "--out", str(tmp_path / "t")],
                 ["demo", "--tasks", "arith-L9", "--out", str(kept)]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: unknown task source"), (argv, err)
    assert (kept / "mine.txt").exists() and not (tmp_path / "t").exists()


def test_demo_clears_only_a_folder_an_earlier_demo_made(tmp_path, capsys, monkeypatch):
    import tao_lab.models as models

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the folder was checked")

    monkeypatch.setattr(models, "fetch_model", no_model)
    kept = tmp_path / "my_run"
    kept.mkdir()
    (kept / "notes.txt").write_text("a week of results")
    assert cli.main(["demo", "--out", str(kept)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not made by `tao-lab demo`" in err[0] and (kept / "notes.txt").exists()
    (kept / cli.DEMO_MARK).write_text("")          # an earlier demo's folder: cleared, so the model is reached
    with pytest.raises(AssertionError, match="before the folder was checked"):
        cli.main(["demo", "--out", str(kept)])
    monkeypatch.chdir(tmp_path)                    # the default folder holding a run: an older version's demo
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "config.json").write_text("{}")
    with pytest.raises(AssertionError, match="before the folder was checked"):
        cli.main(["demo"])


@pytest.mark.smoke
def test_eval_shows_a_progress_bar_with_eta_over_its_rollouts(tmp_path, capsys):
    argv = ["eval", "--tasks", "arith-L1", "--n", "2", "--k", "1", "--max-new-tokens", "8", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(r"episodes: 100%.*2/2 \[\d\d:\d\d<\d\d:\d\d", err), err     # tqdm: elapsed<remaining
