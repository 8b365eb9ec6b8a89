"""Image classification: the engine's task, the confusion matrix it is evaluated with, and the
metrics derived from it."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import BatchTransform, mix_batch, readable_batches
from ..engine import distributed


class ClassificationTask:
    """Cross-entropy with label smoothing and optional mixup/cutmix; best checkpoint by accuracy."""

    monitor = "acc"
    mode = "max"

    def __init__(
        self,
        transform: BatchTransform,
        num_classes: int,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ):
        self.transform = transform
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha

    def training_loss(self, model: nn.Module, batch: list[Tensor]) -> Tensor:
        """The loss of one batch. A model may return (segments, batch, classes) logits while
        training (deep supervision, e.g. VisionHRM): the loss is then the mean over segments."""
        images, labels = batch
        x = self.transform(images, train=True)
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            logits = model(x)
            labels = labels.expand(logits.shape[:-1])
            return F.cross_entropy(
                logits.flatten(0, -2), labels.flatten(), label_smoothing=self.label_smoothing
            )
        smooth = self.label_smoothing
        targets = (
            F.one_hot(labels, self.num_classes).float() * (1 - smooth) + smooth / self.num_classes
        )
        x, targets = mix_batch(x, targets, self.mixup_alpha, self.cutmix_alpha)
        return torch.sum(-targets * F.log_softmax(model(x).float(), dim=-1), dim=-1).mean()

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        matrix, loss_sum, _ = confusion_matrix(
            model, loader, self.transform, self.num_classes, device
        )
        total = matrix.sum().item()
        return {"loss": loss_sum / total, "acc": matrix.diag().sum().item() / total}


@torch.no_grad()
def confusion_matrix(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    num_classes: int,
    device: torch.device,
    top_k: int = 1,
) -> tuple[Tensor, float, float]:
    """(classes × classes) counts, rows = true class, columns = prediction, summed over every
    process; the summed cross-entropy; and the share of samples whose label is among the
    ``top_k`` highest logits (with the default 1, the matrix's accuracy)."""
    model.eval()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # cross-entropy, top-k hits
    for batch in readable_batches(loader):
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        logits = model(transform(images, train=False)).float()
        top = logits.topk(min(top_k, num_classes), dim=-1).indices
        sums += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum"),
                (top == labels[:, None]).any(-1).sum(),
            ]
        ).double()
        counts += torch.bincount(
            labels * num_classes + logits.argmax(-1), minlength=num_classes**2
        ).double()
    distributed.all_reduce_sum(counts)
    distributed.all_reduce_sum(sums)
    loss_sum, hits = sums.tolist()
    return counts.view(num_classes, num_classes).cpu(), loss_sum, hits / max(counts.sum().item(), 1)


def per_class_metrics(matrix: Tensor) -> dict[str, Tensor]:
    """Precision, recall and F1 per class from a confusion matrix (0 where undefined)."""
    true_positive = matrix.diag()
    precision = true_positive / matrix.sum(0).clamp_min(1)
    recall = true_positive / matrix.sum(1).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {"precision": precision, "recall": recall, "f1": f1}
