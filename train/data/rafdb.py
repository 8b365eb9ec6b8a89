"""RAF-DB's basic-expression set (Li et al. 2017) in its distributed layout:

    ROOT/EmoLabel/list_patition_label.txt   lines "train_00001.jpg 5" / "test_0001.jpg 7"
    ROOT/Image/aligned/train_00001_aligned.jpg

Labels 1–7 are surprise, fear, disgust, happiness, sadness, anger and neutral; here they are
0–6 in that order. The set is read like an ``ImageFolder`` (decoded in the loader's workers,
resized, unreadable images skipped with a warning)."""

from pathlib import Path

from .sources import ImageFolder
from .unreadable import SkipsUnreadable

RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # the data set's own spelling
IMAGE_DIR = Path("Image") / "aligned"
SPLIT_PREFIXES = {True: "train_", False: "test_"}


class RafDB(ImageFolder):
    """One split of RAF-DB's basic set: ``samples`` are (aligned image path, label 0–6) in the
    label file's order; ``classes`` are the seven expressions in label order."""

    def __init__(self, root: Path, train: bool, image_size: int):
        from PIL import Image  # noqa: F401  (fail early when Pillow is missing)

        SkipsUnreadable.__init__(self, train)  # the samples come from the label file, not folders
        self.root = Path(root)
        self.classes = RAFDB_CLASSES
        self.samples = read_partition(self.root, train)
        self.size = image_size


def read_partition(root: Path, train: bool) -> list[tuple[Path, int]]:
    """The (image path, label) of one split, every listed image checked to exist."""
    labels_path, images = root / LABEL_FILE, root / IMAGE_DIR
    for path in (labels_path, images):
        if not path.exists():
            raise FileNotFoundError(
                f"RAF-DB: {path} not found; expected {LABEL_FILE} and {IMAGE_DIR}/ under {root}"
            )
    prefix = SPLIT_PREFIXES[train]
    samples = [
        (images / aligned_name(name), label)
        for name, label in read_labels(labels_path)
        if name.startswith(prefix)
    ]
    if not samples:
        raise FileNotFoundError(f"RAF-DB: {labels_path} lists no {prefix}* images")
    missing = [path for path, _ in samples if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"RAF-DB: {len(missing)} image(s) listed in {labels_path} are missing, the first "
            f"{missing[0]}"
        )
    return samples


def read_labels(path: Path) -> list[tuple[str, int]]:
    """(image name, label 0–6) for each line "name label(1–7)" of the label file."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        label = int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else 0
        if not 1 <= label <= len(RAFDB_CLASSES):
            raise ValueError(
                f"{path}:{number}: expected 'image_name label' with a label in 1–"
                f"{len(RAFDB_CLASSES)}, got {line!r}"
            )
        entries.append((fields[0], label - 1))
    return entries


def aligned_name(name: str) -> str:
    """The aligned image of a listed name: train_00001.jpg → train_00001_aligned.jpg."""
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}_aligned.{suffix}" if dot else f"{name}_aligned"


def load_rafdb(root: Path, train: bool, image_size: int) -> RafDB:
    """RAF-DB's training (``train``) or test split under ``root``, images resized to
    ``image_size``²."""
    return RafDB(root, train, image_size)
