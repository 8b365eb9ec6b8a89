"""Per-epoch metrics: JSON lines, a CSV table, TensorBoard scalars (when installed) and a
training-curve plot, all written by the main process only."""

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # tensorboard is optional
    SummaryWriter = None

Record = dict[str, Any]


class MetricsLogger:
    """Writes ``metrics.jsonl``, ``metrics.csv``, ``curves.png`` and TensorBoard events to
    ``out_dir``. On resume, records of epochs after the checkpoint's are dropped first."""

    def __init__(self, out_dir: Path, enabled: bool = True, resume_epoch: int | None = None):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.records: list[Record] = []
        self.writer = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_epoch is not None:
            self.records = [r for r in read_jsonl(self.jsonl_path) if r["epoch"] <= resume_epoch]
            self._rewrite_jsonl()
        else:
            self.jsonl_path.unlink(missing_ok=True)
        if SummaryWriter is not None:
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_epoch)

    @property
    def jsonl_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def log(self, record: Record) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.jsonl_path, "a") as file:
            file.write(json.dumps(record) + "\n")
        self._write_csv()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()
        plot_curves(self.records, self.out_dir / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _rewrite_jsonl(self) -> None:
        self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def _write_csv(self) -> None:
        columns = list(dict.fromkeys(key for record in self.records for key in record))
        with open(self.out_dir / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.records)


def read_jsonl(path: Path) -> list[Record]:
    """The records of a JSON-lines log. A last line that does not parse is the record a run was
    writing when it died: it is dropped with a warning. Any other bad line is an error."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if index < len(lines) - 1:
                raise ValueError(f"{path}, line {number}: not a JSON record ({error})") from error
            warnings.warn(
                f"{path}: its last line is cut short, dropped: {line[:60]!r}", stacklevel=2
            )
    return records


def plot_curves(records: list[Record], path: Path) -> None:
    """One panel per metric family: losses, accuracies (or other val metrics), learning rate."""
    epochs = [r["epoch"] for r in records]
    keys = [k for k in records[-1] if k != "epoch" and isinstance(records[-1][k], (int, float))]
    panels = {
        "loss": [k for k in keys if "loss" in k],
        "metric": [
            k for k in keys if "loss" not in k and k not in ("lr", "epoch_time_s", "images_per_s")
        ],
        "learning rate": [k for k in keys if k == "lr"],
    }
    panels = {title: ks for title, ks in panels.items() if ks}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, panel_keys) in zip(axes[0], panels.items()):
        for key in panel_keys:
            ax.plot(epochs, [r.get(key) for r in records], marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
