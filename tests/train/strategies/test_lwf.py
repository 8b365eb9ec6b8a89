"""LwF: no penalty while the model agrees with its old copy, a positive one on the old classes
once it drifts, and none from the new classes' outputs."""

import pytest
import torch
from torch import nn

from train.strategies import LwF, distillation_loss, frozen_copy


def test_penalty_is_zero_for_the_old_model_and_reads_only_the_old_classes():
    torch.manual_seed(0)
    model = nn.Linear(6, 5)
    lwf = LwF(model, frozen_copy(model), alpha=2.0, temperature=2.0, num_old_classes=3)
    inputs = torch.randn(8, 6)
    assert lwf.penalty(inputs, model(inputs)).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.weight[3:].add_(1.0)  # outputs of the new classes only
    assert lwf.penalty(inputs, model(inputs)).item() == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        model.weight[:3].add_(torch.randn(3, 6))
    logits = model(inputs)
    penalty = lwf.penalty(inputs, logits)
    old = lwf.old_model(inputs)[:, :3]
    assert penalty.item() > 0
    assert penalty.item() == pytest.approx(2.0 * distillation_loss(logits[:, :3], old, 2.0).item())
    penalty.backward()
    assert model.weight.grad[:3].abs().sum() > 0 and lwf.old_model.weight.grad is None


def test_bad_arguments_are_named():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="temperature: expected > 0"):
        LwF(model, frozen_copy(model), temperature=0)
    lwf = LwF(model, frozen_copy(model), num_old_classes=2)
    with pytest.raises(ValueError, match="at least num_old_classes=2 outputs"):
        lwf.penalty(torch.randn(3, 2), torch.randn(3, 1))
