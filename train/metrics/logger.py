"""Per-epoch metrics, written by the main process only: ``metrics.jsonl`` (one record a line,
appended as the run goes), ``training_log.json`` (the same records as one JSON list),
``metrics.csv``, the training curves ``curves.png`` and TensorBoard scalars (when tensorboard is
installed)."""

import csv
import json
import warnings
from pathlib import Path
from typing import Any

from .figures import new_figure

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # tensorboard is optional
    SummaryWriter = None

Record = dict[str, Any]


class MetricsLogger:
    """Writes ``metrics.jsonl``, ``training_log.json``, ``metrics.csv``, ``curves.png`` and
    TensorBoard events (``out_dir/tensorboard``, one scalar per numeric key, the epoch as the
    step) to ``out_dir``. On resume, records of epochs after the checkpoint's are dropped first,
    from the logs and from what TensorBoard shows; a fresh run hides an earlier run's events."""

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
        self._rewrite_logs()
        if SummaryWriter is not None:
            # Events of steps from purge_step on, written by an earlier run, are discarded.
            first_step = (resume_epoch or 0) + 1
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=first_step)

    @property
    def jsonl_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def log(self, record: Record) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.jsonl_path, "a") as file:
            file.write(json.dumps(record) + "\n")
        self._write_training_log()
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

    def _rewrite_logs(self) -> None:
        self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        self._write_training_log()

    def _write_training_log(self) -> None:
        (self.out_dir / "training_log.json").write_text(json.dumps(self.records, indent=2))

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


def curve_panels(records: list[Record]) -> dict[str, list[str]]:
    """The keys drawn in each panel of the curves: the losses (training and validation), every
    other validation metric (not the counts of skipped items), the learning rate."""
    keys = [
        key
        for key in dict.fromkeys(k for r in records for k in r)
        if key != "epoch" and any(isinstance(r.get(key), (int, float)) for r in records)
    ]
    panels = {
        "loss": [k for k in keys if "loss" in k],
        "validation metrics": [
            k
            for k in keys
            if k.startswith("val_") and "loss" not in k and not k.endswith("_skipped")
        ],
        "learning rate": [k for k in keys if k == "lr"],
    }
    return {title: panel_keys for title, panel_keys in panels.items() if panel_keys}


def plot_curves(records: list[Record], path: Path) -> None:
    """Each panel of ``curve_panels`` over the epochs (a gap where an epoch lacks a key)."""
    epochs = [r["epoch"] for r in records]
    panels = curve_panels(records)
    figure = new_figure(4.5 * len(panels), 3.4)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, keys) in zip(axes, panels.items()):
        for key in keys:
            values = [r.get(key, float("nan")) for r in records]
            ax.plot(epochs, values, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
