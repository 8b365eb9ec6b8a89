"""Figures, drawn with matplotlib's Agg canvas on a ``Figure`` of their own: no display and no
pyplot state, so drawing is safe in worker processes and tests. matplotlib is imported here
only, when a picture is drawn."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ANNOTATED_CLASSES = 20  # up to this many classes, the confusion matrix shows its numbers


def new_figure(width: float, height: float, layout: str | None = None) -> "Figure":
    """A figure of ``width`` × ``height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def show_image(ax: "Axes", image: Tensor) -> None:
    """A (C, H, W) image in [0, 1], without ticks (one channel is drawn in grey)."""
    picture = image.detach().float().cpu().permute(1, 2, 0).numpy()
    ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_confusion_matrix(matrix: Tensor, classes: Sequence[str], path: Path) -> "Figure":
    """Counts (left) and each true class's row normalised to shares (right, the diagonal is the
    recall). The figure grows with the classes, so that 100 class names stay legible. Returns
    the figure drawn."""
    n = len(classes)
    side = max(4.5, 0.16 * n + 2.5)  # inches per panel: a row of 17 pixels a class
    fontsize = 8 if n <= ANNOTATED_CLASSES else max(5, 8 - n // 30)
    shares = matrix.double() / matrix.sum(1, keepdim=True).clamp_min(1)
    figure = new_figure(2 * side + 1.5, side + 0.6)
    panels = zip(
        figure.subplots(1, 2),
        (matrix.double(), shares),
        ("counts", "row-normalised (true class = 1)"),
        ("{:.0f}", "{:.2f}"),
    )
    for ax, values, title, number_format in panels:
        image = ax.imshow(values.numpy(), cmap="Blues", vmin=0, interpolation="nearest")
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(n), classes, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), classes, fontsize=fontsize)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if n <= ANNOTATED_CLASSES:
            annotate_cells(ax, values, number_format)
    accuracy = matrix.diag().sum().item() / max(matrix.sum().item(), 1)
    figure.suptitle(f"accuracy {accuracy:.4f} on {int(matrix.sum().item())} samples")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return figure


def annotate_cells(ax: "Axes", values: Tensor, number_format: str) -> None:
    threshold = values.max().item() / 2
    for (row, col), value in np.ndenumerate(values.numpy()):
        color = "white" if value > threshold else "black"
        ax.text(
            col, row, number_format.format(value), ha="center", va="center", fontsize=7, color=color
        )


def plot_sample_predictions(
    images: Tensor, labels: Tensor, predicted: Tensor, classes: Sequence[str], path: Path
) -> "Figure":
    """A grid of images in [0, 1] titled "predicted / true"; wrong predictions in red."""
    columns = min(8, max(1, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    figure = new_figure(1.7 * columns, 1.9 * rows)
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax, image, true, guess in zip(axes, images, labels.tolist(), predicted.tolist()):
        show_image(ax, image)
        color = "black" if guess == true else "red"
        ax.set_title(f"{classes[guess]} / {classes[true]}", fontsize=7, color=color)
        for spine in ax.spines.values():
            spine.set(color=color, linewidth=1 if guess == true else 2.5)
    for ax in axes[len(images) :]:  # the rest of the last row
        ax.axis("off")
    figure.suptitle("predicted / true (wrong in red)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return figure
