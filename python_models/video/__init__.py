"""HierarchicalVLM, the video model: token mixers, token merging, domain experts with a router,
the model, its typed settings, its multi-task form and their presets (detection and text
heads: their own modules; LoRA: ``python_models.adapters``)."""

from . import presets  # noqa: F401  (registers the presets)
from .experts import (
    DEFAULT_DOMAINS,
    ROUTING_MODES,
    DomainRouter,
    ExpertFFN,
    RouterOutput,
    expert_usage,
    load_balancing_loss,
    router_z_loss,
    routing_accuracy,
    routing_loss,
)
from .merging import (
    MERGE_BUDGETS,
    MERGE_MODES,
    merge_ratio_at,
    reduce_runs,
    removal_per_clip,
    removal_per_frame,
)
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
from .multitask import TASKS, DomainExperts, MultiTaskOutput, MultiTaskVLM
from .settings import FLAT_KEYS, ImportanceSettings, MergeSettings, MixerSettings

__all__ = [
    "DEFAULT_DOMAINS",
    "FLAT_KEYS",
    "MERGE_BUDGETS",
    "MERGE_MODES",
    "MIXERS",
    "ROUTING_MODES",
    "TASKS",
    "CrossMemoryAttention",
    "DomainExperts",
    "DomainRouter",
    "ExpertFFN",
    "FullAttention",
    "HierarchicalAttention",
    "HierarchicalVLM",
    "ImportanceSettings",
    "LinearAttention",
    "LocalGlobalAttention",
    "MambaMixer",
    "MergeSettings",
    "MixerSettings",
    "MultiTaskOutput",
    "MultiTaskVLM",
    "PerformerAttention",
    "RouterOutput",
    "StridedAttention",
    "TokenLayout",
    "TubeletEmbed",
    "VideoBlock",
    "build_mixer",
    "expert_usage",
    "load_balancing_loss",
    "merge_ratio_at",
    "reduce_runs",
    "removal_per_clip",
    "removal_per_frame",
    "router_z_loss",
    "routing_accuracy",
    "routing_loss",
]
