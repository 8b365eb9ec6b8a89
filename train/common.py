"""Pieces the job CLIs share: data settings, seeding and process set-up, model loading."""

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from python_models import create_model

from . import checkpoint, distributed
from .config import IMAGE_SIDE, Range, at_least, field, load_config
from .data import DATASETS, BatchTransform, DataSplits, load_splits, make_loader
from .engine import EngineConfig


@dataclasses.dataclass
class DataConfig:
    """Which data set, and how training images are augmented."""

    dataset: str = field(
        "shapes", "data set (shapes is built in; folder reads DATA_DIR/train and /test)", DATASETS
    )
    data_dir: str = field("data", "where data sets are read from (and downloaded to)")
    download: bool = field(True, "download a missing data set")
    image_size: int = field(32, "image side for the folder data set", IMAGE_SIDE)
    shapes_train_size: int = field(10000, "training images of the built-in data set", at_least(1))
    shapes_test_size: int = field(2000, "test images of the built-in data set", at_least(1))
    crop_padding: int = field(
        4, "random crop after zero padding by this many pixels (0: off)", at_least(0)
    )
    flip: bool = field(True, "random horizontal flips")
    rand_augment_ops: int = field(0, "RandAugment ops per image (0: off)", at_least(0))
    rand_augment_magnitude: float = field(9.0, "RandAugment magnitude", Range(0, 10))


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


def start(config: Any) -> torch.device:
    """Seeds every generator (differently on each process), sets the thread count and starts
    the process group under torchrun."""
    device = distributed.setup(config.device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    seed_all(config.seed + distributed.rank())
    return device


def seed_all(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_for(config: Any) -> tuple[DataSplits, BatchTransform]:
    splits = load_splits(
        config.dataset,
        config.data_dir,
        config.download,
        config.image_size,
        config.shapes_train_size,
        config.shapes_test_size,
    )
    transform = BatchTransform(
        splits.mean,
        splits.std,
        crop_padding=config.crop_padding,
        flip=config.flip,
        rand_augment_ops=config.rand_augment_ops,
        rand_augment_magnitude=config.rand_augment_magnitude,
    )
    return splits, transform


def loaders_for(config: Any, splits: DataSplits):
    train = make_loader(splits.train, config.batch_size, True, config.num_workers, config.seed)
    test = make_loader(splits.test, config.batch_size, False, config.num_workers, config.seed)
    return train, test


def build_backbone(
    name: str, model_args: dict[str, Any], splits: DataSplits, num_classes: int
) -> nn.Module:
    """The registered model sized for the data: image side, channels and classes."""
    channels, height, _ = splits.image_shape
    return create_model(
        name, img_size=height, in_chans=channels, num_classes=num_classes, **model_args
    )


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
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


def plain(config: Any) -> dict[str, Any]:
    """A config as plain values (what a checkpoint may hold)."""
    return dataclasses.asdict(config)


def run_job(
    config_class: type, run: Callable[[Any], dict], argv: list[str] | None, module: str, doc: str
) -> dict:
    """A job's ``main``: its settings (dataclass defaults, then ``--config`` YAML, then flags;
    ``python -m module --help`` with the first line of ``doc``), then ``run``; the process group
    is torn down however the run ends."""
    config = load_config(config_class, argv, f"python -m {module}", doc.splitlines()[0])
    try:
        return run(config)
    finally:
        distributed.cleanup()
