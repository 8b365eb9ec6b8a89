"""``python -m train.evaluate``: evaluate a checkpoint of ``train.classify``, ``train.video`` or
``train.mae`` on its data set's test split.

Classifier: accuracy, per-class precision/recall/F1 and a confusion-matrix PNG.
Video classifier: the same plus top-5 accuracy, with ``--num-clips`` views per video averaged.
Multi-task video model: also detection mAP at temporal IoU 0.3/0.5/0.7, QA accuracy, caption
BLEU-4, routing accuracy and expert usage, and a PNG of clips with their predictions.
MAE: masked-patch MSE (the training loss), PSNR and SSIM of the reconstructions in pixel space,
a reconstruction grid PNG, and all of these at mask ratios 25/50/75/90 %.
Results go to ``evaluation.json`` beside the PNGs (in the checkpoint's folder by default).

    python -m train.evaluate --checkpoint runs/classify/best.pt
    python -m train.evaluate --checkpoint runs/video/best.pt --num-clips 3
"""

import dataclasses
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from python_models.vim_mae import patchify, unpatchify  # noqa: E402

from . import checkpoint, distributed, video  # noqa: E402
from .classification import confusion_matrix, per_class_metrics  # noqa: E402
from .classify import ClassifyConfig  # noqa: E402
from .common import build_backbone, data_for, start  # noqa: E402
from .config import at_least, check_settings, field, load_config  # noqa: E402
from .data import (  # noqa: E402
    BatchTransform,
    DataSplits,
    SelectFields,
    make_loader,
    readable_batches,
)
from .engine import take_skipped  # noqa: E402
from .mae import MAEConfig, build_mae  # noqa: E402
from .video_multitask import TextVocabulary, plot_predictions  # noqa: E402


@dataclasses.dataclass
class EvaluateConfig:
    checkpoint: str = field(
        "runs/classify/best.pt", "checkpoint written by train.classify or train.mae"
    )
    out_dir: str = field("", "where results go (default: the checkpoint's folder)")
    data_dir: str = field(
        "",
        "data folder (default: the one the checkpoint was trained with); for a video model "
        "trained on its own data, its test data: a JSON-layout folder or a list file",
    )
    batch_size: int = field(256, "images per batch", at_least(1))
    num_workers: int = field(0, "data-loader worker processes", at_least(0))
    device: str = field("auto", "auto, cpu, cuda or cuda:N")
    threads: int = field(0, "CPU threads for torch (0: torch's default)", at_least(0))
    seed: int = field(0, "seed of the MAE masks")
    mask_ratios: list = field([0.25, 0.5, 0.75, 0.9], "MAE: mask ratios of the sweep")
    grid_images: int = field(8, "MAE: images in the reconstruction grid", at_least(1))
    num_clips: int = field(0, "video: views per test video, averaged (0: as trained)", at_least(0))
    example_clips: int = field(4, "multi-task video: clips drawn in predictions.png", at_least(0))

    def __post_init__(self) -> None:
        check_settings(self)


