"""Parameter-efficient baselines on a frozen ViT: a linear probe and visual prompt tuning (VPT,
Jia et al. 2022), shallow and deep. The backbone is a registered ``VisionTransformer`` preset,
frozen and kept in eval mode (no dropout, no stochastic depth) whatever the wrapper's mode.

The presets take, besides the classes' arguments, the backbone preset's (``img_size``,
``in_chans``, …: what the training jobs size a model with), which they pass on to the backbone."""

import inspect
from pathlib import Path

from torch import Tensor, nn

from .adapters.prompt import init_prompts, run_prompted
from .contract import ClassifierMixin, linear_head
from .registry import create_model, register_model
from .vit import VisionTransformer

DEFAULT_BACKBONE = "vit_micro_patch4_32"


class FrozenViT(ClassifierMixin, nn.Module):
    """A classifier on a ViT backbone built from a preset without its head; with ``freeze``
    the backbone gets no gradient and stays in eval mode. ``forward_head`` takes the class
    token's features (``num_features`` = the backbone's width), applies ``dropout`` and the
    linear ``head`` of ``num_classes`` (None without ``with_head``: a subclass classifies
    otherwise)."""

    def __init__(
        self,
        backbone_name: str,
        pretrained: bool | str | Path,
        freeze: bool,
        backbone_args: dict | None,
        dropout: float = 0.0,
        num_classes: int = 10,
        with_head: bool = True,
    ):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        backbone = create_model(
            backbone_name, pretrained=pretrained, num_classes=0, **(backbone_args or {})
        )
        if not isinstance(backbone, VisionTransformer):
            raise TypeError(
                f"backbone_name: expected a VisionTransformer preset, got {backbone_name!r} "
                f"({type(backbone).__name__})"
            )
        self.backbone = backbone.requires_grad_(not freeze)
        self.freeze_backbone = freeze
        self.head_drop = nn.Dropout(dropout)
        self.num_features = backbone.num_features
        self.num_classes = num_classes
        self.head = linear_head(self.num_features, num_classes) if with_head else None

    def train(self, mode: bool = True) -> "FrozenViT":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    @property
    def patch_embed(self) -> nn.Module:
        return self.backbone.patch_embed

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The class token's features of the normalised tokens ``features`` after dropout
        (``pre_logits=True``) or the head's logits."""
        x = self.head_drop(self.backbone.forward_head(features, pre_logits=True))
        return x if pre_logits else self.head(x)


class LinearProbeViT(FrozenViT):
    """A linear classifier on the frozen backbone's class-token features: only ``head.weight``
    and ``head.bias`` train.

    Args:
        backbone_name: a registered ViT preset.
        pretrained: the preset's ``pretrained`` (True: timm's weights; a path: a local file).
        num_classes: classes of the head.
        backbone_args: overrides of the preset's arguments.
        dropout: dropout on the features before the head.
    """

    def __init__(
        self,
        backbone_name: str = DEFAULT_BACKBONE,
        pretrained: bool | str | Path = False,
        num_classes: int = 10,
        backbone_args: dict | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(backbone_name, pretrained, True, backbone_args, dropout, num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        """The frozen backbone's normalised tokens: (batch, 1 + num_patches, dim)."""
        return self.backbone.forward_features(images)


class VisualPromptTuning(FrozenViT):
    """VPT: ``num_prompts`` learned tokens put between the class token and the patch tokens,
    a linear head on the class token; the backbone is frozen. Shallow prompts enter once, before
    the first block; deep prompts are replaced by a fresh set before every block
    (``adapters.prompt``). Prompts are initialised Xavier-uniform over a patch's fan-in as VPT's
    (±√(6 / (C·p² + dim))).

    Args:
        backbone_name: a registered ViT preset.
        pretrained: the preset's ``pretrained`` (True: timm's weights; a path: a local file).
        num_classes: classes of the head.
        num_prompts: prompt tokens (per block when deep), ≥ 1.
        backbone_args: overrides of the preset's arguments.
        dropout: dropout on the features before the head.
    """

    deep: bool  # set by VPTShallow and VPTDeep

    def __init__(
        self,
        backbone_name: str = DEFAULT_BACKBONE,
        pretrained: bool | str | Path = False,
        num_classes: int = 10,
        num_prompts: int = 10,
        backbone_args: dict | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(backbone_name, pretrained, True, backbone_args, dropout, num_classes)
        self.num_prompts = num_prompts
        proj = self.backbone.patch_embed.proj
        self.prompts = init_prompts(
            len(self.backbone.blocks) if self.deep else 1,
            num_prompts,
            self.embed_dim,
            patch_fan_in=proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1],
        )

    def forward_features(self, images: Tensor) -> Tensor:
        """The normalised tokens after the prompted blocks: (batch, 1 + num_prompts +
        num_patches, dim), the class token first."""
        tokens = run_prompted(
            self.backbone.embed(images),
            self.backbone.blocks,
            self.prompts,
            self.backbone.num_prefix_tokens,
        )
        return self.backbone.norm(tokens)


class VPTShallow(VisualPromptTuning):
    """VPT-shallow: one set of ``num_prompts`` prompts before the first block (see
    ``VisualPromptTuning``); trainable: the prompts and the head."""

    deep = False


class VPTDeep(VisualPromptTuning):
    """VPT-deep: a set of ``num_prompts`` prompts per block, replacing the previous block's
    prompt outputs (see ``VisualPromptTuning``); trainable: the prompts and the head."""

    deep = True


def build_frozen_vit(cls: type[FrozenViT], overrides: dict) -> FrozenViT:
    """``cls`` from a preset's overrides: those that are not ``cls``'s own arguments are the
    backbone preset's (under the explicit ``backbone_args``)."""
    own = inspect.signature(cls).parameters
    backbone_args = {key: value for key, value in overrides.items() if key not in own}
    arguments = {key: value for key, value in overrides.items() if key in own}
    arguments["backbone_args"] = {**backbone_args, **(arguments.get("backbone_args") or {})}
    return cls(**arguments)


@register_model
def linear_probe_vit(**overrides) -> LinearProbeViT:
    """``LinearProbeViT`` on ``vit_micro_patch4_32``."""
    return build_frozen_vit(LinearProbeViT, overrides)


@register_model(aliases=("vpt_shallow",))
def vpt_shallow_vit(**overrides) -> VPTShallow:
    """``VPTShallow`` with 10 prompts on ``vit_micro_patch4_32``."""
    return build_frozen_vit(VPTShallow, overrides)


@register_model(aliases=("vpt_deep",))
def vpt_deep_vit(**overrides) -> VPTDeep:
    """``VPTDeep`` with 10 prompts per block on ``vit_micro_patch4_32``."""
    return build_frozen_vit(VPTDeep, overrides)
