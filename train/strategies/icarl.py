"""iCaRL (Rebuffi et al. 2017): a fixed budget of exemplars chosen by herding, shared equally by
the classes seen so far, distillation from the previous model, and classification by the
nearest mean of exemplars."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models.contract import Classifier

from .lwf import distillation_loss, frozen_copy

FEATURE_BATCH = 256  # images per forward pass when features are extracted


def herding_selection(features: Tensor, count: int) -> Tensor:
    """Indices of ``count`` rows of ``features`` (n, d), in the order herding picks them: the
    k-th pick brings the mean of the first k picks closest to the mean of all rows. The order is
    a priority: the first m picks are the best m-subset herding finds for any m ≤ count."""
    if not 0 <= count <= features.shape[0]:
        raise ValueError(f"count: expected 0 <= count <= {features.shape[0]} rows, got {count}")
    target = features.mean(0)
    running = torch.zeros_like(target)
    available = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    picks = []
    for k in range(1, count + 1):
        distance = (target - (running + features) / k).norm(dim=1)
        index = int(distance.masked_fill(~available, float("inf")).argmin())
        picks.append(index)
        running += features[index]
        available[index] = False
    return torch.tensor(picks, dtype=torch.long, device=features.device)


def embed(model: nn.Module, inputs: Tensor) -> Tensor:
    """L2-normalised pre-logit features of a classifier of ``python_models.contract``
    (``forward_head(forward_features(x), pre_logits=True)``)."""
    return F.normalize(model.forward_head(model.forward_features(inputs), pre_logits=True), dim=-1)


class iCaRL:  # noqa: N801  (the method's own spelling)
    """Exemplar memory, distillation and the nearest-mean-of-exemplars (NME) classifier.

    After each task ``update(images, labels)`` (the task's training images, labels in
    [0, num_classes)) keeps a frozen copy of the model as the next task's teacher, trims every
    old class's exemplars to ``memory_size // classes seen`` (the first ones herding picked) and
    picks that many for each new class by herding on the normalised features; then every class
    mean is recomputed from its exemplars with the current model. Exemplars are stored as given
    (e.g. uint8 images); ``preprocess`` turns them into the model's input.

    Args:
        model: any classifier of the contract (``python_models.contract.Classifier``).
        num_classes: classes of the whole stream (the model's outputs).
        memory_size: exemplars kept in total.
        temperature: distillation temperature.
        preprocess: stored images → model input (default: the identity).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int = 100,
        memory_size: int = 2000,
        temperature: float = 2.0,
        preprocess: Callable[[Tensor], Tensor] | None = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if memory_size < 1:
            raise ValueError(f"memory_size: expected >= 1, got {memory_size}")
        if not isinstance(model, Classifier):
            raise TypeError(
                f"model: expected a classifier of python_models.contract (forward_features, "
                f"forward_head, num_features, ...), got {type(model).__name__}"
            )
        self.model = model
        self.num_classes = num_classes
        self.memory_size = memory_size
        self.temperature = temperature
        self.preprocess = preprocess or (lambda images: images)
        self.old_model: nn.Module | None = None
        self.num_known = 0
        self.exemplar_images: Tensor | None = None
        self.exemplar_labels = torch.zeros(0, dtype=torch.long)
        self.class_means: Tensor | None = None

    # -- training ------------------------------------------------------------------------------

    def distillation(self, inputs: Tensor, logits: Tensor) -> Tensor:
        """Distillation of the previous model's outputs on the old classes (0 on the first
        task)."""
        if self.old_model is None:
            return logits.new_zeros(())
        with torch.no_grad():
            old_logits = self.old_model(inputs)[:, : self.num_known]
        return distillation_loss(logits[:, : self.num_known], old_logits, self.temperature)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Normalised features of stored-form images, in batches, with the model in eval mode."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            return torch.cat(
                [
                    embed(self.model, self.preprocess(chunk.to(device))).float()
                    for chunk in images.split(FEATURE_BATCH)
                ]
            )
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def update(self, images: Tensor, labels: Tensor) -> None:
        """After a task: the new teacher, the rebalanced exemplars and the class means."""
        labels = labels.cpu()
        new_classes = labels.unique().tolist()
        if not new_classes or new_classes[0] < 0 or new_classes[-1] >= self.num_classes:
            raise ValueError(
                f"labels: expected classes in [0, num_classes={self.num_classes}), got {new_classes}"
            )
        self.old_model = frozen_copy(self.model)
        self.num_known = max(self.num_known, new_classes[-1] + 1)
        per_class = self.memory_size // self.num_known
        kept_images, kept_labels = [], []
        if self.exemplar_images is not None:
            for c in self.exemplar_labels.unique().tolist():
                members = (self.exemplar_labels == c).nonzero().squeeze(1)[:per_class]
                kept_images.append(self.exemplar_images[members])
                kept_labels.append(self.exemplar_labels[members])
        for c in new_classes:
            members = (labels == c).nonzero().squeeze(1)
            count = min(per_class, members.numel())
            chosen = members[herding_selection(self.features(images[members]), count).cpu()]
            kept_images.append(images[chosen].cpu())
            kept_labels.append(labels[chosen])
        self.exemplar_images = torch.cat(kept_images)
        self.exemplar_labels = torch.cat(kept_labels)
        self.class_means = self._class_means()

    def _class_means(self) -> Tensor:
        """(num_classes, d) normalised mean exemplar features; zero rows for unseen classes."""
        features = self.features(self.exemplar_images)
        sums = torch.zeros(self.num_classes, features.shape[1]).index_add_(
            0, self.exemplar_labels, features.cpu()
        )
        return F.normalize(sums, dim=-1)

    # -- classification ------------------------------------------------------------------------

    @torch.no_grad()
    def classify(self, inputs: Tensor) -> Tensor:
        """NME scores (batch, num_classes) for model inputs: minus the distance of each
        normalised feature to each class mean, −inf for classes not seen yet."""
        if self.class_means is None:
            raise RuntimeError("classify: no exemplars yet; call update() after a task")
        means = self.class_means.to(inputs.device)
        scores = -torch.cdist(embed(self.model, inputs).float(), means)
        scores[:, self.num_known :] = float("-inf")
        return scores

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "num_known": self.num_known,
            "exemplar_images": self.exemplar_images,
            "exemplar_labels": self.exemplar_labels,
            "class_means": self.class_means,
            "old_model": None if self.old_model is None else self.old_model.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.num_known = state["num_known"]
        self.exemplar_images = state["exemplar_images"]
        self.exemplar_labels = state["exemplar_labels"]
        self.class_means = state["class_means"]
        self.old_model = None
        if state["old_model"] is not None:
            self.old_model = frozen_copy(self.model)
            self.old_model.load_state_dict(state["old_model"])
