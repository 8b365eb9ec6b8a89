"""Tiny job settings shared by the training tests: a 2-block Vision Mamba of width 16 on a few
hundred built-in images, no loader workers, one thread."""

import pytest

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
