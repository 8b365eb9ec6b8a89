"""``train.video`` on a tiny set in the built-in layout: it trains and evaluates, a run stopped in the middle of
an epoch resumes from its step checkpoint to the same weights, and bad settings name their key."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from python_models.video.settings import MixerSettings
from train import evaluate, video
from train.data.annotations import AnnotationError
from train.data.moving_shapes import ACTIONS, write_mp4
from train.data.video import collate_clips
from train.engine import checkpoint
from train.engine.config import load_config, source_key_table
from train.engine.trainer import Trainer
from train.tasks import video as video_task

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
            r"data.video.backend: expected one of \(None, 'decord', 'opencv'\), got 'ffmpeg'",
        ),
        (["--val-data", "x"], "--val-data needs --train-data"),
    ],
)
def test_bad_settings_name_the_key_and_the_allowed_values(flags, message):
    with pytest.raises(ValueError, match=message):
        load_config(video_task.VideoConfig, flags, "train.video", "")


def test_the_yaml_file_uses_the_source_design_keys(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        "model:\n  name: hvlm_tiny\n  attention: {type: local_global, window: 16}\n"
        "  token_merging: {enabled: true, target_compression_ratio: 0.25}\n"
        "data:\n  video: {num_frames: 16, frame_size: 64}\n"
    )
    config = load_config(video_task.VideoConfig, ["--config", str(path)], "train.video", "")
    arguments = video_task.model_arguments(config, 12)
    assert arguments["mixer"] == MixerSettings("local_global", {"window": 16})
    assert arguments["merging"].ratio == 0.25 and arguments["num_frames"] == 16


def test_the_builtin_config_file_is_the_default_job():
    path = Path(__file__).parents[2] / "configs" / "video_moving_shapes.yaml"
    assert load_config(video_task.VideoConfig, ["--config", str(path)], "train.video", "") == (
        video_task.VideoConfig()
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
        video_task.VideoConfig,
        [*flags, "--video", "{num_frames: 4, frame_size: 32}"],
        "train.video",
        "",
    )
    dataset = video_task.datasets_for(config, "training", train=True)
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
    config = load_config(video_task.VideoConfig, flags, "train.video", "")
    with pytest.raises(ValueError, match=r"needs a label for every clip, but 1 training clip"):
        video_task.datasets_for(config, "training", train=True)


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
    config = load_config(video_task.VideoConfig, flags, "train.video", "")
    with pytest.raises(ValueError, match=r"no video listed for the training split in .*empty.txt"):
        video_task.datasets_for(config, "training", train=True)


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
    config = load_config(video_task.VideoConfig, flags, "train.video", "")
    message = r"clips.txt, line 2 \(.*clip1.mp4\): 2 labels, but train.video trains single-label"
    with pytest.raises(ValueError, match=message):
        video_task.datasets_for(config, "training", train=True)


def test_evaluate_reads_the_data_dir_given_for_a_job_trained_on_its_own_data(tmp_path):
    trained_on = write_clip_list(tmp_path / "trained_on", ["0", "1"])
    other = write_clip_list(tmp_path / "other", ["1", "0", "1"])
    video.main(tiny_job(trained_on, tmp_path / "run", "--epochs", "1", "--batch-size", "2"))
    checkpoint = str(tmp_path / "run" / "last.pt")
    report = evaluate.main(["--checkpoint", checkpoint, "--data-dir", str(other), "--threads", "1"])
    assert sum(map(sum, report["confusion_matrix"])) == 3


# -- HierarchicalVLM's training_config.yaml and commands ---------------------------------------

REPO = Path(__file__).parents[2]
SOURCE_CONFIG = REPO / "configs" / "training_config.yaml"


def test_the_source_design_config_file_means_what_it_says():
    config = load_config(
        video_task.VideoConfig, ["--config", str(SOURCE_CONFIG)], "train.video", ""
    )
    assert config.model == "hvlm_base" and config.model_args == {"num_heads": 12}
    assert config.attention["type"] == "hierarchical"
    assert config.domain_modules.enabled and config.domain_modules.num_domains == 4
    assert config.domain_modules.lora.rank == 8
    assert config.merging and config.token_merging.target_compression_ratio == 0.5
    assert (config.epochs, config.amp, config.grad_checkpointing, config.clip_grad) == (
        100,
        "auto",
        True,
        1.0,
    )
    assert config.domain_balancing.sample_strategy == "weighted"
    assert config.temporal_smoothing == 3 and config.crop_scale == video_task.AUGMENTED_CROP_SCALE
    assert (config.batch_size, config.num_workers) == (32, 4)
    assert (config.video.num_frames, config.video.frame_size) == (32, 224)


def source_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "training_config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "meaning"),
    [
        ("model: {hidden_size: 384, num_attention_heads: 6}", {"model": "hvlm_small"}),
        ("model: {hidden_size: 256, num_attention_heads: 8}", {"model": "hvlm_tiny"}),
        ("training: {mixed_precision: false}", {"amp": "none"}),
        (
            "training: {temporal_smoothing: {enabled: false, window_size: 5}}",
            {"temporal_smoothing": 1},
        ),
        ("training: {temporal_smoothing: {window_size: 5}}", {"temporal_smoothing": 5}),
        (
            "training: {domain_balancing: {enabled: false, sample_strategy: weighted}}",
            {"domain_balancing": video_task.DomainBalancing(sample_strategy="none")},
        ),
        ("data: {augmentation: {enabled: false}}", {"crop_scale": [1.0, 1.0]}),
        # The package's own keys in the same file.
        ("training: {num_epochs: 3, lr: 0.01}\ndata: {video: {num_frames: 4}}", {"epochs": 3}),
    ],
)
def test_each_source_key_translates(tmp_path, text, meaning):
    path = source_config(tmp_path, text)
    config = load_config(video_task.VideoConfig, ["--config", str(path)], "train.video", "")
    assert {name: getattr(config, name) for name in meaning} == meaning


def test_a_width_without_a_preset_overrides_the_model_arguments(tmp_path):
    path = source_config(tmp_path, "model: {hidden_size: 256, num_attention_heads: 8}")
    config = load_config(video_task.VideoConfig, ["--config", str(path)], "train.video", "")
    assert config.model_args == {"embed_dim": 256, "num_heads": 8}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "model: {hidden_size: {size: 768}}",
            r"model.hidden_size: expected a whole number, got \{",
        ),
        (
            "training: {num_epochs: [100]}",
            r"training.num_epochs \(setting epochs\): expected a whole",
        ),
        ("training: {mixed_precision: 'yes'}", r"training.mixed_precision: expected true or false"),
        ("training: {gradient_clip: {max: 1}}", r"training.gradient_clip \(setting clip_grad\)"),
        (
            "training: {temporal_smoothing: {enabled: true, window_size: 2.5}}",
            r"training.temporal_smoothing.window_size: expected a whole number, got 2.5",
        ),
        (
            "training: {domain_balancing: {enabled: true, sample_strategy: uniform}}",
            r"training.domain_balancing.sample_strategy: expected one of \('none', 'weighted'\)",
        ),
        (
            "training: {domain_balancing: {mode: weighted}}",
            r"training.domain_balancing: unknown keys \['mode'\]; allowed: \['enabled'",
        ),
        (
            "data: {augmentation: {enabled: 1}}",
            r"data.augmentation.enabled: expected true or false",
        ),
        (
            "data: {augmentation: {strength: 1}}",
            r"unknown settings \['data.augmentation.strength'\]",
        ),
        (
            "model: {hidden_dim: 768}",
            r"unknown settings \['model.hidden_dim'\]; known: .* and, from",
        ),
        (
            "model: {hidden_size: 100, num_attention_heads: 12}",
            r"model.hidden_size \(model_args.embed_dim\) 100 must be a multiple of "
            r"model.num_attention_heads",
        ),
        (
            "model: {hidden_size: 768, num_attention_heads: 7}",
            r"model.hidden_size \(model_args.embed_dim\) 768 must be a multiple",
        ),
    ],
)
def test_a_wrong_source_key_or_type_is_named(tmp_path, text, message):
    path = source_config(tmp_path, text)
    with pytest.raises(ValueError, match=message):
        load_config(video_task.VideoConfig, ["--config", str(path)], "train.video", "")


def test_the_documented_translation_table_is_the_one_the_job_uses():
    page = (REPO / "docs" / "jobs" / "video.md").read_text()
    assert source_key_table(video_task.VideoConfig) in page


def test_num_epochs_is_an_alias_of_epochs():
    config = load_config(video_task.VideoConfig, ["--num-epochs", "3"], "train.video", "")
    assert config.epochs == 3


def test_show_only_summarises_the_model_and_reads_no_video(tmp_path, capsys):
    data_dir = tmp_path / "data"
    summary = video.main(
        [
            *("--config", str(SOURCE_CONFIG), "--show-only", "--data-dir", str(data_dir)),
            *("--model-args", "{depth: 2}", "--video", "{num_frames: 4, frame_size: 64}"),
            *("--threads", "1"),
        ]
    )
    parts = summary["parameters"]
    assert parts["backbone"] > parts["heads"] > 0 and parts["adapters"] > 0
    assert summary["attention"] == "hierarchical"
    assert summary["tokens_before_merging"] == 1 + 4 * 16  # 4 frames of 4 × 4 patches
    assert summary["block_tokens"] == [65, 33]  # half the patch tokens merged before block 1
    assert summary["activation_bytes"] > 0
    printed = capsys.readouterr().out
    assert (
        "model: hvlm_base" in printed and "tokens per clip: 65 before merging, 33 after" in printed
    )
    assert not data_dir.exists()


def test_train_data_alone_reads_its_validation_folder_or_holds_clips_out(tiny_video_set, tmp_path):
    def split_sizes(train_data: Path) -> dict[str, int]:
        config = load_config(
            video_task.VideoConfig, ["--train-data", str(train_data)], "train.video", ""
        )
        return {split: len(video_task.split_records(config, split)) for split in TINY_SIZES}

    assert split_sizes(tiny_video_set) == TINY_SIZES
    assert split_sizes(tiny_video_set / "training") == TINY_SIZES  # a split folder: its siblings
    data = copy_of(tiny_video_set, tmp_path / "data")
    shutil.rmtree(data / "validation")
    config = load_config(video_task.VideoConfig, ["--train-data", str(data)], "train.video", "")
    kept, held_out = (
        video_task.split_records(config, split) for split in ("training", "validation")
    )
    assert len(kept) + len(held_out) == TINY_SIZES["training"] and held_out
    assert not {r.path for r in kept} & {r.path for r in held_out}
    assert held_out == video_task.split_records(config, "validation")  # seeded
    assert len(video_task.split_records(config, "test")) == TINY_SIZES["test"]


def test_a_list_file_alone_holds_out_validation_and_test_clips_apart(tmp_path):
    listing = write_clip_list(tmp_path, [str(k % 2) for k in range(6)])
    config = load_config(video_task.VideoConfig, ["--train-data", str(listing)], "train.video", "")
    splits = {split: video_task.split_records(config, split) for split in TINY_SIZES}
    paths = [{r.path for r in records} for records in splits.values()]
    assert [len(p) for p in paths] == [2, 2, 2]  # one clip of each class held out, twice
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def with_named_labels(data: Path, into: Path) -> Path:
    """A copy of ``data`` whose action labels are the built-in set's action names."""
    copy = copy_of(data, into)
    for split in TINY_SIZES:
        path = copy / split / "annotations" / "action_detection.json"
        entries = json.loads(path.read_text())
        for entry in entries:
            for action in entry["actions"]:
                action["label"] = ACTIONS[action["label"]]
        path.write_text(json.dumps(entries))
    return copy


