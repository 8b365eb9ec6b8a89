import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from train.data import BatchTransform, load_cifar, load_fashion_mnist, load_shapes, load_splits
from train.data.augment import mix_batch, rand_augment, random_crop
from train.data.shapes import CLASSES, generate_shapes


def write_cifar10(path, per_batch=3):
    """A CIFAR-10 tarball in the official layout, with `per_batch` images in each batch."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:

        def add(name, payload):
            data = pickle.dumps(payload)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        batches = {}
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batches[name] = {
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"labels": rng.integers(0, 10, per_batch).tolist(),
            }
            add(name, batches[name])
        add("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    return batches


def test_cifar10_reader_on_an_official_format_tarball(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-python.tar.gz")
    train = load_cifar(tmp_path, train=True, download=False)
    test = load_cifar(tmp_path, train=False, download=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.classes[3] == "class3"
    first = batches["data_batch_1"]
    # rows hold 1024 red, then green, then blue values, each image row-major
    assert torch.equal(train.images[0, 1, 0, :5], torch.from_numpy(first[b"data"][0, 1024:1029]))
    assert train.labels[:3].tolist() == first[b"labels"]
    assert test.labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar_offline_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz not found"):
        load_cifar(tmp_path, train=True, download=False)


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reader(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 2]))
    data = load_fashion_mnist(tmp_path, train=False, download=False)
    assert data.images.shape == (2, 1, 28, 28) and data.labels.tolist() == [7, 2]
    assert torch.equal(data.images[1, 0], torch.from_numpy(images[1]).to(torch.uint8))


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 12), colour).save(tmp_path / split / name / "a.png")
    splits = load_splits("folder", data_dir=str(tmp_path), image_size=16)
    image, label = splits.train[1]
    assert splits.classes == ("cat", "dog") and image.shape == (3, 16, 16) and label.item() == 1
    assert image[2].min().item() == 255 and image[0].max().item() == 0


def test_shapes_are_seeded_and_balanced():
    images, labels = generate_shapes(200, seed=3)
    again, labels_again = generate_shapes(200, seed=3)
    assert images.dtype == torch.uint8 and images.shape == (200, 3, 32, 32)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    assert set(labels.tolist()) == set(range(len(CLASSES)))
    train, test = load_shapes(True, 50, 20), load_shapes(False, 50, 20)
    assert not torch.equal(train.images[:20], test.images)


def test_random_crop_is_a_shifted_window():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    torch.manual_seed(0)
    out = random_crop(images, padding=2)
    assert out.shape == images.shape
    for b in range(2):
        padded = torch.nn.functional.pad(images[b], (2, 2, 2, 2))
        windows = [padded[:, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    assert torch.equal(random_crop(images, 0), images)


def test_batch_transform_and_rand_augment_keep_shape_and_range():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    transform = BatchTransform(
        (0.5,) * 3, (0.25,) * 3, crop_padding=2, flip=True, rand_augment_ops=2
    )
    out = transform(images, train=True)
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(
        transform.denormalize(transform(images, train=False)), images.float() / 255
    )
    augmented = rand_augment(images.float() / 255, num_ops=3, magnitude=9)
    assert augmented.min() >= 0 and augmented.max() <= 1


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mix_batch_targets_are_distributions(mixup, cutmix):
    images = torch.randn(6, 3, 8, 8)
    targets = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    mixed, mixed_targets = mix_batch(images, targets, mixup, cutmix)
    assert mixed.shape == images.shape
    torch.testing.assert_close(mixed_targets.sum(-1), torch.ones(6))
