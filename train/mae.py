"""``python -m train.mae``: masked-autoencoder pre-training of a Vision Mamba encoder.

    python -m train.mae                                   # built-in shapes data set
    python -m train.mae --config cifar10_tiny_mae         # configs/cifar10_tiny_mae.yaml
    python -m train.classify --init-from runs/mae/best.pt # then fine-tune the encoder

The encoder's configuration (``model`` and ``model_args``) must be the classifier's (the
defaults of both jobs are the same small Vision Mamba).
"""

from .engine import distributed
from .engine.job import plain, run_job, start
from .engine.trainer import Trainer
from .tasks.images import (
    data_for,
    loaders_for,
    report_test,
)
from .tasks.mae import MAEConfig, MAETask, build_mae, first_images
from .tasks.reports import FIGURE_IMAGES, reconstruction_metrics


def run(config: MAEConfig) -> dict:
    """Pre-trains as configured, choosing the best checkpoint by the validation loss; then, once,
    the test split's loss (last and best weights) and the best weights' reconstruction metrics
    (MSE, MAE, PSNR, SSIM). Returns the last epoch's record with those."""
    device = start(config)
    splits, transform = data_for(config)
    model = build_mae(config, splits)
    train_loader, val_loader, test_loader = loaders_for(config, splits)
    picture_images = first_images(splits.val, FIGURE_IMAGES)
    task = MAETask(transform, picture_images, config.reconstruction_every)
    trainer = Trainer(
        model, task, train_loader, val_loader, config, plain(config), device, job="mae"
    )
    summary = dict(trainer.fit())
    if config.evaluate_test:
        summary.update(report_test(trainer, test_loader, "loss"))
        quality = reconstruction_metrics(trainer.best_model(), test_loader, transform, device)
        summary.update({f"best_test_{name}": value for name, value in quality.items()})
        if distributed.is_main():
            print(
                "test split, best checkpoint: "
                + ", ".join(f"{name} {value:.4g}" for name, value in quality.items()),
                flush=True,
            )
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(MAEConfig, run, argv, "train.mae", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
