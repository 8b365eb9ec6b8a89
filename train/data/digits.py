"""scikit-learn's bundled handwritten digits (1,797 8×8 scans of 0–9, no download) written out
as an image folder, the layout of ``--dataset folder``: ROOT/train/<digit>/*.png and
ROOT/test/<digit>/*.png, a seeded ``test_fraction`` of each digit in test.

    python -m train.data.digits data/digits
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from .splits import stratified_indices

MAX_LEVEL = 16  # the scans' grey levels are 0 … 16


def write_digits_folder(root: Path, test_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Writes the digits under ``root`` as 8-bit grey PNGs; returns the images per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = torch.from_numpy(digits.target)
    pixels = np.rint(digits.images * (255 / MAX_LEVEL)).astype(np.uint8)
    train, test = stratified_indices(labels, test_fraction, seed)
    counts = {}
    for split, indices in (("train", train), ("test", test)):
        for index in indices.tolist():
            folder = Path(root) / split / str(int(labels[index]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index]).save(folder / f"{index:04d}.png")
        counts[split] = len(indices)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.data.digits", description=__doc__)
    parser.add_argument("root", type=Path, help="folder to write train/ and test/ into")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_digits_folder(args.root, args.test_fraction, args.seed)
    print(f"{args.root}: {counts['train']} training and {counts['test']} test images")


if __name__ == "__main__":
    main()
