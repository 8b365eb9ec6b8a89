"""``python -m train.continual``: class-incremental learning, task after task, with EWC, LwF,
iCaRL, replay, the memory-augmented ViT, and the fine-tuning and joint-training bounds.

With no arguments it fine-tunes a small ViT on the built-in shapes set split into 5 tasks of 2
classes. After each task every strategy is evaluated on every task seen so far (the accuracy
matrix, average accuracy, forgetting, backward transfer), logged to JSONL and drawn as a heat
map; a checkpoint after each task lets ``--resume last`` continue from the last finished task.

    python -m train.continual --strategy icarl --memory-size 200
    python -m train.continual --compare                      # every strategy, one table
    python -m train.continual --strategy ewc --resume last
    python -m train.continual --config configs/continual_cifar100.yaml --strategy replay
"""

import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from .data import make_loader
from .data.splits import ClassIncrementalSplit, split_by_class
from .engine import checkpoint, distributed, run_lock
from .engine.config import at_least, field
from .engine.job import plain, run_job, seed_all, start
from .engine.trainer import Trainer
from .metrics.continual import plot_accuracy_matrix, summary
from .metrics.logger import read_jsonl
from .strategies import EWC_MODES, REPLAY_MODES
from .strategies.incremental import STRATEGIES, Finetune, evaluate_seen
from .tasks.images import BuiltinJobConfig, build_backbone, data_for, load_encoder_weights

DEFAULT_TASKS = {"cifar100": 10}  # Split-CIFAR-100: 10 × 10; every other set: 5 tasks
FALLBACK_TASKS = 5
TASK_SEED_STRIDE = 1000  # task t trains from seed + 1000 · (t + 1): independent of the others
CHECKPOINT = "continual.pt"
LOG = "continual.jsonl"
HEATMAP = "accuracy_matrix.png"
NEAR_ZERO_FORGETTING = 0.05
# Settings a resumed run must share with the run it continues.
RESUME_SETTINGS = (
    "dataset",
    "model",
    "model_args",
    "pretrained",
    "seed",
    "n_tasks",
    "shapes_train_size",
    "epochs",
    "first_task_epochs",
    "memory_size",
)


