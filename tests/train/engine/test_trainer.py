import json
import os

import pytest
import torch

from python_models import create_model
from train import classify
from train.engine import checkpoint, run_lock
from train.engine.config import load_config
from train.engine.trainer import EngineConfig, LearningRateCurve, Trainer, param_groups
from train.metrics.logger import read_jsonl

TIMING_KEYS = ("epoch_time_s", "images_per_s")


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_tiny_run_trains_and_writes_its_outputs(tiny_job, tmp_path):
    summary = classify.main(tiny_job("--epochs", "4", "--lr", "3e-3", "--warmup-epochs", "0.5"))
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert summary["val_acc"] == records[-1]["val_acc"]
    assert summary["best_val_acc"] == max(r["val_acc"] for r in records)
    assert {"test_acc", "best_test_acc"} <= set(summary)
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not list((tmp_path / "run").glob(".*tmp*"))  # no temporary checkpoint left behind
    assert not (tmp_path / "run" / run_lock.LOCK_NAME).exists()  # the folder is released
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
    assert not (tmp_path / "resumed" / run_lock.LOCK_NAME).exists()  # released on the way out
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


def stop_mid_epoch(monkeypatch, at_step: int) -> None:
    real_step = Trainer.train_step

    def stop(self, batch):
        if self.global_step == at_step:
            raise KeyboardInterrupt("stopped mid-epoch")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", stop)


def test_a_mid_epoch_checkpoint_resumes_only_with_its_batch_layout(tiny_job, monkeypatch):
    flags = ("--epochs", "1", "--checkpoint-every", "1")  # 3 steps of 32 images an epoch
    stop_mid_epoch(monkeypatch, at_step=2)
    with pytest.raises(KeyboardInterrupt):
        classify.main(tiny_job(*flags))
    monkeypatch.undo()
    message = r"in the middle of epoch 1 after 2 steps of 32 images on 1 process.*--batch-size 32"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        classify.main(tiny_job(*flags, "--resume", "last", "--batch-size", "16"))
    assert classify.main(tiny_job(*flags, "--resume", "last"))["test_acc"] is not None


def test_a_finished_run_resumed_into_another_folder_reports_its_results(tiny_job, tmp_path, capsys):
    first = classify.main(tiny_job("--epochs", "1"))
    again = classify.main(
        tiny_job("--epochs", "1", "--resume", str(tmp_path / "run" / "last.pt"), out="again")
    )
    assert (again["test_acc"], again["best_test_acc"]) == (
        first["test_acc"],
        first["best_test_acc"],
    )
    assert "nothing left to train" in capsys.readouterr().out


def test_a_metrics_line_cut_by_a_crash_is_dropped_on_resume(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    log = tmp_path / "run" / "metrics.jsonl"
    with open(log, "a") as file:
        file.write('{"epoch": 2, "train_lo')  # the record being written when the run died
    with pytest.warns(UserWarning, match="metrics.jsonl: its last line is cut short"):
        classify.main(tiny_job("--epochs", "2", "--resume", "last"))
    assert [r["epoch"] for r in read_jsonl(log)] == [1, 2]


def test_a_second_run_cannot_write_into_a_folder_in_use(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    folder = tmp_path / "run"
    written = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}
    lock = folder / run_lock.LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": run_lock.HOST, "command": "other"}))
    message = f"{folder} is in use by another run: pid {os.getppid()}"
    for resume in ((), ("--resume", "last")):
        with pytest.raises(run_lock.FolderInUseError, match=message):
            classify.main(tiny_job("--epochs", "2", *resume))
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path != lock} == written


def test_a_batch_larger_than_the_training_data_is_refused_before_anything_is_written(
    tiny_job, tmp_path
):
    with pytest.raises(ValueError, match=r"batch_size: 256 is more than .* 116 training samples"):
        classify.main(tiny_job("--batch-size", "256", "--epochs", "1"))
    assert not (tmp_path / "run").exists()


def test_early_stopping(tiny_job, tmp_path):
    # A learning rate of ~0 never improves on the first epoch's accuracy: stop after `patience`.
    classify.main(
        tiny_job("--epochs", "6", "--lr", "1e-12", "--min-lr", "1e-12", "--patience", "2")
    )
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 3


def curve(steps_per_epoch: int = 2, mode: str = "max", **settings) -> LearningRateCurve:
    config = EngineConfig(**{"epochs": 7, "lr": 1.0, "min_lr": 0.1, **settings})
    return LearningRateCurve(config, steps_per_epoch, mode)


