"""``python -m train.video``: train a HierarchicalVLM for action recognition.

With no arguments it trains ``hvlm_tiny`` (dense attention) on the built-in video set (twelve
actions that differ only in motion; made on first use) and prints its test accuracy.

    python -m train.video
    python -m train.video --config configs/video_moving_shapes.yaml --attention '{type: performer}'
    python -m train.video --token-merging '{enabled: true, target_compression_ratio: 0.5}'
    python -m train.video --train-data videos/ --val-data videos/       # JSON layout folders
    python -m train.video --train-data train.txt --val-data val.txt     # 'path label' lists
    python -m train.video --checkpoint-every 20 --resume last           # mid-epoch resume
    python -m train.video --config configs/training_config.yaml --show-only  # HierarchicalVLM's file
    python -m train.video --train-data data/ --num-epochs 100           # validation: data/validation
    python -m train.video --resume runs/video/best.pt --train-data data/     # its own settings
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from python_models.adapters.lora import count_parameters

from .data.moving_shapes import ACTIONS
from .engine import checkpoint, distributed
from .engine.config import build_parser, merge_setting
from .engine.job import plain, run_job, start
from .engine.trainer import Trainer, take_skipped
from .tasks.video import (
    VideoConfig,
    build_model,
    class_names_of,
    datasets_for,
    loader_for,
    make_task,
    start_from_pretrained,
    text_vocabulary,
    training_records,
)


def run(config: VideoConfig) -> dict:
    """Trains as configured, then tests the last weights; returns a summary (test accuracy,
    every test metric, trained parameters, the best validation value of the task's monitored
    metric, wall and CPU time)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    device = start(config)
    config.classes = list(class_names_of(config))  # saved with the checkpoints
    train_set = datasets_for(config, "training", train=True)
    config.num_classes = train_set.num_classes  # saved with the checkpoints
    val_set = datasets_for(config, "validation", train=False)
    test_set = datasets_for(config, "test", train=False)  # before training: a bad split fails now
    pretrained = (
        checkpoint.load(config.pretrained, accept=("video",)) if config.pretrained else None
    )
    vocabulary = (
        text_vocabulary(config, train_set.records, pretrained) if config.multitask else None
    )
    model = build_model(config, train_set.num_classes, vocabulary)
    start_from_pretrained(model, config, pretrained)
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
    return summary


def resumed_settings(config: VideoConfig, argv: list[str] | None) -> VideoConfig:
    """``--resume PATH`` without ``--config``: the settings the checkpoint was trained with,
    under the flags given (``--resume best.pt --train-data DIR`` goes on as that run was set)."""
    args = build_parser(VideoConfig, "train.video", "").parse_args(argv)
    if config.resume in ("", "last") or args.config is not None:
        return config
    names = {item.name for item in dataclasses.fields(VideoConfig)}
    saved = checkpoint.load(Path(config.resume), accept=("video",))["config"]
    values = {name: value for name, value in saved.items() if name in names}
    for name, value in vars(args).items():
        if name in names and value is not None:
            merge_setting(values, name, value)
    return VideoConfig(**values)


# -- --show-only --------------------------------------------------------------------------------

# Parameters by part of the model, the first matching rule winning: LoRA adapters, the domain
# experts and the domain router, the task heads (with the appearance tokens the text heads and router
# read), and the backbone (everything else).
HEAD_PREFIXES = (
    "head.",
    "backbone.head.",
    "detection_head.",
    "qa_head.",
    "caption_decoder.",
    "appearance.",
)
MODEL_PARTS = ("backbone", "experts", "adapters", "heads")
TRACE_STEPS = (2, 4)  # token time steps of the clips traced for the activation memory
FLOAT32_BYTES = 4


def part_of(parameter: str) -> str:
    if ".lora_" in parameter:
        return "adapters"
    if parameter.startswith(("experts.", "domain_router.")):
        return "experts"
    if parameter.startswith(HEAD_PREFIXES):
        return "heads"
    return "backbone"


def parameters_by_part(model: nn.Module) -> dict[str, int]:
    counts = dict.fromkeys(MODEL_PARTS, 0)
    for name, parameter in model.named_parameters():
        counts[part_of(name)] += parameter.numel()
    return counts


@dataclasses.dataclass
class ForwardTrace:
    """What one training forward of a clip keeps for its backward: the tokens each block reads,
    the bytes autograd saves inside each block and outside the blocks (stem, merging, heads)."""

    block_tokens: list[int]
    block_bytes: list[int]
    other_bytes: int


