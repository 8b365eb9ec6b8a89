"""Video classification and the video multi-task job's setup: the settings of ``python -m
train.video`` (with the source design's configuration keys), the data splits and loaders, the
model, the task, and a trained model read back from its checkpoint."""

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from python_models import create_model
from python_models.adapters.lora import (
    LoraConfig,
    inject_lora,
    mark_only_lora_trainable,
)
from python_models.video import MERGE_BUDGETS, MERGE_MODES, MIXERS, merge_ratio_at
from python_models.video.experts import ROUTING_MODES
from python_models.video.merging import MOTION_SOURCES
from python_models.video.mixers import mixer_options
from python_models.video.multitask import TASKS, MultiTaskVLM
from python_models.video.settings import ImportanceSettings, MergeSettings, MixerSettings

from ..data import (
    ClipTransform,
    SelectFields,
    VideoDataset,
    domain_balance_weights,
    make_loader,
    stratified_indices,
)
from ..data.annotations import (
    SPLITS,
    VideoRecord,
    class_names,
    read_json_folder,
    read_json_split,
    read_video_list,
)
from ..data.moving_shapes import ensure_moving_shapes, load_moving_shapes
from ..data.text import TextVocabulary
from ..data.video import BACKENDS
from ..engine import checkpoint
from ..engine.config import (
    CLASS_COUNT,
    FRACTION,
    FRAMES,
    IMAGE_SIDE,
    POSITIVE,
    Range,
    Translation,
    at_least,
    checked,
    field,
)
from ..engine.trainer import EngineConfig, mixed_precision
from .classification import ClassificationTask
from .multitask import ROUTER_LOSSES, MultiTaskCollate, MultiTaskVideoTask

# Sections of settings with the source design's keys, and their defaults.
ATTENTION_DEFAULTS = {"type": "full"}  # plus the chosen type's own options
SAMPLE_STRATEGIES = ("none", "weighted")
FINETUNE_MODES = ("lora", "heads", "full")
CLIP_MEAN, CLIP_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# Enabled tasks and their loss weights. The built-in job learns from the action segments too:
# per-frame detection targets tell the backbone when the action happens (test accuracy 87.5 %
# without them, 93.8 % with them, in the same time).
TASK_WEIGHTS = {"action": 1.0, "detection": 0.33}


@dataclasses.dataclass
class TokenMergingSettings:
    """Token merging within each frame before chosen blocks (``python_models.video.merging``)."""

    KEY: ClassVar[str] = "model.token_merging"

    enabled: bool = field(False, "merge tokens")
    target_compression_ratio: float = field(
        0.5, "fraction of the patch tokens removed before the blocks of merge_at", FRACTION
    )
    merge_at: list = field([1], "indices of the blocks before which tokens merge")
    mode: str = field("motion", "which tokens merge", tuple(MERGE_MODES))
    motion_alpha: float = field(0.5, "weight of motion against edge saliency")
    motion_source: str = field(
        "frame_difference",
        "motion from frame differences or optical flow (OpenCV, CPU)",
        MOTION_SOURCES,
    )
    importance_weight: float = field(1.0, "how strongly importance keeps a token unmerged")
    class_attention_weight: float = field(
        0.0, "the class token's attention added to the importance", at_least(0)
    )
    proportional_attention: bool = field(False, "ToMe's size-weighted attention (full only)")
    ramp_fraction: float = field(
        0.0, "share of training over which the ratio ramps up from 0", Range(0, 1)
    )
    budget: str = field(
        "clip",
        "clip: spread over the frames by motion; frame: equal per frame",
        tuple(MERGE_BUDGETS),
    )
    colour_weight: float = field(0.0, "colour saliency added to the importance", at_least(0))
    saliency_ramp_steps: int = field(
        0, "progressive merging: motion alone first, saliency over this many steps", at_least(0)
    )


@dataclasses.dataclass
class ClipSettings:
    """How clips are read: frames sampled per clip (one per TSN segment), their side, the views
    averaged at test time and the decoder."""

    KEY: ClassVar[str] = "data.video"

    num_frames: int = field(8, "frames sampled per clip", FRAMES)
    frame_size: int = field(64, "frame side after resizing", IMAGE_SIDE)
    num_clips: int = field(1, "views averaged at test time", FRAMES)
    backend: str | None = field(
        None, "decord or opencv (null: decord when installed)", (None, *BACKENDS)
    )