def main(argv: list[str] | None = None) -> dict:
    config = load_config(EvaluateConfig, argv, "python -m train.evaluate", __doc__.splitlines()[0])
    device = start(config)
    state = checkpoint.load(config.checkpoint, accept=("classify", "mae", "video"))
    out_dir = Path(config.out_dir or Path(config.checkpoint).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    if "token_merging" in state["config"]:
        results = evaluate_video(state["config"], weights, config, out_dir, device)
        return finish(results, out_dir)
    is_mae = "mask_ratio" in state["config"]
    job = (MAEConfig if is_mae else ClassifyConfig)(**state["config"])
    if config.data_dir:
        job.data_dir = config.data_dir
    splits, transform = data_for(job)
    loader = make_loader(splits.test, config.batch_size, False, config.num_workers, config.seed)
    if is_mae:
        model = build_mae(job, splits).to(device)
        model.load_state_dict(weights)
        results = evaluate_mae(model, loader, transform, config, out_dir, device)
    else:
        model = build_backbone(job.model, job.model_args, splits, len(splits.classes)).to(device)
        model.load_state_dict(weights)
        results = evaluate_classifier(model, loader, transform, splits, out_dir, device)
    return finish(results, out_dir)


def finish(results: dict, out_dir: Path) -> dict:
    if distributed.is_main():
        (out_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out_dir / 'evaluation.json'}")
    distributed.cleanup()
    return results


def evaluate_classifier(
    model, loader, transform: BatchTransform, splits: DataSplits, out_dir: Path, device
) -> dict:
    matrix, _, _ = confusion_matrix(model, loader, transform, len(splits.classes), device)
    return classification_report(matrix, splits.classes, out_dir)


def evaluate_video(
    job_config: dict, weights: dict, config: EvaluateConfig, out_dir: Path, device
) -> dict:
    """A ``train.video`` checkpoint on its test split: top-1 and top-5 accuracy, the per-class
    report and confusion matrix, each video's ``num_clips`` views averaged; for a multi-task
    model also every other task's metrics (on one view per video)."""
    job = video.VideoConfig(**job_config)
    if config.data_dir:
        video.use_test_data(job, config.data_dir)
    test_set = video.datasets_for(job, "test", train=False)
    vocabulary = TextVocabulary.from_state_dict(job.vocabulary) if job.multitask else None
    model = video.build_model(job, test_set.num_classes, vocabulary)
    if job.finetune_domain:
        video.prepare_finetuning(model, job)
    model.to(device).load_state_dict(weights)
    results = {}
    if job.multitask:
        results = evaluate_multitask(job, model, test_set, vocabulary, config, out_dir, device)
        model = ActionLogits(model)
    dataset = test_set
    if config.num_clips and config.num_clips != job.video["num_clips"]:
        job.video = {**job.video, "num_clips": config.num_clips}
        dataset = video.datasets_for(job, "test", train=False)
    fields = SelectFields(("frames", "label"))
    loader = make_loader(dataset, config.batch_size, False, config.num_workers, config.seed, fields)
    classifier = video.MultiViewClassifier(model)
    transform = video.clip_transform(job)
    dataset.take_skipped()  # counted by the multi-task pass, if any
    matrix, _, top5 = confusion_matrix(
        classifier, loader, transform, dataset.num_classes, device, top_k=5
    )
    skipped = take_skipped(dataset, device)  # unreadable videos, left out of every metric
    results.update(classification_report(matrix, dataset.classes, out_dir))
    if distributed.is_main():
        print(
            f"top-5 accuracy {top5:.4f}, {job.video['num_clips']} view(s) per video, "
            f"{skipped} unreadable test video(s) left out"
        )
    return {
        "top5_accuracy": top5,
        "num_clips": job.video["num_clips"],
        "skipped": skipped,
        **results,
    }


def evaluate_multitask(
    job: video.VideoConfig,
    model,
    dataset,
    vocabulary,
    config: EvaluateConfig,
    out_dir: Path,
    device,
) -> dict:
    """Every enabled task's metrics on the test split, and ``predictions.png``: a few clips with
    their predicted segments, answers and captions."""
    task = video.make_task(job, dataset.num_classes, vocabulary)
    loader = video.loader_for(job, dataset, False, vocabulary)
    metrics = task.evaluate(model, loader, device)
    if distributed.is_main():
        print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        first = next(readable_batches(loader))
        batch = [t[: config.example_clips].to(device) for t in first]
        plot_predictions(model, task, batch, dataset.classes, out_dir / "predictions.png")
    return metrics


class ActionLogits(torch.nn.Module):
    """A multi-task model seen as a classifier: clips → its action logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, clips: Tensor) -> Tensor:
        return self.model(clips).action


def classification_report(matrix: Tensor, classes: tuple[str, ...], out_dir: Path) -> dict:
    """Accuracy and per-class precision/recall/F1 from a confusion matrix, printed and plotted
    (``confusion_matrix.png``) by the main process."""
    metrics = per_class_metrics(matrix)
    accuracy = matrix.diag().sum().item() / matrix.sum().item()
    per_class = {
        name: {key: round(values[i].item(), 4) for key, values in metrics.items()}
        for i, name in enumerate(classes)
    }
    if distributed.is_main():
        print(f"test accuracy {accuracy:.4f} on {int(matrix.sum().item())} samples")
        print(f"{'class':>14} {'precision':>9} {'recall':>9} {'f1':>9}")
        for name, values in per_class.items():
            print(
                f"{name:>14} {values['precision']:>9.4f} {values['recall']:>9.4f} {values['f1']:>9.4f}"
            )
        plot_confusion(matrix, classes, out_dir / "confusion_matrix.png")
    return {
        "accuracy": accuracy,
        "per_class": per_class,
        "confusion_matrix": matrix.long().tolist(),
    }


def plot_confusion(matrix: Tensor, classes: tuple[str, ...], path: Path) -> None:
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        threshold = matrix.max().item() / 2
        for (row, col), count in zip(
            torch.cartesian_prod(*(torch.arange(len(classes)),) * 2).tolist(),
            matrix.flatten().tolist(),
        ):
            ax.text(
                col,
                row,
                int(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > threshold else "black",
            )
    ax.set_title(f"accuracy {matrix.diag().sum().item() / matrix.sum().item():.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reconstruct(
    model, images: Tensor, transform: BatchTransform, mask_ratio: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, reconstruction in [0, 1] with the visible patches taken from the input, pixel mask
    (1 = hidden)) for images already normalised by ``transform``."""
    out = model(images, mask_ratio=mask_ratio)
    pred = out.pred.float()
    if model.norm_pix_loss:  # undo the per-patch normalisation with the true patches' statistics
        target = patchify(images, model.patch_size)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(
            dim=-1, keepdim=True
        )
    channels = images.shape[1]
    patch_mask = out.mask[..., None].expand(-1, -1, model.patch_size**2 * channels)
    pixel_mask = unpatchify(patch_mask, model.patch_size, channels)
    predicted = transform.denormalize(unpatchify(pred, model.patch_size, channels))
    original = transform.denormalize(images)
    return out.loss, torch.where(pixel_mask.bool(), predicted, original), pixel_mask


def ssim(x: Tensor, y: Tensor, window: int = 7, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of images in [0, 1], per image (Gaussian window, per channel)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(x.shape[1], 1, window, window)
    blur = lambda t: F.conv2d(t, kernel, groups=x.shape[1])  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return value.flatten(1).mean(1)


@torch.no_grad()
def evaluate_mae(
    model, loader, transform: BatchTransform, config: EvaluateConfig, out_dir: Path, device
) -> dict:
    model.eval()
    sweep = {}
    for ratio in config.mask_ratios:
        torch.manual_seed(config.seed + distributed.rank())
        sums = torch.zeros(
            4, dtype=torch.float64, device=device
        )  # loss, masked sq. error, masked pixels, ssim
        images_seen = torch.zeros((), dtype=torch.float64, device=device)
        for images, _ in readable_batches(loader):
            images = transform(images.to(device), train=False)
            loss, recon, pixel_mask = reconstruct(model, images, transform, ratio)
            original = transform.denormalize(images)
            squared = ((recon - original) ** 2 * pixel_mask).sum()
            sums += torch.stack(
                [
                    loss.double() * images.shape[0],
                    squared.double(),
                    pixel_mask.sum().double(),
                    ssim(recon, original).sum().double(),
                ]
            )
            images_seen += images.shape[0]
        distributed.all_reduce_sum(sums)
        distributed.all_reduce_sum(images_seen)
        mse = (sums[1] / sums[2]).item()
        sweep[f"{ratio:g}"] = {
            "masked_patch_loss": (sums[0] / images_seen).item(),
            "pixel_mse": mse,
            "psnr_db": 10 * math.log10(1.0 / max(mse, 1e-12)),
            "ssim": (sums[3] / images_seen).item(),
        }
        if distributed.is_main():
            r = sweep[f"{ratio:g}"]
            print(
                f"mask ratio {ratio:>4.0%}: masked-patch loss {r['masked_patch_loss']:.4f}, "
                f"pixel MSE {r['pixel_mse']:.5f}, "
                f"PSNR {r['psnr_db']:.2f} dB, SSIM {r['ssim']:.4f}"
            )
    if distributed.is_main():
        plot_reconstructions(
            model, loader, transform, config, out_dir / "reconstructions.png", device
        )
    return {"mask_ratio_sweep": sweep, "trained_mask_ratio": model.mask_ratio}


def plot_reconstructions(
    model, loader, transform: BatchTransform, config: EvaluateConfig, path: Path, device
) -> None:
    """Rows: input, what the encoder sees, reconstruction, for each swept mask ratio."""
    torch.manual_seed(config.seed)
    images = transform(next(iter(loader))[0][: config.grid_images].to(device), train=False)
    original = transform.denormalize(images)
    rows = [("input", original)]
    for ratio in config.mask_ratios:
        _, recon, pixel_mask = reconstruct(model, images, transform, ratio)
        rows += [
            (f"visible {ratio:.0%}", original * (1 - pixel_mask)),
            (f"recon. {ratio:.0%}", recon),
        ]
    fig, axes = plt.subplots(
        len(rows), len(images), figsize=(1.1 * len(images) + 1, 1.1 * len(rows)), squeeze=False
    )
    for r, (title, batch) in enumerate(rows):
        for c in range(len(images)):
            ax = axes[r][c]
            picture = batch[c].cpu().permute(1, 2, 0).numpy()
            ax.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
