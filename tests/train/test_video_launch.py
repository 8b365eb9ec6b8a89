"""``train.video`` on two CPU processes (gloo), started as HierarchicalVLM starts its training,
``python -m torch.distributed.launch --nproc_per_node=2 -m train.video ...`` (which passes
``--local-rank``), and with ``torchrun``."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from train.engine import checkpoint
from train.metrics.logger import read_jsonl

from .video_jobs import TINY_SIZES

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAUNCHERS = {
    "torch.distributed.launch": lambda: [
        *("torch.distributed.launch", f"--master_port={free_port()}"),
    ],
    "torchrun": lambda: ["torch.distributed.run", "--standalone"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_cpu_processes_train_one_epoch(launcher, tiny_video_set, tmp_path):
    out = tmp_path / "run"
    job = [
        *("--device", "cpu", "--train-data", str(tiny_video_set), "--epochs", "1"),
        *("--video", "{num_frames: 4, frame_size: 32}", "--batch-size", "4"),
        *("--model-args", "{embed_dim: 16, depth: 2, num_heads: 2}", "--threads", "1"),
        *("--out-dir", str(out)),
    ]
    command = [
        *(sys.executable, "-m", *LAUNCHERS[launcher]()),
        *("--nproc_per_node=2", "-m", "train.video", *job),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = checkpoint.load(out / "last.pt")
    assert state["batch_layout"] == {"batch_size": 4, "world_size": 2}
    # Each process took its half of the training clips: 24 / 2 / 4 = 3 steps.
    assert state["scheduler"]["last_epoch"] == TINY_SIZES["training"] // 2 // 4
    assert len(read_jsonl(out / "metrics.jsonl")) == 1  # only rank 0 logs
    assert result.stdout.count("epoch 1/1") == 1
