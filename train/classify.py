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

import time

import torch

from .data import ImageTensorDataset
from .data.pixel_baseline import linear_probe_accuracy
from .engine import distributed
from .engine.job import plain, run_job, start
from .engine.trainer import Trainer
from .tasks.classification import ClassificationTask
from .tasks.images import (
    ClassifyConfig,
    build_backbone,
    data_for,
    encoder_settings,
    load_encoder_weights,
    loaders_for,
    report_test,
)
from .tasks.reports import classification_report


def run(config: ClassifyConfig) -> dict:
    """Trains as configured (starting the process group under torchrun), choosing the best
    checkpoint on the validation split, then evaluates the test split once; returns a summary:
    test accuracy with the last and the best weights, the linear baseline when
    asked for, wall and CPU time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    device = start(config)
    splits, transform = data_for(config)
    # Saved with the checkpoint, so that evaluation rebuilds the same model.
    config.model_args = {**encoder_settings(config.init_from), **config.model_args}
    model = build_backbone(config.model, config.model_args, splits, len(splits.classes))
    if config.init_from:
        load_encoder_weights(model, config.init_from)
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
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(ClassifyConfig, run, argv, "train.classify", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
