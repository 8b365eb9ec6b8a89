"""``python -m train.infer_bench``: inference throughput (clips/s) and peak memory of a video
model for every attention type, with and without token merging, and with LoRA adapters off,
unmerged and merged into the base weights.

    python -m train.infer_bench                                 # hvlm_tiny on the CPU
    python -m train.infer_bench --device cuda --amp bf16 --batch-size 64
    python -m train.infer_bench --grid '{attention: [full, performer], merge_ratio: [0.0, 0.7]}'
    python -m train.infer_bench --checkpoint runs/video/best.pt       # a trained model

Each setting builds the model in eval mode and times forward passes under
``torch.inference_mode`` on random uint8 clips of the model's ``clip_shape``: the plain model,
a copy with LoRA (``LoraConfig()``: rank 8 on ``qkv``, ``proj``, ``fc1``, ``fc2``, B drawn at
random so the adapters really compute) and a copy with that adapter merged, timed in turn for
``--rounds`` rounds (the median over all of a mode's passes is quoted; on the CPU also the
process's CPU time per batch, which another process's load does not inflate as it does the wall
time). Each row also reports
how far LoRA moves the logits and how far the merged model's are from the unmerged one's.

``--checkpoint PATH`` benchmarks a trained ``train.video`` model instead, rebuilt from the
settings its checkpoint saved: its clips/s and latency (the median time of a forward of a
batch, and of one clip) under the same timing.
"""

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from hvision_ext.bench.timing import time_impl
from python_models import create_model
from python_models.adapters.lora import LoraConfig, inject_lora, lora_layers, merge_lora

from .benchmarks.training import (
    VIDEO_GRID,
    add_measurement_arguments,
    describe_device,
    format_mib,
    run_grid,
)
from .engine.trainer import AMP_DTYPES
from .tasks import video