@dataclasses.dataclass
class ExpertSettings:
    """Domain-expert FFNs and their router."""

    KEY: ClassVar[str] = "model.experts"

    num_domains: int = field(0, "expert FFNs and router outputs (0: no experts)", at_least(0))
    routing: str = field("soft", "soft or top_k routing", tuple(ROUTING_MODES))
    top_k: int = field(1, "experts per clip with top_k routing", at_least(1))
    balance_weight: float = field(0.01, "Switch Transformer's load-balancing loss", at_least(0))
    z_weight: float = field(0.001, "router z-loss", at_least(0))
    supervised_weight: float = field(
        0.5, "cross-entropy of the router against the clip's domain, where known", at_least(0)
    )


@dataclasses.dataclass
class DomainLoraSettings:
    """The LoRA adapters of each domain module."""

    KEY: ClassVar[str] = "model.domain_modules.lora"

    rank: int = field(8, "LoRA rank", at_least(1))
    alpha: float = field(16.0, "LoRA scale numerator (scale alpha / rank)", POSITIVE)
    target_modules: list = field(["qkv", "proj"], "name patterns of the adapted linear layers")


@dataclasses.dataclass
class DomainModuleSettings:
    """Per-domain LoRA adapters on the backbone's projections, mixed per clip by the router of
    the experts' routing settings (instead of expert FFNs)."""

    KEY: ClassVar[str] = "model.domain_modules"

    enabled: bool = field(False, "route clips to per-domain LoRA adapters")
    num_domains: int = field(4, "domains with adapters of their own", at_least(1))
    lora: DomainLoraSettings = field(DomainLoraSettings(), "the adapters' shape")


@dataclasses.dataclass
class TextSettings:
    """Question answering and captioning: lengths, the text heads' shape, the beam."""

    KEY: ClassVar[str] = "text"

    max_questions: int = field(3, "question/answer pairs per clip", at_least(0))
    max_question_len: int = field(12, "words per question", at_least(1))
    max_captions: int = field(1, "reference captions per clip", at_least(1))
    max_caption_len: int = field(20, "words per caption with BOS and EOS", at_least(3))
    head_layers: int = field(2, "layers of the text heads", at_least(1))
    head_heads: int = field(4, "attention heads of the text heads", at_least(1))
    beam_size: int = field(1, "caption decoding in evaluation (1: greedy)", at_least(1))


@dataclasses.dataclass
class DomainBalancing:
    """How training clips are drawn across domains."""

    KEY: ClassVar[str] = "training.domain_balancing"

    sample_strategy: str = field(
        "none", "none, or weighted: each domain drawn equally often", SAMPLE_STRATEGIES
    )


@dataclasses.dataclass
class LoraSettings:
    """The LoRA adapter of domain fine-tuning (its rank is ``lora_rank``)."""

    KEY: ClassVar[str] = "lora"

    alpha: float = field(16.0, "LoRA scale numerator (scale alpha / rank)", POSITIVE)
    dropout: float = field(0.0, "dropout on the adapter's input", FRACTION)
    target_modules: list = field(
        ["qkv", "proj"], "name patterns of the adapted layers (the attention projections)"
    )
    modules_to_save: list = field(
        [], "prefixes of parameters that train too, beside the action head"
    )


