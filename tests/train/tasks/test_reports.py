"""The test-split reports: a classifier's confusion matrix, per-class report and sample grid
(checked against counts made by hand), SSIM against a direct evaluation of its formula, the MAE
reconstruction metrics on a model whose error is known, and the reports under torchrun."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from python_models import VisionMamba, VisionMambaMAE
from train.data import BatchTransform, ImageTensorDataset, make_loader
from train.tasks import reports

REPO = Path(__file__).resolve().parents[3]
CLASSES = ("circle", "square", "star")
TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PREDICTED = [0, 0, 1, 1, 1, 2, 0, 2, 2, 0]
CONFIDENCE = 5.0  # the logit of the predicted class; the others are 0
IDENTITY = BatchTransform(mean=(0.0,), std=(1.0,))  # images / 255


class EncodedPrediction(nn.Module):
    """A classifier whose prediction is written in the image: pixel value 10 · class."""

    def forward(self, images: Tensor) -> Tensor:
        predicted = (images[:, 0, 0, 0] * 255 / 10).round().long()
        return CONFIDENCE * nn.functional.one_hot(predicted, len(CLASSES)).float()


def encoded_dataset(true=TRUE, predicted=PREDICTED) -> ImageTensorDataset:
    images = (torch.tensor(predicted, dtype=torch.uint8) * 10).view(-1, 1, 1, 1).expand(-1, 1, 8, 8)
    return ImageTensorDataset(images.contiguous(), torch.tensor(true), CLASSES)


def hand_counts() -> list[list[int]]:
    counts = [[0] * len(CLASSES) for _ in CLASSES]
    for true, guess in zip(TRUE, PREDICTED):
        counts[true][guess] += 1
    return counts


def test_the_classification_report_matches_counts_made_by_hand(tmp_path):
    loader = make_loader(encoded_dataset(), 4, False, 0, 0)
    summary = reports.classification_report(
        EncodedPrediction(), loader, IDENTITY, CLASSES, torch.device("cpu"), tmp_path
    )
    counts = hand_counts()
    report = json.loads((tmp_path / "test_classification_report.json").read_text())
    assert report["confusion_matrix"] == counts
    for k, name in enumerate(CLASSES):
        predicted_k = sum(row[k] for row in counts)
        precision, recall = counts[k][k] / predicted_k, counts[k][k] / sum(counts[k])
        assert report["per_class"][name] == pytest.approx(
            {
                "precision": precision,
                "recall": recall,
                "f1": 2 * precision * recall / (precision + recall),
                "support": sum(counts[k]),
            }
        )
    f1 = [report["per_class"][name]["f1"] for name in CLASSES]
    support = [sum(row) for row in counts]
    right = sum(t == p for t, p in zip(TRUE, PREDICTED))
    exp = math.exp(CONFIDENCE)
    loss = (right * math.log((exp + 2) / exp) + (len(TRUE) - right) * math.log(exp + 2)) / len(TRUE)
    assert summary == pytest.approx(
        {
            "acc": right / len(TRUE),
            "loss": loss,
            "macro_precision": report["macro_avg"]["precision"],
            "macro_recall": report["macro_avg"]["recall"],
            "macro_f1": sum(f1) / len(f1),
            "weighted_f1": sum(f * n for f, n in zip(f1, support)) / len(TRUE),
        }
    )
    with open(tmp_path / "test_confusion_matrix.csv") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert [[int(n) for n in row[1:]] for row in rows[1:]] == counts
    for picture in ("test_confusion_matrix.png", "test_sample_predictions.png"):
        assert (tmp_path / picture).stat().st_size > 0


def test_an_empty_prefix_writes_plain_names_and_a_class_never_predicted_scores_zero(tmp_path):
    matrix = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    report = reports.write_classification_report(matrix, ("a", "b"), tmp_path, prefix="")
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert report["accuracy"] == 0.6
    names = {"classification_report.json", "confusion_matrix.csv", "confusion_matrix.png"}
    assert {path.name for path in tmp_path.iterdir()} == names


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (torch.zeros(2, 3), r"matrix: expected \(3, 3\) counts for 3 classes, got \(2, 3\)"),
        (torch.zeros(3, 3), r"matrix: no sample was counted"),
    ],
)
def test_a_matrix_that_does_not_fit_is_refused(matrix, message):
    with pytest.raises(ValueError, match=message):
        reports.report_from_matrix(matrix, CLASSES)


def test_the_sample_grid_titles_predicted_and_true_names_and_marks_the_wrong_ones_red(tmp_path):
    images = torch.rand(10, 3, 8, 8)
    figure = reports.plot_sample_predictions(
        images, torch.tensor(TRUE), torch.tensor(PREDICTED), CLASSES, tmp_path / "grid.png"
    )
    titles = [ax.title for ax in figure.axes[: len(TRUE)]]
    assert titles[2].get_text() == "square / circle" and titles[2].get_color() == "red"
    assert titles[0].get_text() == "circle / circle" and titles[0].get_color() == "black"
    assert sum(title.get_color() == "red" for title in titles) == 2
    assert not any(ax.axison for ax in figure.axes[len(TRUE) :])  # the rest of the last row


def test_the_confusion_picture_names_every_one_of_100_classes_legibly(tmp_path):
    classes = tuple(f"class_{k:03d}" for k in range(100))
    matrix = torch.eye(100) * 5 + torch.rand(100, 100).round()
    figure = reports.plot_confusion_matrix(matrix, classes, tmp_path / "confusion.png")
    counts, shares = (ax for ax in figure.axes if ax.get_xlabel() == "predicted")
    for ax in (counts, shares):
        labels = ax.get_xticklabels()
        assert [label.get_text() for label in labels] == list(classes)
        assert min(label.get_fontsize() for label in labels) >= 5
    rows = shares.images[0].get_array()
    np.testing.assert_allclose(rows.sum(1), 1.0)
    assert figure.get_size_inches()[1] >= 16  # about 0.16 inch a class


# -- SSIM ------------------------------------------------------------------------------------


def ssim_by_windows(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two (H, W) images evaluated window by window as the formula is written
    (Gaussian weights σ 1.5 on an 11×11 window, population statistics, C1 = 0.01², C2 =
    0.03²), averaged over every window inside the image."""
    offsets = np.arange(11) - 5
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    weights /= weights.sum()
    values = []
    for top in range(x.shape[0] - 10):
        for left in range(x.shape[1] - 10):
            a, b = x[top : top + 11, left : left + 11], y[top : top + 11, left : left + 11]
            mean_a, mean_b = (weights * a).sum(), (weights * b).sum()
            var_a = (weights * (a - mean_a) ** 2).sum()
            var_b = (weights * (b - mean_b) ** 2).sum()
            cov = (weights * (a - mean_a) * (b - mean_b)).sum()
            values.append(
                (2 * mean_a * mean_b + 1e-4)
                * (2 * cov + 9e-4)
                / ((mean_a**2 + mean_b**2 + 1e-4) * (var_a + var_b + 9e-4))
            )
    return float(np.mean(values))


