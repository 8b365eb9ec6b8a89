import dataclasses
import gzip
import io
import os
import pickle
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from train.data import (
    BatchTransform,
    ImageFolder,
    load_cifar,
    load_fashion_mnist,
    load_shapes,
    load_splits,
    make_loader,
    sources,
)
from train.data.augment import color_jitter, mix_batch, rand_augment, random_crop, random_dihedral
from train.data.shapes import CLASSES, generate_shapes
from train.data.sources import SkippedImageWarning


def write_cifar10(path, per_batch=3, replace=None):
    """A CIFAR-10 tarball in the official layout, with `per_batch` images in each batch;
    ``replace`` maps batch names to other objects to pickle in their place."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:

        def add(name, payload):
            # protocol 4 rebuilds arrays with the same numpy globals as the official pickles
            data = pickle.dumps((replace or {}).get(name, payload), protocol=4)
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


def accept_as_official(monkeypatch, path, num_classes=10):
    """Makes ``load_cifar`` take the archive at ``path`` for the official one (its md5 is
    expected in place of the official archive's)."""
    official = sources.CIFAR_ARCHIVES[num_classes]
    md5 = sources.md5_of(path)
    monkeypatch.setitem(sources.CIFAR_ARCHIVES, num_classes, dataclasses.replace(official, md5=md5))


def test_cifar10_reader_on_an_official_format_tarball(tmp_path, monkeypatch):
    batches = write_cifar10(tmp_path / "cifar-10-python.tar.gz")
    accept_as_official(monkeypatch, tmp_path / "cifar-10-python.tar.gz")
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


def test_a_cifar_archive_without_the_official_md5_is_refused(tmp_path):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(
        ValueError,
        match=r"cifar-10-python.tar.gz: not the official .* expected c58f30108f718f92721af3b95e74349a",
    ):
        load_cifar(tmp_path, train=False, download=False)


class RunsCode:
    """Unpickles into a call of ``function`` (a hostile archive's payload)."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function", [os.system, exec])
def test_a_hostile_cifar_archive_runs_no_code(tmp_path, monkeypatch, function):
    """Even an archive that passed the md5 check unpickles nothing but the format's types."""
    marker = tmp_path / "created"
    code = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar10(path, replace={"test_batch": RunsCode(function, code)})
    accept_as_official(monkeypatch, path)
    message = rf"{re.escape(str(path))}: cannot read .*test_batch \(.* is not part of the CIFAR"
    with pytest.raises(ValueError, match=message):
        load_cifar(tmp_path, train=False, download=False)
    assert not marker.exists()


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
    for split in ("train", "test"):
        for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (20, 12), colour).save(tmp_path / split / name / "a.png")
    splits = load_splits("folder", data_dir=str(tmp_path), image_size=16)
    image, label = splits.train[1]
    assert splits.classes == ("cat", "dog") and image.shape == (3, 16, 16) and label.item() == 1
    assert image[2].min().item() == 255 and image[0].max().item() == 0


def unreadable_image_folder(root):
    """root/cat: a.png, b.png (truncated); root/dog: c.jpg (text), d.png, e.png (a FIFO)."""
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "cat" / "a.png")
    encoded = (root / "cat" / "a.png").read_bytes()
    (root / "cat" / "b.png").write_bytes(encoded[: len(encoded) // 2])
    (root / "dog" / "c.jpg").write_text("not an image\n")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(root / "dog" / "d.png")
    os.mkfifo(root / "dog" / "e.png")


def test_unreadable_images_are_skipped_with_a_warning_naming_them_and_counted(tmp_path):
    """In training the next readable image takes an unreadable one's place."""
    unreadable_image_folder(tmp_path)
    dataset = ImageFolder(tmp_path, 8, train=True)
    with pytest.warns(SkippedImageWarning) as caught:
        labels = [dataset[k][1].item() for k in range(len(dataset))]
    assert labels == [0, 1, 1, 1, 0]  # b.png, c.jpg → d.png; e.png → a.png
    messages = sorted(str(w.message) for w in caught if w.category is SkippedImageWarning)
    assert len(messages) == 3  # one per bad file, though c.jpg was tried twice
    assert "b.png: cannot decode (image file is truncated)" in messages[0]
    assert "c.jpg: cannot decode" in messages[1] and "e.png: expected a regular" in messages[2]
    assert dataset.take_skipped() == 4 and dataset.take_skipped() == 0


def test_evaluation_leaves_unreadable_images_out(tmp_path):
    unreadable_image_folder(tmp_path)
    dataset = ImageFolder(tmp_path, 8, train=False)
    with pytest.warns(SkippedImageWarning):
        ((images, labels),) = list(make_loader(dataset, 8, False, 0, 0))
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    assert dataset.take_skipped() == 3


def test_16_bit_grey_pngs_are_scaled_to_8_bits(tmp_path):
    (tmp_path / "grey").mkdir()
    levels = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(levels).save(tmp_path / "grey" / "a.png")
    image, _ = ImageFolder(tmp_path, 4, train=False)[0]
    assert image[:, 0].tolist() == [[0, 1, 128, 255]] * 3


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


def test_dihedral_transforms_are_the_eight_symmetries_of_the_square():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    symmetries = {
        tuple(t.flatten().tolist())
        for k in range(4)
        for t in (image.rot90(k, (-2, -1)), image.rot90(k, (-2, -1)).flip(-1))
    }
    torch.manual_seed(0)
    drawn = {
        tuple(random_dihedral(image.expand(64, 1, 4, 4))[b].flatten().tolist()) for b in range(64)
    }
    assert drawn == symmetries
    with pytest.raises(ValueError, match=r"dihedral: expected square images, got \(4, 6\)"):
        random_dihedral(torch.zeros(2, 3, 4, 6))


def test_color_jitter_stays_in_range_and_is_off_at_zero():
    images = torch.rand(8, 3, 8, 8)
    jittered = color_jitter(images, 0.4)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.equal(jittered, images)
    torch.testing.assert_close(color_jitter(images, 0.0), images)


def test_without_normalisation_images_stay_in_zero_one():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, normalize=False)
    torch.testing.assert_close(transform(images, train=False), images.float() / 255)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_mix_batch_targets_are_distributions(mixup, cutmix):
    images = torch.randn(6, 3, 8, 8)
    targets = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    mixed, mixed_targets = mix_batch(images, targets, mixup, cutmix)
    assert mixed.shape == images.shape
    torch.testing.assert_close(mixed_targets.sum(-1), torch.ones(6))
