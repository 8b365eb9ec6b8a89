"""Typed settings of ``HierarchicalVLM``: its token mixer (``MixerSettings``), its token merging
(``MergeSettings``) and the motion-saliency importance that guides motion merging
(``ImportanceSettings``); and the flat keys by which presets and the jobs' ``--model-args`` /
``--grid`` set their fields (``create_model("hvlm_tiny", attention="performer",
merge_ratio=0.5)``), each mapped once in ``FLAT_KEYS``.

Error messages name a setting by its key in the video job's config (``attention.type``,
``token_merging.mode``, …), which is where users set them.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .merging import MERGE_BUDGETS, MERGE_MODES, MOTION_SOURCES
from .mixers import MIXERS


def check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class MixerSettings:
    """The blocks' token mixer.

    Args:
        type: one of ``MIXERS`` (``full``, ``strided``, ``local_global``, ``cross_memory``,
            ``performer``, ``linear``, ``mamba``, ``hierarchical``).
        args: the mixer's own options (``mixers.mixer_options(type)``), e.g.
            ``{"nb_features": 64}`` for performer, ``{"memory_slots": 32}`` for cross_memory.
    """

    type: str = "full"
    args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_choice("attention.type", self.type, sorted(MIXERS))
        object.__setattr__(self, "args", dict(self.args or {}))  # a copy the caller cannot change


@dataclasses.dataclass(frozen=True)
class MergeSettings:
    """Token merging within each frame before chosen blocks (see ``merging``).

    Args:
        ratio: fraction of the patch tokens removed before the blocks of ``at`` together
            (0: no merging); ``HierarchicalVLM.set_merge_ratio`` changes it in training.
        at: indices of the blocks before which tokens are merged (distinct).
        mode: ``motion``, ``similarity`` or ``random``.
        budget: ``clip`` (the clip's tokens at the ratio, static frames giving up more than
            moving ones; frames then hold unequal runs) or ``frame`` (each frame gives up the
            same share).
        importance_weight: how strongly importance keeps a token from being merged.
        class_attention_weight: weight of the class token's attention in the block after each
            merge (divided by its maximum in each frame) added to the motion importance, or the
            only importance in ``similarity`` mode (0: unused); needs a mixer with a ``qkv``
            projection.
        proportional_attention: after merging, dense attention weighs each token by the number
            of tokens it stands for (ToMe's proportional attention; ``full`` mixers only).
    """

    ratio: float = 0.0
    at: tuple[int, ...] = (1,)
    mode: str = "motion"
    budget: str = "clip"
    importance_weight: float = 1.0
    class_attention_weight: float = 0.0
    proportional_attention: bool = False

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(
                f"token_merging.target_compression_ratio must be in [0, 1), got {self.ratio}"
            )
        check_choice("token_merging.mode", self.mode, MERGE_MODES)
        check_choice("token_merging.budget", self.budget, MERGE_BUDGETS)
        if self.class_attention_weight < 0:
            raise ValueError(
                "token_merging.class_attention_weight must be >= 0, got "
                f"{self.class_attention_weight}"
            )
        at = tuple(self.at)
        if len(set(at)) != len(at):
            raise ValueError(f"token_merging.merge_at must hold distinct block indices, got {at}")
        object.__setattr__(self, "at", tuple(sorted(at)))


@dataclasses.dataclass(frozen=True)
class ImportanceSettings:
    """The per-token importance of the input frames that guides ``motion`` merging.

    Args:
        motion_alpha: weight of motion against edge (Sobel) saliency.
        colour_weight: weight of the colour saliency (``merging.colour_saliency``) added to it
            (0: unused).
        saliency_ramp_steps: progressive merging: the saliency terms (edges and colour) enter
            linearly over this many training forwards, motion alone at first (0: from the
            start).
        motion_source: ``frame_difference`` (``motion_saliency``) or ``optical_flow`` (OpenCV's
            Farneback on the CPU: slower, never the default).
    """

    motion_alpha: float = 0.5
    colour_weight: float = 0.0
    saliency_ramp_steps: int = 0
    motion_source: str = "frame_difference"

    def __post_init__(self):
        check_choice("motion_source", self.motion_source, MOTION_SOURCES)
        if self.colour_weight < 0 or self.saliency_ramp_steps < 0:
            raise ValueError(
                "token_merging.colour_weight and saliency_ramp_steps must be >= 0, got "
                f"{self.colour_weight} and {self.saliency_ramp_steps}"
            )


# The constructor argument each settings class is passed as.
SETTINGS = {"mixer": MixerSettings, "merging": MergeSettings, "importance": ImportanceSettings}

# Flat key → (constructor argument, field of its settings).
FLAT_KEYS = {
    "attention": ("mixer", "type"),
    "attention_args": ("mixer", "args"),
    "merge_ratio": ("merging", "ratio"),
    "merge_at": ("merging", "at"),
    "merge_mode": ("merging", "mode"),
    "merge_budget": ("merging", "budget"),
    "importance_weight": ("merging", "importance_weight"),
    "class_attention_weight": ("merging", "class_attention_weight"),
    "proportional_attention": ("merging", "proportional_attention"),
    "motion_alpha": ("importance", "motion_alpha"),
    "colour_weight": ("importance", "colour_weight"),
    "saliency_ramp_steps": ("importance", "saliency_ramp_steps"),
    "motion_source": ("importance", "motion_source"),
}


def as_settings(argument: str, value: Any):
    """The settings object for constructor argument ``argument`` (a key of ``SETTINGS``) from
    None (the defaults), a mapping of its fields (as a YAML config gives) or the object."""
    kind = SETTINGS[argument]
    if value is None:
        return kind()
    if isinstance(value, Mapping):
        return kind(**value)
    if not isinstance(value, kind):
        raise TypeError(
            f"{argument}: expected a {kind.__name__}, a mapping of its fields or None, got "
            f"{type(value).__name__}"
        )
    return value


def gather_flat_keys(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments with the flat keys of ``FLAT_KEYS`` gathered into their settings
    (on top of the settings given as well); every other argument as given."""
    result = {key: value for key, value in arguments.items() if key not in FLAT_KEYS}
    fields: dict[str, dict[str, Any]] = {}
    for key in arguments.keys() & FLAT_KEYS.keys():
        argument, field = FLAT_KEYS[key]
        fields.setdefault(argument, {})[field] = arguments[key]
    for argument, values in fields.items():
        result[argument] = dataclasses.replace(
            as_settings(argument, result.get(argument)), **values
        )
    return result
