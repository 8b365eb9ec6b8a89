import pytest
import torch

from train import checkpoint, classify


def test_atomic_save_and_load_round_trip(tmp_path):
    state = {
        "model": {"w": torch.arange(3.0)},
        "epoch": 1,
        "config": {"a": [1, 2]},
        "rng": checkpoint.rng_state(),
    }
    checkpoint.save_atomic(state, tmp_path / "ck.pt")
    loaded = checkpoint.load(tmp_path / "ck.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["config"] == {
        "a": [1, 2]
    }
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    expected = torch.rand(3)
    torch.rand(5)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def test_truncated_checkpoint_is_detected_with_a_clear_error(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    path = tmp_path / "run" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="incomplete or corrupt"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="cut short"):
        classify.main(tiny_job("--epochs", "2", "--resume", "last"))


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not an hvision training checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
