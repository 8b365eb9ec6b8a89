import json

import pytest

from train import classify
from train.metrics.logger import MetricsLogger, curve_panels, plot_curves, read_jsonl


def write_log(path, *lines: str) -> None:
    path.write_text("".join(lines))


def test_a_cut_last_line_is_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_log(path, json.dumps({"epoch": 1}) + "\n", '{"epoch": 2, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl: its last line is cut short"):
        assert read_jsonl(path) == [{"epoch": 1}]


def test_a_damaged_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_log(path, '{"epoch": 1, "lo\n', json.dumps({"epoch": 2}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1: not a JSON record"):
        read_jsonl(path)


def test_a_resumed_log_keeps_the_records_up_to_the_checkpoint(tmp_path):
    lines = [json.dumps({"epoch": epoch, "loss": 1.0 / epoch}) + "\n" for epoch in (1, 2, 3)]
    write_log(tmp_path / "metrics.jsonl", *lines, '{"epoch": 4, "lo')
    with pytest.warns(UserWarning, match="cut short"):
        logger = MetricsLogger(tmp_path, resume_epoch=2)
    logger.close()
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def scalars(tensorboard_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard would show for a run's event files: tag → (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def log_epochs(out_dir, epochs, resume_epoch=None, offset=0.0) -> None:
    logger = MetricsLogger(out_dir, resume_epoch=resume_epoch)
    for epoch in epochs:
        logger.log({"epoch": epoch, "train_loss": 1.0 / epoch + offset, "val_acc": 0.1 * epoch})
    logger.close()


def test_every_epoch_is_logged_as_json_csv_curves_and_tensorboard_scalars(tmp_path):
    log_epochs(tmp_path, (1, 2, 3))
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log == read_jsonl(tmp_path / "metrics.jsonl") and [r["epoch"] for r in log] == [1, 2, 3]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "epoch,train_loss,val_acc"
    assert (tmp_path / "curves.png").stat().st_size > 0
    series = scalars(tmp_path / "tensorboard")
    assert set(series) == {"train_loss", "val_acc"}
    assert series["train_loss"] == [(e, pytest.approx(1.0 / e)) for e in (1, 2, 3)]
    assert [step for step, _ in series["val_acc"]] == [1, 2, 3]


def test_a_resumed_run_replaces_the_later_epochs_in_tensorboard_and_the_logs(tmp_path):
    log_epochs(tmp_path, (1, 2, 3))
    log_epochs(tmp_path, (3, 4), resume_epoch=2, offset=10.0)  # resumed after epoch 2
    series = scalars(tmp_path / "tensorboard")["train_loss"]
    assert [step for step, _ in series] == [1, 2, 3, 4]
    assert [value for _, value in series] == pytest.approx([1.0, 0.5, 10 + 1 / 3, 10.25])
    assert [r["epoch"] for r in json.loads((tmp_path / "training_log.json").read_text())] == [
        1,
        2,
        3,
        4,
    ]


def test_a_fresh_run_in_the_same_folder_hides_the_earlier_runs_events(tmp_path):
    log_epochs(tmp_path, (1, 2, 3))
    log_epochs(tmp_path, (1,), offset=10.0)
    assert scalars(tmp_path / "tensorboard")["train_loss"] == [(1, pytest.approx(11.0))]
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_the_curves_draw_every_validation_metric_even_one_missing_in_some_epochs(tmp_path):
    records = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.5, "val_acc": 0.3, "lr": 1e-3},
        {
            "epoch": 2,
            "train_loss": 1.0,
            "val_loss": 1.2,
            "val_acc": 0.5,
            "val_map": 0.2,
            "lr": 5e-4,
        },
        {"epoch": 3, "train_loss": 0.5, "val_loss": 1.1, "val_acc": 0.6, "val_skipped": 1, "lr": 0},
    ]
    plot_curves(records, tmp_path / "curves.png")
    assert curve_panels(records) == {
        "loss": ["train_loss", "val_loss"],
        "validation metrics": ["val_acc", "val_map"],
        "learning rate": ["lr"],
    }


def test_a_training_run_resumed_from_an_earlier_epoch_logs_each_epoch_once(tiny_job, tmp_path):
    flags = tiny_job("--epochs", "3", "--save-every", "1", "--no-evaluate-test")
    classify.main(flags)
    first = scalars(tmp_path / "run" / "tensorboard")
    classify.main([*flags, "--resume", str(tmp_path / "run" / "checkpoint_epoch_1.pt")])
    series = scalars(tmp_path / "run" / "tensorboard")
    assert {"train_loss", "val_loss", "val_acc", "lr"} <= set(series)
    assert all([step for step, _ in values] == [1, 2, 3] for values in series.values())
    assert series["val_acc"] == first["val_acc"]  # the resumed run repeats the same epochs
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2, 3]
