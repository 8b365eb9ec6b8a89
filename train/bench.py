"""``python -m train.bench``: training throughput (images/s, forward + backward) of a model with
the fused kernels and with every operator routed through its pure-PyTorch reference.

    python -m train.bench                                 # vim_tiny_cifar on the CPU
    python -m train.bench --device cuda --amp bf16 --batch-size 256
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

import hvision_ext
from python_models import create_model

from .engine import AMP_DTYPES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vim_tiny_cifar", help="registered model (default: vim_tiny_cifar)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--amp", choices=("none", *AMP_DTYPES), default="none")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(model, images, labels, steps: int, warmup: int, amp: str) -> float:
    """Forward + backward of a classification loss (no optimizer step), timed over ``steps``."""
    dtype = AMP_DTYPES.get(amp)
    device = images.device
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
    synchronize(device)
    return steps * images.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model).to(device).train()
    size = model.patch_embed.img_size
    images = torch.randn(args.batch_size, model.patch_embed.proj.in_channels, size, size, device=device)
    labels = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
    results = {}
    for name, reference in (("kernels", False), ("reference", True)):
        with hvision_ext.use_reference(reference):
            results[name] = images_per_second(model, images, labels, args.steps, args.warmup, args.amp)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, batch {args.batch_size}, {size}x{size}, forward+backward, amp {args.amp}, {where}")
    for name, value in results.items():
        print(f"  {name:<10} {value:10.1f} images/s")
    speedup = results["kernels"] / results["reference"]
    print(f"  speed-up   {speedup:10.1f}x")
    summary = {"model": args.model, "batch_size": args.batch_size, "device": where, "amp": args.amp,
               "images_per_s": results, "speedup": speedup}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=2)
    return summary


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