LORA_MODES = ("off", "unmerged", "merged")
LORA_ADAPTER = "default"
LORA_B_STD = 0.02  # small random B: the unmerged update costs what a trained one does


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.infer_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--model", default="hvlm_tiny", help="registered video model")
    parser.add_argument(
        "--grid",
        type=yaml.safe_load,
        default=VIDEO_GRID,
        help=f"YAML mapping of model argument → list of values (default {VIDEO_GRID})",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="times the LoRA modes are timed in turn"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="benchmark this train.video checkpoint's model instead of the grid",
    )
    add_measurement_arguments(parser, batch_size=8, budget_s=3.0)
    args = parser.parse_args(argv)
    for flag in ("batch_size", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    return args


def random_clips(model: nn.Module, batch_size: int, device: torch.device) -> torch.Tensor:
    """uint8 clips (batch, T, C, H, W) of the shape the model's positions are learned for."""
    clip_shape = getattr(model, "clip_shape", None)
    if clip_shape is None:
        raise ValueError(
            f"--model: expected a video model (one with clip_shape), got {type(model).__name__}"
        )
    return torch.randint(0, 256, (batch_size, *clip_shape), dtype=torch.uint8, device=device)


def with_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the default adapter on the default targets, B random instead of
    zero so the update changes the outputs as a trained one would."""
    model = copy.deepcopy(model)
    inject_lora(model, LoraConfig(), adapters=(LORA_ADAPTER,))
    with torch.no_grad():
        for _, layer in lora_layers(model):
            nn.init.normal_(layer.lora_B[LORA_ADAPTER].weight, std=LORA_B_STD)
    return model


def merged(model: nn.Module) -> nn.Module:
    """A copy of a LoRA model with its adapter folded into the base weights."""
    model = copy.deepcopy(model)
    merge_lora(model, LORA_ADAPTER)
    return model


def measure(args: argparse.Namespace, model_args: dict, device: torch.device) -> dict:
    """For one model setting, each LoRA mode's clips/s, peak MiB and (on the CPU) the process's
    CPU time per batch, the largest logit change LoRA makes, and the largest logit difference
    between merged and unmerged LoRA. The modes are timed in turn, ``args.rounds`` times, so a
    change in the machine's load falls on all; the CPU time counts the work done, not the
    waiting for a core, so it stays comparable across settings on a shared machine."""
    torch.manual_seed(0)
    plain = create_model(args.model, **model_args).to(device).eval()
    clips = random_clips(plain, args.batch_size, device)
    models = {"off": plain}
    models["unmerged"] = with_lora(plain)
    models["merged"] = merged(models["unmerged"])
    dtype = AMP_DTYPES.get(args.amp)

    cpu_calls: list[float] = []

    def forward(model: nn.Module):
        def run() -> torch.Tensor:
            start = time.process_time()
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype, enabled=dtype is not None),
            ):
                logits = model(clips)
            cpu_calls.append(time.process_time() - start)
            return logits

        return run

    samples = {mode: [] for mode in LORA_MODES}
    cpu_samples = {mode: [] for mode in LORA_MODES}
    peaks = {mode: [] for mode in LORA_MODES}
    for _ in range(args.rounds):
        for mode in LORA_MODES:
            cpu_calls.clear()
            timing = time_impl(
                forward(models[mode]),
                device,
                budget_s=args.budget_s / args.rounds,
                min_runs=math.ceil(args.min_steps / args.rounds),
            )
            samples[mode] += timing.samples_s
            cpu_samples[mode] += cpu_calls[-len(timing.samples_s) :]  # the timed calls
            peaks[mode].append(timing.peak_bytes)
    results = {}
    for mode, model in models.items():
        median_s = statistics.median(samples[mode])
        results[mode] = {
            "params": sum(p.numel() for p in model.parameters()),
            "batch_ms": median_s * 1e3,
            "cpu_ms": statistics.median(cpu_samples[mode]) * 1e3 if device.type == "cpu" else None,
            "clips_per_s": args.batch_size / median_s,
            "peak_mib": None if None in peaks[mode] else max(peaks[mode]) / 2**20,
        }
    logits = {mode: forward(model)().float() for mode, model in models.items()}
    results["lora_max_abs_change"] = (logits["unmerged"] - logits["off"]).abs().max().item()
    results["merge_max_abs_diff"] = (logits["merged"] - logits["unmerged"]).abs().max().item()
    return results


def print_modes(label: str, results: dict) -> None:
    for mode in LORA_MODES:
        result = results[mode]
        cpu_ms = "" if result["cpu_ms"] is None else f"{result['cpu_ms']:.1f}"
        print(
            f"{label} {mode:<9} {result['params']:>9} {result['batch_ms']:>9.1f} {cpu_ms:>9} "
            f"{result['clips_per_s']:>9.1f} {format_mib(result['peak_mib']):>9}",
            flush=True,
        )
    print(
        f"{'':<{len(label)}} LoRA moves the logits by up to {results['lora_max_abs_change']:.1e}; "
        f"merged vs unmerged: {results['merge_max_abs_diff']:.1e}"
    )


def median_forward_s(model: nn.Module, clips: torch.Tensor, args: argparse.Namespace) -> float:
    """The median time of a forward of ``clips`` (inference mode, ``args.amp`` autocast)."""
    device, dtype = clips.device, AMP_DTYPES.get(args.amp)

    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            return model(clips)

    timing = time_impl(forward, device, budget_s=args.budget_s, min_runs=args.min_steps)
    return statistics.median(timing.samples_s)


def benchmark_checkpoint(args: argparse.Namespace) -> dict:
    """Clips/s and latency of a trained model, rebuilt from its checkpoint, on random clips of
    the shape it was trained on."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, config = video.load_trained(args.checkpoint)
    model.to(device)
    clips = random_clips(model, args.batch_size, device)
    batch_s = median_forward_s(model, clips, args)
    clip_s = median_forward_s(model, clips[:1], args)
    result = {
        "checkpoint": str(args.checkpoint),
        "model": config.model,
        "params": sum(p.numel() for p in model.parameters()),
        "clip_shape": list(model.clip_shape),
        "batch_size": args.batch_size,
        "device": describe_device(device),
        "amp": args.amp,
        "clips_per_s": args.batch_size / batch_s,
        "batch_ms": batch_s * 1e3,
        "clip_ms": clip_s * 1e3,
    }
    print(
        f"{args.checkpoint}: {config.model} ({result['params'] / 1e6:.2f} M parameters), clips "
        f"{tuple(model.clip_shape)}, batch {args.batch_size}, amp {args.amp}, {result['device']}: "
        f"{result['clips_per_s']:.1f} clips/s, latency {result['batch_ms']:.1f} ms per batch, "
        f"{result['clip_ms']:.1f} ms for one clip"
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.checkpoint is not None:
        return benchmark_checkpoint(args)
    columns = (
        f"{'LoRA':<9} {'params':>9} {'batch ms':>9} {'CPU ms':>9} {'clips/s':>9} {'peak MiB':>9}"
    )
    return run_grid(args, "inference", columns, measure, print_modes)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
