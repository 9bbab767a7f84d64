"""tao_lab tasks -> a verl RL parquet.

    python -m tao_lab_verl.dataset SOURCE SPLIT OUT.parquet [LIMIT] [--template T] [--protocol P] [--n-demos N]

(SPLIT "-" for a JSONL file without splits.) Columns as verl's RLHFDataset reads them: `prompt` (chat
messages from tao_lab.tasks.build_messages with the run's template and tool protocol, so the cluster
sees the notebook's prompt), `data_source`, `reward_model.ground_truth`, `agent_name` (the plugin's
agent loop), `extra_info` (task id). `tao-lab export-verl RUN_DIR` prints these commands for a run.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from tao_lab.tasks import build_messages, load_tasks
from tao_lab.toolcall import PROTOCOLS
from tao_lab_verl import AGENT_NAME


def tasks_frame(source: str, split: str | None = None, limit: int | None = None, template: str = "few_shot",
                protocol: str = "fenced", n_demos: int = 2) -> pd.DataFrame:
    rows = [{"data_source": f"tao_lab/{source}", "prompt": build_messages(t, template, protocol, n_demos),
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": t.answer},
             "agent_name": AGENT_NAME, "extra_info": {"task_id": t.id, "split": split or ""}}
            for t in load_tasks(source, split=split, limit=limit)]
    return pd.DataFrame(rows)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m tao_lab_verl.dataset", description=__doc__.splitlines()[0])
    p.add_argument("source", help="tao_lab.tasks.load_tasks source: bundled name, JSONL path or hf:...")
    p.add_argument("split", help="split name, or - for none")
    p.add_argument("out", help="the parquet file to write")
    p.add_argument("limit", nargs="?", type=int, default=None, help="only the first N tasks")
    p.add_argument("--template", default="few_shot", help="tao_lab.tasks prompt template (rollout.template)")
    p.add_argument("--protocol", default="fenced", choices=list(PROTOCOLS), help="tool-call protocol")
    p.add_argument("--n-demos", type=int, default=2, help="demonstrations in the few-shot template")
    a = p.parse_args(argv)
    df = tasks_frame(a.source, None if a.split == "-" else a.split, a.limit, a.template, a.protocol, a.n_demos)
    df.to_parquet(a.out, index=False)
    print(f"{len(df)} tasks -> {a.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
