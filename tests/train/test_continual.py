"""``python -m train.continual``: every strategy learns a tiny synthetic stream, a run killed in
the middle of a task resumes to the uninterrupted run's accuracy matrix exactly, and the CLI
writes its logs, heat map and weights-only checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from python_models import create_model
from train import continual
from train.data import BatchTransform, ImageTensorDataset
from train.data.splits import split_by_class
from train.engine import checkpoint
from train.engine.trainer import Trainer
from train.strategies.incremental import STRATEGIES

from .test_data import accept_as_official, write_cifar10

CLASSES, PER_CLASS, SIDE = 6, 36, 8
CPU = torch.device("cpu")
TINY_MODEL = {"embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


def colour_stream(tasks: int = 3):
    """Six classes told apart by their colour and a bright corner, with pixel noise: a stream a
    one-block ViT learns in a few steps."""
    gen = torch.Generator().manual_seed(0)

    def images(count: int) -> ImageTensorDataset:
        labels = torch.arange(CLASSES).repeat(count)
        colours = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]])
        x = 60 + 120 * colours[labels].float()[:, :, None, None].expand(-1, 3, SIDE, SIDE).clone()
        x[:, :, : SIDE // 2, : SIDE // 2] += 60 * (labels % 2).float()[:, None, None, None]
        x += 25 * torch.randn(x.shape, generator=gen)
        names = tuple(str(c) for c in range(CLASSES))
        return ImageTensorDataset(x.clamp(0, 255).to(torch.uint8), labels, names)

    split = split_by_class(images(PER_CLASS), images(PER_CLASS // 2), tasks, seed=0)
    return split, BatchTransform((0.5,) * 3, (0.25,) * 3)


def tiny_config(tmp_path, **overrides) -> continual.ContinualConfig:
    # Three epochs a task: with one, a strategy learned the stream or not by a hair, by seed and
    # torch version (replay fell to chance on two seeds of six); with three, every strategy
    # beats assert_learns_every_task's bound by 4 or more of a task's 36 test images on seeds
    # 0-5, on torch 2.11 and 2.14.
    settings = dict(
        model_args=TINY_MODEL,
        epochs=3,
        first_task_epochs=0,
        batch_size=12,
        lr=1e-2,
        memory_size=12,
        ewc_fisher_samples=24,
        out_dir=str(tmp_path),
        threads=1,
    )
    return continual.ContinualConfig(**{**settings, **overrides})


class Killed(Exception):
    """Stands for the process being killed."""


def assert_learns_every_task(result: dict, split) -> None:
    """Each task, just learned, above chance (1 / classes seen), and the final average too."""
    matrix = result["accuracy"]
    assert [len(row) for row in matrix] == [1, 2, 3]
    for task, row in enumerate(matrix):
        assert row[task] > 1.5 / split.seen_classes(task), matrix
    assert result["average_accuracy"] > 1.5 / CLASSES, matrix
    assert -1 <= result["forgetting"] <= 1 and -1 <= result["bwt"] <= 1


# The strategies that carry state from task to task (the others only have their weights).
STATEFUL = ("ewc", "lwf", "icarl", "replay", "memory")


@pytest.mark.parametrize("name", [name for name in STRATEGIES if name not in STATEFUL])
def test_the_bounds_learn_each_task(name, tmp_path):
    split, transform = colour_stream()
    result = continual.run_strategy(name, tiny_config(tmp_path), split, transform, CPU)
    assert_learns_every_task(result, split)


@pytest.mark.parametrize("name", STATEFUL)
def test_each_strategy_learns_and_resumes_after_a_kill_mid_task_exactly(
    name, tmp_path, monkeypatch
):
    split, transform = colour_stream()
    full = continual.run_strategy(name, tiny_config(tmp_path / "full"), split, transform, CPU)
    assert_learns_every_task(full, split)

    if name == "memory":  # trains the first task only: killed while writing the second task
        write = continual.STRATEGIES["memory"].end_task

        def end_task(strategy):
            write(strategy)
            if strategy.task == 1:
                raise Killed

        monkeypatch.setattr(continual.STRATEGIES["memory"], "end_task", end_task)
    else:  # killed after two steps of the second task
        step, steps = Trainer.train_step, []

        def train_step(trainer, batch):
            steps.append(trainer.config.out_dir)
            if steps.count(steps[-1]) == 2 and steps[-1].endswith("task2"):
                raise Killed
            return step(trainer, batch)

        monkeypatch.setattr(Trainer, "train_step", train_step)
    config = tiny_config(tmp_path / "killed")
    with pytest.raises(Killed):
        continual.run_strategy(name, config, split, transform, CPU)
    monkeypatch.undo()
    saved = torch.load(tmp_path / "killed" / name / continual.CHECKPOINT, weights_only=True)
    assert len(saved["accuracy"]) == 1
    resumed = continual.run_strategy(
        name, tiny_config(tmp_path / "killed", resume="last"), split, transform, CPU
    )
    assert resumed["accuracy"] == full["accuracy"]
    log = (tmp_path / "killed" / name / continual.LOG).read_text().splitlines()
    assert [json.loads(line)["task"] for line in log] == [1, 2, 3]


TINY_CLI = [
    "--shapes-train-size",
    "160",
    "--shapes-test-size",
    "80",
    "--epochs",
    "1",
    "--first-task-epochs",
    "0",
    "--batch-size",
    "16",
    "--model-args",
    "{embed_dim: 16, depth: 1, num_heads: 2}",
    "--memory-size",
    "20",
    "--ewc-fisher-samples",
    "16",
]


def test_cli_compare_logs_plots_and_resumes_a_finished_run(tmp_path, capsys):
    out = ["--out-dir", str(tmp_path), "--n-tasks", "2"]
    summary = continual.main([*TINY_CLI, *out, "--compare", "--strategies", "replay,finetune"])
    assert set(summary["results"]) == {"replay", "finetune"}
    assert "| strategy | average accuracy" in capsys.readouterr().out
    assert "replay above finetune" in summary["checks"]
    for name in ("replay", "finetune"):
        run_dir = tmp_path / name
        records = [json.loads(line) for line in (run_dir / continual.LOG).read_text().splitlines()]
        assert [r["task"] for r in records] == [1, 2]
        assert records[-1]["accuracy"] == summary["results"][name]["accuracy"][-1]
        assert (run_dir / continual.HEATMAP).stat().st_size > 0
        state = torch.load(run_dir / continual.CHECKPOINT, weights_only=True)
        assert state["strategy_name"] == name and len(state["accuracy"]) == 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["class_order"] == summary["class_order"]

    again = continual.main([*TINY_CLI, *out, "--strategy", "replay", "--resume", "last"])
    assert again["results"]["replay"]["accuracy"] == summary["results"]["replay"]["accuracy"]
    assert "resumed after task 2 of 2" in capsys.readouterr().out
    with pytest.raises(ValueError, match="was written with epochs=1"):
        continual.main(
            [*TINY_CLI, *out, "--strategy", "replay", "--resume", "last", "--epochs", "2"]
        )


def test_a_pretrained_checkpoint_must_fit_the_network(tmp_path):
    split, transform = colour_stream()
    other = create_model("vit_micro_patch4_32", img_size=SIDE, num_classes=2, embed_dim=12)
    path = tmp_path / "other.pt"
    checkpoint.save({"model": other.state_dict(), "epoch": 1, "config": {}}, path, job="classify")
    config = tiny_config(tmp_path, pretrained=str(path))
    with pytest.raises(RuntimeError, match="size mismatch"):
        continual.run_strategy("finetune", config, split, transform, CPU)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="strategy: expected one of"):
        continual.main(["--strategy", "gem"])
    with pytest.raises(ValueError, match=r"resume: expected one of \('', 'last'\)"):
        continual.main(["--resume", "runs/x.pt"])
    with pytest.raises(ValueError, match="n_tasks: expected a divisor of the 10 classes, got 3"):
        continual.main([*TINY_CLI, "--n-tasks", "3"])


def test_split_cifar10_reads_the_classify_jobs_tarball(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "cifar-10-python.tar.gz", per_batch=40)
    accept_as_official(monkeypatch, tmp_path / "cifar-10-python.tar.gz")
    config = Path(__file__).resolve().parents[2] / "configs" / "continual_cifar10.yaml"
    flags = ["--config", str(config), "--data-dir", str(tmp_path), "--no-download", *TINY_CLI]
    flags += ["--threads", "1", "--num-workers", "0", "--out-dir", str(tmp_path / "run")]
    summary = continual.main([*flags, "--strategy", "icarl"])
    assert sorted(summary["class_order"]) == list(range(10))
    assert [len(row) for row in summary["results"]["icarl"]["accuracy"]] == [1, 2, 3, 4, 5]
