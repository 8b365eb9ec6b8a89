"""The masked autoencoder's training: its settings (with Vision Mamba's MAE configuration keys),
the reconstruction task the engine runs, and the model sized for the data."""

import dataclasses
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from python_models import VisionMambaMAE

from ..data import BatchTransform, readable_batches
from ..engine import distributed
from ..engine.config import Range, Translation, at_least, field
from .images import VISION_MAMBA_KEYS, BuiltinJobConfig, build_backbone
from .reports import save_reconstruction_figure


@dataclasses.dataclass
class MAEConfig(BuiltinJobConfig):
    """The defaults pre-train the built-in classification job's encoder."""

    SOURCE_NAME: ClassVar[str] = "Vision Mamba's MAE config files"
    SOURCE_KEYS: ClassVar[dict[str, Translation]] = {
        **VISION_MAMBA_KEYS,
        "model.decoder_embed_dim": "decoder_dim",
        "model.decoder_num_heads": "decoder_heads",
        "model.use_cls_token": "use_cls_token",
    }

    mask_ratio: float = field(
        0.75, "fraction of the patches hidden from the encoder", Range(0, 1, True, True)
    )
    decoder_dim: int = field(128, "decoder width", at_least(1))
    decoder_depth: int = field(2, "decoder transformer blocks", at_least(1))
    decoder_heads: int = field(4, "decoder attention heads", at_least(1))
    norm_pix_loss: bool = field(False, "per-patch normalised pixel targets")
    use_cls_token: bool = field(
        False, "give the encoder a class token (MAE needs none; fine-tuning takes the choice)"
    )
    reconstruction_every: int = field(
        1,
        "draw mae_reconstruction.png from validation images every this many epochs (0: off)",
        at_least(0),
    )
    lr: float = field(1.5e-3, "peak learning rate (AdamW)")
    out_dir: str = field("runs/mae", "where checkpoints, metrics and plots go")


class MAETask:
    """Masked-patch reconstruction loss; the best checkpoint has the lowest validation loss.
    Every ``picture_every`` epochs it draws ``mae_reconstruction.png`` (original / masked /
    reconstructed) from the first validation images."""

    monitor = "loss"
    mode = "min"

    def __init__(
        self,
        transform: BatchTransform,
        picture_images: Tensor | None = None,
        picture_every: int = 0,
    ):
        self.transform = transform
        self.picture_images = picture_images
        self.picture_every = picture_every

    def after_epoch(self, model: nn.Module, epoch: int, out_dir: Path) -> None:
        if self.picture_every and epoch % self.picture_every == 0:
            path = out_dir / "mae_reconstruction.png"
            save_reconstruction_figure(model, self.picture_images, self.transform, path)

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


def first_images(dataset, count: int) -> Tensor:
    """The first ``count`` readable images of ``dataset`` (an unreadable file's item is None)."""
    images = []
    for index in range(len(dataset)):
        item = dataset[index]
        if item is not None:
            images.append(item[0])
        if len(images) == count:
            break
    return torch.stack(images)


def build_mae(config: MAEConfig, splits) -> VisionMambaMAE:
    encoder_args = {"use_cls_token": config.use_cls_token, **config.model_args}
    encoder = build_backbone(config.model, encoder_args, splits, num_classes=0)
    return VisionMambaMAE(
        encoder,
        mask_ratio=config.mask_ratio,
        decoder_dim=config.decoder_dim,
        decoder_depth=config.decoder_depth,
        decoder_heads=config.decoder_heads,
        norm_pix_loss=config.norm_pix_loss,
    )
