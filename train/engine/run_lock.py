"""One run per output folder.

A run holds its folder while it writes there: ``FOLDER/.run.lock`` names the process (pid,
host, start time, command line) and is removed when the run ends, however it ends. A second
run into the same folder stops with an error naming the folder and the first run, instead of
interleaving logs with it and overwriting its checkpoints. A lock whose process is gone (killed
before it could remove the lock) is taken over with a note; a lock from another host is left
alone, since its process cannot be checked from here. Under ``torchrun`` only the main process,
the one that writes, holds the folder.
"""

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import distributed

LOCK_NAME = ".run.lock"
HOST = socket.gethostname()
_held: set[Path] = set()  # the locks this process holds


class FolderInUseError(RuntimeError):
    """Another run is writing to the folder."""


@contextlib.contextmanager
def hold(folder: str | Path) -> Iterator[None]:
    """Holds ``folder`` (created if need be) for the main process until the block ends."""
    if not distributed.is_main():
        yield
        return
    lock = (Path(folder) / LOCK_NAME).absolute()
    _acquire(lock)
    try:
        yield
    finally:
        _release(lock)


def _acquire(lock: Path) -> None:
    lock.parent.mkdir(parents=True, exist_ok=True)
    owner = {
        "pid": os.getpid(),
        "host": HOST,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    # Written whole under a name of its own, then linked to the lock's name, which fails if the
    # lock exists: another run never sees a half-written lock.
    draft = lock.with_name(f"{LOCK_NAME}.{HOST}.{os.getpid()}")
    draft.write_text(json.dumps(owner))
    try:
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                os.link(draft, lock)
            except FileExistsError:
                _remove_if_stale(lock)
                continue
            _held.add(lock)
            return
        raise FolderInUseError(f"{lock.parent} was taken by another run while starting")
    finally:
        draft.unlink()


def _remove_if_stale(lock: Path) -> None:
    """Removes ``lock`` if its run has ended; else raises ``FolderInUseError`` naming the run."""
    holder = _read(lock)
    if holder is None:  # released meanwhile
        return
    if _alive(lock, holder):
        run = f"pid {holder.get('pid')} on {holder.get('host')}"
        run += f" since {holder['started']}" if "started" in holder else ""
        run += f": {holder.get('command', '')}"
        remedy = "wait for it to end, or write to another folder (--out-dir)"
        if holder.get("host") != HOST:
            remedy += (
                f"; its host cannot be checked from here: if that run has ended, remove {lock}"
            )
        raise FolderInUseError(f"{lock.parent} is in use by another run: {run}; {remedy}")
    print(
        f"note: taking over {lock.parent} from a run that ended without releasing it "
        f"(pid {holder.get('pid')} on {holder.get('host')})",
        flush=True,
    )
    lock.unlink(missing_ok=True)


def _read(lock: Path) -> dict[str, Any] | None:
    """Who holds ``lock`` (empty if the file does not say), or None if there is no lock."""
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # not written by this module
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(lock: Path, holder: dict[str, Any]) -> bool:
    """Whether the run that wrote ``holder`` may still be running."""
    pid = holder.get("pid")
    if holder.get("host") != HOST:
        return bool(holder)  # cannot be checked from this host
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():  # this process, or an earlier one that had its pid
        return lock in _held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _release(lock: Path) -> None:
    _held.discard(lock)
    holder = _read(lock) or {}
    if (holder.get("pid"), holder.get("host")) == (os.getpid(), HOST):
        lock.unlink()
