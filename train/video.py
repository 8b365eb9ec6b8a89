"""``python -m train.video``: train a HierarchicalVLM for action recognition.

With no arguments it trains ``hvlm_tiny`` (dense attention) on the built-in video set (twelve
actions that differ only in motion; made on first use) and prints its test accuracy.

    python -m train.video
    python -m train.video --config configs/video_moving_shapes.yaml --attention '{type: performer}'
    python -m train.video --token-merging '{enabled: true, target_compression_ratio: 0.5}'
    python -m train.video --train-data videos/ --val-data videos/       # JSON layout folders
    python -m train.video --train-data train.txt --val-data val.txt     # 'path label' lists
    python -m train.video --checkpoint-every 20 --resume last           # mid-epoch resume
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from python_models import create_model
from python_models.video import MERGE_MODES, MIXERS, merge_ratio_at
from python_models.video.mixers import mixer_options

from . import distributed
from .classification import ClassificationTask
from .common import plain, run_job, start
from .config import field
from .data import ClipTransform, SelectFields, VideoDataset, make_loader
from .data.annotations import read_json_split, read_video_list
from .data.moving_shapes import load_moving_shapes
from .engine import EngineConfig, Trainer

# Sections of settings with the source design's keys, and their defaults.
ATTENTION_DEFAULTS = {"type": "full"}  # plus the chosen type's own options
TOKEN_MERGING_DEFAULTS = {
    "enabled": False,
    "target_compression_ratio": 0.5,
    "merge_at": [1],
    "mode": "motion",  # motion, similarity or random (the baseline)
    "motion_alpha": 0.5,
    "motion_source": "frame_difference",  # or optical_flow (OpenCV Farneback, CPU)
    "importance_weight": 1.0,
    "proportional_attention": False,  # ToMe's size-weighted attention (full attention)
    "ramp_fraction": 0.0,  # share of training over which the ratio ramps up from 0
}
VIDEO_DEFAULTS = {
    "num_frames": 8,  # frames sampled per clip (one per TSN segment)
    "frame_size": 64,
    "num_clips": 1,  # views averaged at test time
    "backend": None,  # decord or opencv (None: decord when installed)
}
CLIP_MEAN, CLIP_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def section(name: str, values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` over ``defaults``; a key that is not among them is an error naming both."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **values}


@dataclasses.dataclass
class VideoConfig(EngineConfig):
    """The defaults are the built-in job: hvlm_tiny on the built-in video set, on the CPU."""

    model: str = field("hvlm_tiny", "registered video model (python_models.list_models())")
    model_args: dict = field({}, "overrides of the model's preset")
    attention: dict = field(ATTENTION_DEFAULTS, "model.attention: type and its options")
    token_merging: dict = field(TOKEN_MERGING_DEFAULTS, "model.token_merging settings")
    video: dict = field(VIDEO_DEFAULTS, "data.video: num_frames, frame_size, num_clips, backend")
    train_data: str = field("", "training videos: a JSON-layout folder or a list file")
    val_data: str = field("", "validation videos: a JSON-layout folder or a list file")
    data_dir: str = field("data", "where the built-in video set is made and read")
    num_classes: int = field(0, "classes (0: 1 + the largest training label)")
    crop_scale: list = field([1.0, 1.0], "random resized crop: area fraction range (1, 1: off)")
    label_smoothing: float = field(0.0, "label smoothing")
    epochs: int = field(30, "training epochs")
    batch_size: int = field(16, "clips per step on each process")
    lr: float = field(3e-3, "peak learning rate (AdamW)")
    warmup_epochs: float = field(1.0, "linear warm-up, in epochs")
    threads: int = field(2, "CPU threads for torch (0: torch's default)")
    num_workers: int = field(0, "data-loader worker processes")
    out_dir: str = field("runs/video", "where checkpoints, metrics and plots go")

    def __post_init__(self) -> None:
        super().__post_init__()
        attention_type = self.attention.get("type", ATTENTION_DEFAULTS["type"])
        if attention_type not in MIXERS:
            raise ValueError(
                f"model.attention.type must be one of {sorted(MIXERS)}, got {attention_type!r}"
            )
        options = {name: None for name in mixer_options(attention_type)}
        self.attention = section("model.attention", self.attention, {"type": None, **options})
        self.token_merging = section(
            "model.token_merging", self.token_merging, TOKEN_MERGING_DEFAULTS
        )
        if self.token_merging["mode"] not in MERGE_MODES:
            raise ValueError(
                f"model.token_merging.mode must be one of {list(MERGE_MODES)}, "
                f"got {self.token_merging['mode']!r}"
            )
        ratio = self.token_merging["target_compression_ratio"]
        if not 0 <= ratio < 1:
            raise ValueError(
                f"model.token_merging.target_compression_ratio must be in [0, 1), got {ratio}"
            )
        self.video = section("data.video", self.video, VIDEO_DEFAULTS)
        for key in ("num_frames", "frame_size", "num_clips"):
            if not isinstance(self.video[key], int) or self.video[key] < 1:
                raise ValueError(
                    f"data.video.{key} must be a positive integer, got {self.video[key]!r}"
                )
        if bool(self.train_data) != bool(self.val_data):
            raise ValueError("give both --train-data and --val-data, or neither (built-in set)")

    @property
    def merging(self) -> bool:
        return bool(self.token_merging["enabled"])


def model_arguments(config: VideoConfig, num_classes: int) -> dict[str, Any]:
    """The model's constructor arguments from the config's sections."""
    attention = dict(config.attention)
    merging = config.token_merging
    return {
        "num_frames": config.video["num_frames"],
        "img_size": config.video["frame_size"],
        "num_classes": num_classes,
        "attention": attention.pop("type"),
        "attention_args": {k: v for k, v in attention.items() if v is not None},
        "merge_ratio": merging["target_compression_ratio"] if config.merging else 0.0,
        "merge_at": merging["merge_at"],
        "merge_mode": merging["mode"],
        "motion_alpha": merging["motion_alpha"],
        "motion_source": merging["motion_source"],
        "importance_weight": merging["importance_weight"],
        "proportional_attention": merging["proportional_attention"],
        "pixel_mean": CLIP_MEAN,
        "pixel_std": CLIP_STD,
        **config.model_args,
    }


def build_model(config: VideoConfig, num_classes: int) -> nn.Module:
    return create_model(config.model, **model_arguments(config, num_classes))


def _records(source: str, split: str):
    path = Path(source)
    return read_json_split(path, split) if path.is_dir() else read_video_list(path)


def datasets_for(config: VideoConfig, split: str, train: bool) -> VideoDataset:
    """A split of the configured data: ``training``, ``validation`` or ``test`` (the built-in
    set's, or the given folder's; a list file is the same for every split)."""
    video = config.video
    sampling = dict(
        train=train,
        num_segments=video["num_frames"],
        num_clips=1 if train else video["num_clips"],
        backend=video["backend"],
    )
    if not config.train_data:
        return load_moving_shapes(Path(config.data_dir) / "moving_shapes", split, **sampling)
    source = config.train_data if split == "training" else config.val_data
    return VideoDataset(_records(source, split), num_classes=config.num_classes or None, **sampling)


class MultiViewClassifier(nn.Module):
    """Averages a classifier's softmax over the views of multi-clip clips (batch, views, T, C,
    H, W) and returns its log; plain clips go straight through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() == 5:
            return self.model(clips)
        logits = self.model(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])
        return logits.float().softmax(-1).mean(1).log()


