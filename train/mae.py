"""``python -m train.mae``: masked-autoencoder pre-training of a Vision Mamba encoder.

    python -m train.mae                                   # built-in shapes data set
    python -m train.mae --config cifar10_tiny_mae         # configs/cifar10_tiny_mae.yaml
    python -m train.classify --init-from runs/mae/best.pt # then fine-tune the encoder

The encoder's configuration (``model`` and ``model_args``) must be the classifier's (the
defaults of both jobs are the same small Vision Mamba).
"""

import dataclasses
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from python_models import VisionMambaMAE

from . import distributed
from .common import (
    VISION_MAMBA_KEYS,
    BuiltinJobConfig,
    build_backbone,
    data_for,
    loaders_for,
    plain,
    report_test,
    run_job,
    start,
)
from .config import Range, Translation, at_least, field, to_model_arg
from .data import BatchTransform, readable_batches
from .engine import Trainer


@dataclasses.dataclass
class MAEConfig(BuiltinJobConfig):
    """The defaults pre-train the built-in classification job's encoder."""

    SOURCE_NAME: ClassVar[str] = "Vision Mamba's MAE config files"
    SOURCE_KEYS: ClassVar[dict[str, Translation]] = {
        **VISION_MAMBA_KEYS,
        "model.decoder_embed_dim": "decoder_dim",
        "model.decoder_num_heads": "decoder_heads",
        "model.use_cls_token": to_model_arg("use_cls_token", bool),
    }

    mask_ratio: float = field(
        0.75, "fraction of the patches hidden from the encoder", Range(0, 1, True, True)
    )
    decoder_dim: int = field(128, "decoder width", at_least(1))
    decoder_depth: int = field(2, "decoder transformer blocks", at_least(1))
    decoder_heads: int = field(4, "decoder attention heads", at_least(1))
    norm_pix_loss: bool = field(False, "per-patch normalised pixel targets")
    lr: float = field(1.5e-3, "peak learning rate (AdamW)")
    out_dir: str = field("runs/mae", "where checkpoints, metrics and plots go")


class MAETask:
    """Masked-patch reconstruction loss; the best checkpoint has the lowest validation loss."""

    monitor = "loss"
    mode = "min"

    def __init__(self, transform: BatchTransform):
        self.transform = transform

    def training_loss(self, model: nn.Module, batch: list[Tensor]) -> Tensor:
        return model(self.transform(batch[0], train=True)).loss

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """Masked-patch loss over the test set; the masks are seeded, so every evaluation (and
        every resumed run) hides the same patches."""
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(distributed.rank())
            for images, _ in readable_batches(loader):
                images = images.to(device, non_blocking=True)
                loss = model(self.transform(images, train=False)).loss
                totals += torch.tensor(
                    [loss.item() * images.shape[0], images.shape[0]],
                    dtype=torch.float64,
                    device=device,
                )
        distributed.all_reduce_sum(totals)
        return {"loss": (totals[0] / totals[1]).item()}


def build_mae(config: MAEConfig, splits) -> VisionMambaMAE:
    encoder = build_backbone(config.model, config.model_args, splits, num_classes=0)
    return VisionMambaMAE(
        encoder,
        mask_ratio=config.mask_ratio,
        decoder_dim=config.decoder_dim,
        decoder_depth=config.decoder_depth,
        decoder_heads=config.decoder_heads,
        norm_pix_loss=config.norm_pix_loss,
    )


def run(config: MAEConfig) -> dict:
    """Pre-trains as configured, choosing the best checkpoint by the validation loss; returns
    the last epoch's record with the test split's loss (last and best weights)."""
    device = start(config)
    splits, transform = data_for(config)
    model = build_mae(config, splits)
    train_loader, val_loader, test_loader = loaders_for(config, splits)
    task = MAETask(transform)
    trainer = Trainer(
        model, task, train_loader, val_loader, config, plain(config), device, job="mae"
    )
    summary = dict(trainer.fit())
    if config.evaluate_test:
        summary.update(report_test(trainer, test_loader, "loss"))
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(MAEConfig, run, argv, "train.mae", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
