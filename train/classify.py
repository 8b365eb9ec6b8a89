"""``python -m train.classify``: train an image classifier.

With no arguments it trains a small Vision Mamba on the built-in shapes data set (no download)
and prints, beside its test accuracy, the accuracy of a linear classifier on the raw pixels.

    python -m train.classify
    python -m train.classify --config configs/classify_cifar10.yaml --epochs 50
    python -m train.classify --init-from runs/mae/best.pt       # fine-tune an MAE encoder
    python -m train.classify --config configs/hvit_shapes.yaml --depths 1,2,2
    torchrun --nproc_per_node=2 -m train.classify --device cpu  # DistributedDataParallel
"""

import dataclasses
import time

import torch

from . import distributed
from .baselines import linear_probe_accuracy
from .classification import ClassificationTask
from .common import (
    BuiltinJobConfig,
    build_backbone,
    data_for,
    load_pretrained,
    loaders_for,
    plain,
    run_job,
    start,
)
from .config import FRACTION, at_least, field
from .data import ImageTensorDataset
from .engine import Trainer


@dataclasses.dataclass
class ClassifyConfig(BuiltinJobConfig):
    """The defaults are the built-in job: a small Vision Mamba on the shapes data set."""

    label_smoothing: float = field(0.1, "label smoothing", FRACTION)
    mixup_alpha: float = field(0.0, "mixup Beta(alpha, alpha) (0: off)", at_least(0))
    cutmix_alpha: float = field(0.0, "cutmix Beta(alpha, alpha) (0: off)", at_least(0))
    init_from: str = field("", "start from this checkpoint's weights (classifier or MAE encoder)")
    linear_baseline: bool = field(
        True, "also fit a linear classifier on raw pixels (in-memory data sets)"
    )
    lr: float = field(3e-3, "peak learning rate (AdamW)")
    out_dir: str = field("runs/classify", "where checkpoints, metrics and plots go")
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


def run(config: ClassifyConfig) -> tuple[Trainer, dict]:
    """Trains as configured (starting the process group under torchrun); returns the trainer
    and a summary: final and best test accuracy, the linear baseline when asked for, wall and
    CPU time."""
    started, cpu_started = time.perf_counter(), time.process_time()
    device = start(config)
    splits, transform = data_for(config)
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
    train_loader, test_loader = loaders_for(config, splits)
    trainer = Trainer(
        model, task, train_loader, test_loader, config, plain(config), device, job="classify"
    )
    if distributed.is_main():
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{config.model} ({params / 1e6:.2f} M parameters) on {config.dataset}: {len(splits.train)} train / "
            f"{len(splits.test)} test images, device {device}, {torch.get_num_threads()} threads",
            flush=True,
        )
    record = trainer.fit()
    summary = {"test_acc": record.get("val_acc"), "best_test_acc": trainer.best}
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
            f"done in {summary['time_s']:.0f} s (CPU time of this process {summary['cpu_time_s']:.0f} s): "
            f"test accuracy {summary['test_acc']:.4f} (best epoch {trainer.best:.4f})"
        )
        if "linear_probe_acc" in summary:
            print(
                f"linear classifier on raw pixels, same data: test accuracy {summary['linear_probe_acc']:.4f}"
            )
    return trainer, summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(ClassifyConfig, lambda config: run(config)[1], argv, "train.classify", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
