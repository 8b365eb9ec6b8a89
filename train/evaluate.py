"""``python -m train.evaluate``: evaluate a classify, video or MAE checkpoint on its test split.

The checkpoint holds its job's settings: the model and data set are built from them.

Classifier: accuracy, loss, per-class precision/recall/F1/support with macro and weighted
averages (``classification_report.json``), the confusion matrix (``confusion_matrix.csv``, and
``confusion_matrix.png`` as counts and row-normalised) and ``sample_predictions.png``.
Video classifier: the same, without sample pictures, plus top-5 accuracy, with ``--num-clips``
views per video averaged.
Multi-task video model: also detection mAP at temporal IoU 0.3/0.5/0.7, QA accuracy, caption
BLEU-4, routing accuracy and expert usage, and a PNG of clips with their predictions.
MAE: MSE, MAE (absolute error), PSNR and SSIM of the reconstructions at the trained mask ratio
and at mask ratios 25/50/75/90 % (a table), and ``reconstructions.png`` (original, then masked
and reconstructed at each ratio).
Every result also goes to ``evaluation.json`` beside them, in ``--out-dir`` (``--output-dir``;
by default the checkpoint's folder).

    python -m train.evaluate --checkpoint runs/classify/best.pt --output-dir runs/evaluation
    python -m train.evaluate --checkpoint runs/mae/best.pt
    python -m train.evaluate --checkpoint runs/video/best.pt --num-clips 3
"""

import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor

from .data import BatchTransform, SelectFields, make_loader, readable_batches
from .data.text import TextVocabulary
from .engine import checkpoint, distributed
from .engine.config import Range, at_least, check_settings, field, load_config
from .engine.job import start
from .engine.trainer import take_skipped
from .tasks import reports, video
from .tasks.classification import confusion_matrix
from .tasks.images import ClassifyConfig, build_backbone, data_for
from .tasks.mae import MAEConfig, build_mae
from .tasks.multitask import plot_predictions


@dataclasses.dataclass
class EvaluateConfig:
    checkpoint: str = field(
        "runs/classify/best.pt", "checkpoint written by train.classify, train.video or train.mae"
    )
    out_dir: str = field(
        "",
        "where results go (default: the checkpoint's folder)",
        aliases=("--output-dir", "--output_dir"),
    )
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
    mask_ratios: list = field(list(reports.MASK_RATIOS), "MAE: mask ratios of the table, in (0, 1)")
    grid_images: int = field(
        reports.FIGURE_IMAGES,
        "MAE: images in the reconstruction picture",
        Range(1, reports.FIGURE_IMAGES),
    )
    num_clips: int = field(0, "video: views per test video, averaged (0: as trained)", at_least(0))
    example_clips: int = field(4, "multi-task video: clips drawn in predictions.png", at_least(0))

    def __post_init__(self) -> None:
        check_settings(self)
        outside = [ratio for ratio in self.mask_ratios if not 0 < ratio < 1]
        if outside or not self.mask_ratios:
            raise ValueError(
                f"mask_ratios: expected one or more fractions in (0, 1), got {self.mask_ratios}"
            )


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
        results = reports.classification_outputs(
            model, loader, transform, splits.classes, device, out_dir, prefix=""
        )
    return finish(results, out_dir)


def finish(results: dict, out_dir: Path) -> dict:
    if distributed.is_main():
        (out_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
        print(f"wrote {out_dir / 'evaluation.json'}")
    distributed.cleanup()
    return results


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
    if config.num_clips and config.num_clips != job.video.num_clips:
        job.video = dataclasses.replace(job.video, num_clips=config.num_clips)
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
    results.update(reports.write_classification_report(matrix, dataset.classes, out_dir, prefix=""))
    if distributed.is_main():
        print(
            f"top-5 accuracy {top5:.4f}, {job.video.num_clips} view(s) per video, "
            f"{skipped} unreadable test video(s) left out"
        )
    return {
        "top5_accuracy": top5,
        "num_clips": job.video.num_clips,
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


def evaluate_mae(
    model, loader, transform: BatchTransform, config: EvaluateConfig, out_dir: Path, device
) -> dict:
    """The reconstruction metrics at the trained mask ratio and at each of ``mask_ratios``
    (each with the same seeded masks), printed as a table, and ``reconstructions.png``."""
    trained = model.mask_ratio
    ratios = sorted({*config.mask_ratios, trained})
    table = reports.mask_ratio_table(model, loader, transform, device, ratios, config.seed)
    at_trained = next(row for row in table if row["mask_ratio"] == trained)
    if distributed.is_main():
        print(f"reconstructions of the test split, mask ratio as trained: {trained:.0%}")
        print(reports.format_table(table))
        images = next(readable_batches(loader))[0][: config.grid_images]
        path = out_dir / "reconstructions.png"
        reports.save_reconstruction_figure(
            model, images, transform, path, config.mask_ratios, config.seed
        )
    return {**at_trained, "mask_ratio_sweep": table}


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
