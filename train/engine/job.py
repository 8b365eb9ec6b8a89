"""What every job's CLI does around its run: read the settings, set up the process (seeds,
threads, the process group), run, tear down. A job's ``run(config) -> dict`` returns its
results as plain values (metrics, paths), the same for every job."""

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import distributed
from .config import load_config


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
