"""The image jobs' shared setup: data settings (and Vision Mamba's configuration keys for them),
splits, loaders, the test-split report and the backbone sized for the data."""

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import DataLoader

from python_models import create_model

from ..data import DATASETS, BatchTransform, DataSplits, load_splits, make_loader
from ..engine import checkpoint, distributed
from ..engine.config import (
    FRACTION,
    IMAGE_SIDE,
    Range,
    Translation,
    at_least,
    checked,
    field,
    to_model_arg,
)
from ..engine.trainer import EngineConfig, Trainer, mixed_precision


@dataclasses.dataclass
class DataConfig:
    """Which data set, and how training images are augmented."""

    dataset: str = field(
        "shapes",
        "data set (shapes is built in; folder reads DATA_DIR/train and /test; names in any case)",
        DATASETS,
    )
    data_dir: str = field("data", "where data sets are read from (and downloaded to)")
    download: bool = field(True, "download a missing data set")
    image_size: int = field(32, "image side for the folder data set", IMAGE_SIDE)
    shapes_train_size: int = field(10000, "training images of the built-in data set", at_least(1))
    shapes_test_size: int = field(2000, "test images of the built-in data set", at_least(1))
    val_split: float = field(
        0.1,
        "share of each class of the training set held out for validation, seeded (0: with --val-data)",
        FRACTION,
    )
    val_data: str = field("", "a folder of class sub-folders to validate on (with --val-split 0)")
    crop_padding: int = field(
        4, "random crop after zero padding by this many pixels (0: off)", at_least(0)
    )
    flip: bool = field(True, "random horizontal flips")
    rand_augment_ops: int = field(0, "RandAugment ops per image (0: off)", at_least(0))
    rand_augment_magnitude: float = field(9.0, "RandAugment magnitude", Range(0, 10))
    dihedral: bool = field(False, "random dihedral transforms: 90° rotations and flips")
    color_jitter: float = field(
        0.0, "random brightness, contrast and saturation by up to this factor (0: off)", FRACTION
    )
    normalize: bool = field(True, "normalise images by the training set's channel statistics")


def _dataset_named(key: str, value: Any) -> dict[str, Any]:
    """`dataset` (CIFAR10, CIFAR100, FashionMNIST, ... in any case)"""
    name = checked(key, value, str).lower().replace("-", "_")
    return {"dataset": {"fashionmnist": "fashion_mnist"}.get(name, name)}


def _model_size(key: str, value: Any) -> dict[str, Any]:
    """`model`: vim_hybrid_SIZE (tiny, small, base or large)"""
    return {"model": f"vim_hybrid_{checked(key, value, str, ('tiny', 'small', 'base', 'large'))}"}


# Vision Mamba's configuration files (its config.py / configs/*.yaml: model, training, data and
# logging sections), as this package's image-job settings.
VISION_MAMBA_KEYS: dict[str, Translation] = {
    "model.size": _model_size,
    **{
        f"model.{name}": to_model_arg(name, kind)
        for name, kind in (
            ("embed_dim", int),
            ("depth", int),
            ("num_heads", int),
            ("d_state", int),
            ("d_conv", int),
            ("expand", int),
            ("patch_size", int),
            ("drop_rate", float),
            ("drop_path_rate", float),
        )
    },
    "model.dropout": to_model_arg("drop_rate", float),
    "model.img_size": "image_size",
    "training.learning_rate": "lr",
    "training.min_lr": "min_lr",
    "training.weight_decay": "weight_decay",
    "training.epochs": "epochs",
    "training.batch_size": "batch_size",
    "training.warmup_epochs": "warmup_epochs",
    "training.scheduler": "scheduler",
    "training.step_size": "step_size",
    "training.gamma": "gamma",
    "training.scheduler_patience": "plateau_patience",
    "training.scheduler_factor": "plateau_factor",
    "training.early_stopping_patience": "patience",
    "training.gradient_clip": "clip_grad",
    "training.mixed_precision": mixed_precision,
    "training.normalize": "normalize",
    "training.num_workers": "num_workers",
    "data.dataset_name": _dataset_named,
    "data.data_dir": "data_dir",
    "data.image_size": "image_size",
    "data.val_split": "val_split",
    "data.num_workers": "num_workers",
    "logging.output_dir": "out_dir",
    "logging.save_every": "save_every",
}


