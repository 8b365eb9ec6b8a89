"""HierarchicalVLM, the video model: token mixers, token merging, the model and its presets."""

from . import presets  # noqa: F401  (registers the presets)
from .merging import MERGE_MODES, drop_frames, merge_frames, merge_ratio_at
from .mixers import (
    MIXERS,
    CrossMemoryAttention,
    FullAttention,
    HierarchicalAttention,
    LinearAttention,
    LocalGlobalAttention,
    MambaMixer,
    PerformerAttention,
    StridedAttention,
    TokenLayout,
    build_mixer,
)
from .model import HierarchicalVLM, TubeletEmbed, VideoBlock

__all__ = [
    "MERGE_MODES",
    "MIXERS",
    "CrossMemoryAttention",
    "FullAttention",
    "HierarchicalAttention",
    "HierarchicalVLM",
    "LinearAttention",
    "LocalGlobalAttention",
    "MambaMixer",
    "PerformerAttention",
    "StridedAttention",
    "TokenLayout",
    "TubeletEmbed",
    "VideoBlock",
    "build_mixer",
    "drop_frames",
    "merge_frames",
    "merge_ratio_at",
]
