"""One run per output folder: the lock is held while a run writes, released however the run
ends, refused to a second run, and taken over from a run that was killed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train import continual
from train.engine import distributed, run_lock

from ..test_continual import TINY_CLI

REPO = Path(__file__).resolve().parents[3]
HOLD_AND_WAIT = """
import sys, time
from train.engine import run_lock
with run_lock.hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def write_lock(folder: Path, pid: int, host: str = run_lock.HOST) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / run_lock.LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": host, "command": "python -m train.classify"}))
    return lock


def test_a_folder_is_held_until_the_block_ends_however_it_ends(tmp_path):
    lock = tmp_path / run_lock.LOCK_NAME
    with run_lock.hold(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(run_lock.FolderInUseError, match=f"{tmp_path} is in use"):
            with run_lock.hold(tmp_path):
                pass
    assert not lock.exists()
    with pytest.raises(KeyboardInterrupt), run_lock.hold(tmp_path):
        raise KeyboardInterrupt
    assert not lock.exists()


def test_another_process_holds_the_folder_until_it_is_killed(tmp_path, capsys):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-c", HOLD_AND_WAIT, str(tmp_path)]
    other = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(run_lock.FolderInUseError, match=f"pid {other.pid} on {run_lock.HOST}"):
            with run_lock.hold(tmp_path):
                pass
    finally:
        other.kill()
        other.wait()
    with run_lock.hold(tmp_path):
        pass
    assert (
        f"taking over {tmp_path} from a run that ended without releasing it (pid {other.pid}"
        in (capsys.readouterr().out)
    )


def test_our_own_pid_in_a_lock_we_do_not_hold_is_a_previous_life_of_it(tmp_path, capsys):
    write_lock(tmp_path, os.getpid())  # a container restarted: the new run has the old pid
    with run_lock.hold(tmp_path):
        pass
    assert "taking over" in capsys.readouterr().out


def test_a_lock_from_another_host_is_left_to_the_user(tmp_path):
    lock = write_lock(tmp_path, os.getpid(), host="elsewhere")
    message = f"pid {os.getpid()} on elsewhere.*if that run has ended, remove {lock}"
    with pytest.raises(run_lock.FolderInUseError, match=message):
        with run_lock.hold(tmp_path):
            pass


def test_only_the_main_process_holds_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    with run_lock.hold(tmp_path):
        assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_the_continual_job_holds_each_strategys_folder(tmp_path):
    write_lock(tmp_path / "finetune", os.getppid())
    flags = [*TINY_CLI, "--threads", "1", "--num-workers", "0", "--out-dir", str(tmp_path)]
    with pytest.raises(run_lock.FolderInUseError, match=f"{tmp_path / 'finetune'} is in use"):
        continual.main([*flags, "--strategy", "finetune"])
    assert not (tmp_path / "finetune" / continual.LOG).exists()