def test_the_source_config_trains_on_named_labels_and_evaluates_with_them(tiny_video_set, tmp_path):
    data = with_named_labels(tiny_video_set, tmp_path / "data")
    out = tmp_path / "run"
    video.main(
        [
            *("--config", str(SOURCE_CONFIG), "--train-data", str(data)),
            *("--model-args", "{embed_dim: 16, depth: 2, num_heads: 2}"),
            *("--video", "{num_frames: 4, frame_size: 32}", "--num-epochs", "1"),
            *("--batch-size", "8", "--num-workers", "0", "--threads", "1", "--out-dir", str(out)),
        ]
    )
    saved = checkpoint.load(out / "last.pt")["config"]
    assert saved["classes"] == sorted(ACTIONS) and saved["num_classes"] == len(ACTIONS)
    report = evaluate.main(["--checkpoint", str(out / "last.pt"), "--threads", "1"])
    assert sum(map(sum, report["confusion_matrix"])) == TINY_SIZES["test"]

    path = data / "test" / "annotations" / "action_detection.json"
    entries = json.loads(path.read_text())
    entries[2]["actions"][0]["label"] = "juggling"
    path.write_text(json.dumps(entries))
    message = r"test/annotations/action_detection.json, entry 2, actions\[0\]: label 'juggling'"
    with pytest.raises(AnnotationError, match=message):
        evaluate.main(["--checkpoint", str(out / "last.pt"), "--threads", "1"])


def test_resume_with_train_data_alone_goes_on_with_the_checkpoint_settings(
    tiny_video_set, tmp_path, monkeypatch
):
    video.main(tiny_job(tiny_video_set, tmp_path / "whole"))
    job = tiny_job(tiny_video_set, tmp_path / "stopped", "--checkpoint-every", "3")
    step = Trainer.train_step

    def stop(self, batch):
        if self.global_step == 3:  # after the first epoch's checkpoint
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", stop)
    with pytest.raises(KeyboardInterrupt):
        video.main(job)
    monkeypatch.setattr(Trainer, "train_step", step)
    stopped = tmp_path / "stopped" / "last.pt"
    video.main(["--resume", str(stopped), "--train-data", str(tiny_video_set)])
    assert_same_weights(tmp_path / "whole" / "last.pt", stopped)
