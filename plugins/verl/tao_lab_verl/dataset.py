"""tao_lab tasks -> a verl RL parquet (`python -m tao_lab_verl.dataset SOURCE SPLIT OUT.parquet`).

Columns as verl's RLHFDataset reads them: `prompt` (chat messages from tao_lab.tasks.build_messages,
so the cluster sees the notebook's prompt), `data_source`, `reward_model.ground_truth`,
`agent_name` (the plugin's agent loop), `extra_info` (task id).
"""

from __future__ import annotations

import sys

import pandas as pd

from tao_lab.tasks import build_messages, load_tasks
from tao_lab_verl import AGENT_NAME


def tasks_frame(source: str, split: str | None = None, limit: int | None = None, template: str = "few_shot",
                protocol: str = "fenced") -> pd.DataFrame:
    rows = [{"data_source": f"tao_lab/{source}", "prompt": build_messages(t, template, protocol),
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": t.answer},
             "agent_name": AGENT_NAME, "extra_info": {"task_id": t.id, "split": split or ""}}
            for t in load_tasks(source, split=split, limit=limit)]
    return pd.DataFrame(rows)


def main(argv: list[str]) -> None:
    if len(argv) not in (3, 4):
        raise SystemExit("usage: python -m tao_lab_verl.dataset SOURCE SPLIT OUT.parquet [LIMIT]")
    df = tasks_frame(argv[0], argv[1], int(argv[3]) if len(argv) == 4 else None)
    df.to_parquet(argv[2], index=False)
    print(f"{len(df)} tasks -> {argv[2]}")


if __name__ == "__main__":
    main(sys.argv[1:])
