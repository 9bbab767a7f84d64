"""The run report as a results page: headline facts, labels in words, distinct episodes, a config
table; a read command never writes; saved evaluations are never overwritten."""

from __future__ import annotations

import pandas as pd
import pytest

from tao_lab import report
from tao_lab.evaluate import save_eval
from tao_lab.records import RunStore, Trajectory


def traj(text: str, correct: bool, reward: float, task: str = "t0") -> Trajectory:
    return Trajectory(task_id=task, group_id=0, prompt_ids=[1], token_ids=[5, 6], mask=[1, 1], logprobs=[-1.0, -1.0],
                      entropies=[0.5, 0.5], turn_idx=[0, 0], post_tool=[0, 0], text=text, answer="3",
                      reward=reward, correct=correct)


def test_eval_labels_read_as_words():
    assert report.eval_label("step_000000") == "before training"
    assert report.eval_label("step_000006") == "after step 6"
    assert report.eval_label("step_000006-2") == "after step 6 (copy 2)"
    assert report.eval_label("base") == "base"


def test_headline_gives_method_model_tasks_wall_time_and_held_out_change_with_its_sample_size():
    cfg = {"method": "tao", "model": {"name": "smollm2-135m"}, "data": {"tasks": "arith-L3"}}
    metrics = pd.DataFrame({"step": [1, 2], "skipped": [0, 1], "time/step_s": [60.0, 90.0]})
    evals = pd.DataFrame({"label": ["step_000000", "step_000002"], "eval/avg@4": [0.25, 0.5],
                          "eval/n_tasks": [8, 8], "eval/k": [4, 4]})
    head = report.headline(cfg, metrics, evals)
    assert head["method"] == "tao" and head["steps"] == "2" and head["skipped steps"] == "1"
    assert head["training time"] == "2.5 min"
    assert report._duration(3.04) == "3.0 s" and report._duration(float("nan")) == "?"   # tiny runs: not "0.0 min"
    assert head["held-out avg@4"] == "0.250 → 0.500 (32 samples; before training → after step 2)"


def test_saving_an_evaluation_under_a_used_label_keeps_both(tmp_path, capsys):
    save_eval(tmp_path, "step_000006", [traj("a", True, 1.0)] * 8, {"eval/avg@4": 0.531})
    second = save_eval(tmp_path, "step_000006", [traj("a", True, 1.0)] * 4, {"eval/avg@4": 0.438})
    assert second.name == "step_000006-2" and "keeping it" in capsys.readouterr().out
    frame = report.eval_frame(tmp_path)
    assert frame["eval/avg@4"].tolist() == [0.531, 0.438]


def test_report_on_a_missing_folder_raises_and_creates_nothing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        report.write_report(missing)
    assert not missing.exists()


def test_example_episodes_are_distinct_and_the_correct_ones_come_first(tmp_path):
    store = RunStore(tmp_path)
    # a shaped reward: the wrong episode has the higher reward, the correct one must still lead
    trajs = [traj("same text", True, 1.0), traj("same text", True, 1.0), traj("wrong but shaped", False, 1.01),
             traj("worst", False, -1.0)]
    store.write_step(1, trajs)

    class Tok:   # token_view_html needs decode / convert_ids_to_tokens only
        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

        def decode(self, ids, **kw):
            return " ".join(f"t{i}" for i in ids)

    page = report._episodes(store, Tok(), k=2)
    assert page.count("<h4>") == 3                     # the duplicate is shown once
    first = page.index("<h4>")
    assert "correct" in page[first:page.index("</h4>")] and "wrong" not in page[first:page.index("</h4>")]


def test_config_table_has_one_row_per_field():
    html = report.config_table({"method": "tao", "loss": {"eps_low": 0.2, "eps_high": 0.28}})
    assert html.count("<tr>") == 4 and "loss.eps_high" in html


def test_a_damaged_last_step_file_is_listed_and_the_page_uses_the_newest_readable_step(tmp_path):
    store = RunStore(tmp_path)
    store.write_step(1, [traj("first step", True, 1.0)])
    store.write_step(2, [traj("second step", True, 1.0)])
    for s in (1, 2):
        store.append_metrics({"step": s, "reward/mean": 0.5 * s, "time/step_s": 1.0})
    path = store.step_path(2)
    path.write_bytes(path.read_bytes()[:40])            # truncated: no parquet footer
    page = report.write_report(tmp_path).read_text()
    assert "This run store is damaged" in page and "step_000002" in page
    assert "step 1, episode 0" in page                  # the episodes come from the readable step
    assert path.exists() and not list(tmp_path.glob("steps/*.corrupt"))   # a read command repairs nothing
