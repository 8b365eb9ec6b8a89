"""Tiny job settings shared by the training tests: a 2-block Vision Mamba of width 16 on a few
hundred built-in images, no loader workers, one thread."""

import pytest

from train.data.moving_shapes import ensure_moving_shapes

from .video_jobs import TINY_SIZES

TINY_JOB = [
    "--shapes-train-size",
    "128",
    "--shapes-test-size",
    "64",
    "--batch-size",
    "32",
    "--model-args",
    "{embed_dim: 16, depth: 2}",
    "--num-workers",
    "0",
    "--threads",
    "1",
]


@pytest.fixture
def tiny_job(tmp_path):
    def flags(*extra: str, out: str = "run", classify: bool = True) -> list[str]:
        job = [*TINY_JOB, "--no-linear-baseline"] if classify else TINY_JOB
        return [*job, "--out-dir", str(tmp_path / out), *extra]

    return flags


@pytest.fixture(scope="session")
def tiny_video_set(tmp_path_factory):
    """A tiny set in the built-in video layout (24 / 8 / 8 clips)."""
    return ensure_moving_shapes(tmp_path_factory.mktemp("tiny_video"), TINY_SIZES, seed=3)
