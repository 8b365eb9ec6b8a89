"""EWC: the penalty's shape around the anchor, the Fisher of a model whose per-sample gradients
are known in closed form, the two modes, and state that loads with weights_only."""

import io

import pytest
import torch
from torch import nn

from train.strategies import EWC


def half_squared_error(outputs, targets):
    return 0.5 * (outputs.squeeze(-1) - targets).pow(2).mean()


def linear_regression(seed: int = 0):
    """A linear model y = w·x with the Gaussian negative log-likelihood ½(w·x − y)²: a sample's
    gradient is (w·x − y)·x, so the diagonal Fisher is mean((w·x − y)² x²)."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=gen))
    inputs, targets = torch.randn(10, 3, generator=gen), torch.randn(10, generator=gen)
    batches = [(inputs[:4], targets[:4]), (inputs[4:], targets[4:])]
    return model, inputs, targets, batches


def test_fisher_of_a_quadratic_model_matches_the_hand_computed_one():
    model, inputs, targets, batches = linear_regression()
    residual = inputs @ model.weight.detach()[0] - targets
    expected = (residual[:, None] * inputs).pow(2).mean(0)
    ewc = EWC(model, batches, loss_fn=half_squared_error)
    torch.testing.assert_close(ewc.fishers[0]["weight"][0], expected)


def test_penalty_is_zero_at_the_anchor_and_grows_away_from_it():
    model, _, _, batches = linear_regression()
    ewc = EWC(model, batches, ewc_lambda=10.0, loss_fn=half_squared_error)
    assert ewc.penalty().item() == 0.0
    anchor = model.weight.detach().clone()
    direction = torch.tensor([[1.0, -2.0, 0.5]])
    penalties = []
    for step in (0.1, 0.2, 0.4):
        with torch.no_grad():
            model.weight.copy_(anchor + step * direction)
        penalties.append(ewc.penalty().item())
        expected = 0.5 * 10.0 * (ewc.fishers[0]["weight"] * (step * direction) ** 2).sum()
        assert penalties[-1] == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < penalties[0] < penalties[1] < penalties[2]
    ewc.penalty().backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0


def test_separate_keeps_a_term_per_task_and_online_decays_one():
    model, _, _, batches = linear_regression()
    separate = EWC(model, batches, mode="separate", loss_fn=half_squared_error)
    online = EWC(model, batches, mode="online", decay=0.5, loss_fn=half_squared_error)
    first = separate.fishers[0]["weight"].clone()
    with torch.no_grad():
        model.weight.add_(0.3)
    separate.consolidate(batches)
    online.consolidate(batches)
    second = separate.fishers[1]["weight"]
    assert len(separate.fishers) == 2 and len(online.fishers) == 1
    torch.testing.assert_close(online.fishers[0]["weight"], 0.5 * first + second)
    torch.testing.assert_close(online.anchors[0]["weight"], model.weight.detach())


def test_state_loads_with_weights_only_and_bad_arguments_are_named():
    model, _, _, batches = linear_regression()
    ewc = EWC(model, batches, loss_fn=half_squared_error)
    buffer = io.BytesIO()
    torch.save(ewc.state_dict(), buffer)
    buffer.seek(0)
    restored = EWC(model, loss_fn=half_squared_error)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        model.weight.add_(0.1)
    assert restored.penalty().item() == pytest.approx(ewc.penalty().item())
    with pytest.raises(ValueError, match="mode: expected one of"):
        EWC(model, mode="offline")
    with pytest.raises(ValueError, match="saved in mode 'separate'"):
        EWC(model, mode="online").load_state_dict(ewc.state_dict())
    with pytest.raises(ValueError, match="at least one sample"):
        EWC(model, [], loss_fn=half_squared_error)
