"""Checkpoints: written atomically (a temporary file in the same folder, then a rename, so a
crash never leaves a half-written checkpoint under the real name), signed and checked.

A checkpoint is a dict of tensors and plain containers with at least ``REQUIRED_KEYS``; ``save``
adds ``job`` (the job that wrote it, one of ``JOBS``) and ``sha256``, a digest of everything
else, computed over the values (tensor bytes, dtypes, shapes, plain values), so it does not
depend on how ``torch.save`` lays the file out. ``load`` reads with
``torch.load(weights_only=True)``, checks the digest and the job, and tells the ways a file can
be refused apart: missing, cut short, corrupt (a damaged zip record, or a digest mismatch), not
a checkpoint, unsafe (its pickle would run code), or written by another job. A file without a
digest (written before checkpoints were signed) is refused: its contents cannot be checked.
"""

import hashlib
import os
import pickle
import random
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

JOBS = ("classify", "mae", "video", "memory", "continual")
REQUIRED_KEYS = ("model", "epoch", "config")
DIGEST_KEY = "sha256"
ZIP_MAGIC = b"PK\x03\x04"  # how every file torch.save writes begins
RETRY = "use another checkpoint (best.pt / last.pt) or train again"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: cut short, corrupt, unsafe, or not one of ours."""


def save(state: dict[str, Any], *paths: Path, job: str) -> None:
    """Writes ``state`` signed by ``job`` to each of ``paths`` (signed once)."""
    _check_jobs([job])
    signed = {**state, "job": job}
    signed[DIGEST_KEY] = content_digest(signed)
    for path in paths:
        _write(signed, Path(path))


def _write(signed: dict[str, Any], path: Path) -> None:
    """Writes ``signed`` through a temporary file and a rename; a temporary file a killed save
    left is removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp"
    for stale in path.parent.iterdir():
        if stale.name.startswith(prefix):
            stale.unlink(missing_ok=True)
    temporary = path.with_name(f"{prefix}{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            torch.save(signed, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load(path: Path, accept: Collection[str] = JOBS) -> dict[str, Any]:
    """The checkpoint at ``path``, read onto the CPU and checked against its digest, if a job of
    ``accept`` wrote it; otherwise a ``CheckpointError`` that says what is wrong with the file."""
    _check_jobs(accept)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file can make torch.load fail in any way
        raise CheckpointError(f"checkpoint {path} {_why_unreadable(path, error)}") from error
    _verify(path, state)
    if state["job"] not in accept:
        raise CheckpointError(
            f"{path} is not a checkpoint of this job (it is a {state['job']} "
            f"checkpoint); this reads checkpoints of {' or '.join(accept)}"
        )
    return state


def _check_jobs(jobs: Collection[str]) -> None:
    unknown = [job for job in jobs if job not in JOBS]
    if unknown:
        raise ValueError(f"unknown job {unknown[0]!r}: expected one of {JOBS}")


def _why_unreadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` failed on ``path``, told from the file itself."""
    with open(path, "rb") as file:
        head = file.read(len(ZIP_MAGIC))
    if not zipfile.is_zipfile(path):
        if ZIP_MAGIC.startswith(head):  # empty, or the zip's directory at its end is missing
            return (
                f"is cut short ({path.stat().st_size} bytes): it was not fully written or "
                f"copied; {RETRY}"
            )
        return (
            "is not a checkpoint: not a zip archive as torch.save writes "
            f"({type(error).__name__}: {error})"
        )
    damaged = _damaged_record(path)
    if damaged is not None:
        return f"is corrupt ({damaged}); {RETRY}"
    if isinstance(error, pickle.UnpicklingError):
        return (
            "is unsafe (would run code): its pickle names objects that torch.load "
            f"(weights_only=True) refuses to build; only load it if you trust its source ({error})"
        )
    return f"cannot be read by torch.load ({type(error).__name__}: {error})"


def _damaged_record(path: Path) -> str | None:
    """The first record of the zip archive at ``path`` whose CRC does not match its bytes."""
    if not zipfile.is_zipfile(path):
        return None  # torch's legacy layout: no records to check
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        return f"unreadable zip archive: {error}"
    return None if damaged is None else f"record {damaged} fails its CRC check"


def _verify(path: Path, state: Any) -> None:
    """The digest, or else why there is none: a damaged file must not pass for a foreign one."""
    if isinstance(state, dict) and DIGEST_KEY in state:
        expected = state.pop(DIGEST_KEY)
        if content_digest(state) != expected:
            raise CheckpointError(
                f"checkpoint {path} is corrupt (digest mismatch): its contents changed after it "
                f"was written; {RETRY}"
            )
        return
    damaged = _damaged_record(path)
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt ({damaged}); {RETRY}")
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not an hvision training checkpoint: it lacks {missing}")
    raise CheckpointError(
        f"checkpoint {path} carries no digest (it was written by an earlier version of this "
        "package), so its contents cannot be checked; train again to get a signed checkpoint"
    )


def content_digest(value: Any) -> str:
    """SHA-256 of ``value``: tensors by dtype, shape and bytes, containers item by item, other
    values by type and ``repr`` (exact for the plain values a checkpoint holds)."""
    digest = hashlib.sha256()
    _update(digest, value)
    return digest.hexdigest()


def _update(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        digest.update(f"mapping {len(value)};".encode())
        for key, item in value.items():
            _update(digest, key)
            _update(digest, item)
    elif isinstance(value, (list, tuple)):  # a save may turn one into the other
        digest.update(f"sequence {len(value)};".encode())
        for item in value:
            _update(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def rng_state() -> dict[str, Any]:
    """Every random generator a training run draws from, as tensors and plain containers."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            *numpy_state[2:],
        ],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _as_tuples(value: Any) -> Any:
    """random.setstate wants the nested tuples that a save may have turned into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
