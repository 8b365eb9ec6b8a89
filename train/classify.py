"""``python -m train.classify``: train an image classifier.

With no arguments it trains a small Vision Mamba on the built-in shapes data set (no download)
and prints, beside its test accuracy, the accuracy of a linear classifier on the raw pixels.

    python -m train.classify
    python -m train.classify --config cifar10_tiny          # configs/cifar10_tiny.yaml
    python -m train.classify --config configs/classify_cifar10.yaml --epochs 50
    python -m train.classify --init-from runs/mae/best.pt       # fine-tune an MAE encoder
    python -m train.classify --config configs/hvit_shapes.yaml --depths 1,2,2
    torchrun --nproc_per_node=2 -m train.classify --device cpu  # DistributedDataParallel
"""

import dataclasses
import os
import time
from typing import Any, ClassVar

import torch

from . import checkpoint, distributed
from .baselines import linear_probe_accuracy
from .classification import ClassificationTask
from .common import (
    VISION_MAMBA_KEYS,
    BuiltinJobConfig,
    build_backbone,
    data_for,
    load_pretrained,
    loaders_for,
    plain,
    report_test,
    run_job,
    start,
)
from .config import FRACTION, Translation, at_least, checked, field, to_model_arg
from .data import ImageTensorDataset
from .engine import Trainer
from .reports import classification_report


def _global_batch_size(key: str, value: Any) -> dict[str, Any]:
    """`batch_size`: the global batch divided by the processes (WORLD_SIZE)"""
    processes = int(os.environ.get("WORLD_SIZE", 1))
    total = checked(key, value, int, at_least(processes))
    if total % processes:
        raise ValueError(f"{key}: {total} does not divide among {processes} processes")
    return {"batch_size": total // processes}


# The Vision HRM's configuration (its arch section and training keys).
VISION_HRM_KEYS: dict[str, Translation] = {
    **{
        f"arch.{name}": to_model_arg(argument, int)
        for name, argument in (
            ("hidden_size", "hidden_dim"),
            ("num_heads", "num_heads"),
            ("H_layers", "h_layers"),
            ("L_layers", "l_layers"),
            ("H_cycles", "h_cycles"),
            ("L_cycles", "l_cycles"),
            ("patch_size", "patch_size"),
        )
    },
    "global_batch_size": _global_batch_size,
}


@dataclasses.dataclass
class ClassifyConfig(BuiltinJobConfig):
    """The defaults are the built-in job: a small Vision Mamba on the shapes data set."""

    SOURCE_NAME: ClassVar[str] = "Vision Mamba's and the Vision HRM's config files"
    SOURCE_KEYS: ClassVar[dict[str, Translation]] = {**VISION_MAMBA_KEYS, **VISION_HRM_KEYS}

    label_smoothing: float = field(0.1, "label smoothing", FRACTION)
    mixup_alpha: float = field(0.0, "mixup Beta(alpha, alpha) (0: off)", at_least(0))
    cutmix_alpha: float = field(0.0, "cutmix Beta(alpha, alpha) (0: off)", at_least(0))
    init_from: str = field("", "start from this checkpoint's weights (classifier or MAE encoder)")
    linear_baseline: bool = field(
        True, "also fit a linear classifier on raw pixels (in-memory data sets)"
    )
    lr: float = field(3e-3, "peak learning rate (AdamW)")
    out_dir: str = field("runs/classify", "where checkpoints, metrics and plots go")
    # 8010 training images once the validation tenth (890) is held out.
    shapes_train_size: int = field(8900, "training images of the built-in data set")
    # Shorthands for the stage layout of hierarchical models (HierarchicalViT).
    embed_dims: list = field([], "widths of the stages (empty: the preset's); put into model_args")
    depths: list = field([], "blocks of the stages (empty: the preset's); put into model_args")
    num_heads: list = field(
        [], "attention heads of the stages (empty: the preset's); put into model_args"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        stage_layout = {name: getattr(self, name) for name in ("embed_dims", "depths", "num_heads")}
        self.model_args = {
            **self.model_args,
            **{name: value for name, value in stage_layout.items() if value},
        }


def encoder_settings(path: str) -> dict[str, Any]:
    """What a classifier must share with the encoder it starts from beyond its preset: whether
    it has a class token (an MAE encoder has none unless it was asked for)."""
    if not path:
        return {}
    state = checkpoint.load(path, accept=("classify", "mae"))
    saved = state["config"]
    if "use_cls_token" in saved:  # an MAE job's setting
        return {"use_cls_token": saved["model_args"].get("use_cls_token", saved["use_cls_token"])}
    return {}


def run(config: ClassifyConfig) -> tuple[Trainer, dict]:
    """Trains as configured (starting the process group under torchrun), choosing the best
    checkpoint on the validation split, then evaluates the test split once; returns the trainer
    and a summary: test accuracy with the last and the best weights, the linear baseline when
    asked for, wall and CPU time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    device = start(config)
    splits, transform = data_for(config)
    # Saved with the checkpoint, so that evaluation rebuilds the same model.
    config.model_args = {**encoder_settings(config.init_from), **config.model_args}
    model = build_backbone(config.model, config.model_args, splits, len(splits.classes))
    if config.init_from:
        load_pretrained(model, config.init_from)
    task = ClassificationTask(
        transform,
        len(splits.classes),
        config.label_smoothing,
        config.mixup_alpha,
        config.cutmix_alpha,
    )
    train_loader, val_loader, test_loader = loaders_for(config, splits)
    trainer = Trainer(
        model, task, train_loader, val_loader, config, plain(config), device, job="classify"
    )
    if distributed.is_main():
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{config.model} ({params / 1e6:.2f} M parameters) on {config.dataset}: "
            f"{len(splits.train)} train / {len(splits.val)} validation / {len(splits.test)} test "
            f"images, device {device}, {torch.get_num_threads()} threads",
            flush=True,
        )
    trainer.fit()
    summary = {"val_acc": trainer.record.get("val_acc"), "best_val_acc": trainer.best}
    if config.evaluate_test:
        summary.update(report_test(trainer, test_loader, "acc"))
        report = classification_report(
            trainer.best_model(), test_loader, transform, splits.classes, device, config.out_dir
        )
        summary["best_test_macro_f1"] = report["macro_f1"]
    if (
        distributed.is_main()
        and config.linear_baseline
        and isinstance(splits.train, ImageTensorDataset)
    ):
        summary["linear_probe_acc"] = linear_probe_accuracy(splits.train, splits.test)
    summary["time_s"] = time.perf_counter() - started
    summary["cpu_time_s"] = time.process_time() - cpu_started
    if distributed.is_main():
        print(
            f"done in {summary['time_s']:.0f} s (CPU time of this process "
            f"{summary['cpu_time_s']:.0f} s)"
        )
        if "linear_probe_acc" in summary:
            print(
                "linear classifier on raw pixels, same data: test accuracy "
                f"{summary['linear_probe_acc']:.4f}"
            )
    return trainer, summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(ClassifyConfig, lambda config: run(config)[1], argv, "train.classify", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
