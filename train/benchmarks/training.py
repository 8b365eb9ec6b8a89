"""The training-step benchmark behind ``python -m train.bench`` and ``train.infer_bench``: a
model's forward + backward (or forward) step timed over a grid of settings, with the kernels and
with every operator on its pure-PyTorch reference, and the tables it prints."""

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
import yaml

import hvision_ext
from hvision_ext.bench.timing import time_impls
from python_models import create_model
from python_models.video import MIXERS

from ..engine.trainer import AMP_DTYPES

IMPLS = {"kernels": False, "reference": True}  # name → use_reference
VIDEO_GRID = {"attention": sorted(MIXERS), "merge_ratio": [0.0, 0.5]}


def add_measurement_arguments(parser: argparse.ArgumentParser, batch_size: int, budget_s: float):
    """The options of a benchmark over a grid of model settings, besides the model and grid."""
    parser.add_argument(
        "--model-args", type=yaml.safe_load, default={}, help="YAML overrides of the preset"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument(
        "--budget-s", type=float, default=budget_s, help="seconds of timed calls per measurement"
    )
    parser.add_argument("--min-steps", type=int, default=3, help="timed calls at least")
    parser.add_argument("--amp", choices=("none", *AMP_DTYPES), default="none")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the results to this file")


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, in order: [{}] for an empty grid."""
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"--grid: expected a non-empty list of values for {name!r}, got {values!r}"
            )
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_label(point: dict) -> str:
    """A grid point as table text: ``attention=full merge_ratio=0.5`` (``-`` for no settings)."""
    return " ".join(f"{name}={value}" for name, value in point.items()) or "-"


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU and its torch thread count, for a table's title."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def example_input(model, batch_size: int, device: torch.device) -> torch.Tensor:
    """Random clips for a video model (``clip_shape`` (T, C, H, W)), else random images."""
    clip_shape = getattr(model, "clip_shape", None)
    if clip_shape is not None:
        return torch.randn(batch_size, *clip_shape, device=device)
    size = model.patch_embed.img_size
    return torch.randn(batch_size, model.patch_embed.proj.in_channels, size, size, device=device)


def training_step(model, images, labels, amp: str):
    """Forward + backward of a classification loss (no optimizer step); the gradients are
    dropped after each step so every step allocates them anew."""
    dtype = AMP_DTYPES.get(amp)

    def step() -> None:
        with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
            loss = F.cross_entropy(
                logits.flatten(0, -2), labels.expand(logits.shape[:-1]).flatten()
            )
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def measure(args: argparse.Namespace, model_args: dict, device: torch.device) -> dict:
    """images/s and peak MiB of each asked-for path for one configuration; the two paths' steps
    are timed together (``time_impls``), so a change in the machine's load falls on both."""
    torch.manual_seed(0)
    model = create_model(args.model, **model_args).to(device).train()
    images = example_input(model, args.batch_size, device)
    labels = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    step = training_step(model, images, labels, args.amp)
    results: dict = {"params": sum(p.numel() for p in model.parameters())}

    def on_path(use_reference: bool):
        def run() -> None:
            with hvision_ext.use_reference(use_reference):
                step()

        return run

    paths = {name: on_path(flag) for name, flag in IMPLS.items() if args.impl in ("both", name)}
    timings = time_impls(
        paths, device, budget_s=args.budget_s, min_runs=args.min_steps, tensor_peak=True
    )
    for name, timing in timings.items():
        if isinstance(timing, Exception):
            raise timing
        results[name] = {
            "step_ms": timing.median_s * 1e3,
            "images_per_s": args.batch_size / timing.median_s,
            "peak_mib": mib(timing.peak_bytes),
            "tensor_peak_mib": mib(timing.tensor_peak_bytes),
        }
    return results


def run_grid(args: argparse.Namespace, what: str, columns: str, measure, print_rows) -> dict:
    """Prints a title and the ``columns`` header, then for every point of ``args.grid`` runs
    ``measure(args, model_args, device)`` and prints its rows with ``print_rows(label,
    results)`` (``label``: the settings, padded to the table's first column). Returns the
    results, also written to ``args.json`` if given."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = describe_device(device)
    print(
        f"{args.model} {args.model_args or ''}, batch {args.batch_size}, {what}, amp {args.amp}, {where}"
    )
    points = grid_points(args.grid)
    labels = [point_label(point) for point in points]
    width = max(len("settings"), *map(len, labels))
    print(f"  {'settings':<{width}} {columns}")
    rows = []
    for point, label in zip(points, labels):
        results = measure(args, {**args.model_args, **point}, device)
        print_rows(f"  {label:<{width}}", results)
        rows.append({"settings": point, **results})
    summary = {
        "model": args.model,
        "model_args": args.model_args,
        "batch_size": args.batch_size,
        "device": where,
        "amp": args.amp,
        "results": rows,
    }
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
    return summary


def mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def format_mib(peak_mib: float | None) -> str:
    return "" if peak_mib is None else f"{peak_mib:.0f}"


def print_paths(label: str, results: dict) -> None:
    paths = {name: result for name, result in results.items() if name in IMPLS}
    for name, result in paths.items():
        print(
            f"{label} {name:<10} {results['params']:>9} {result['step_ms']:>9.1f} "
            f"{result['images_per_s']:>10.1f} {format_mib(result['peak_mib']):>9} "
            f"{format_mib(result['tensor_peak_mib']):>10}",
            flush=True,
        )
    if len(paths) == 2:
        speedup = results["kernels"]["images_per_s"] / results["reference"]["images_per_s"]
        print(f"{'':<{len(label)}} {'speed-up':<10} {speedup:>9.1f}x")