def test_ssim_is_one_for_identical_images_and_matches_the_formula_window_by_window():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 13, 14, generator=generator, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(x.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    torch.testing.assert_close(reports.ssim(x, x), torch.ones(2, dtype=torch.float64))
    expected = [
        np.mean([ssim_by_windows(x[i, c].numpy(), y[i, c].numpy()) for c in range(3)])
        for i in range(2)
    ]
    torch.testing.assert_close(reports.ssim(x, y), torch.tensor(expected, dtype=torch.float64))
    assert (reports.ssim(x, y) < 1).all()


@pytest.mark.parametrize(
    ("shape_y", "message"),
    [((1, 3, 16, 17), r"ssim: expected two .* got \(1, 3, 16, 16\) and \(1, 3, 16, 17\)")],
)
def test_ssim_refuses_batches_of_different_shapes(shape_y, message):
    with pytest.raises(ValueError, match=message):
        reports.ssim(torch.rand(1, 3, 16, 16), torch.rand(*shape_y))


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match=r"ssim: images must be at least 11×11, got \(8, 8\)"):
        reports.ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


# -- MAE ---------------------------------------------------------------------------------------

OFFSET = 0.1  # what the fake MAE adds to every pixel (normalised units)
IDENTITY_RGB = BatchTransform(mean=(0.0,) * 3, std=(1.0,) * 3)


