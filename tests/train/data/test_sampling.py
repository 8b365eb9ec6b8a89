"""Domain-balanced sampling: the weights by hand, balanced draws from unequal domains, one order
per epoch, shards of one draw, the loader's choice of sampler, a weighted epoch resumed mid-way
by the engine, bad weights."""

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from train.data import WeightedDistributedSampler, domain_balance_weights, make_loader
from train.engine import checkpoint
from train.engine.trainer import EngineConfig, Trainer

# 70 / 20 / 10 % of the samples in domains 0, 1, 2.
DOMAINS = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)


def test_each_domain_gets_the_same_total_weight_unknown_counting_as_one():
    weights = domain_balance_weights([2, 0, 0, -1, 2, 2])
    torch.testing.assert_close(
        weights, torch.tensor([1 / 3, 1 / 2, 1 / 2, 1.0, 1 / 3, 1 / 3], dtype=torch.float64)
    )


def test_unequal_domains_are_drawn_about_equally():
    sampler = WeightedDistributedSampler(domain_balance_weights(DOMAINS), 3000, 1, 0, seed=0)
    drawn = DOMAINS[list(sampler)]
    shares = torch.bincount(drawn, minlength=3) / len(drawn)
    # Binomial standard deviation of a share: sqrt(1/3 · 2/3 / 3000) ≈ 0.009.
    torch.testing.assert_close(shares, torch.full((3,), 1 / 3), atol=0.04, rtol=0)


def test_one_order_per_epoch_and_a_new_one_each_epoch():
    sampler = WeightedDistributedSampler(domain_balance_weights(DOMAINS), 50, 1, 0, seed=3)
    first = list(sampler)
    assert list(sampler) == first and len(first) == len(sampler) == 50
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and list(sampler) == second
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_shards_split_one_draw_without_overlap():
    weights = domain_balance_weights(DOMAINS)
    shards = [list(WeightedDistributedSampler(weights, 10, 3, rank, seed=1)) for rank in range(3)]
    assert [len(shard) for shard in shards] == [4, 4, 4]  # ⌈10 / 3⌉ each
    whole = list(WeightedDistributedSampler(weights, 12, 1, 0, seed=1))
    assert [index for draw in zip(*shards) for index in draw] == whole


def test_make_loader_draws_by_the_weights_and_keeps_shuffling_without_them():
    dataset = TensorDataset(DOMAINS)
    loader = make_loader(dataset, 10, True, 0, 0, sample_weights=domain_balance_weights(DOMAINS))
    assert isinstance(loader.sampler, WeightedDistributedSampler)
    assert sum(len(batch) for (batch,) in loader) == len(dataset)
    assert isinstance(make_loader(dataset, 10, True, 0, 0).sampler, DistributedSampler)


class RegressionTask:
    """Squared error of a linear model on (features, targets) batches."""

    monitor, mode = "loss", "min"

    def training_loss(self, model, batch):
        features, targets = batch
        return (model(features).squeeze(1) - targets).square().mean()

    def evaluate(self, model, loader, device):
        with torch.no_grad():
            return {"loss": sum(self.training_loss(model, b).item() for b in loader)}


def train_weighted(out_dir, resume: str = "") -> dict:
    """One epoch of 5 steps over a weighted loader, a checkpoint every step; the final weights."""
    torch.manual_seed(0)
    dataset = TensorDataset(torch.randn(len(DOMAINS), 3), DOMAINS.float())
    weights = domain_balance_weights(DOMAINS)
    loaders = [make_loader(dataset, 20, True, 0, 0, sample_weights=weights)]
    loaders.append(make_loader(dataset, 20, False, 0, 0))
    config = EngineConfig(
        epochs=1, out_dir=str(out_dir), num_workers=0, checkpoint_every=1, resume=resume
    )
    model, device = torch.nn.Linear(3, 1), torch.device("cpu")
    Trainer(model, RegressionTask(), *loaders, config, {}, device, job="classify").fit()
    return model.state_dict()


def test_the_engine_resumes_a_weighted_epoch_mid_way_to_the_same_weights(tmp_path, monkeypatch):
    straight = train_weighted(tmp_path / "straight")
    real_step = Trainer.train_step

    def stop_after_two_steps(self, batch):
        if self.global_step == 2:
            raise KeyboardInterrupt("stopped mid-epoch")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", stop_after_two_steps)
    with pytest.raises(KeyboardInterrupt):
        train_weighted(tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert checkpoint.load(tmp_path / "resumed" / "last.pt")["epoch_progress"]["steps"] == 2
    resumed = train_weighted(tmp_path / "resumed", resume="last")
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0, -0.5, 2.0], r"finite and non-negative, got values in \[-0.5, 2.0\]"),
        ([1.0, float("nan")], "finite and non-negative"),
        ([0.0, 0.0, 0.0], r"must not all be zero \(3 zeros\)"),
        ([], r"non-empty 1-D tensor, got shape \(0,\)"),
    ],
)
def test_bad_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        WeightedDistributedSampler(weights, num_replicas=1, rank=0)


def test_bad_settings_are_refused():
    weights = torch.ones(4)
    with pytest.raises(ValueError, match=r"num_samples must be >= 1, got 0"):
        WeightedDistributedSampler(weights, 0, 1, 0)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        WeightedDistributedSampler(weights, 4, 2, 2)
    with pytest.raises(ValueError, match=r"one weight per sample \(5\), got 4"):
        make_loader(TensorDataset(torch.arange(5)), 2, True, 0, 0, sample_weights=weights)
    with pytest.raises(ValueError, match="for training loaders only"):
        make_loader(TensorDataset(torch.arange(4)), 2, False, 0, 0, sample_weights=weights)
    with pytest.raises(ValueError, match=r"integer domain indices, got a torch.float32"):
        domain_balance_weights([0.5, 1.0])
