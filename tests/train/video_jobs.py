"""What the video job tests share: a tiny set in the built-in layout, the flags of a tiny run on
it, and a run stopped in the middle of an epoch and resumed."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from train.engine import checkpoint
from train.engine.trainer import Trainer

TINY_SIZES = {"training": 24, "validation": 8, "test": 8}
STOP_AT_STEP = 4  # of 2 epochs of 3 steps: the second step of the second epoch is next


def tiny_video_job(data: Path, out: Path, *extra: str) -> list[str]:
    """Flags of a 2-epoch run of 4-frame 32² clips on ``data``, one thread, into ``out``."""
    return [
        *("--train-data", str(data), "--val-data", str(data)),
        *("--video", "{num_frames: 4, frame_size: 32}", "--batch-size", "8"),
        *("--epochs", "2", "--threads", "1", "--out-dir", str(out)),
        *extra,
    ]


def stop_and_resume(main: Callable[[list[str]], dict], job: list[str], monkeypatch) -> dict:
    """Runs ``job`` with step checkpoints, interrupts it before step ``STOP_AT_STEP`` and resumes
    it from its ``last.pt``; returns the checkpoint it stopped at."""
    step = Trainer.train_step

    def stop(self, batch):
        if self.global_step == STOP_AT_STEP:
            raise KeyboardInterrupt
        return step(self, batch)

    job = [*job, "--checkpoint-every", "2"]
    out = Path(job[job.index("--out-dir") + 1])
    monkeypatch.setattr(Trainer, "train_step", stop)
    with pytest.raises(KeyboardInterrupt):
        main(job)
    stopped = checkpoint.load(out / "last.pt")
    monkeypatch.setattr(Trainer, "train_step", step)
    main([*job, "--resume", "last"])
    return stopped


def assert_same_weights(path: Path, other: Path) -> None:
    first, second = checkpoint.load(path)["model"], checkpoint.load(other)["model"]
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0, msg=name)
