"""``train.video`` on a tiny set in the built-in layout: it trains and evaluates, a run stopped in the middle of
an epoch resumes from its step checkpoint to the same weights, and bad settings name their key."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from train import evaluate, video
from train.config import load_config
from train.data.moving_shapes import write_mp4
from train.data.video import collate_clips

from .video_jobs import TINY_SIZES, assert_same_weights, stop_and_resume, tiny_video_job


def tiny_job(data: Path, out: Path, *extra: str) -> list[str]:
    return tiny_video_job(
        data,
        out,
        *("--model-args", "{embed_dim: 16, depth: 2, num_heads: 2}"),
        *("--attention", "{type: performer, redraw_interval: 2}"),
        *("--token-merging", "{enabled: true, ramp_fraction: 0.5}"),
        *extra,
    )


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tiny_video_set, tmp_path, monkeypatch):
    summary = video.main(tiny_job(tiny_video_set, tmp_path / "whole"))
    assert 0 <= summary["test_acc"] <= 1
    report = evaluate.main(
        ["--checkpoint", str(tmp_path / "whole" / "last.pt"), "--num-clips", "2", "--threads", "1"]
    )
    assert report["num_clips"] == 2 and report["accuracy"] <= report["top5_accuracy"]
    assert sum(map(sum, report["confusion_matrix"])) == TINY_SIZES["test"]
    assert (tmp_path / "whole" / "confusion_matrix.png").is_file()

    stopped = stop_and_resume(
        video.main, tiny_job(tiny_video_set, tmp_path / "stopped"), monkeypatch
    )
    assert (stopped["epoch"], stopped["epoch_progress"]["steps"]) == (1, 1)
    assert_same_weights(tmp_path / "whole" / "last.pt", tmp_path / "stopped" / "last.pt")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--attention", "{type: sparse}"],
            r"model.attention.type must be one of \['cross_memory'",
        ),
        (["--attention", "{type: linear, window: 3}"], r"unknown keys \['window'\]; allowed"),
        (["--token-merging", "{ratio: 0.5}"], r"model.token_merging: unknown keys \['ratio'\]"),
        (
            ["--token-merging", "{mode: saliency}"],
            r"token_merging.mode: expected one of \('motion'",
        ),
        (
            ["--token-merging", "{target_compression_ratio: 1.0}"],
            r"target_compression_ratio: expected a number in \[0, 1\), got 1.0",
        ),
        (
            ["--token-merging", "{target_compression_ratio: half}"],
            r"target_compression_ratio: expected a finite number, got 'half'",
        ),
        (["--num-classes", "1000000000"], r"num_classes: expected a number in \[0, 100000\]"),
        (
            ["--video", "{num_frames: 0}"],
            r"data.video.num_frames: expected a number in \[1, 1024\]",
        ),
        (
            ["--video", "{frame_size: 100000}"],
            r"data.video.frame_size: expected a number in \[1, 4",
        ),
        (
            ["--video", "{frame_size: 1.5}"],
            r"data.video.frame_size: expected a whole number, got 1.5",
        ),
        (
            ["--video", "{backend: ffmpeg}"],
            r"data.video.backend must be one of \['decord', 'opencv'\] or null",
        ),
        (["--train-data", "x"], "give both --train-data and --val-data"),
    ],
)
def test_bad_settings_name_the_key_and_the_allowed_values(flags, message):
    with pytest.raises(ValueError, match=message):
        load_config(video.VideoConfig, flags, "train.video", "")


def test_the_yaml_file_uses_the_source_design_keys(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "model:\n  name: hvlm_tiny\n  attention: {type: local_global, window: 16}\n"
        "  token_merging: {enabled: true, target_compression_ratio: 0.25}\n"
        "data:\n  video: {num_frames: 16, frame_size: 64}\n"
    )
    config = load_config(video.VideoConfig, ["--config", str(path)], "train.video", "")
    arguments = video.model_arguments(config, 12)
    assert arguments["attention"] == "local_global"
    assert arguments["attention_args"] == {"window": 16}
    assert arguments["merge_ratio"] == 0.25 and arguments["num_frames"] == 16


def test_the_builtin_config_file_is_the_default_job():
    path = Path(__file__).parents[2] / "configs" / "video_moving_shapes.yaml"
    assert load_config(video.VideoConfig, ["--config", str(path)], "train.video", "") == (
        video.VideoConfig()
    )


def test_videos_of_different_sizes_stack_at_the_model_frame_size(tmp_path):
    """User videos are decoded at data.video.frame_size, so a list mixing sizes makes batches."""
    sizes = [(48, 64), (37, 53)]
    lines = []
    for k, (height, width) in enumerate(sizes):
        path = tmp_path / f"clip{k}.mp4"
        write_mp4(path, torch.full((6, height, width, 3), 40 * k, dtype=torch.uint8), fps=8)
        lines.append(f"{path} {k}")
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(lines) + "\n")
    flags = ["--train-data", str(listing), "--val-data", str(listing)]
    config = load_config(
        video.VideoConfig, [*flags, "--video", "{num_frames: 4, frame_size: 32}"], "train.video", ""
    )
    dataset = video.datasets_for(config, "training", train=True)
    batch = collate_clips([dataset[0], dataset[1]])
    assert batch["frames"].shape == (2, 4, 3, 32, 32)


def copy_of(data: Path, into: Path) -> Path:
    shutil.copytree(data, into)
    return into


def test_clips_without_a_label_are_named_when_the_action_task_trains_alone(
    tiny_video_set, tmp_path
):
    data = copy_of(tiny_video_set, tmp_path / "data")
    annotations = data / "training" / "annotations" / "action_detection.json"
    entries = json.loads(annotations.read_text())
    entries[0]["actions"] = []
    annotations.write_text(json.dumps(entries))
    flags = ["--train-data", str(data), "--val-data", str(data), "--tasks", "{action: 1.0}"]
    config = load_config(video.VideoConfig, flags, "train.video", "")
    with pytest.raises(ValueError, match=r"needs a label for every clip, but 1 training clip"):
        video.datasets_for(config, "training", train=True)


def test_a_missing_test_split_fails_before_training(tiny_video_set, tmp_path):
    data = copy_of(tiny_video_set, tmp_path / "data")
    shutil.rmtree(data / "test")
    with pytest.raises(FileNotFoundError, match="test"):
        video.main(tiny_job(data, tmp_path / "run"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_an_empty_list_file_is_named(tmp_path):
    listing = tmp_path / "empty.txt"
    listing.write_text("# no videos yet\n")
    flags = ["--train-data", str(listing), "--val-data", str(listing)]
    config = load_config(video.VideoConfig, flags, "train.video", "")
    with pytest.raises(ValueError, match=r"no video listed for the training split in .*empty.txt"):
        video.datasets_for(config, "training", train=True)


def test_an_unreadable_test_video_is_left_out_and_counted(tiny_video_set, tmp_path):
    data = copy_of(tiny_video_set, tmp_path / "data")
    (broken,) = sorted((data / "test" / "videos").iterdir())[:1]
    broken.write_text("not a video\n")
    summary = video.main(tiny_job(data, tmp_path / "run"))
    assert summary["test_skipped"] == 1
    report = evaluate.main(["--checkpoint", str(tmp_path / "run" / "last.pt"), "--threads", "1"])
    assert report["skipped"] == 1
    assert sum(map(sum, report["confusion_matrix"])) == TINY_SIZES["test"] - 1


def write_clip_list(folder: Path, labels: list[str]) -> Path:
    """``folder/clips.txt`` listing one small clip per entry of ``labels`` (its label field)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k, label in enumerate(labels):
        write_mp4(folder / f"clip{k}.mp4", torch.full((6, 32, 32, 3), 40 * k, dtype=torch.uint8), 8)
        lines.append(f"clip{k}.mp4 {label}")
    listing = folder / "clips.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def test_a_multi_label_list_is_refused_naming_an_entry(tmp_path):
    listing = write_clip_list(tmp_path, ["0", "0 1"])
    flags = ["--train-data", str(listing), "--val-data", str(listing)]
    config = load_config(video.VideoConfig, flags, "train.video", "")
    message = r"clips.txt, line 2 \(.*clip1.mp4\): 2 labels, but train.video trains single-label"
    with pytest.raises(ValueError, match=message):
        video.datasets_for(config, "training", train=True)


def test_evaluate_reads_the_data_dir_given_for_a_job_trained_on_its_own_data(tmp_path):
    trained_on = write_clip_list(tmp_path / "trained_on", ["0", "1"])
    other = write_clip_list(tmp_path / "other", ["1", "0", "1"])
    video.main(tiny_job(trained_on, tmp_path / "run", "--epochs", "1", "--batch-size", "2"))
    checkpoint = str(tmp_path / "run" / "last.pt")
    report = evaluate.main(["--checkpoint", checkpoint, "--data-dir", str(other), "--threads", "1"])
    assert sum(map(sum, report["confusion_matrix"])) == 3