@dataclasses.dataclass
class BuiltinJobConfig(EngineConfig, DataConfig):
    """What every image job shares, with the defaults of the built-in jobs: a small Vision Mamba
    on the shapes data set, on the CPU."""

    model: str = field("vim_shapes", "registered model name (python_models.list_models())")
    model_args: dict = field({}, "overrides of the model's preset")
    # Engine and data settings whose defaults differ for the built-in jobs.
    epochs: int = field(5, "training epochs")
    batch_size: int = field(64, "images per step on each process")
    warmup_epochs: float = field(0.5, "linear warm-up, in epochs")
    threads: int = field(1, "CPU threads for torch (0: torch's default)")
    num_workers: int = field(0, "data-loader worker processes")
    shapes_train_size: int = field(8000, "training images of the built-in data set")
    crop_padding: int = field(0, "random crop after zero padding by this many pixels (0: off)")
    evaluate_test: bool = field(
        True, "evaluate the test split once at the end, with the last and the best weights"
    )


def data_for(config: Any) -> tuple[DataSplits, BatchTransform]:
    splits = load_splits(
        config.dataset,
        config.data_dir,
        config.download,
        config.image_size,
        config.shapes_train_size,
        config.shapes_test_size,
        seed=config.seed,
        val_split=config.val_split,
        val_dir=config.val_data or None,
    )
    transform = BatchTransform(
        splits.mean,
        splits.std,
        crop_padding=config.crop_padding,
        flip=config.flip,
        rand_augment_ops=config.rand_augment_ops,
        rand_augment_magnitude=config.rand_augment_magnitude,
        dihedral=config.dihedral,
        color_jitter=config.color_jitter,
        normalize=config.normalize,
    )
    return splits, transform


def loaders_for(config: Any, splits: DataSplits) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Training, validation and test loaders; a job that selects on validation needs one."""
    if splits.val is None:
        raise ValueError(
            "val_split: expected a fraction in (0, 1), or 0 with --val-data: this job chooses "
            "its best checkpoint on a validation set, never on the test split"
        )
    train = make_loader(splits.train, config.batch_size, True, config.num_workers, config.seed)
    val, test = (
        make_loader(split, config.batch_size, False, config.num_workers, config.seed)
        for split in (splits.val, splits.test)
    )
    return train, val, test


def report_test(trainer: Trainer, test_loader: DataLoader, metric: str) -> dict[str, float]:
    """The test split's one evaluation (last and best weights), printed on the main process;
    returns ``test_<metric>`` and ``best_test_<metric>`` with the validation metric that chose
    the best checkpoint."""
    results = trainer.test(test_loader)
    summary = {
        f"test_{metric}": results["last"][metric],
        f"best_test_{metric}": results["best"][metric],
        f"best_val_{metric}": trainer.best,
    }
    if distributed.is_main():
        print(
            f"test split, once: {metric} {results['last'][metric]:.4f} with the last weights "
            f"(epoch {trainer.epoch}), {results['best'][metric]:.4f} with the best checkpoint "
            f"(validation {metric} {trainer.best:.4f})",
            flush=True,
        )
    return summary


def build_backbone(
    name: str, model_args: dict[str, Any], splits: DataSplits, num_classes: int
) -> nn.Module:
    """The registered model sized for the data: image side, channels and classes."""
    channels, height, _ = splits.image_shape
    return create_model(
        name, img_size=height, in_chans=channels, num_classes=num_classes, **model_args
    )


def load_encoder_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Loads the weights of a classification or MAE checkpoint into ``model`` (an MAE
    checkpoint's encoder); the classification head is left as initialised. Returns the keys that
    kept their initial values."""
    weights = checkpoint.load(path, accept=("classify", "mae"))["model"]
    if any(key.startswith("encoder.") for key in weights):
        weights = {
            key[len("encoder.") :]: value
            for key, value in weights.items()
            if key.startswith("encoder.")
        }
    weights = {key: value for key, value in weights.items() if not key.startswith("head.")}
    result = model.load_state_dict(weights, strict=False)
    not_head = [key for key in result.missing_keys if not key.startswith("head.")]
    if not_head or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit the model (missing {not_head}, unexpected {result.unexpected_keys}); "
            "build the model with the configuration the checkpoint was trained with"
        )
    return result.missing_keys


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