def section(name: str, values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` over ``defaults``; a key that is not among them is an error naming both."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **values}


# -- HierarchicalVLM's training_config.yaml, key by key ---------------------------------------

PRESET_WIDTHS = {96: "hvlm_tiny", 384: "hvlm_small", 768: "hvlm_base"}  # hidden size → preset
AUGMENTED_CROP_SCALE = [0.5, 1.0]  # the random resized crop's area range under augmentation
NO_CROP = [1.0, 1.0]


def hidden_size(key: str, value: Any) -> dict[str, Any]:
    """`model`: the preset that wide (768: `hvlm_base`, 384: small, 96: tiny), else `model_args.embed_dim`"""
    width = checked(key, value, int, at_least(1))
    if width in PRESET_WIDTHS:
        return {"model": PRESET_WIDTHS[width]}
    return {"model_args": {"embed_dim": width}}


def attention_heads(key: str, value: Any) -> dict[str, Any]:
    """`model_args.num_heads`"""
    return {"model_args": {"num_heads": checked(key, value, int, at_least(1))}}


def domain_balancing(key: str, value: Any) -> dict[str, Any]:
    """`domain_balancing.sample_strategy`: the `sample_strategy` when `enabled`, else `none`"""
    options = section(key, checked(key, value, dict), {"enabled": True, "sample_strategy": "none"})
    enabled = checked(f"{key}.enabled", options["enabled"], bool)
    strategy = checked(f"{key}.sample_strategy", options["sample_strategy"], str, SAMPLE_STRATEGIES)
    return {"domain_balancing": {"sample_strategy": strategy if enabled else "none"}}


def temporal_smoothing(key: str, value: Any) -> dict[str, Any]:
    """`temporal_smoothing`: `window_size` when `enabled`, else 1 (none); a number is the window"""
    if not isinstance(value, dict):
        return {"temporal_smoothing": checked(key, value, int)}
    options = section(key, value, {"enabled": True, "window_size": 3})
    enabled = checked(f"{key}.enabled", options["enabled"], bool)
    window = checked(f"{key}.window_size", options["window_size"], int, at_least(1))
    return {"temporal_smoothing": window if enabled else 1}


def augmentation(key: str, value: Any) -> dict[str, Any]:
    """`crop_scale`: `[0.5, 1.0]` when true (a random resized crop per training clip), else `[1.0, 1.0]`"""
    return {"crop_scale": list(AUGMENTED_CROP_SCALE if checked(key, value, bool) else NO_CROP)}


@dataclasses.dataclass
class VideoConfig(EngineConfig):
    """The defaults are the built-in job: hvlm_tiny on the built-in video set, on the CPU.

    Besides its own layout, a config file may use HierarchicalVLM's ``training_config.yaml``
    keys (``SOURCE_KEYS``); its other keys (``model.attention``, ``model.token_merging``,
    ``model.domain_modules``, ``data.batch_size``, ``data.num_workers``, ``data.video``) are
    settings of the same name."""

    SOURCE_NAME: ClassVar[str] = "HierarchicalVLM's training_config.yaml"
    SOURCE_KEYS: ClassVar[dict[str, Translation]] = {
        "model.hidden_size": hidden_size,
        "model.num_attention_heads": attention_heads,
        "training.num_epochs": "epochs",
        "training.mixed_precision": mixed_precision,
        "training.gradient_checkpointing": "grad_checkpointing",
        "training.gradient_clip": "clip_grad",
        "training.domain_balancing": domain_balancing,
        "training.temporal_smoothing": temporal_smoothing,
        "data.augmentation.enabled": augmentation,
    }

    model: str = field("hvlm_tiny", "registered video model (python_models.list_models())")
    model_args: dict = field({}, "overrides of the model's preset")
    attention: dict = field(ATTENTION_DEFAULTS, "model.attention: type and its options")
    token_merging: TokenMergingSettings = field(
        TokenMergingSettings(), "model.token_merging: which tokens merge, where, by what importance"
    )
    video: ClipSettings = field(ClipSettings(), "data.video: how clips are sampled and read")
    train_data: str = field("", "training videos: a JSON-layout folder or a list file")
    val_data: str = field(
        "",
        "validation videos: a JSON-layout folder or a list file (none: TRAIN_DATA's validation "
        "folder, else VAL_SPLIT of its clips)",
    )
    val_split: float = field(
        0.1, "share of the training clips held out for validation when there are none", FRACTION
    )
    classes: list = field([], "action class names (set from the training annotations' names)")
    data_dir: str = field("data", "where the built-in video set is made and read")
    num_classes: int = field(
        0,
        "classes (0: 1 + the largest training label, up to 10 or twice the labels seen)",
        CLASS_COUNT,
    )
    domains: list = field([], "use only the clips of these domains (empty: every clip)")
    tasks: dict = field(TASK_WEIGHTS, f"tasks to train and their loss weights: {list(TASKS)}")
    experts: ExpertSettings = field(ExpertSettings(), "model.experts: domain experts and router")
    domain_modules: DomainModuleSettings = field(
        DomainModuleSettings(), "model.domain_modules: per-domain LoRA"
    )
    text: TextSettings = field(TextSettings(), "QA and captioning: lengths, head shape, beam size")
    temporal_smoothing: int = field(3, "detection: moving-average window over frames (odd)")
    domain_balancing: DomainBalancing = field(
        DomainBalancing(), "sample_strategy: none or weighted"
    )
    pretrained: str = field("", "start from the weights of this train.video checkpoint")
    finetune_domain: str = field("", "fine-tune on this domain's clips (with --pretrained)")
    finetune: str = field("lora", "what fine-tuning trains", FINETUNE_MODES)
    lora_rank: int = field(8, "LoRA rank of the fine-tuning adapters")
    lora: LoraSettings = field(
        LoraSettings(), "LoRA alpha, dropout and target_modules (name patterns)"
    )
    vocabulary: dict = field(
        {}, "QA/captioning words and answers (set from the training annotations or --pretrained)"
    )
    crop_scale: list = field([1.0, 1.0], "random resized crop: area fraction range (1, 1: off)")
    label_smoothing: float = field(0.0, "label smoothing")
    epochs: int = field(28, "training epochs", aliases=("--num-epochs",))
    batch_size: int = field(16, "clips per step on each process")
    lr: float = field(1e-3, "peak learning rate (AdamW)")
    warmup_epochs: float = field(1.0, "linear warm-up, in epochs")
    threads: int = field(2, "CPU threads for torch (0: torch's default)")
    num_workers: int = field(0, "data-loader worker processes")
    out_dir: str = field("runs/video", "where checkpoints, metrics and plots go")
    show_only: bool = field(
        False, "print the resolved settings and a summary of the model, and exit"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        attention_type = self.attention.get("type", ATTENTION_DEFAULTS["type"])
        if attention_type not in MIXERS:
            raise ValueError(
                f"model.attention.type must be one of {sorted(MIXERS)}, got {attention_type!r}"
            )
        options = {name: None for name in mixer_options(attention_type)}
        self.attention = section("model.attention", self.attention, {"type": None, **options})
        self._check_multitask()
        self._check_width()
        if self.val_data and not self.train_data:
            raise ValueError("--val-data needs --train-data (without both: the built-in set)")

    def _check_width(self) -> None:
        """The width must split into the heads (a preset's width where the model_args keep it)."""
        preset_width = next((w for w, name in PRESET_WIDTHS.items() if name == self.model), None)
        width = self.model_args.get("embed_dim", preset_width)
        heads = self.model_args.get("num_heads")
        if isinstance(width, int) and isinstance(heads, int) and width % heads:
            raise ValueError(
                f"model.hidden_size (model_args.embed_dim) {width} must be a multiple of "
                f"model.num_attention_heads (model_args.num_heads), got {heads}"
            )

    def _check_multitask(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or "action" not in self.tasks:
            raise ValueError(
                f"tasks must map 'action' and any of {list(TASKS)} to loss weights, got {self.tasks}"
            )
        if self.temporal_smoothing < 1 or self.temporal_smoothing % 2 == 0:
            raise ValueError(
                f"training.temporal_smoothing must be an odd window >= 1, got {self.temporal_smoothing}"
            )
        if self.multitask and self.video.num_clips != 1:
            raise ValueError(
                "data.video.num_clips must be 1 with several tasks (multi-view testing averages "
                f"action scores only), got {self.video.num_clips}"
            )
        if self.finetune_domain and not self.pretrained:
            raise ValueError("--finetune-domain needs --pretrained CHECKPOINT to start from")
        self._check_domain_modules()

    def _check_domain_modules(self) -> None:
        if self.domain_modules.enabled and self.experts.num_domains:
            raise ValueError(
                "model.domain_modules.enabled routes clips to per-domain LoRA adapters and "
                "model.experts.num_domains to expert FFNs: set one, got num_domains "
                f"{self.experts.num_domains} with domain modules enabled"
            )
        if self.domain_modules.enabled and self.finetune_domain and self.finetune == "lora":
            raise ValueError(
                "--finetune lora adds a LoRA adapter beside model.domain_modules' per-domain "
                "ones: fine-tune with --finetune heads or full, or disable the domain modules"
            )

    @property
    def merging(self) -> bool:
        return bool(self.token_merging.enabled)

    @property
    def multitask(self) -> bool:
        """More than the action task, or domain experts or modules: a ``MultiTaskVLM``."""
        return (
            set(self.tasks) != {"action"}
            or self.experts.num_domains > 0
            or self.domain_modules.enabled
        )


def model_arguments(config: VideoConfig, num_classes: int) -> dict[str, Any]:
    """The model's constructor arguments from the config's sections (``model_args``' flat keys
    of the preset on top)."""
    attention = dict(config.attention)
    merging = config.token_merging
    return {
        "num_frames": config.video.num_frames,
        "img_size": config.video.frame_size,
        "num_classes": num_classes,
        "mixer": MixerSettings(
            attention.pop("type"), {k: v for k, v in attention.items() if v is not None}
        ),
        "merging": MergeSettings(
            ratio=merging.target_compression_ratio if config.merging else 0.0,
            at=tuple(merging.merge_at),
            mode=merging.mode,
            budget=merging.budget,
            importance_weight=merging.importance_weight,
            class_attention_weight=merging.class_attention_weight,
            proportional_attention=merging.proportional_attention,
        ),
        "importance": ImportanceSettings(
            motion_alpha=merging.motion_alpha,
            colour_weight=merging.colour_weight,
            saliency_ramp_steps=merging.saliency_ramp_steps,
            motion_source=merging.motion_source,
        ),
        "pixel_mean": CLIP_MEAN,
        "pixel_std": CLIP_STD,
        **config.model_args,
    }


def build_model(
    config: VideoConfig, num_classes: int, vocabulary: TextVocabulary | None = None
) -> nn.Module:
    """The configured backbone, or a ``MultiTaskVLM`` around it for several tasks or experts
    (its text heads sized for ``vocabulary``)."""
    model = create_model(config.model, **model_arguments(config, num_classes))
    if config.multitask:
        text, experts, modules = config.text, config.experts, config.domain_modules
        lora = modules.lora
        domain_lora = (
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                target_modules=tuple(lora.target_modules),
            )
            if modules.enabled
            else None
        )
        model = MultiTaskVLM(
            model,
            tuple(config.tasks),
            vocab_size=len(vocabulary.words) if vocabulary else 0,
            num_answers=len(vocabulary.answers) if vocabulary else 0,
            num_domains=modules.num_domains if domain_lora else experts.num_domains,
            domain_lora=domain_lora,
            routing=experts.routing,
            top_k=experts.top_k,
            head_layers=text.head_layers,
            head_heads=text.head_heads,
            max_question_len=text.max_question_len,
            max_caption_len=text.max_caption_len,
        )
    return model


def start_from_pretrained(model: nn.Module, config: VideoConfig, state: dict | None) -> None:
    """The ``pretrained`` checkpoint's weights (``state``; its EMA when it kept one), then the
    fine-tuning set-up: LoRA adapters named after the domain, and which parameters train."""
    if state is not None:
        model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    if config.finetune_domain:
        prepare_finetuning(model, config)


def prepare_finetuning(model: nn.Module, config: VideoConfig) -> None:
    """``lora``: an adapter named after the domain (``lora_rank``) on every linear layer that
    ``lora.target_modules`` names, trained with the action head and ``lora.modules_to_save``;
    ``heads``: those alone; ``full``: everything."""
    action_head = "backbone.head" if config.multitask else "head"
    heads = (action_head, *config.lora.modules_to_save)
    if config.finetune == "full":
        return
    if config.finetune == "lora":
        lora = config.lora
        adapter_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=tuple(lora.target_modules),
        )
        inject_lora(model, adapter_config, adapters=(config.finetune_domain,))
    mark_only_lora_trainable(model, also=heads)  # without adapters: the heads alone


def json_splits(folder: Path) -> dict[str, Path]:
    """The split folders of a JSON-layout ``folder``: its ``training``, ``validation`` and
    ``test``, or, when it is a split folder itself (``annotations/`` inside), it and the
    ``validation`` and ``test`` folders beside it."""
    if (folder / "annotations").is_dir():
        return {SPLITS[0]: folder, **{split: folder.parent / split for split in SPLITS[1:]}}
    return {split: folder / split for split in SPLITS}


def class_names_of(config: VideoConfig) -> tuple[str, ...]:
    """The action classes by name: the configuration's (a checkpoint's), else the names the
    training annotations give (none for numbered labels, list files and the built-in set)."""
    if config.classes:
        return tuple(config.classes)
    train = Path(config.train_data)
    if not config.train_data or not train.is_dir():
        return ()
    return class_names(json_splits(train)[SPLITS[0]])


def split_records(config: VideoConfig, split: str) -> list[VideoRecord]:
    """The records of a split of the user's data: validation and test from ``val_data`` when
    given, else from ``train_data``'s own folders; without a validation folder (or for a list
    file) ``val_split`` of the training clips is held out per class, seeded by ``seed``; a list
    file alone also gives up ``val_split`` of its clips to a test split, apart from both."""
    train, classes = Path(config.train_data), class_names_of(config)
    has_validation = train.is_dir() and json_splits(train)[SPLITS[1]].is_dir()
    if split != SPLITS[0]:
        if config.val_data:
            return _records(Path(config.val_data), split, classes)
        if train.is_dir() and (split == SPLITS[2] or has_validation):
            return _records(train, split, classes)
    records = _records(train, SPLITS[0], classes)
    if config.val_data or has_validation:
        return records
    if not train.is_dir():  # a list file alone: its test clips are held out too, apart
        records, test = held_out_records(records, config.val_split, config.seed + 1)
        if split == SPLITS[2]:
            return test
    kept, held_out = held_out_records(records, config.val_split, config.seed)
    return kept if split == SPLITS[0] else held_out


def training_records(config: VideoConfig) -> list[VideoRecord]:
    """The training annotations, no video opened (the built-in set made first when needed)."""
    if config.train_data:
        return split_records(config, SPLITS[0])
    root = Path(config.data_dir) / "moving_shapes"
    ensure_moving_shapes(root)
    return read_json_split(root, SPLITS[0])


def held_out_records(
    records: list[VideoRecord], fraction: float, seed: int
) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(kept, held out): ``fraction`` of each class's records held out, seeded."""
    if fraction <= 0:
        raise ValueError(
            "val_split: expected a fraction in (0, 1) for data without validation clips, got 0"
        )
    labels = torch.tensor([r.labels[0] if r.labels else -1 for r in records])
    parts = stratified_indices(labels, fraction, seed)
    return tuple([records[i] for i in sorted(part.tolist())] for part in parts)


def _records(source: Path, split: str, classes: tuple[str, ...]) -> list[VideoRecord]:
    """The records of ``split`` in a JSON-layout folder, or those of a list file."""
    if source.is_dir():
        records = read_json_folder(json_splits(source)[split], classes)
    else:
        records = read_video_list(source)
    if not records:
        raise ValueError(f"no video listed for the {split} split in {source}")
    multi_label = next((r for r in records if len(r.labels) > 1), None)
    if multi_label is not None:
        raise ValueError(
            f"{multi_label.where}: {len(multi_label.labels)} labels, but train.video trains "
            "single-label classification (softmax, accuracy): give each clip one label"
        )
    return records


def _check_labelled(dataset: VideoDataset, split: str) -> None:
    """The action task alone trains and scores on clip labels: every clip needs one."""
    unlabelled = [r.path for r in dataset.records if not r.labels]
    if unlabelled:
        raise ValueError(
            f"the action task alone needs a label for every clip, but {len(unlabelled)} "
            f"{split} clip(s) have none (no actions), e.g. {unlabelled[0]}; label them or add "
            "the detection task (--tasks '{action: 1.0, detection: 0.33}'), which ignores them "
            "for the action loss"
        )


def datasets_for(config: VideoConfig, split: str, train: bool) -> VideoDataset:
    """A split of the configured data: ``training``, ``validation`` or ``test`` (the built-in
    set's, or the given folder's; a list file is the same for every split)."""
    video = config.video
    sampling = dict(
        train=train,
        num_segments=video.num_frames,
        num_clips=1 if train else video.num_clips,
        backend=video.backend,
    )
    if not config.train_data:
        dataset = load_moving_shapes(Path(config.data_dir) / "moving_shapes", split, **sampling)
    else:
        names = class_names_of(config)
        # Decoded at the model's size: videos of different sizes must stack into one batch.
        size = (video.frame_size,) * 2
        dataset = VideoDataset(
            split_records(config, split),
            num_classes=len(names) or config.num_classes or None,
            classes=names or None,
            frame_size=size,
            **sampling,
        )
    if not config.multitask:
        _check_labelled(dataset, split)
    return dataset.of_domains(
        [config.finetune_domain] if config.finetune_domain else config.domains
    )


def use_test_data(config: VideoConfig, source: str) -> None:
    """Makes ``datasets_for`` read the test split from ``source``: the built-in set's folder,
    or for a job trained on its own data, a JSON-layout folder or a list file (as ``val_data``;
    named labels index the training classes the configuration keeps)."""
    if config.train_data:
        config.val_data = source
    else:
        config.data_dir = source


class MultiViewClassifier(nn.Module):
    """Averages a classifier's softmax over the views of multi-clip clips (batch, views, T, C,
    H, W) and returns its log; plain clips go straight through."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() == 5:
            return self.model(clips)
        logits = self.model(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])
        return logits.float().softmax(-1).mean(1).log()


class VideoClassificationTask(ClassificationTask):
    """Clip classification; with token merging, the compression ratio follows the curriculum
    (``ramp_fraction`` of training from 0 to the target) before every step."""

    def __init__(self, transform: ClipTransform, num_classes: int, config: VideoConfig):
        super().__init__(transform, num_classes, config.label_smoothing)
        self.merging = config.token_merging if config.merging else None

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.merging is not None:
            target, ramp = self.merging.target_compression_ratio, self.merging.ramp_fraction
            model.set_merge_ratio(merge_ratio_at(step, total_steps, target, ramp))

    def evaluate(self, model, loader, device) -> dict[str, float]:
        if self.merging is not None:
            model.set_merge_ratio(self.merging.target_compression_ratio)
        return super().evaluate(MultiViewClassifier(model), loader, device)


def clip_transform(config: VideoConfig) -> ClipTransform:
    """Augments and normalises clips on the device, resized to ``data.video.frame_size``."""
    size = (config.video.frame_size,) * 2
    return ClipTransform(CLIP_MEAN, CLIP_STD, size=size, crop_scale=tuple(config.crop_scale))


def loader_for(
    config: VideoConfig,
    dataset: VideoDataset,
    train: bool,
    vocabulary: TextVocabulary | None = None,
):
    """Batches of (clips, labels), or of every multi-task field; the training loader draws
    domains equally often under ``domain_balancing.sample_strategy: weighted``."""
    if config.multitask:
        text = config.text
        collate = MultiTaskCollate(
            vocabulary,
            text.max_questions,
            text.max_question_len,
            text.max_captions,
            text.max_caption_len,
        )
    else:
        collate = SelectFields(("frames", "label"))
    weights = None
    if train and config.domain_balancing.sample_strategy == "weighted":
        weights = domain_balance_weights(dataset.domain_indices())
    return make_loader(
        dataset, config.batch_size, train, config.num_workers, config.seed, collate, weights
    )


def text_vocabulary(
    config: VideoConfig, records: list[VideoRecord], pretrained: dict | None
) -> TextVocabulary:
    """The vocabulary of the configuration, else of the ``pretrained`` checkpoint (its heads
    were built for it), else of the training annotations; kept in ``config`` so that every
    checkpoint carries it."""
    state = config.vocabulary
    if not state and pretrained is not None:
        state = pretrained["config"].get("vocabulary", {})
    vocabulary = TextVocabulary.from_state_dict(state) if state else TextVocabulary.build(records)
    config.vocabulary = vocabulary.state_dict()
    return vocabulary


def make_task(config: VideoConfig, num_classes: int, vocabulary: TextVocabulary):
    transform = clip_transform(config)
    if not config.multitask:
        return VideoClassificationTask(transform, num_classes, config)
    return MultiTaskVideoTask(
        transform,
        num_classes,
        config.tasks,
        {k: getattr(config.experts, k) for k in ROUTER_LOSSES},
        vocabulary,
        config.temporal_smoothing,
        config.label_smoothing,
        config.text.beam_size,
    )


def load_trained(path: str | Path) -> tuple[nn.Module, VideoConfig]:
    """The model of a ``train.video`` checkpoint, rebuilt from the settings it saved, with its
    weights (the EMA's when it kept one), in eval mode on the CPU; and those settings."""
    state = checkpoint.load(Path(path), accept=("video",))
    config = VideoConfig(**state["config"])
    vocabulary = TextVocabulary.from_state_dict(config.vocabulary) if config.multitask else None
    model = build_model(config, config.num_classes, vocabulary)
    if config.finetune_domain:
        prepare_finetuning(model, config)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    return model.eval(), config
