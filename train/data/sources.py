"""Image classification data sets, each as uint8 tensors (N, C, H, W) and int64 labels:
CIFAR-10/100 from the official python tarballs, Fashion-MNIST from its idx gz files, a folder of
images (one sub-folder per class), and the built-in generated shapes."""

import gzip
import hashlib
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .shapes import CLASSES as SHAPE_CLASSES
from .shapes import PATTERN_CLASSES, generate_shape_patterns, generate_shapes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class ImageTensorDataset(Dataset):
    """Images held in memory as a uint8 tensor; items are (image (C, H, W) uint8, label)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: tuple[str, ...]):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std in [0, 1] units (for normalisation)."""
        x = self.images[:10000].float().div(255)
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())

    def subset_classes(self, classes: tuple[int, ...]) -> "ImageTensorDataset":
        """The images of ``classes`` only, relabelled 0 … len(classes) - 1 in that order."""
        relabel = torch.full((len(self.classes),), -1, dtype=torch.long)
        relabel[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        keep = relabel[self.labels] >= 0
        return ImageTensorDataset(
            self.images[keep], relabel[self.labels[keep]], tuple(self.classes[c] for c in classes)
        )


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str
    md5: str


CIFAR10 = Archive(
    "cifar-10-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = Archive(
    "cifar-100-python.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def fetch(data_dir: Path, filename: str, url: str, download: bool, md5: str | None = None) -> Path:
    """The file ``data_dir/filename``, downloaded first if it is missing and ``download`` is on."""
    path = Path(data_dir) / filename
    if path.is_file():
        return path
    if not download:
        raise FileNotFoundError(f"{path} not found; place it there (from {url}) or pass --download")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        print(f"downloading {url} to {path}", flush=True)
        urllib.request.urlretrieve(url, partial)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"could not download {url} ({error}); this machine may be offline: copy {filename} into {data_dir} "
            f"and run again with --data-dir {data_dir}"
        ) from error
    if md5 is not None and hashlib.md5(partial.read_bytes()).hexdigest() != md5:
        partial.unlink()
        raise ValueError(f"{url}: the download's md5 is not {md5}; try again")
    partial.rename(path)
    return path


def _unpickle(archive: tarfile.TarFile, member: str) -> dict:
    # The official CIFAR archives are Python pickles; read only archives from a trusted source.
    return pickle.load(archive.extractfile(member), encoding="bytes")


def load_cifar(
    data_dir: Path, train: bool, num_classes: int = 10, download: bool = True
) -> ImageTensorDataset:
    """CIFAR-10 or CIFAR-100 read straight from the official python tarball (no extraction)."""
    if num_classes not in (10, 100):
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    spec = CIFAR10 if num_classes == 10 else CIFAR100
    path = fetch(data_dir, spec.filename, spec.url, download, spec.md5)
    if num_classes == 10:
        folder, label_key, meta, names_key = (
            "cifar-10-batches-py",
            b"labels",
            "batches.meta",
            b"label_names",
        )
        members = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    else:
        folder, label_key, meta, names_key = (
            "cifar-100-python",
            b"fine_labels",
            "meta",
            b"fine_label_names",
        )
        members = ["train" if train else "test"]
    with tarfile.open(path, "r:gz") as archive:
        batches = [_unpickle(archive, f"{folder}/{member}") for member in members]
        classes = tuple(name.decode() for name in _unpickle(archive, f"{folder}/{meta}")[names_key])
    data = np.concatenate([np.asarray(batch[b"data"], dtype=np.uint8) for batch in batches])
    labels = np.concatenate([np.asarray(batch[label_key], dtype=np.int64) for batch in batches])
    images = torch.from_numpy(data).reshape(-1, 3, 32, 32)
    return ImageTensorDataset(images, torch.from_numpy(labels), classes)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format), gzipped or not, as a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as file:
        raw = file.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (header {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(data_dir: Path, train: bool, download: bool = True) -> ImageTensorDataset:
    prefix = "train" if train else "t10k"
    paths = [
        fetch(data_dir, name, FASHION_MNIST_URL + name, download)
        for name in (f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz")
    ]
    images = torch.from_numpy(read_idx(paths[0]).copy())[:, None]
    labels = torch.from_numpy(read_idx(paths[1]).astype(np.int64))
    return ImageTensorDataset(images, labels, FASHION_MNIST_CLASSES)


class ImageFolder(Dataset):
    """root/<class>/<image>: images decoded in the loader's workers and resized to ``size``²."""

    def __init__(self, root: Path, size: int):
        from PIL import Image  # noqa: F401  (fail early when Pillow is missing)

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        self.classes = tuple(sorted(p.name for p in self.root.iterdir() if p.is_dir()))
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((self.root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise FileNotFoundError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}/<class>/"
            )
        self.size = size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1), torch.tensor(label)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _generated_split(
    generate, classes: tuple[str, ...], train: bool, train_size: int, test_size: int, seed: int
) -> ImageTensorDataset:
    """A split of a built-in generated set (the test split has a seed of its own)."""
    size, split_seed = (train_size, 2 * seed) if train else (test_size, 2 * seed + 1)
    images, labels = generate(size, seed=split_seed)
    return ImageTensorDataset(images, labels, classes)


def load_shapes(train: bool, train_size: int, test_size: int, seed: int = 0) -> ImageTensorDataset:
    """The built-in data set (ten shapes)."""
    return _generated_split(generate_shapes, SHAPE_CLASSES, train, train_size, test_size, seed)


def load_shape_patterns(
    train: bool, train_size: int, test_size: int, seed: int = 0
) -> ImageTensorDataset:
    """The built-in 30-class set (ten shapes × three fills)."""
    sizes = (train_size, test_size, seed)
    return _generated_split(generate_shape_patterns, PATTERN_CLASSES, train, *sizes)
