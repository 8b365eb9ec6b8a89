"""Models built on ``hvision_ext.ops``: ``create_model(name, **overrides)`` builds a registered
preset (``list_models()`` names them)."""

from .layers import Attention, AttentionBlock, DropPath, Mlp, PatchEmbed, RMSNorm
from .mamba import BiMamba, DirectionalConv1d, MambaBlock, SSMDirection
from .registry import create_model, list_models, register_model
from .vision_mamba import VisionMamba
from .vim_mae import MAEOutput, VisionMambaMAE

__all__ = [
    "Attention",
    "AttentionBlock",
    "BiMamba",
    "DirectionalConv1d",
    "DropPath",
    "MAEOutput",
    "MambaBlock",
    "Mlp",
    "PatchEmbed",
    "RMSNorm",
    "SSMDirection",
    "VisionMamba",
    "VisionMambaMAE",
    "create_model",
    "list_models",
    "register_model",
]
