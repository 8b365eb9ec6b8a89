"""Models built on ``hvision_ext.ops``: ``create_model(name, **overrides)`` builds a registered
preset (``list_models()`` names them). Every classifier follows the ``Classifier`` contract
(``contract``); adapters for any model are in ``adapters``."""

from .contract import Classifier, ClassifierMixin, NoWeightDecayMixin
from .hierarchical_vit import ConvStem, GridPooling, HierarchicalViT
from .layers import (
    Attention,
    AttentionBlock,
    DropPath,
    Mlp,
    PatchEmbed,
    PostNormBlock,
    RMSNorm,
    SwiGLU,
)
from .mamba import BiMamba, DirectionalConv1d, MambaBlock, SSMDirection
from .memory_vit import HopfieldLayer, MemoryAugmentedViT
from .registry import (
    canonical_name,
    create_model,
    list_models,
    model_aliases,
    register_model,
)
from .video import HierarchicalVLM
from .vim_mae import MAEOutput, VisionMambaMAE
from .vision_hrm import ReasoningModule, VisionHRM
from .vision_mamba import VisionMamba
from .vit import VisionTransformer
from .vit_baselines import LinearProbeViT, VPTDeep, VPTShallow

__all__ = [
    "Attention",
    "AttentionBlock",
    "BiMamba",
    "Classifier",
    "ClassifierMixin",
    "ConvStem",
    "DirectionalConv1d",
    "DropPath",
    "GridPooling",
    "HierarchicalVLM",
    "HierarchicalViT",
    "HopfieldLayer",
    "LinearProbeViT",
    "MAEOutput",
    "MambaBlock",
    "MemoryAugmentedViT",
    "Mlp",
    "NoWeightDecayMixin",
    "PatchEmbed",
    "PostNormBlock",
    "RMSNorm",
    "ReasoningModule",
    "SSMDirection",
    "SwiGLU",
    "VPTDeep",
    "VPTShallow",
    "VisionHRM",
    "VisionMamba",
    "VisionMambaMAE",
    "VisionTransformer",
    "canonical_name",
    "create_model",
    "list_models",
    "model_aliases",
    "register_model",
]
