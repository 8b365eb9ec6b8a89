import os
import subprocess
import sys
from pathlib import Path

import torch

from train.metrics.logger import read_jsonl

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_cpu_processes_train_in_step(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).with_name("ddp_worker.py")),
        str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # 116 training images (12 held out for validation) / 2 processes / batch 32
    assert [r["steps"] for r in ranks] == [1, 1]
    assert torch.equal(ranks[0]["parameters"], ranks[1]["parameters"])
    # Only rank 0 logs and saves; the evaluation, reduced over both, agrees on both.
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(records) == 1 and (tmp_path / "last.pt").is_file()
    assert result.stdout.count("epoch 1/1") == 1
    first, second = (rank["summary"] for rank in ranks)
    assert first["val_acc"] == second["val_acc"] == records[0]["val_acc"]
    assert (
        first["test_acc"] == second["test_acc"]
        and first["best_test_acc"] == second["best_test_acc"]
    )