def trace_training_forward(model: nn.Module, clip_shape: tuple[int, ...]) -> ForwardTrace:
    """Runs the training forward of one clip of random pixels on the CPU, counting the memory
    autograd keeps for the backward: the storage of every tensor it saves, once however often
    it is saved, leaving out the parameters and buffers (in memory anyway)."""
    model.train()
    backbone = getattr(model, "backbone", model)
    trace = ForwardTrace([], [0] * len(backbone.blocks), 0)
    current: list[int | None] = [None]
    counted = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}

    def enter(index: int):
        def hook(_, inputs):
            current[0] = index
            trace.block_tokens.append(inputs[0].shape[1])

        return hook

    def leave(*_) -> None:
        current[0] = None

    def count(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() in counted:
            return tensor
        counted.add(storage.data_ptr())
        size = storage.nbytes()
        if current[0] is None:
            trace.other_bytes += size
        else:
            trace.block_bytes[current[0]] += size
        return tensor

    hooks = []
    for index, block in enumerate(backbone.blocks):
        hooks += [block.register_forward_pre_hook(enter(index)), block.register_forward_hook(leave)]
    clip = torch.randint(0, 256, (1, *clip_shape), dtype=torch.uint8)
    try:
        with saved_tensors_hooks(count, lambda tensor: tensor):
            model(backbone.prepare(clip))
    finally:
        for hook in hooks:
            hook.remove()
    return trace


def model_summary(model: nn.Module, config: VideoConfig) -> dict[str, Any]:
    """Parameters per part, the tokens of one clip before merging and those each block reads,
    and the activation memory of one training clip (float32), estimated from the forwards of
    two short clips (``TRACE_STEPS`` token time steps, the configured frame side): each block's
    saved bytes per token (of the longer clip) times the tokens it reads at the configured
    length, plus the bytes outside the blocks, linear in the length through the two clips'.
    Exact for memory linear in the tokens; attention that keeps (tokens × tokens) maps needs
    more than this. With gradient checkpointing the blocks keep only their inputs (float32
    tokens × width) and recompute the rest, one block at a time, in the backward."""
    video = config.video
    clip_shape = (video.num_frames, 3, video.frame_size, video.frame_size)
    backbone = getattr(model, "backbone", model)
    steps, rows, cols = backbone.patch_embed.grid(clip_shape)
    tubelet = backbone.patch_embed.tubelet_size
    short, longer = (
        trace_training_forward(model, (traced * tubelet, *clip_shape[1:])) for traced in TRACE_STEPS
    )
    scale = steps / TRACE_STEPS[1]
    prefix = backbone.num_prefix_tokens
    block_tokens = [prefix + round((t - prefix) * scale) for t in longer.block_tokens]
    bytes_per_step = (longer.other_bytes - short.other_bytes) / (TRACE_STEPS[1] - TRACE_STEPS[0])
    outside = longer.other_bytes + bytes_per_step * (steps - TRACE_STEPS[1])
    activation = outside + sum(
        saved / tokens * scaled
        for saved, tokens, scaled in zip(longer.block_bytes, longer.block_tokens, block_tokens)
    )
    block_inputs = sum(block_tokens) * backbone.embed_dim * FLOAT32_BYTES
    return {
        "parameters": parameters_by_part(model),
        "attention": config.attention["type"],
        "tokens_before_merging": prefix + steps * rows * cols,
        "block_tokens": block_tokens,
        "activation_bytes": round(activation),
        "checkpointed_activation_bytes": round(outside + block_inputs),
    }


def print_summary(config: VideoConfig, summary: dict[str, Any]) -> None:
    parts = summary["parameters"]
    print(
        f"model {config.model}: "
        + ", ".join(f"{part} {count / 1e6:.3f} M" for part, count in parts.items())
        + f" parameters ({sum(parts.values()) / 1e6:.2f} M in all); attention "
        + summary["attention"]
    )
    blocks = summary["block_tokens"]
    ratio = config.token_merging.target_compression_ratio if config.merging else 0.0
    print(
        f"tokens per clip: {summary['tokens_before_merging']} before merging, {blocks[-1]} after "
        f"(merge ratio {ratio:g}; the blocks read {', '.join(map(str, blocks))})"
    )
    print(
        f"activation memory per clip: {summary['activation_bytes'] / 2**30:.2f} GiB, "
        f"{summary['checkpointed_activation_bytes'] / 2**30:.2f} GiB with gradient checkpointing "
        "(float32, training; the bytes autograd saves in forwards of clips of "
        f"{' and '.join(map(str, TRACE_STEPS))} token time steps, per block and token, times "
        "the tokens above; checkpointing keeps the blocks' inputs; the batch multiplies both)"
    )


def show(config: VideoConfig) -> dict[str, Any]:
    """``--show-only``: prints the resolved settings and a summary of the model they build,
    reading no video (the head is sized for the data's classes where the settings or the
    annotations name them, else for the built-in set's); returns the summary."""
    print(yaml.safe_dump(plain(config), sort_keys=False), end="")
    num_classes = config.num_classes or len(class_names_of(config)) or len(ACTIONS)
    vocabulary = None
    if config.multitask and {"qa", "captioning"} & set(config.tasks):
        records = training_records(config)
        vocabulary = text_vocabulary(config, records, None)
    model = build_model(config, num_classes, vocabulary)
    summary = model_summary(model, config)
    print_summary(config, summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    def job(config: VideoConfig) -> dict:
        config = resumed_settings(config, argv)
        return show(config) if config.show_only else run(config)

    return run_job(VideoConfig, job, argv, "train.video", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