@dataclasses.dataclass
class ContinualConfig(BuiltinJobConfig):
    """Defaults: the built-in 5-task split of ``shapes``, the same ViT and budget for every
    strategy (the engine settings are per task)."""

    strategy: str = field("finetune", "the continual-learning strategy", tuple(STRATEGIES))
    compare: bool = field(False, "run every strategy of --strategies and print one table")
    strategies: list = field(list(STRATEGIES), "the strategies --compare runs")
    model: str = field("vit_micro_patch4_32", "registered ViT preset every strategy trains")
    pretrained: str = field(
        "", "a classification checkpoint every strategy's network starts from ('': from scratch)"
    )
    n_tasks: int = field(0, f"tasks (0: {DEFAULT_TASKS} or else {FALLBACK_TASKS})", at_least(0))
    memory_size: int = field(
        400, "iCaRL's exemplars and the replay buffer's items, in total", at_least(1)
    )
    ewc_lambda: float = field(1000.0, "EWC: weight of the penalty")
    ewc_mode: str = field("separate", "EWC: one Fisher per task or one running one", EWC_MODES)
    ewc_decay: float = field(1.0, "EWC online: weight of the previous Fisher")
    ewc_fisher_samples: int = field(500, "EWC: training images of a task its Fisher is from")
    lwf_alpha: float = field(1.0, "LwF: weight of the distillation")
    temperature: float = field(2.0, "distillation temperature of LwF and iCaRL")
    replay_mode: str = field("reservoir", "replay: how the buffer keeps items", REPLAY_MODES)
    replay_batch_size: int = field(0, "replay: buffer items mixed into each batch (0: batch size)")
    memory_beta: float = field(0.125, "memory: inverse temperature of the prototype read")
    jobs: int = field(1, "--compare: strategies run at once, each in its own process", at_least(1))
    model_args: dict = field({"depth": 2}, "overrides of the preset's arguments")
    val_split: float = field(
        0.0, "no validation set: every task trains its epochs and the last weights go on"
    )
    epochs: int = field(4, "training epochs of each task after the first")
    first_task_epochs: int = field(15, "training epochs of the first task (0: --epochs)")
    batch_size: int = field(32, "images per step on each process")
    lr: float = field(3e-3, "peak learning rate (AdamW), per task")
    out_dir: str = field("runs/continual", "where each strategy's folder goes")
    resume: str = field(
        "", "'last': continue each strategy from its last finished task", ("", "last")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [name for name in self.strategies if name not in STRATEGIES]
        if unknown:
            raise ValueError(f"strategies: expected names from {tuple(STRATEGIES)}, got {unknown}")

    @property
    def tasks(self) -> int:
        return self.n_tasks or DEFAULT_TASKS.get(self.dataset, FALLBACK_TASKS)


def task_seed(config: ContinualConfig, task: int) -> int:
    return config.seed + TASK_SEED_STRIDE * (task + 1) + distributed.rank()


def task_epochs(config: ContinualConfig, task: int) -> int:
    return config.first_task_epochs if task == 0 and config.first_task_epochs else config.epochs


def train_task(strategy: Finetune, data, config: ContinualConfig, run_dir: Path, device) -> None:
    """The current task's training, by the engine, from the task's own seed (a task that was
    cut short is trained again from its start, identically)."""
    seed = task_seed(config, strategy.task)
    engine = dataclasses.replace(
        config,
        out_dir=str(run_dir / f"task{strategy.task + 1}"),
        resume="",
        seed=seed,
        epochs=task_epochs(config, strategy.task),
    )
    train_loader = make_loader(data, config.batch_size, True, config.num_workers, seed)
    test = strategy.split.test[strategy.task]
    test_loader = make_loader(test, config.batch_size, False, config.num_workers, seed)
    Trainer(
        strategy.model,
        strategy,
        train_loader,
        test_loader,
        engine,
        plain(config),
        device,
        job="continual",
    ).fit()


def resume_state(config: ContinualConfig, name: str, split, path: Path) -> dict | None:
    """The last finished task's checkpoint, checked against this run's settings."""
    if not config.resume:
        return None
    if not path.is_file():
        print(f"{name}: no checkpoint in {path}, starting from the first task", flush=True)
        return None
    state = checkpoint.load(path, accept=("continual",))
    saved = state["config"]
    for key in RESUME_SETTINGS:
        if saved[key] != getattr(config, key):
            raise ValueError(
                f"resume: {path} was written with {key}={saved[key]!r}, this run has "
                f"{getattr(config, key)!r}; use the same settings or another --out-dir"
            )
    if state["strategy_name"] != name or state["class_order"] != list(split.class_order):
        raise ValueError(f"resume: {path} holds another strategy or class order")
    return state


def run_strategy(
    name: str, config: ContinualConfig, split: ClassIncrementalSplit, transform, device
) -> dict:
    """Every task in turn with one strategy, holding its folder; returns its accuracy matrix
    and metrics."""
    run_dir = Path(config.out_dir) / name
    with run_lock.hold(run_dir):
        return run_tasks(name, config, split, transform, device, run_dir)


def run_tasks(
    name: str,
    config: ContinualConfig,
    split: ClassIncrementalSplit,
    transform,
    device,
    run_dir: Path,
) -> dict:
    path = run_dir / CHECKPOINT
    seed_all(config.seed)  # every strategy starts from the same weights
    model = build_backbone(config.model, config.model_args, split, split.num_classes)
    if config.pretrained:
        load_encoder_weights(model, config.pretrained)  # the head stays as initialised
    strategy = STRATEGIES[name](model.to(device), transform, split, config)
    state = resume_state(config, name, split, path)
    matrix: list[list[float]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        matrix = state["accuracy"]
        print(f"{name}: resumed after task {len(matrix)} of {split.n_tasks}", flush=True)
    records = [r for r in read_jsonl(run_dir / LOG) if r["task"] <= len(matrix)]
    started = time.perf_counter() - sum(r["time_s"] for r in records)
    for task in range(len(matrix), split.n_tasks):
        seed_all(task_seed(config, task))
        data = strategy.begin_task(task)
        if data is not None:
            train_task(strategy, data, config, run_dir, device)
        strategy.end_task()
        matrix.append(evaluate_seen(strategy, config.batch_size))
        record = {
            "task": task + 1,
            "accuracy": matrix[-1],
            **summary(matrix),
            "time_s": time.perf_counter() - started,
        }
        records.append(record)
        if distributed.is_main():
            save_task(run_dir, name, config, split, model, strategy, matrix, records)
            row = " ".join(f"{100 * a:.1f}" for a in matrix[-1])
            print(
                f"{name}: after task {task + 1}/{split.n_tasks}: accuracies [{row}] %, "
                f"average {100 * record['average_accuracy']:.1f} %, "
                f"forgetting {100 * record['forgetting']:.1f}",
                flush=True,
            )
        distributed.barrier()
    return {"accuracy": matrix, **summary(matrix), "time_s": time.perf_counter() - started}


def save_task(run_dir, name, config, split, model, strategy, matrix, records) -> None:
    """The checkpoint, JSONL log and heat map after a finished task."""
    state = {
        "model": model.state_dict(),
        "strategy": strategy.state_dict(),
        "strategy_name": name,
        "accuracy": matrix,
        "class_order": list(split.class_order),
        "epoch": config.epochs,
        "config": plain(config),
    }
    checkpoint.save(state, run_dir / CHECKPOINT, job="continual")
    (run_dir / LOG).write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_accuracy_matrix(matrix, f"{name} on {config.dataset}", run_dir / HEATMAP)


def ordering_checks(results: dict[str, dict]) -> dict[str, bool]:
    """The ordering the literature leads one to expect, checked on the measured numbers (only
    the checks whose strategies were run)."""
    acc = {name: r["average_accuracy"] for name, r in results.items()}
    forget = {name: r["forgetting"] for name, r in results.items()}
    checks = {}
    if "joint" in acc:
        checks["joint has the highest average accuracy"] = acc["joint"] == max(acc.values())
    for name in ("replay", "icarl"):
        if {name, "finetune"} <= acc.keys():
            checks[f"{name} above finetune"] = acc[name] > acc["finetune"]
    if "finetune" in forget:
        others = [f for n, f in forget.items() if n != "finetune"]
        checks["finetune forgets the most"] = all(forget["finetune"] >= f for f in others)
    if "memory" in forget:
        checks[f"memory forgets less than {NEAR_ZERO_FORGETTING:.2f}"] = (
            forget["memory"] < NEAR_ZERO_FORGETTING
        )
    return checks


def print_table(results: dict[str, dict]) -> None:
    print(
        "\n| strategy | average accuracy | average incremental accuracy | forgetting | BWT | time |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {100 * r['average_accuracy']:.1f} % | "
            f"{100 * r['average_incremental_accuracy']:.1f} % | {100 * r['forgetting']:.1f} | "
            f"{100 * r['bwt']:.1f} | {r['time_s']:.0f} s |"
        )


def run_alone(name: str, config: ContinualConfig) -> dict:
    """One strategy in a process of its own (``--jobs``): its own set-up and data."""
    device = start(config)
    splits, transform = data_for(config)
    split = split_by_class(splits.train, splits.test, config.tasks, config.seed)
    return run_strategy(name, config, split, transform, device)


def run_in_processes(names: list[str], config: ContinualConfig) -> dict[str, dict]:
    if distributed.is_distributed():
        raise ValueError("jobs: run the strategies one after another (--jobs 1) under torchrun")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(config.jobs, mp_context=context) as pool:
        futures = {name: pool.submit(run_alone, name, config) for name in names}
        return {name: future.result() for name, future in futures.items()}


def run(config: ContinualConfig) -> dict:
    device = start(config)
    splits, transform = data_for(config)
    split = split_by_class(splits.train, splits.test, config.tasks, config.seed)
    names = list(dict.fromkeys(config.strategies)) if config.compare else [config.strategy]
    print(
        f"{config.dataset}: {split.n_tasks} tasks of {split.classes_per_task} classes "
        f"(class order {list(split.class_order)}), {config.model}, "
        f"{task_epochs(config, 0)} epochs on the first task and {config.epochs} on each other, "
        f"device {device}, {torch.get_num_threads()} threads",
        flush=True,
    )
    if config.jobs > 1:
        results = run_in_processes(names, config)
    else:
        results = {name: run_strategy(name, config, split, transform, device) for name in names}
    summary_out = {"class_order": list(split.class_order), "results": results}
    if config.compare:
        summary_out["checks"] = ordering_checks(results)
        print_table(results)
        for check, holds in summary_out["checks"].items():
            print(f"{check}: {'yes' if holds else 'NO'}")
    if distributed.is_main():
        out = Path(config.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = {"config": plain(config), **summary_out}
        (out / "results.json").write_text(json.dumps(report, indent=2))
    return summary_out


def main(argv: list[str] | None = None) -> dict:
    return run_job(ContinualConfig, run, argv, "train.continual", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