def test_cosine_schedule_warms_up_then_falls_to_the_minimum():
    multiplier = curve(warmup_epochs=2)  # 4 warm-up steps of 14
    values = [multiplier(step) for step in range(15)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert values[4] == pytest.approx(1.0) and values[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_step_schedule_decays_every_step_size_epochs_down_to_the_minimum():
    multiplier = curve(scheduler="step", step_size=2, gamma=0.5, warmup_epochs=0)
    per_epoch = [multiplier(2 * epoch) for epoch in range(7)]
    assert per_epoch == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    assert multiplier(2 * 40) == 0.1  # min_lr / lr


def test_plateau_schedule_decays_after_patience_epochs_without_a_better_metric():
    multiplier = curve(scheduler="plateau", plateau_patience=1, plateau_factor=0.5, warmup_epochs=0)
    seen = []
    for accuracy in (0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7):
        multiplier.observe(accuracy)
        seen.append(multiplier(100))
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    lower = curve(scheduler="plateau", plateau_patience=0, mode="min", warmup_epochs=0)
    for loss in (1.0, 0.9, 0.95):
        lower.observe(loss)
    assert lower(100) == pytest.approx(0.1)  # one decay of 0.1, at the floor min_lr / lr


@pytest.mark.parametrize("scheduler", ["step", "plateau"])
def test_a_resumed_run_continues_the_schedule(tiny_job, tmp_path, scheduler):
    flags = ("--scheduler", scheduler, "--step-size", "1", "--plateau-patience", "0")
    classify.main(tiny_job("--epochs", "3", *flags, out="straight"))
    classify.main(tiny_job("--epochs", "2", *flags, out="resumed"))
    classify.main(tiny_job("--epochs", "3", *flags, "--resume", "last", out="resumed"))
    straight, resumed = (
        [r["lr"] for r in read_jsonl(tmp_path / run / "metrics.jsonl")]
        for run in ("straight", "resumed")
    )
    assert resumed == straight


def test_every_n_epochs_checkpoints_resume(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "3", "--save-every", "1", out="straight"))
    names = sorted(p.name for p in (tmp_path / "straight").glob("checkpoint_epoch_*.pt"))
    assert names == [f"checkpoint_epoch_{n}.pt" for n in (1, 2, 3)]
    state = checkpoint.load(tmp_path / "straight" / "checkpoint_epoch_2.pt")
    assert state["epoch"] == 2
    start = str(tmp_path / "straight" / "checkpoint_epoch_2.pt")
    classify.main(tiny_job("--epochs", "3", "--resume", start, out="resumed"))
    straight, resumed = (
        without_timings(read_jsonl(tmp_path / run / "metrics.jsonl"))
        for run in ("straight", "resumed")
    )
    assert resumed == straight[2:]


def test_the_best_checkpoint_is_chosen_on_validation_and_the_test_split_seen_once(
    tiny_job, tmp_path, monkeypatch
):
    seen = []
    real_evaluate = classify.ClassificationTask.evaluate

    def evaluate(self, model, loader, device):
        seen.append(len(loader.dataset))
        return real_evaluate(self, model, loader, device)

    monkeypatch.setattr(classify.ClassificationTask, "evaluate", evaluate)
    copy_path = tmp_path / "kept" / "best_hvit.pth"
    summary = classify.main(tiny_job("--epochs", "3", "--checkpoint-path", str(copy_path)))
    # 128 training images: 12 held out for validation (a tenth of each class), 64 test images.
    assert seen == [12, 12, 12, 64, 64]  # three validations, then the test split: last, best
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    best_epoch = max(records, key=lambda r: r["val_acc"])["epoch"]
    assert checkpoint.load(tmp_path / "run" / "best.pt")["epoch"] == best_epoch
    assert checkpoint.load(copy_path)["epoch"] == best_epoch
    assert summary["best_val_acc"] == max(r["val_acc"] for r in records)


def test_no_evaluate_test_never_reads_the_test_split(tiny_job, monkeypatch):
    monkeypatch.setattr(Trainer, "test", lambda *args: pytest.fail("the test split was evaluated"))
    summary = classify.main(tiny_job("--epochs", "1", "--no-evaluate-test"))
    assert "test_acc" not in summary


def test_the_source_designs_mixed_precision_flags():
    parse = lambda *flags: load_config(classify.ClassifyConfig, list(flags), "t", "t").amp  # noqa: E731
    assert parse() == "auto"
    assert parse("--autocast-dtype", "fp16") == "fp16"
    assert parse("--no-amp") == "none"


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


class ClipTask:
    """Cross-entropy on uint8 clips flattened into a linear model."""

    monitor, mode = "loss", "min"

    def training_loss(self, model, batch):
        frames, labels = batch
        return torch.nn.functional.cross_entropy(model(frames.float() / 255), labels)

    def evaluate(self, model, loader, device):
        with torch.no_grad():
            losses = [self.training_loss(model, [t.to(device) for t in b]) for b in loader]
        return {"loss": torch.stack(losses).mean().item()}


def test_epoch_records_count_the_videos_the_data_sets_skipped(tmp_path, capsys):
    from train.data import SelectFields, VideoDataset, VideoRecord, make_loader
    from train.data.moving_shapes import write_mp4
    from train.data.video import SkippedVideoWarning

    for k in range(3):
        write_mp4(tmp_path / f"{k}.mp4", torch.full((4, 16, 16, 3), 60 * k, dtype=torch.uint8), 4)
    (tmp_path / "bad.mp4").write_text("not a video")
    records = [
        VideoRecord(tmp_path / f"{n}.mp4", (k % 2,)) for k, n in enumerate(["0", "bad", "1", "2"])
    ]
    loaders = [
        make_loader(
            VideoDataset(records, train=train, num_segments=2),
            2,
            train,
            0,
            0,
            SelectFields(["frames", "label"]),
        )
        for train in (True, False)
    ]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 16 * 16, 2))
    config = EngineConfig(epochs=2, batch_size=2, out_dir=str(tmp_path / "run"), num_workers=0)
    trainer = Trainer(model, ClipTask(), *loaders, config, {}, torch.device("cpu"), job="video")
    with pytest.warns(SkippedVideoWarning):
        trainer.fit()
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [(r["train_skipped"], r["val_skipped"]) for r in records] == [(1, 1), (1, 1)]
    assert "train_skipped 1, val_skipped 1" in capsys.readouterr().out


def test_weight_decay_skips_one_dimensional_parameters_and_what_the_model_names():
    model = create_model("vit_micro_patch4_32", num_classes=3)
    groups = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    skipped = {names[id(p)] for p in groups[1]["params"]}
    assert {"pos_embed", "cls_token"} <= skipped and "patch_embed.proj.weight" in decayed
    assert all(
        model.get_parameter(n).ndim > 1 and n not in model.no_weight_decay() for n in decayed
    )
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2))  # no no_weight_decay(): by shape only
    assert [len(g["params"]) for g in param_groups(plain, 0.05)] == [1, 1]
