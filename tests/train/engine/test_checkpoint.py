import pytest
import torch

from python_models import create_model
from train import classify, continual, evaluate
from train.engine import checkpoint
from train.tasks import images

# Byte patterns that occur once in a saved file: a weight and an optimizer moment.
WEIGHT = torch.full((16,), 1.25)
MOMENT = torch.full((16,), -3.5)


def tiny_state(**extra) -> dict:
    return {
        "model": {"w": WEIGHT.clone()},
        "optimizer": {"state": {0: {"exp_avg": MOMENT.clone()}}, "param_groups": [{"lr": 0.1}]},
        "epoch": 1,
        "config": {"a": [1, 2]},
        "rng": checkpoint.rng_state(),
        **extra,
    }


def test_save_and_load_round_trip(tmp_path):
    state = tiny_state()
    checkpoint.save(state, tmp_path / "ck.pt", job="classify")
    loaded = checkpoint.load(tmp_path / "ck.pt")
    assert torch.equal(loaded["model"]["w"], WEIGHT) and loaded["config"] == {"a": [1, 2]}
    assert loaded["job"] == "classify"
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_rng_state_round_trip():
    state = checkpoint.rng_state()
    expected = torch.rand(3)
    torch.rand(5)
    checkpoint.set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def flip_byte_in(path, pattern: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(pattern.numpy().tobytes())
    assert at >= 0 and data.count(pattern.numpy().tobytes()) == 1
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("pattern", [WEIGHT, MOMENT], ids=["weight", "optimizer"])
def test_flipped_bytes_are_caught_by_the_digest(tmp_path, pattern):
    path = tmp_path / "ck.pt"
    checkpoint.save(tiny_state(), path, job="classify")
    flip_byte_in(path, pattern)
    assert torch.load(path, weights_only=True)  # torch itself reads the damaged file
    with pytest.raises(checkpoint.CheckpointError, match=r"ck.pt is corrupt \(digest mismatch\)"):
        checkpoint.load(path)


def test_each_kind_of_refused_file_has_its_own_message(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(path)
    checkpoint.save(tiny_state(), path, job="classify")
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(checkpoint.CheckpointError, match="cut short"):
            checkpoint.load(path)
    path.write_text("epoch: 3\n")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint: not a zip archive"):
        checkpoint.load(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="not an hvision training checkpoint"):
        checkpoint.load(path)
    torch.save(tiny_state(), path)
    with pytest.raises(checkpoint.CheckpointError, match="carries no digest"):
        checkpoint.load(path)


class RunsCode:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_that_would_run_code_is_called_unsafe(tmp_path, capsys):
    path = tmp_path / "ck.pt"
    torch.save(tiny_state(payload=RunsCode()), path)
    with pytest.raises(checkpoint.CheckpointError, match=r"unsafe \(would run code\)"):
        checkpoint.load(path)
    assert "code ran" not in capsys.readouterr().out


def test_a_checkpoint_of_another_job_names_its_job_and_the_readers(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save(tiny_state(), path, job="video")
    message = (
        r"not a checkpoint of this job \(it is a video checkpoint\); "
        r"this reads checkpoints of classify or mae"
    )
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(path, accept=("classify", "mae"))
    with pytest.raises(ValueError, match="unknown job 'clasify'"):
        checkpoint.load(path, accept=("clasify",))


@pytest.fixture
def continual_checkpoint(tmp_path):
    path = tmp_path / "continual.pt"
    model = create_model("vim_shapes", embed_dim=16, depth=2)
    checkpoint.save({"model": model.state_dict(), "epoch": 1, "config": {}}, path, job="continual")
    return path


def test_every_load_site_refuses_another_jobs_checkpoint(continual_checkpoint, tiny_job):
    refused = r"not a checkpoint of this job \(it is a continual checkpoint\)"
    with pytest.raises(checkpoint.CheckpointError, match=refused):
        evaluate.main(["--checkpoint", str(continual_checkpoint), "--threads", "1"])
    with pytest.raises(checkpoint.CheckpointError, match=refused):
        images.load_encoder_weights(create_model("vim_shapes"), continual_checkpoint)
    with pytest.raises(checkpoint.CheckpointError, match=refused):
        classify.main(tiny_job("--epochs", "1", "--resume", str(continual_checkpoint)))
    classify_checkpoint = continual_checkpoint.with_name("classify.pt")
    checkpoint.save(checkpoint.load(continual_checkpoint), classify_checkpoint, job="classify")
    config = continual.ContinualConfig(resume="last")
    with pytest.raises(checkpoint.CheckpointError, match="it is a classify checkpoint"):
        continual.resume_state(config, "finetune", None, classify_checkpoint)


def test_resume_and_evaluate_refuse_a_corrupt_checkpoint(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    path = tmp_path / "run" / "last.pt"
    weight = checkpoint.load(path)["model"]["head.weight"]
    flip_byte_in(path, weight)
    corrupt = r"last.pt is corrupt \(digest mismatch\)"
    with pytest.raises(checkpoint.CheckpointError, match=corrupt):
        classify.main(tiny_job("--epochs", "2", "--resume", "last"))
    with pytest.raises(checkpoint.CheckpointError, match=corrupt):
        evaluate.main(["--checkpoint", str(path), "--threads", "1"])
    with pytest.raises(checkpoint.CheckpointError, match=corrupt):
        classify.main(tiny_job("--epochs", "1", "--init-from", str(path), out="tuned"))


def test_a_truncated_checkpoint_stops_a_resume_with_a_clear_error(tiny_job, tmp_path):
    classify.main(tiny_job("--epochs", "1"))
    path = tmp_path / "run" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="cut short"):
        classify.main(tiny_job("--epochs", "2", "--resume", "last"))


def test_a_save_removes_the_temporary_file_a_killed_save_left(tmp_path):
    path = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.tmp4242"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".best.pt.tmp4242"  # another checkpoint's: not this save's business
    other.write_bytes(b"half a checkpoint")
    checkpoint.save(tiny_state(), path, job="classify")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.pt.tmp4242", "last.pt"]
