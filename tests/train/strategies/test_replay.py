"""ReplayBuffer: reservoir sampling keeps every item of a stream with probability
capacity / length (a statistical test with fixed seeds), the class-balanced buffer stays
balanced, and sampling is reproducible."""

import io

import pytest
import torch

from train.strategies import ReplayBuffer

STREAM, CAPACITY, TRIALS = 40, 10, 3000


def test_reservoir_keeps_each_item_with_probability_capacity_over_length():
    counts = torch.zeros(STREAM)
    items = torch.arange(STREAM, dtype=torch.float32)[:, None]
    for trial in range(TRIALS):
        buffer = ReplayBuffer(CAPACITY, "reservoir", seed=trial)
        for start in range(0, STREAM, 7):  # uneven batches: the fill and the replacement paths
            buffer.add(items[start : start + 7], torch.zeros(len(items[start : start + 7])))
        assert len(buffer) == CAPACITY and buffer.images.unique().numel() == CAPACITY
        counts[buffer.images[:, 0].long()] += 1
    p = CAPACITY / STREAM
    expected, spread = TRIALS * p, (TRIALS * p * (1 - p)) ** 0.5
    # Every item within 4.5 standard deviations, and the chi-square of the counts below its
    # 0.999 quantile (about 73 for 39 degrees of freedom).
    assert ((counts - expected).abs() < 4.5 * spread).all(), counts
    chi_square = ((counts - expected) ** 2 / expected).sum() / (1 - p)
    assert chi_square < 73, chi_square


def test_class_balanced_buffer_evens_out_an_imbalanced_stream():
    labels = torch.cat([torch.zeros(60), torch.ones(10), torch.full((30,), 2)]).long()
    buffer = ReplayBuffer(12, "class_balanced", seed=0)
    buffer.add(torch.arange(100.0)[:, None], labels)
    assert torch.bincount(buffer.labels).tolist() == [4, 4, 4]
    assert (labels[buffer.images[:, 0].long()] == buffer.labels).all()


def test_sampling_is_reproducible_and_state_loads_with_weights_only():
    buffer = ReplayBuffer(8, seed=1)
    buffer.add(torch.arange(20.0)[:, None], torch.arange(20) % 3)
    first = buffer.sample(5, torch.Generator().manual_seed(3))
    again = buffer.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and first[0].unique().numel() == 5
    assert buffer.sample(50)[0].shape[0] == 8
    saved = io.BytesIO()
    torch.save(buffer.state_dict(), saved)
    saved.seek(0)
    restored = ReplayBuffer(8, seed=99)
    restored.load_state_dict(torch.load(saved, weights_only=True))
    more = torch.arange(20.0, 40.0)[:, None], torch.zeros(20).long()
    buffer.add(*more)
    restored.add(*more)
    assert torch.equal(buffer.images, restored.images)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="capacity: expected an int >= 1"):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="mode: expected one of"):
        ReplayBuffer(4, "fifo")
    with pytest.raises(RuntimeError, match="buffer is empty"):
        ReplayBuffer(4).sample(1)
    buffer = ReplayBuffer(4)
    with pytest.raises(ValueError, match="labels: expected one label per image"):
        buffer.add(torch.zeros(3, 2), torch.zeros(2))