class OffsetMAE(nn.Module):
    """An MAE's ``reconstruct`` with a known error: each image's patches are hidden at random
    (exactly ``mask_ratio`` of them) and every pixel is predicted ``OFFSET`` too bright."""

    def __init__(self, mask_ratio: float = 0.75, patch_size: int = 4):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.patch_size = patch_size
        self.unused = nn.Parameter(torch.zeros(()))  # where the model lives

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        batch, _, height, width = images.shape
        grid = (height // self.patch_size, width // self.patch_size)
        patches = grid[0] * grid[1]
        hidden = torch.rand(batch, patches).argsort(1) < round(self.mask_ratio * patches)
        mask = hidden.float().view(batch, 1, *grid)
        pixel_mask = mask.repeat_interleave(self.patch_size, 2).repeat_interleave(
            self.patch_size, 3
        )
        return images + OFFSET, pixel_mask


def image_loader(count: int = 12, side: int = 16) -> torch.utils.data.DataLoader:
    """Random RGB images below 0.8 (so the offset never clips), two classes."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 200, (count, 3, side, side), dtype=torch.uint8, generator=generator)
    dataset = ImageTensorDataset(images, torch.arange(count) % 2, ("a", "b"))
    return make_loader(dataset, 5, False, 0, 0)


def test_the_reconstruction_metrics_of_a_known_error(tmp_path):
    model = OffsetMAE(mask_ratio=0.5)
    cpu = torch.device("cpu")
    transform = BatchTransform(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    before = torch.random.get_rng_state()
    metrics = reports.reconstruction_metrics(model, image_loader(), transform, cpu)
    assert torch.equal(torch.random.get_rng_state(), before)  # the masks have their own seed
    # The offset is in normalised units: std · OFFSET in [0, 1] units, per channel.
    error = torch.tensor(transform.std) * OFFSET
    assert metrics["mse"] == pytest.approx(error.pow(2).mean().item())
    assert metrics["mae"] == pytest.approx(error.mean().item())
    assert metrics["psnr"] == pytest.approx(-10 * math.log10(metrics["mse"]))
    assert 0 < metrics["ssim"] < 1
    assert reports.reconstruction_metrics(model, image_loader(), transform, cpu) == metrics


def test_the_mask_ratio_table_sets_each_ratio_in_turn_and_restores_the_models():
    model = OffsetMAE(mask_ratio=0.75)
    cpu = torch.device("cpu")
    rows = reports.mask_ratio_table(model, image_loader(), IDENTITY_RGB, cpu)
    assert model.mask_ratio == 0.75
    assert [row.pop("mask_ratio") for row in rows] == [0.25, 0.5, 0.75, 0.9]
    for ratio, row in zip((0.25, 0.5, 0.75, 0.9), rows):
        at_ratio = OffsetMAE(mask_ratio=ratio)
        assert row == reports.reconstruction_metrics(at_ratio, image_loader(), IDENTITY_RGB, cpu)
        assert row["mse"] == pytest.approx(OFFSET**2) and row["mae"] == pytest.approx(OFFSET)
    assert len({row["ssim"] for row in rows}) == 4  # more patches changed at each ratio


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_a_mask_ratio_outside_zero_to_one_is_refused(ratio):
    with pytest.raises(ValueError, match=rf"mask ratio: expected a value in \(0, 1\), got {ratio}"):
        reports.mask_ratio_table(
            OffsetMAE(), image_loader(), IDENTITY_RGB, torch.device("cpu"), ratios=(ratio,)
        )


def small_mae(side: int = 16) -> VisionMambaMAE:
    torch.manual_seed(0)
    encoder = VisionMamba(img_size=side, patch_size=4, embed_dim=16, depth=1, num_classes=0)
    return VisionMambaMAE(encoder, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def test_the_reconstruction_figure_of_the_real_mae_has_a_row_per_stage_and_ratio(tmp_path):
    model = small_mae().train()
    images = next(iter(image_loader(count=10)))[0]
    path = tmp_path / "mae_reconstruction.png"
    reports.save_reconstruction_figure(model, images, IDENTITY_RGB, path)
    assert path.stat().st_size > 0 and model.training  # its mode is put back
    metrics = reports.reconstruction_metrics(
        model, image_loader(), IDENTITY_RGB, torch.device("cpu")
    )
    assert metrics["mse"] > 0 and 0 < metrics["ssim"] < 1 and math.isfinite(metrics["psnr"])


def test_the_reconstruction_figure_refuses_images_already_normalised(tmp_path):
    with pytest.raises(
        ValueError, match=r"images: expected the data set's uint8 .* got torch.float32"
    ):
        reports.save_reconstruction_figure(
            OffsetMAE(), torch.rand(2, 3, 16, 16), IDENTITY_RGB, tmp_path / "x.png"
        )


# -- under torchrun ----------------------------------------------------------------------------

WORKER = """
import json, sys
from pathlib import Path
import torch
from train.engine import distributed
from train.tasks import reports
from tests.train.tasks.test_reports import (
    CLASSES, IDENTITY, IDENTITY_RGB, EncodedPrediction, OffsetMAE, encoded_dataset, image_loader
)
from train.data import make_loader

distributed.setup("cpu")
cpu = torch.device("cpu")
out = Path(sys.argv[1]) / f"rank{distributed.rank()}"
loader = make_loader(encoded_dataset(), 3, False, 0, 0)
summary = reports.classification_report(EncodedPrediction(), loader, IDENTITY, CLASSES, cpu, out)
summary["mae"] = reports.reconstruction_metrics(OffsetMAE(), image_loader(), IDENTITY_RGB, cpu)
(Path(sys.argv[1]) / f"summary{distributed.rank()}.json").write_text(json.dumps(summary))
distributed.cleanup()
"""


def test_under_torchrun_the_report_covers_every_process_and_only_rank_0_writes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in (0, 1)]
    reconstruction = [summary.pop("mae") for summary in summaries]
    assert reconstruction[0] == reconstruction[1]  # reduced over both processes
    assert reconstruction[0]["mse"] == pytest.approx(OFFSET**2)
    alone = reports.classification_report(
        EncodedPrediction(),
        make_loader(encoded_dataset(), 3, False, 0, 0),
        IDENTITY,
        CLASSES,
        torch.device("cpu"),
        tmp_path / "alone",
    )
    assert summaries[0] == summaries[1] == pytest.approx(alone)
    report = json.loads((tmp_path / "rank0" / "test_classification_report.json").read_text())
    assert report["confusion_matrix"] == hand_counts()
    assert not (tmp_path / "rank1").exists()
