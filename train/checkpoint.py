"""Checkpoints: written atomically (a temporary file in the same folder, then a rename, so a
crash never leaves a half-written checkpoint under the real name), and read with
``torch.load(weights_only=True)`` — they hold only tensors and plain containers."""

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REQUIRED_KEYS = ("model", "epoch", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: cut short, corrupt, or not a checkpoint."""


def save_atomic(state: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint, with a clear error for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
    ) as error:
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size} bytes) is incomplete or corrupt — it may have been "
            f"cut short while being written or copied; use another checkpoint (best.pt / last.pt) or "
            f"train again. ({type(error).__name__}: {error})"
        ) from error
    missing = [key for key in REQUIRED_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not an hvision training checkpoint: it lacks {missing}")
    return state


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