class VideoClassificationTask(ClassificationTask):
    """Clip classification; with token merging, the compression ratio follows the curriculum
    (``ramp_fraction`` of training from 0 to the target) before every step."""

    def __init__(self, transform: ClipTransform, num_classes: int, config: VideoConfig):
        super().__init__(transform, num_classes, config.label_smoothing)
        self.merging = config.token_merging if config.merging else None

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.merging is not None:
            target, ramp = self.merging["target_compression_ratio"], self.merging["ramp_fraction"]
            model.set_merge_ratio(merge_ratio_at(step, total_steps, target, ramp))

    def evaluate(self, model, loader, device) -> dict[str, float]:
        if self.merging is not None:
            model.set_merge_ratio(self.merging["target_compression_ratio"])
        return super().evaluate(MultiViewClassifier(model), loader, device)


def clip_transform(config: VideoConfig) -> ClipTransform:
    """Augments and normalises clips on the device, resized to ``data.video.frame_size``."""
    size = (config.video["frame_size"],) * 2
    return ClipTransform(CLIP_MEAN, CLIP_STD, size=size, crop_scale=tuple(config.crop_scale))


def loader_for(config: VideoConfig, dataset: VideoDataset, train: bool):
    fields = SelectFields(("frames", "label"))
    return make_loader(dataset, config.batch_size, train, config.num_workers, config.seed, fields)


def run(config: VideoConfig) -> tuple[Trainer, dict]:
    """Trains as configured, then tests the last weights; returns the trainer and a summary
    (test accuracy, best validation accuracy, wall and CPU time)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    device = start(config)
    train_set = datasets_for(config, "training", train=True)
    config.num_classes = train_set.num_classes  # saved with the checkpoints
    val_set = datasets_for(config, "validation", train=False)
    model = build_model(config, train_set.num_classes)
    task = VideoClassificationTask(clip_transform(config), train_set.num_classes, config)
    train_loader, val_loader = (
        loader_for(config, train_set, True),
        loader_for(config, val_set, False),
    )
    trainer = Trainer(model, task, train_loader, val_loader, config, plain(config), device)
    if distributed.is_main():
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{config.model} ({params / 1e6:.2f} M parameters, attention {config.attention['type']}, "
            f"merging {config.merging}): {len(train_set)} train / {len(val_set)} validation clips, "
            f"device {device}, {torch.get_num_threads()} threads",
            flush=True,
        )
    trainer.fit()
    test_loader = loader_for(config, datasets_for(config, "test", train=False), False)
    test = task.evaluate(trainer.eval_model, test_loader, device)
    summary = {
        "test_acc": test["acc"],
        "best_val_acc": trainer.best,
        "time_s": time.perf_counter() - started,
        "cpu_time_s": time.process_time() - cpu_started,
    }
    if distributed.is_main():
        print(
            f"done in {summary['time_s']:.0f} s (CPU time of this process "
            f"{summary['cpu_time_s']:.0f} s): test accuracy {summary['test_acc']:.4f} "
            f"(best validation accuracy {trainer.best:.4f})",
            flush=True,
        )
    return trainer, summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(VideoConfig, lambda config: run(config)[1], argv, "train.video", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
