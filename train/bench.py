"""``python -m train.bench``: training throughput (images/s, forward + backward) and peak memory
of a model with the fused kernels and with every operator routed through its pure-PyTorch
reference, for one model configuration or a grid of them.

    python -m train.bench                                 # vim_tiny_cifar on the CPU
    python -m train.bench --device cuda --amp bf16 --batch-size 256
    python -m train.bench --model hrm_vision_cifar10 --impl kernels \\
        --grid '{h_cycles: [2, 4], l_cycles: [2, 4], one_step_gradient: [true, false]}'
    python -m train.bench --video          # hvlm_tiny: every attention type, merging off/on
    python -m train.bench --video --model hvlm_base --batch-size 1 --impl kernels \\
        --model-args '{embed_dim: 192, num_heads: 3, depth: 1}'     # 6,272 tokens
    python -m train.bench --video --seed-table --threads 1   # the design's table, its scale

A video model (one with ``clip_shape``) is fed random clips (batch, T, C, H, W), and its rows
are clips/s. Memory is the peak a step adds above the model and its inputs: "peak MiB" the
process's resident memory on the CPU (what the machine must have; it varies with which freed
pages malloc reuses), "tensor MiB" the tensors alone (``cpu_tensor_peak_bytes``; the same every
run). On CUDA both are the caching allocator's peak.
"""

import argparse
import sys

import yaml

from .benchmarks import video_table
from .benchmarks.training import (
    IMPLS,
    VIDEO_GRID,
    add_measurement_arguments,
    measure,
    print_paths,
    run_grid,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model", help="registered model (default: vim_tiny_cifar; hvlm_tiny with --video)"
    )
    parser.add_argument(
        "--video",
        action="store_true",
        help=f"a video model (hvlm_tiny by default) over the grid {VIDEO_GRID} unless --grid",
    )
    parser.add_argument(
        "--seed-table",
        action="store_true",
        help="with --video: the source design's table at its own scale, against standard "
        "attention, SDPA and torchvision's video transformers (--video --seed-table --help)",
    )
    parser.add_argument(
        "--grid",
        type=yaml.safe_load,
        default={},
        help="YAML mapping of argument → list of values: every combination is timed",
    )
    parser.add_argument(
        "--impl", choices=("both", *IMPLS), default="both", help="which paths to time"
    )
    add_measurement_arguments(parser, batch_size=32, budget_s=3.0)
    args = parser.parse_args(argv)
    args.model = args.model or ("hvlm_tiny" if args.video else "vim_tiny_cifar")
    if args.video and not args.grid:
        args.grid = VIDEO_GRID
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if "--seed-table" in argv:
        return video_table.main(argv)
    args = parse_args(argv)
    columns = (
        f"{'path':<10} {'params':>9} {'step ms':>9} {'images/s':>10} {'peak MiB':>9} "
        f"{'tensor MiB':>10}"
    )
    return run_grid(args, "forward+backward", columns, measure, print_paths)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
