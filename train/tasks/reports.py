"""What a trained model does on the test split, written as files.

Classifier: the confusion matrix (CSV of counts; PNG of counts and row-normalised shares), a
per-class report (JSON: precision, recall, F1, support, accuracy, macro and weighted averages)
and a grid of sample predictions (PNG). Masked autoencoder: reconstruction metrics (MSE, MAE,
PSNR, SSIM), the same at several mask ratios, and a picture of original / masked /
reconstructed images.

Under torchrun every function reduces over the processes; only the main process writes files.
Masks are drawn from a seeded generator (the global random state is left as it was), so an
evaluation repeats exactly.
"""

import contextlib
import csv
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import BatchTransform, readable_batches
from ..engine import distributed
from ..metrics.figures import new_figure, plot_confusion_matrix, plot_sample_predictions, show_image
from .classification import confusion_matrix, per_class_metrics

if TYPE_CHECKING:
    pass

SAMPLE_GRID_IMAGES = 32  # images in the sample-predictions grid
FIGURE_IMAGES = 8  # images (columns) in a reconstruction figure
MASK_RATIOS = (0.25, 0.5, 0.75, 0.9)  # the mask-ratio analysis
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # the standard Gaussian window


def output_path(out_dir: str | Path, prefix: str, name: str) -> Path:
    """``out_dir/{prefix}_{name}`` (``out_dir/name`` when ``prefix`` is empty)."""
    return Path(out_dir) / (f"{prefix}_{name}" if prefix else name)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode without gradients inside the block; the model's mode is restored after it (the
    MAE job draws reconstructions between training epochs)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The random state seeded with ``seed`` (plus the process's rank) inside the block and put
    back after it, so evaluating leaves the training run's random stream untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed + distributed.rank())
        yield


# -- classification ----------------------------------------------------------------------------


@dataclass
class Predictions:
    """A classifier over a loader: counts over every process, examples from this process."""

    matrix: Tensor  # (classes, classes) counts, rows = true class, columns = prediction
    loss: float  # mean cross-entropy
    images: Tensor  # the first images this process saw (normalised), up to ``keep``
    labels: Tensor
    predicted: Tensor


def predict(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    num_classes: int,
    device: torch.device,
    keep: int = SAMPLE_GRID_IMAGES,
) -> Predictions:
    """``model`` over ``loader``: the confusion matrix and loss (``confusion_matrix``), and the
    first ``keep`` example images with their labels and predictions."""
    with evaluating(model):
        matrix, loss_sum, _ = confusion_matrix(model, loader, transform, num_classes, device)
        examples = first_predictions(model, loader, transform, device, keep)
    return Predictions(matrix, loss_sum / max(matrix.sum().item(), 1), *examples)


@torch.no_grad()
def first_predictions(
    model: nn.Module, loader: DataLoader, transform: BatchTransform, device: torch.device, keep: int
) -> list[Tensor]:
    """The first ``keep`` images this process reads (normalised), their labels and predictions."""
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    for images, labels in readable_batches(loader):
        x = transform(images.to(device, non_blocking=True), train=False)
        kept.append((x.cpu(), labels.cpu(), model(x).argmax(-1).cpu()))
        if sum(len(part[0]) for part in kept) >= keep:
            break
    return [torch.cat(parts)[:keep] for parts in zip(*kept)] if kept else [torch.empty(0)] * 3


def classification_report(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    classes: Sequence[str],
    device: torch.device,
    out_dir: str | Path,
    prefix: str = "test",
) -> dict[str, float]:
    """Evaluates a classifier once over ``loader`` and writes, into ``out_dir``,
    ``{prefix}_confusion_matrix.csv`` / ``.png``, ``{prefix}_classification_report.json`` and
    ``{prefix}_sample_predictions.png``. Returns accuracy ``acc``, mean cross-entropy ``loss``,
    ``macro_precision``, ``macro_recall``, ``macro_f1`` and ``weighted_f1``."""
    report = classification_outputs(model, loader, transform, classes, device, out_dir, prefix)
    return {
        "acc": report["accuracy"],
        "loss": report["loss"],
        **{f"macro_{key}": report["macro_avg"][key] for key in ("precision", "recall", "f1")},
        "weighted_f1": report["weighted_avg"]["f1"],
    }


def classification_outputs(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    classes: Sequence[str],
    device: torch.device,
    out_dir: str | Path,
    prefix: str = "test",
) -> dict[str, Any]:
    """``classification_report``'s files; returns the whole report (``report_from_matrix``)."""
    predictions = predict(model, loader, transform, len(classes), device)
    report = write_classification_report(
        predictions.matrix, classes, out_dir, prefix, predictions.loss
    )
    if distributed.is_main():
        plot_sample_predictions(
            transform.denormalize(predictions.images),
            predictions.labels,
            predictions.predicted,
            classes,
            output_path(out_dir, prefix, "sample_predictions.png"),
        )
    return report


def report_from_matrix(
    matrix: Tensor, classes: Sequence[str], loss: float | None = None
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, their macro (every class counts the
    same) and support-weighted averages, and the counts themselves."""
    shape = (len(classes), len(classes))
    if tuple(matrix.shape) != shape:
        raise ValueError(
            f"matrix: expected {shape} counts for {len(classes)} classes, got {tuple(matrix.shape)}"
        )
    total = matrix.sum().item()
    if total == 0:
        raise ValueError("matrix: no sample was counted (is the test split empty?)")
    metrics = per_class_metrics(matrix.double())
    support = matrix.sum(1).double()

    def averages(weights: Tensor) -> dict[str, float]:
        return {key: (values * weights).sum().item() for key, values in metrics.items()}

    per_class = {
        name: {**{key: values[i].item() for key, values in metrics.items()}, "support": int(n)}
        for i, (name, n) in enumerate(zip(classes, support.tolist()))
    }
    return {
        "accuracy": matrix.diag().sum().item() / total,
        **({"loss": loss} if loss is not None else {}),
        "samples": int(total),
        "per_class": per_class,
        "macro_avg": {
            **averages(torch.full_like(support, 1 / len(classes))),
            "support": int(total),
        },
        "weighted_avg": {**averages(support / total), "support": int(total)},
        "confusion_matrix": matrix.long().tolist(),
    }


def write_classification_report(
    matrix: Tensor,
    classes: Sequence[str],
    out_dir: str | Path,
    prefix: str = "test",
    loss: float | None = None,
) -> dict[str, Any]:
    """The report of ``report_from_matrix``; the main process prints it and writes
    ``{prefix}_classification_report.json`` and ``{prefix}_confusion_matrix.csv`` / ``.png``."""
    report = report_from_matrix(matrix, classes, loss)
    if distributed.is_main():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        print_report(report)
        output_path(out_dir, prefix, "classification_report.json").write_text(
            json.dumps(report, indent=2)
        )
        write_confusion_csv(matrix, classes, output_path(out_dir, prefix, "confusion_matrix.csv"))
        plot_confusion_matrix(matrix, classes, output_path(out_dir, prefix, "confusion_matrix.png"))
    return report


def print_report(report: dict[str, Any]) -> None:
    width = max(14, *(len(name) for name in report["per_class"]))
    print(f"test accuracy {report['accuracy']:.4f} on {report['samples']} samples")
    print(f"{'class':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    averages = {"macro avg": report["macro_avg"], "weighted avg": report["weighted_avg"]}
    rows = {**report["per_class"], **averages}
    for name, row in rows.items():
        print(
            f"{name:>{width}} {row['precision']:>9.4f} {row['recall']:>9.4f} {row['f1']:>9.4f} "
            f"{row['support']:>8}"
        )


def write_confusion_csv(matrix: Tensor, classes: Sequence[str], path: Path) -> None:
    """Counts with a header row of predicted classes and a first column of true classes."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *classes])
        for name, row in zip(classes, matrix.long().tolist()):
            writer.writerow([name, *row])


# -- masked autoencoder ------------------------------------------------------------------------


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Structural similarity of images in [0, 1], one value per image: the standard 11×11
    Gaussian window (σ = 1.5), constants (0.01)² and (0.03)², population (co)variances, the map
    averaged over the window positions inside the image and over the channels."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"ssim: expected two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {tuple(x.shape[-2:])}"
        )
    coords = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - SSIM_WINDOW // 2
    gauss = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    gauss = gauss / gauss.sum()
    channels = x.shape[1]
    kernel = (gauss[:, None] * gauss[None, :]).expand(channels, 1, -1, -1)

    def local_mean(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    covariance = local_mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    similarity = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return similarity.flatten(1).mean(1)


@dataclass
class Reconstruction:
    """An MAE's reconstruction of a batch, in [0, 1]."""

    original: Tensor
    masked: Tensor  # the original with its hidden patches grey: what the encoder sees
    reconstructed: Tensor  # hidden patches predicted, visible ones the original's
    mask: Tensor  # (N, 1, H, W), 1 where a patch was hidden


def reconstruct(model: nn.Module, images: Tensor, transform: BatchTransform) -> Reconstruction:
    """``model.reconstruct`` of ``images`` (normalised by ``transform``), in [0, 1]."""
    prediction, mask = model.reconstruct(images)
    mask = mask.to(images.dtype)
    original = transform.denormalize(images)
    predicted = transform.denormalize(prediction.float())
    return Reconstruction(
        original,
        torch.lerp(original, torch.full_like(original, 0.5), mask),
        torch.lerp(original, predicted, mask),
        mask,
    )


def reconstruction_metrics(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """An MAE at its ``mask_ratio`` over ``loader``, on images in [0, 1]: ``mse``, ``mae``
    (mean absolute error) and ``psnr`` (dB, peak 1, from the MSE) over the hidden pixels — the
    ones the model predicts —, and ``ssim``, the mean SSIM of the reconstructed images (hidden
    patches predicted, visible ones kept) against the originals."""
    sums = torch.zeros(5, dtype=torch.float64, device=device)
    with evaluating(model), seeded(seed, device):
        for images, _ in readable_batches(loader):
            x = transform(images.to(device, non_blocking=True), train=False)
            result = reconstruct(model, x, transform)
            error = result.reconstructed - result.original  # zero where visible
            hidden = result.mask.expand_as(error)
            sums += torch.stack(
                [
                    error.pow(2).sum(),
                    error.abs().sum(),
                    hidden.sum(),
                    ssim(result.reconstructed, result.original).sum(),
                    torch.tensor(len(x), device=device),
                ]
            ).double()
    distributed.all_reduce_sum(sums)
    squared, absolute, hidden_pixels, ssim_sum, count = sums.tolist()
    if hidden_pixels == 0:
        raise ValueError(
            f"reconstruction_metrics: no pixel was hidden (mask_ratio {model.mask_ratio}, "
            f"{int(count)} images); the metrics need a mask ratio above 0 and a non-empty loader"
        )
    mse = squared / hidden_pixels
    return {
        "mse": mse,
        "mae": absolute / hidden_pixels,
        "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
        "ssim": ssim_sum / count,
    }


@contextlib.contextmanager
def with_mask_ratio(model: nn.Module, ratio: float) -> Iterator[nn.Module]:
    """``model.mask_ratio`` set to ``ratio`` inside the block, put back after it."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio: expected a value in (0, 1), got {ratio}")
    if not hasattr(model, "mask_ratio"):
        raise TypeError(f"model: {type(model).__name__} has no mask_ratio attribute")
    trained = model.mask_ratio
    model.mask_ratio = ratio
    try:
        yield model
    finally:
        model.mask_ratio = trained


def mask_ratio_table(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    device: torch.device,
    ratios: Sequence[float] = MASK_RATIOS,
    seed: int = 0,
) -> list[dict[str, float]]:
    """``reconstruction_metrics`` at each mask ratio: rows ``{"mask_ratio", "mse", "mae",
    "psnr", "ssim"}``."""
    rows = []
    for ratio in ratios:
        with with_mask_ratio(model, ratio):
            metrics = reconstruction_metrics(model, loader, transform, device, seed)
        rows.append({"mask_ratio": ratio, **metrics})
    return rows


def format_table(rows: list[dict[str, float]]) -> str:
    """The mask-ratio table as aligned text."""
    lines = [f"{'mask ratio':>10} {'MSE':>9} {'MAE':>9} {'PSNR (dB)':>10} {'SSIM':>7}"]
    lines += [
        f"{row['mask_ratio']:>10.0%} {row['mse']:>9.5f} {row['mae']:>9.5f} {row['psnr']:>10.2f} "
        f"{row['ssim']:>7.4f}"
        for row in rows
    ]
    return "\n".join(lines)


def save_reconstruction_figure(
    model: nn.Module,
    images: Tensor,
    transform: BatchTransform,
    path: str | Path,
    mask_ratios: Sequence[float] = (),
    seed: int = 0,
) -> None:
    """Draws up to ``FIGURE_IMAGES`` of ``images`` (uint8, as the data set gives them) in
    columns; rows: original, masked and reconstructed at the model's mask ratio, or, with
    ``mask_ratios``, masked and reconstructed at each of those."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images: expected the data set's uint8 (N, C, H, W) images, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    device = next(model.parameters()).device
    x = transform(images[:FIGURE_IMAGES].to(device), train=False)
    rows: list[tuple[str, Tensor]] = []
    with evaluating(model), seeded(seed, device):
        for ratio in mask_ratios or (model.mask_ratio,):
            with with_mask_ratio(model, ratio):
                result = reconstruct(model, x, transform)
            rows += [
                (f"masked {ratio:.0%}", result.masked),
                (f"reconstructed {ratio:.0%}", result.reconstructed),
            ]
    rows.insert(0, ("original", result.original))
    figure = new_figure(1.2 * len(x) + 0.8, 1.25 * len(rows))
    axes = figure.subplots(len(rows), len(x), squeeze=False)
    for axes_row, (title, batch) in zip(axes, rows):
        for ax, image in zip(axes_row, batch):
            show_image(ax, image)
        axes_row[0].set_ylabel(title, fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
