"""``python -m train.video``: train a HierarchicalVLM for action recognition.

With no arguments it trains ``hvlm_tiny`` (dense attention) on the built-in video set (twelve
actions that differ only in motion; made on first use) and prints its test accuracy.

    python -m train.video
    python -m train.video --config configs/video_moving_shapes.yaml --attention '{type: performer}'
    python -m train.video --token-merging '{enabled: true, target_compression_ratio: 0.5}'
    python -m train.video --train-data videos/ --val-data videos/       # JSON layout folders
    python -m train.video --train-data train.txt --val-data val.txt     # 'path label' lists
    python -m train.video --checkpoint-every 20 --resume last           # mid-epoch resume
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from python_models import create_model
from python_models.video import MERGE_MODES, MIXERS, merge_ratio_at
from python_models.video.experts import ROUTING_MODES
from python_models.video.lora import (
    LoraConfig,
    count_parameters,
    inject_lora,
    mark_only_lora_trainable,
)
from python_models.video.mixers import mixer_options
from python_models.video.multitask import TASKS, MultiTaskVLM

from . import checkpoint, distributed
from .classification import ClassificationTask
from .common import plain, run_job, start
from .config import CLASS_COUNT, FRACTION, FRAMES, IMAGE_SIDE, checked, field
from .data import ClipTransform, SelectFields, VideoDataset, domain_balance_weights, make_loader
from .data.annotations import read_json_split, read_video_list
from .data.moving_shapes import load_moving_shapes
from .data.video import BACKENDS
from .engine import EngineConfig, Trainer, take_skipped
from .video_multitask import ROUTER_LOSSES, MultiTaskCollate, MultiTaskVideoTask, TextVocabulary

# Sections of settings with the source design's keys, and their defaults.
ATTENTION_DEFAULTS = {"type": "full"}  # plus the chosen type's own options
TOKEN_MERGING_DEFAULTS = {
    "enabled": False,
    "target_compression_ratio": 0.5,
    "merge_at": [1],
    "mode": "motion",  # motion, similarity or random (the baseline)
    "motion_alpha": 0.5,
    "motion_source": "frame_difference",  # or optical_flow (OpenCV Farneback, CPU)
    "importance_weight": 1.0,
    "class_attention_weight": 0.0,  # the class token's attention added to the importance
    "proportional_attention": False,  # ToMe's size-weighted attention (full attention)
    "ramp_fraction": 0.0,  # share of training over which the ratio ramps up from 0
}
# Enabled tasks and their loss weights. The built-in job learns from the action segments too:
# per-frame detection targets tell the backbone when the action happens (test accuracy 87.5 %
# without them, 93.8 % with them, in the same time).
TASK_WEIGHTS = {"action": 1.0, "detection": 0.33}
EXPERTS_DEFAULTS = {
    "num_domains": 0,  # expert FFNs and router outputs (0: no experts)
    "routing": "soft",  # soft or top_k
    "top_k": 1,
    "balance_weight": 0.01,  # Switch Transformer's load-balancing loss
    "z_weight": 0.001,  # router z-loss
    "supervised_weight": 0.5,  # cross-entropy against the clip's domain, where known
}
TEXT_DEFAULTS = {
    "max_questions": 3,  # question/answer pairs per clip
    "max_question_len": 12,  # words
    "max_captions": 1,  # reference captions per clip
    "max_caption_len": 20,  # words with BOS and EOS
    "head_layers": 2,
    "head_heads": 4,
    "beam_size": 1,  # caption decoding in evaluation (1: greedy)
}
DOMAIN_BALANCING_DEFAULTS = {"sample_strategy": "none"}  # or weighted
SAMPLE_STRATEGIES = ("none", "weighted")
LORA_DEFAULTS = {
    "alpha": 16.0,
    "dropout": 0.0,
    "target_modules": ["qkv", "proj"],  # the attention projections, as in the LoRA paper
    "modules_to_save": [],  # prefixes of parameters that train too, beside the action head
}
FINETUNE_MODES = ("lora", "heads", "full")
VIDEO_DEFAULTS = {
    "num_frames": 8,  # frames sampled per clip (one per TSN segment)
    "frame_size": 64,
    "num_clips": 1,  # views averaged at test time
    "backend": None,  # decord or opencv (None: decord when installed)
}
# data.video's sizes and their allowed values.
VIDEO_SIZES = {"num_frames": FRAMES, "frame_size": IMAGE_SIDE, "num_clips": FRAMES}
CLIP_MEAN, CLIP_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def section(name: str, values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``values`` over ``defaults``; a key that is not among them is an error naming both."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"{name}: unknown keys {unknown}; allowed: {sorted(defaults)}")
    return {**defaults, **values}


@dataclasses.dataclass
class VideoConfig(EngineConfig):
    """The defaults are the built-in job: hvlm_tiny on the built-in video set, on the CPU."""

    model: str = field("hvlm_tiny", "registered video model (python_models.list_models())")
    model_args: dict = field({}, "overrides of the model's preset")
    attention: dict = field(ATTENTION_DEFAULTS, "model.attention: type and its options")
    token_merging: dict = field(TOKEN_MERGING_DEFAULTS, "model.token_merging settings")
    video: dict = field(VIDEO_DEFAULTS, "data.video: num_frames, frame_size, num_clips, backend")
    train_data: str = field("", "training videos: a JSON-layout folder or a list file")
    val_data: str = field("", "validation videos: a JSON-layout folder or a list file")
    data_dir: str = field("data", "where the built-in video set is made and read")
    num_classes: int = field(
        0,
        "classes (0: 1 + the largest training label, up to 10 or twice the labels seen)",
        CLASS_COUNT,
    )
    domains: list = field([], "use only the clips of these domains (empty: every clip)")
    tasks: dict = field(TASK_WEIGHTS, f"tasks to train and their loss weights: {list(TASKS)}")
    experts: dict = field(EXPERTS_DEFAULTS, "model.experts: domain experts and router settings")
    text: dict = field(TEXT_DEFAULTS, "QA and captioning: lengths, head shape, beam size")
    temporal_smoothing: int = field(3, "detection: moving-average window over frames (odd)")
    domain_balancing: dict = field(DOMAIN_BALANCING_DEFAULTS, "sample_strategy: none or weighted")
    pretrained: str = field("", "start from the weights of this train.video checkpoint")
    finetune_domain: str = field("", "fine-tune on this domain's clips (with --pretrained)")
    finetune: str = field("lora", f"what fine-tuning trains: one of {list(FINETUNE_MODES)}")
    lora_rank: int = field(8, "LoRA rank of the fine-tuning adapters")
    lora: dict = field(LORA_DEFAULTS, "LoRA alpha, dropout and target_modules (name patterns)")
    vocabulary: dict = field(
        {}, "QA/captioning words and answers (set from the training annotations or --pretrained)"
    )
    crop_scale: list = field([1.0, 1.0], "random resized crop: area fraction range (1, 1: off)")
    label_smoothing: float = field(0.0, "label smoothing")
    epochs: int = field(28, "training epochs")
    batch_size: int = field(16, "clips per step on each process")
    lr: float = field(1e-3, "peak learning rate (AdamW)")
    warmup_epochs: float = field(1.0, "linear warm-up, in epochs")
    threads: int = field(2, "CPU threads for torch (0: torch's default)")
    num_workers: int = field(0, "data-loader worker processes")
    out_dir: str = field("runs/video", "where checkpoints, metrics and plots go")

    def __post_init__(self) -> None:
        super().__post_init__()
        attention_type = self.attention.get("type", ATTENTION_DEFAULTS["type"])
        if attention_type not in MIXERS:
            raise ValueError(
                f"model.attention.type must be one of {sorted(MIXERS)}, got {attention_type!r}"
            )
        options = {name: None for name in mixer_options(attention_type)}
        self.attention = section("model.attention", self.attention, {"type": None, **options})
        self.token_merging = section(
            "model.token_merging", self.token_merging, TOKEN_MERGING_DEFAULTS
        )
        merging = self.token_merging
        checked("model.token_merging.mode", merging["mode"], str, tuple(MERGE_MODES))
        merging["target_compression_ratio"] = checked(
            "model.token_merging.target_compression_ratio",
            merging["target_compression_ratio"],
            float,
            FRACTION,
        )
        self.video = section("data.video", self.video, VIDEO_DEFAULTS)
        for key, allowed in VIDEO_SIZES.items():
            self.video[key] = checked(f"data.video.{key}", self.video[key], int, allowed)
        if self.video["backend"] not in (None, *BACKENDS):
            raise ValueError(
                f"data.video.backend must be one of {list(BACKENDS)} or null (the default), "
                f"got {self.video['backend']!r}"
            )
        self._check_multitask()
        if bool(self.train_data) != bool(self.val_data):
            raise ValueError("give both --train-data and --val-data, or neither (built-in set)")

    def _check_multitask(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown or "action" not in self.tasks:
            raise ValueError(
                f"tasks must map 'action' and any of {list(TASKS)} to loss weights, got {self.tasks}"
            )
        self.experts = section("model.experts", self.experts, EXPERTS_DEFAULTS)
        self.text = section("text", self.text, TEXT_DEFAULTS)
        self.lora = section("lora", self.lora, LORA_DEFAULTS)
        self.domain_balancing = section(
            "training.domain_balancing", self.domain_balancing, DOMAIN_BALANCING_DEFAULTS
        )
        choices = (
            (
                "training.domain_balancing.sample_strategy",
                self.domain_balancing["sample_strategy"],
                SAMPLE_STRATEGIES,
            ),
            ("model.experts.routing", self.experts["routing"], ROUTING_MODES),
            ("finetune", self.finetune, FINETUNE_MODES),
        )
        for key, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
        if self.temporal_smoothing < 1 or self.temporal_smoothing % 2 == 0:
            raise ValueError(
                f"training.temporal_smoothing must be an odd window >= 1, got {self.temporal_smoothing}"
            )
        if self.multitask and self.video["num_clips"] != 1:
            raise ValueError(
                "data.video.num_clips must be 1 with several tasks (multi-view testing averages "
                f"action scores only), got {self.video['num_clips']}"
            )
        if self.finetune_domain and not self.pretrained:
            raise ValueError("--finetune-domain needs --pretrained CHECKPOINT to start from")

    @property
    def merging(self) -> bool:
        return bool(self.token_merging["enabled"])

    @property
    def multitask(self) -> bool:
        """More than the action task, or domain experts: the model is a ``MultiTaskVLM``."""
        return set(self.tasks) != {"action"} or self.experts["num_domains"] > 0


def model_arguments(config: VideoConfig, num_classes: int) -> dict[str, Any]:
    """The model's constructor arguments from the config's sections."""
    attention = dict(config.attention)
    merging = config.token_merging
    return {
        "num_frames": config.video["num_frames"],
        "img_size": config.video["frame_size"],
        "num_classes": num_classes,
        "attention": attention.pop("type"),
        "attention_args": {k: v for k, v in attention.items() if v is not None},
        "merge_ratio": merging["target_compression_ratio"] if config.merging else 0.0,
        "merge_at": merging["merge_at"],
        "merge_mode": merging["mode"],
        "motion_alpha": merging["motion_alpha"],
        "motion_source": merging["motion_source"],
        "importance_weight": merging["importance_weight"],
        "class_attention_weight": merging["class_attention_weight"],
        "proportional_attention": merging["proportional_attention"],
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
        text, experts = config.text, config.experts
        model = MultiTaskVLM(
            model,
            tuple(config.tasks),
            vocab_size=len(vocabulary.words) if vocabulary else 0,
            num_answers=len(vocabulary.answers) if vocabulary else 0,
            num_domains=experts["num_domains"],
            routing=experts["routing"],
            top_k=experts["top_k"],
            head_layers=text["head_layers"],
            head_heads=text["head_heads"],
            max_question_len=text["max_question_len"],
            max_caption_len=text["max_caption_len"],
        )
    return model


def load_pretrained(model: nn.Module, config: VideoConfig, state: dict | None) -> None:
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
    heads = (action_head, *config.lora["modules_to_save"])
    if config.finetune == "full":
        return
    if config.finetune == "lora":
        lora = config.lora
        adapter_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=tuple(lora["target_modules"]),
        )
        inject_lora(model, adapter_config, adapters=(config.finetune_domain,))
    mark_only_lora_trainable(model, also=heads)  # without adapters: the heads alone


def _records(source: str, split: str):
    path = Path(source)
    records = read_json_split(path, split) if path.is_dir() else read_video_list(path)
    if not records:
        raise ValueError(f"no video listed for the {split} split in {path}")
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
        num_segments=video["num_frames"],
        num_clips=1 if train else video["num_clips"],
        backend=video["backend"],
    )
    if not config.train_data:
        dataset = load_moving_shapes(Path(config.data_dir) / "moving_shapes", split, **sampling)
    else:
        source = config.train_data if split == "training" else config.val_data
        records = _records(source, split)
        # Decoded at the model's size: videos of different sizes must stack into one batch.
        size = (video["frame_size"],) * 2
        dataset = VideoDataset(
            records, num_classes=config.num_classes or None, frame_size=size, **sampling
        )
    if not config.multitask:
        _check_labelled(dataset, split)
    return dataset.of_domains(
        [config.finetune_domain] if config.finetune_domain else config.domains
    )


def use_test_data(config: VideoConfig, source: str) -> None:
    """Makes ``datasets_for`` read the test split from ``source``: the built-in set's folder,
    or for a job trained on its own data, a JSON-layout folder or a list file (as ``val_data``)."""
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
            target, ramp = self.merging["target_compression_ratio"], self.merging["ramp_fraction"]
            model.set_merge_ratio(merge_ratio_at(step, total_steps, target, ramp))

    def evaluate(self, model, loader, device) -> dict[str, float]:
        if self.merging is not None:
            model.set_merge_ratio(self.merging["target_compression_ratio"])
        return super().evaluate(MultiViewClassifier(model), loader, device)


def clip_transform(config: VideoConfig) -> ClipTransform:
    """Augments and normalises clips on the device, resized to ``data.video.frame_size``."""
    size = (config.video["frame_size"],) * 2
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
            text["max_questions"],
            text["max_question_len"],
            text["max_captions"],
            text["max_caption_len"],
        )
    else:
        collate = SelectFields(("frames", "label"))
    weights = None
    if train and config.domain_balancing["sample_strategy"] == "weighted":
        weights = domain_balance_weights(dataset.domain_indices())
    return make_loader(
        dataset, config.batch_size, train, config.num_workers, config.seed, collate, weights
    )


def text_vocabulary(
    config: VideoConfig, train_set: VideoDataset, pretrained: dict | None
) -> TextVocabulary:
    """The vocabulary of the configuration, else of the ``pretrained`` checkpoint (its heads
    were built for it), else of the training annotations; kept in ``config`` so that every
    checkpoint carries it."""
    state = config.vocabulary
    if not state and pretrained is not None:
        state = pretrained["config"].get("vocabulary", {})
    vocabulary = (
        TextVocabulary.from_state_dict(state) if state else TextVocabulary.build(train_set.records)
    )
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
        {k: config.experts[k] for k in ROUTER_LOSSES},
        vocabulary,
        config.temporal_smoothing,
        config.label_smoothing,
        config.text["beam_size"],
    )


def run(config: VideoConfig) -> tuple[Trainer, dict]:
    """Trains as configured, then tests the last weights; returns the trainer and a summary
    (test accuracy, every test metric, trained parameters, the best validation value of the
    task's monitored metric, wall and CPU time)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    device = start(config)
    train_set = datasets_for(config, "training", train=True)
    config.num_classes = train_set.num_classes  # saved with the checkpoints
    val_set = datasets_for(config, "validation", train=False)
    test_set = datasets_for(config, "test", train=False)  # before training: a bad split fails now
    pretrained = (
        checkpoint.load(config.pretrained, accept=("video",)) if config.pretrained else None
    )
    vocabulary = text_vocabulary(config, train_set, pretrained) if config.multitask else None
    model = build_model(config, train_set.num_classes, vocabulary)
    load_pretrained(model, config, pretrained)
    task = make_task(config, train_set.num_classes, vocabulary)
    train_loader, val_loader = (
        loader_for(config, train_set, True, vocabulary),
        loader_for(config, val_set, False, vocabulary),
    )
    trainer = Trainer(
        model, task, train_loader, val_loader, config, plain(config), device, job="video"
    )
    if distributed.is_main():
        trainable, total = count_parameters(model)
        print(
            f"{config.model}{' with the multi-task heads' * config.multitask} "
            f"({total / 1e6:.2f} M parameters, {trainable / 1e6:.3f} M trained; "
            f"tasks {list(config.tasks)}, attention {config.attention['type']}, merging "
            f"{config.merging}): {len(train_set)} train / {len(val_set)} validation clips, "
            f"device {device}, {torch.get_num_threads()} threads",
            flush=True,
        )
    trainer.fit()
    test_loader = loader_for(config, test_set, False, vocabulary)
    test = task.evaluate(trainer.eval_model, test_loader, device)
    summary = {
        "test_acc": test["acc"],
        "test": test,
        "test_skipped": take_skipped(test_set, device),  # unreadable test videos, left out
        "trainable_params": count_parameters(model)[0],
        "best_val": trainer.best,
        "time_s": time.perf_counter() - started,
        "cpu_time_s": time.process_time() - cpu_started,
    }
    if distributed.is_main():
        print(
            f"done in {summary['time_s']:.0f} s (CPU time of this process "
            f"{summary['cpu_time_s']:.0f} s): test "
            + ", ".join(f"{k} {v:.4f}" for k, v in test.items())
            + f", test_skipped {summary['test_skipped']}"
            + (
                ""
                if trainer.best is None
                else f" (best validation {task.monitor} {trainer.best:.4f})"
            ),
            flush=True,
        )
    return trainer, summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(VideoConfig, lambda config: run(config)[1], argv, "train.video", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
