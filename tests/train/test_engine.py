import json

import pytest
import torch

from train import checkpoint, classify
from train.engine import Trainer, warmup_cosine
from train.metrics import read_jsonl

TIMING_KEYS = ("epoch_time_s", "images_per_s")


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_tiny_run_trains_and_writes_its_outputs(tiny_job, tmp_path):
    summary = classify.main(tiny_job("--epochs", "4", "--lr", "3e-3", "--warmup-epochs", "0.5"))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert summary["test_acc"] == records[-1]["val_acc"]
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temporary checkpoint left behind
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 4 and state["config"]["epochs"] == 4
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "ema"} <= set(state)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tiny_job, tmp_path, monkeypatch):
    flags = (
        "--epochs",
        "3",
        "--ema-decay",
        "0.9",
        "--mixup-alpha",
        "0.2",
        "--cutmix-alpha",
        "0.2",
        "--rand-augment-ops",
        "1",
    )
    classify.main(tiny_job(*flags, out="straight"))

    real_epoch = Trainer.train_one_epoch
    calls = {"n": 0}

    def crash_in_third_epoch(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("stopped in the third epoch")
        return real_epoch(self)

    monkeypatch.setattr(Trainer, "train_one_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        classify.main(tiny_job(*flags, out="resumed"))
    monkeypatch.setattr(Trainer, "train_one_epoch", real_epoch)
    assert checkpoint.load(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    torch.manual_seed(12345)  # a resumed run must not depend on the generator state it starts with
    classify.main(tiny_job(*flags, "--resume", "last", out="resumed"))

    straight = without_timings(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    resumed = without_timings(read_jsonl(tmp_path / "resumed" / "metrics.jsonl"))
    assert resumed == straight
    final = [
        checkpoint.load(tmp_path / run / "last.pt")["model"] for run in ("straight", "resumed")
    ]
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name


def test_early_stopping(tiny_job, tmp_path):
    # A learning rate of ~0 never improves on the first epoch's accuracy: stop after `patience`.
    classify.main(
        tiny_job("--epochs", "6", "--lr", "1e-12", "--min-lr", "1e-12", "--patience", "2")
    )
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 3


def test_warmup_cosine_schedule():
    multiplier = warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    values = [multiplier(step) for step in range(15)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0) and values[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_metrics_jsonl_is_valid_json(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
    assert set(json.loads(line)) >= {"epoch", "train_loss", "val_loss", "val_acc", "lr"}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_and_saves_the_scaler(tiny_job, tmp_path, amp):
    summary = classify.main(tiny_job("--epochs", "1", "--amp", amp))
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert summary["test_acc"] is not None and state["config"]["amp"] == amp
    assert bool(state["scaler"]) == (amp == "fp16")  # a grad scaler only for fp16
