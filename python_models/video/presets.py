"""Registered HierarchicalVLM presets; every constructor argument can be overridden, and every
settings field by its flat key (``settings.FLAT_KEYS``), e.g.
``create_model("hvlm_tiny", attention="performer", merge_ratio=0.5)``."""

from ..adapters.lora import LoraConfig
from ..registry import register_model
from .model import HierarchicalVLM
from .multitask import TASKS, MultiTaskVLM
from .settings import gather_flat_keys


def _build(defaults: dict, overrides: dict) -> HierarchicalVLM:
    return HierarchicalVLM(**gather_flat_keys({**defaults, **overrides}))


@register_model
def hvlm_tiny(**overrides) -> HierarchicalVLM:
    """Sized to train on the built-in video set on 2 CPU cores: 8 frames of 64², the motion
    convolution stem to patch 16, tubelet 4 (2 × 16 tokens), width 96, depth 4, 3 heads, the
    mean of the tokens (no final norm) to 12 classes."""
    defaults = dict(
        num_frames=8,
        img_size=64,
        patch_size=16,
        tubelet_size=4,
        stem="motion_conv",
        num_classes=12,
        embed_dim=96,
        depth=4,
        num_heads=3,
        mlp_ratio=2.0,
        global_pool="avg",
        final_norm=False,
    )
    return _build(defaults, overrides)


@register_model
def hvlm_small(**overrides) -> HierarchicalVLM:
    """16 frames of 224², patch 16 (16 × 196 tokens), width 384, depth 12, 6 heads, 400 classes."""
    defaults = dict(
        num_frames=16,
        img_size=224,
        patch_size=16,
        num_classes=400,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
    )
    return _build(defaults, overrides)


@register_model
def hvlm_base(**overrides) -> HierarchicalVLM:
    """The source design's shape: 32 frames of 224², patch 16 (32 × 196 = 6,272 tokens), hidden
    768, depth 12, 12 heads, MLP ratio 4, 400 classes."""
    defaults = dict(
        num_frames=32,
        img_size=224,
        patch_size=16,
        num_classes=400,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
    )
    return _build(defaults, overrides)


@register_model
def hvlm_multitask_tiny(
    tasks: tuple[str, ...] = TASKS,
    vocab_size: int = 0,
    num_answers: int = 0,
    num_domains: int = 4,
    domain_lora: LoraConfig | None = None,
    routing: str = "soft",
    top_k: int = 1,
    **backbone_overrides,
) -> MultiTaskVLM:
    """``hvlm_tiny`` with the detection, QA and captioning heads and four domain experts (or,
    with ``domain_lora``, four domains of LoRA adapters); the vocabulary sizes come from the
    data (``train.video`` builds them from the annotations)."""
    return MultiTaskVLM(
        hvlm_tiny(**backbone_overrides),
        tasks,
        vocab_size=vocab_size,
        num_answers=num_answers,
        num_domains=num_domains,
        domain_lora=domain_lora,
        routing=routing,
        top_k=top_k,
    )
