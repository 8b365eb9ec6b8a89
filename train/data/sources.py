"""Image classification data sets, each as uint8 tensors (N, C, H, W) and int64 labels:
CIFAR-10/100 from the official python tarballs, Fashion-MNIST from its idx gz files, a folder of
images (one sub-folder per class), and the built-in generated shapes."""

import gzip
import hashlib
import math
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .shapes import CLASSES as SHAPE_CLASSES
from .shapes import PATTERN_CLASSES, generate_shape_patterns, generate_shapes
from .unreadable import SkippedFileWarning, SkipsUnreadable, UnreadableError, check_regular_file

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
class CifarArchive:
    """An official CIFAR python tarball: where it comes from, its md5, and where it keeps its
    batches (pickled dicts) and its class names."""

    filename: str
    url: str
    md5: str
    folder: str
    train_batches: tuple[str, ...]
    test_batches: tuple[str, ...]
    label_key: bytes
    meta: str
    names_key: bytes


# By number of classes; load_cifar reads an archive only when its md5 is the one given here.
CIFAR_ARCHIVES = {
    10: CifarArchive(
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        "batches.meta",
        b"label_names",
    ),
    100: CifarArchive(
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        "meta",
        b"fine_label_names",
    ),
}
CIFAR_IMAGE_SHAPE = (3, 32, 32)
# Beside dicts, lists, bytes, str and int, the CIFAR pickles hold numpy arrays, which pickle
# rebuilds with these (``numpy.core`` is ``numpy._core`` since numpy 2). Nothing else is loaded.
CIFAR_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
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
    """The file ``data_dir/filename``, downloaded first if it is missing and ``download`` is on.
    With ``md5``, the file's digest is checked whether it was downloaded or found there."""
    path = Path(data_dir) / filename
    if path.is_file():
        if md5 is not None and (found := md5_of(path)) != md5:
            raise ValueError(
                f"{path}: not the official {filename} (md5 {found}, expected {md5}); "
                f"replace it with the file from {url}"
            )
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
    if md5 is not None and (found := md5_of(partial)) != md5:
        partial.unlink()
        raise ValueError(f"{url}: the download's md5 is {found}, expected {md5}; try again")
    partial.rename(path)
    return path


def md5_of(path: Path) -> str:
    """The hex md5 digest of the file at ``path``, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _CifarUnpickler(pickle.Unpickler):
    """Loads what the CIFAR pickles hold and refuses every other global, so that an archive
    cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of the CIFAR format")
        return super().find_class(module, name)


def _unpickle(path: Path, archive: tarfile.TarFile, member: str) -> dict:
    """The dict pickled in ``member`` of the CIFAR archive at ``path``."""
    try:
        content = _CifarUnpickler(archive.extractfile(member), encoding="bytes").load()
    except (KeyError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: cannot read {member} ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: {member} holds a {type(content).__name__}, expected a dict")
    return content


def _read_batch(
    path: Path, archive: tarfile.TarFile, spec: CifarArchive, name: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``name``'s (N, 3072) uint8 pixels and N int64 labels, checked against the format."""
    member = f"{spec.folder}/{name}"
    batch = _unpickle(path, archive, member)
    data, labels = batch.get(b"data"), np.asarray(batch.get(spec.label_key, ()))
    pixels = math.prod(CIFAR_IMAGE_SHAPE)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (pixels,):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise ValueError(f"{path}: {member}: expected uint8 data (N, {pixels}), got {found}")
    if labels.shape != data.shape[:1] or not np.isin(labels, range(num_classes)).all():
        raise ValueError(
            f"{path}: {member}: expected {len(data)} labels in [0, {num_classes}) under "
            f"{spec.label_key!r}, got {labels.size} ({labels.dtype})"
        )
    return data, labels.astype(np.int64)


def _read_class_names(
    path: Path, archive: tarfile.TarFile, spec: CifarArchive, num_classes: int
) -> tuple[str, ...]:
    member = f"{spec.folder}/{spec.meta}"
    names = _unpickle(path, archive, member).get(spec.names_key)
    if not isinstance(names, list) or [type(n) for n in names] != [bytes] * num_classes:
        raise ValueError(
            f"{path}: {member}: expected a list of {num_classes} bytes under {spec.names_key!r}"
        )
    return tuple(name.decode() for name in names)


def load_cifar(
    data_dir: Path, train: bool, num_classes: int = 10, download: bool = True
) -> ImageTensorDataset:
    """CIFAR-10 or CIFAR-100 read straight from the official python tarball (no extraction),
    which must have the official md5."""
    if num_classes not in CIFAR_ARCHIVES:
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    spec = CIFAR_ARCHIVES[num_classes]
    path = fetch(data_dir, spec.filename, spec.url, download, spec.md5)
    names = spec.train_batches if train else spec.test_batches
    with tarfile.open(path, "r:gz") as archive:
        batches = [_read_batch(path, archive, spec, name, num_classes) for name in names]
        classes = _read_class_names(path, archive, spec, num_classes)
    images = torch.from_numpy(np.concatenate([data for data, _ in batches]))
    labels = torch.from_numpy(np.concatenate([labels for _, labels in batches]))
    return ImageTensorDataset(images.reshape(-1, *CIFAR_IMAGE_SHAPE), labels, classes)


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


class ImageReadError(UnreadableError):
    """An image that cannot be opened or decoded."""


class SkippedImageWarning(SkippedFileWarning):
    """A data set skipped an unreadable image."""


class ImageFolder(SkipsUnreadable):
    """root/<class>/<image>: images decoded in the loader's workers and resized to ``size``²,
    as 8-bit RGB. An image that cannot be read is skipped with a warning naming it and counted
    (``take_skipped``): in training the next readable one takes its place, in evaluation the
    item is None, which ``collate_readable`` (``make_loader``'s default) drops."""

    skipped_warning = SkippedImageWarning

    def __init__(self, root: Path, size: int, *, train: bool):
        from PIL import Image  # noqa: F401  (fail early when Pillow is missing)

        super().__init__(train)
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

    def _load(self, position: int) -> tuple[Tensor, Tensor]:
        from PIL import Image

        path, label = self.samples[position]
        check_regular_file(path, ImageReadError)
        try:
            with Image.open(path) as file:
                image = _rgb8(file).resize((self.size, self.size), Image.BILINEAR)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            # what Pillow raises, by format, for a file it cannot decode
            raise ImageReadError(f"{path}: cannot decode ({error})") from error
        return torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.tensor(label)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _rgb8(image: Any) -> Any:
    """A Pillow image as 8-bit RGB. Pillow opens 16-bit grey PNGs in the I;16 or I modes, which
    ``convert("RGB")`` clips at 255: their levels are scaled to 8 bits first."""
    from PIL import Image

    if image.mode.startswith("I"):
        levels = np.asarray(image, dtype=np.float64).clip(0, 65535)
        image = Image.fromarray(np.rint(levels / 257).astype(np.uint8))
    return image.convert("RGB")


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
