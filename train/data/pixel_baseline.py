"""A linear classifier on raw pixels: the floor a vision model must clearly beat."""

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ImageTensorDataset


def _features(images: Tensor, mean: Tensor | None = None, std: Tensor | None = None):
    x = images.flatten(1).float() / 255
    if mean is None:
        mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, mean, std


def linear_probe_accuracy(
    train: ImageTensorDataset, test: ImageTensorDataset, l2: float = 1e-2, max_iter: int = 100
) -> float:
    """Test accuracy of multinomial logistic regression on standardised raw pixels, fitted with
    L-BFGS and an L2 penalty."""
    x_train, mean, std = _features(train.images)
    x_test, _, _ = _features(test.images, mean, std)
    num_classes = len(train.classes)
    weight = torch.zeros(x_train.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_train @ weight + bias, train.labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((x_test @ weight + bias).argmax(-1) == test.labels).float().mean().item()
