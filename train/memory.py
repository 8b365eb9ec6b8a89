"""``python -m train.memory``: the memory-augmented ViT and its baselines (linear probe,
VPT-shallow, VPT-deep) on a frozen backbone, measured by one of three protocols.

- ``supervised`` (the default, the source design's): the memory, prompts or head trained for
  ``--epochs`` with AdamW at ``--lr`` on the task's training split (a validation split held
  out chooses the best checkpoint), then the test split once.
- ``few_shot`` (``--few-shot``, the source design's): the same on K seeded labelled images of
  every class of the task (``--n-shot``; 0: 5 and 10), repeated over ``--repeats`` draws of the
  shots, the test accuracy averaged with its 95 % confidence interval.
- ``episodic``: N-way K-shot episodes of the task's classes (test split), every method adapted
  to each episode's support set, the query accuracy averaged over the episodes.

The task's classes are the built-in split's 10 novel classes on ``shape_patterns``, else every
class (``--novel-classes`` picks others). The backbone comes from ``--pretrained`` (a weights
file, or ``timm``); by default from timm when its weights can be had, else the package trains
it on the data set's other classes (its base classes), or for ``supervised`` on the task's own
training split when every class belongs to the task; that backbone is cached by its settings.

    python -m train.memory
    python -m train.memory --config-path configs/config_memory_vit.yaml --device cuda
    python -m train.memory --model linear_probe --dataset cifar10 --epochs 50
    python -m train.memory --model memory_vit --few-shot --n-shot 5
    python -m train.memory --config memory_vit_episodic
"""

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models import LinearProbeViT, MemoryAugmentedViT, VPTDeep, VPTShallow, create_model

from .data import BatchTransform, DataSplits, ImageTensorDataset, make_loader, readable_batches
from .data.fewshot import FewShotEpisodes, draw_shots
from .data.shapes import BASE_PATTERN_CLASSES, NOVEL_PATTERN_CLASSES
from .data.splits import labels_of, subset
from .engine import checkpoint
from .engine.config import CLASS_COUNT, FRACTION, POSITIVE, Translation, at_least, field
from .engine.job import plain, run_job, start
from .engine.trainer import EngineConfig, Trainer
from .tasks.classification import ClassificationTask, confusion_matrix
from .tasks.images import BuiltinJobConfig, DataConfig, data_for, loaders_for

METHODS = ("linear_probe", "vpt_shallow", "vpt_deep", "memory_vit", "ncm")
TRAINED_METHODS = METHODS[:4]  # what the supervised and few-shot protocols measure
PROTOCOLS = ("supervised", "few_shot", "episodic", "pretrain")
DEFAULT_SHOTS = {"few_shot": (5, 10), "episodic": (1, 5)}
Z_95 = 1.959964  # two-sided 95 % quantile of the normal distribution


@dataclasses.dataclass
class MemoryConfig(BuiltinJobConfig):
    """Defaults: the source design's protocol (supervised, the memory_vit of its config file) on
    the built-in data; the engine settings are those of the trained parts."""

    SOURCE_NAME: ClassVar[str] = "the memory-augmented ViT's config_memory_vit.yaml"
    SOURCE_KEYS: ClassVar[dict[str, Translation]] = {
        "model.name": "model",
        "model.backbone": "backbone",
        "model.num_classes": "num_classes",
        "model.mem_size": "mem_size",
        "model.hopfield_position": "hopfield_position",
        "model.beta": "beta",
        "model.freeze_backbone": "freeze_backbone",
        "training.epochs": "epochs",
        "training.batch_size": "batch_size",
        "training.learning_rate": "lr",
        "data.dataset": "dataset",
        "data.image_size": "image_size",
    }

    protocol: str = field(
        "supervised",
        "how the methods are measured (see the module's help)",
        PROTOCOLS,
        constants={"--few-shot": "few_shot"},
    )
    model: str = field("all", "the method, or all of them", (*METHODS, "all"))
    model_args: dict = field({}, "overrides of the backbone preset's arguments")
    backbone: str = field("vit_micro_patch4_32", "registered ViT preset of every method")
    pretrained: str = field(
        "",
        "backbone weights: a .pth/.safetensors path, 'timm' (timm's), or '' (timm's when they "
        "can be had, else trained here and cached)",
    )
    num_classes: int = field(
        0, "classes of the task, checked against the data (0: whatever it has)", CLASS_COUNT
    )
    freeze_backbone: bool = field(
        True, "memory_vit: keep the backbone frozen (the linear probe and VPT always do)"
    )
    dataset: str = field("shape_patterns", "data set (shape_patterns is built in)")
    image_size: int = field(
        32, "side of the backbone's input: images are resized to it", at_least(1)
    )
    novel_classes: list = field(
        [], "classes of the task (empty: the built-in split's novel ones, or all classes)"
    )
    n_way: int = field(5, "episodic: classes per episode", at_least(2))
    n_shot: int = field(
        0, "few_shot, episodic: labelled images per class (0: 5 and 10; 1 and 5)", at_least(0)
    )
    repeats: int = field(5, "few_shot: seeded draws of the shots", at_least(1))
    n_query: int = field(15, "episodic: query images per class", at_least(1))
    episodes: int = field(
        50, "episodic: episodes per setting (the same episodes for every method)", at_least(1)
    )
    memory_modes: list = field(["learned"], "memory modes of memory_vit")
    mem_size: int = field(1000, "slots of each Hopfield memory", at_least(1))
    hopfield_position: str = field(
        "after_attn", "where each Hopfield memory reads", ("after_attn", "after_ffn")
    )
    hopfield_blocks: list = field([-1], "blocks that get a Hopfield memory")
    beta: float = field(0.125, "Hopfield inverse temperature", POSITIVE)
    n_steps: int = field(1, "Hopfield updates per read", at_least(1))
    match_threshold: float = field(0.9, "associative memory: similarity at which a feature joins")
    num_prompts: int = field(10, "VPT prompts (per block for VPT-deep)")
    dropout: float = field(0.1, "dropout on the memory reads and before the heads", FRACTION)
    adapt_steps: int = field(30, "episodic: full-batch AdamW steps on an episode's support set")
    adapt_lr: float = field(0.02, "episodic: learning rate of those steps")
    # The trained parts' engine settings (the source design's: AdamW at 1e-3, batch 64).
    epochs: int = field(10, "training epochs of the memory, prompts or head")
    lr: float = field(1e-3, "peak learning rate (AdamW)", aliases=("--learning-rate",))
    # The backbone's pretraining, when it is trained here.
    pretrain_epochs: int = field(12, "epochs of the backbone's pretraining", at_least(1))
    pretrain_lr: float = field(2e-3, "peak learning rate of the pretraining", POSITIVE)
    label_smoothing: float = field(0.1, "label smoothing of the pretraining", FRACTION)
    crop_padding: int = field(2, "random crop after zero padding by this many pixels (0: off)")
    shapes_train_size: int = field(12000, "training images of the built-in data set")
    shapes_test_size: int = field(3000, "test images of the built-in data set")
    out_dir: str = field("runs/memory", "where the pretrained backbone and results go")
    evaluate_test: bool = field(
        True, "every protocol of this job reports test accuracy (it cannot be off)", (True,)
    )

    @property
    def methods(self) -> tuple[str, ...]:
        if self.model != "all":
            return (self.model,)
        return METHODS if self.protocol == "episodic" else TRAINED_METHODS

    @property
    def shots(self) -> tuple[int, ...]:
        return DEFAULT_SHOTS[self.protocol] if self.n_shot == 0 else (self.n_shot,)


# -- data ------------------------------------------------------------------------------------


class Resized:
    """A batch transform followed by a bilinear resize to ``size``² (in-memory images to the
    backbone's input side)."""

    def __init__(self, transform: BatchTransform, size: int):
        self.transform = transform
        self.size = size

    def __call__(self, images: Tensor, train: bool) -> Tensor:
        x = self.transform(images, train=train)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        return x


def class_split(config: MemoryConfig, num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(base, task) classes: the built-in split, or task = ``novel_classes`` (default all)
    and base = the rest."""
    if config.dataset == "shape_patterns" and not config.novel_classes:
        return BASE_PATTERN_CLASSES, NOVEL_PATTERN_CLASSES
    novel = tuple(config.novel_classes) or tuple(range(num_classes))
    return tuple(c for c in range(num_classes) if c not in novel), novel


def restrict(splits: DataSplits, classes: tuple[int, ...]) -> DataSplits:
    """The splits holding ``classes`` only, relabelled 0 … len(classes) - 1 in that order."""
    if classes == tuple(range(len(splits.classes))):
        return splits
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    for name, part in parts.items():
        if not isinstance(part, ImageTensorDataset):
            raise ValueError(
                f"novel_classes: a subset of the classes needs an in-memory data set, and "
                f"{name} is a {type(part).__name__}; give every class, or none"
            )
        parts[name] = part.subset_classes(classes)
    return dataclasses.replace(splits, **parts, classes=tuple(splits.classes[c] for c in classes))


def checked_classes(config: MemoryConfig, splits: DataSplits) -> None:
    if config.num_classes and config.num_classes != len(splits.classes):
        raise ValueError(
            f"num_classes (model.num_classes): expected the task's {len(splits.classes)} classes "
            f"of {config.dataset}, got {config.num_classes}"
        )


# -- the backbone ----------------------------------------------------------------------------

# Engine and data settings that leave the pretrained backbone as it is.
NOT_PRETRAINING = ("out_dir", "resume", "device", "threads", "num_workers", "data_dir", "download")
NOT_PRETRAINING += ("checkpoint_path", "save_every")
# Settings that change the pretrained backbone, hashed into its cache folder's name.
PRETRAINING_FIELDS = tuple(
    f.name
    for f in (*dataclasses.fields(EngineConfig), *dataclasses.fields(DataConfig))
    if f.name not in NOT_PRETRAINING
) + ("backbone", "model_args", "label_smoothing", "novel_classes")


def pretraining_classes(config: MemoryConfig, base, task) -> tuple[int, ...]:
    """The classes a backbone is trained on here: the base classes; for ``supervised``, with
    none, the task's own (its training split is labelled anyway)."""
    if base:
        return base
    if config.protocol == "supervised":
        return task
    raise ValueError(
        f"pretrained: no base classes to train a backbone on (every class is in the task) and "
        f"no weights could be had; the {config.protocol} protocol must not train it on the "
        "task's images: pass --pretrained PATH (or timm), or --novel-classes"
    )


def pretrain_backbone(
    config: MemoryConfig, splits: DataSplits, transform, classes: tuple[int, ...], device
) -> Path:
    """Trains the backbone on ``classes`` with the engine (validation split held out), once:
    the checkpoint lives in a folder named by a digest of the settings, and a run with the same
    settings reuses it (an interrupted pretraining resumes)."""
    engine = dataclasses.replace(
        config, epochs=config.pretrain_epochs, lr=config.pretrain_lr, checkpoint_path=""
    )
    settings = {name: getattr(engine, name) for name in PRETRAINING_FIELDS}
    settings["pretraining_classes"] = list(classes)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(config.out_dir) / f"backbone-{config.backbone}-{digest}"
    path = folder / "last.pt"
    if path.is_file() and checkpoint.load(path, accept=("memory",))["epoch"] >= engine.epochs:
        print(f"backbone: pretrained, cached in {path}", flush=True)
        return path
    pretraining = restrict(splits, classes)
    channels = splits.image_shape[0]
    model = create_model(
        config.backbone,
        img_size=config.image_size,
        in_chans=channels,
        num_classes=len(classes),
        **config.model_args,
    )
    engine = dataclasses.replace(
        engine, out_dir=str(folder), resume="last" if path.is_file() else ""
    )
    train_loader, val_loader, _ = loaders_for(config, pretraining)
    task = ClassificationTask(transform, len(classes), config.label_smoothing)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"backbone: pretraining {config.backbone} ({params / 1e6:.2f} M parameters) on "
        f"{len(classes)} classes ({len(pretraining.train)} images) into {folder}",
        flush=True,
    )
    Trainer(model, task, train_loader, val_loader, engine, settings, device, job="memory").fit()
    return path


def backbone_weights(config: MemoryConfig, splits, transform, base, task, device) -> bool | str:
    """The ``pretrained`` argument every method's backbone is built with."""
    if config.pretrained == "timm":
        return True
    if config.pretrained:
        return config.pretrained
    try:
        create_model(config.backbone, pretrained=True, num_classes=0, **config.model_args)
        print(f"backbone: timm's pretrained {config.backbone}", flush=True)
        return True
    except (ImportError, RuntimeError, ValueError) as error:
        print(f"backbone: no pretrained weights to be had ({error})", flush=True)
    classes = pretraining_classes(config, base, task)
    return str(pretrain_backbone(config, splits, transform, classes, device))


def build_method(
    method: str, mode: str, config: MemoryConfig, weights, num_classes: int, channels: int
) -> nn.Module:
    """The model of ``method`` (memory_vit: with a memory of ``mode``) on the backbone."""
    common = dict(
        backbone_name=config.backbone,
        pretrained=weights,
        num_classes=num_classes,
        dropout=config.dropout,
        backbone_args={"img_size": config.image_size, "in_chans": channels, **config.model_args},
    )
    if method in ("linear_probe", "ncm"):
        return LinearProbeViT(**common)
    if method in ("vpt_shallow", "vpt_deep"):
        cls = VPTShallow if method == "vpt_shallow" else VPTDeep
        return cls(num_prompts=config.num_prompts, **common)
    return MemoryAugmentedViT(
        mem_size=config.mem_size,
        hopfield_position=config.hopfield_position,
        beta=config.beta,
        freeze_backbone=config.freeze_backbone,
        memory_mode=mode,
        hopfield_blocks=tuple(config.hopfield_blocks),
        n_steps=config.n_steps,
        match_threshold=config.match_threshold,
        **common,
    )


def method_variants(config: MemoryConfig) -> list[tuple[str, str, str]]:
    """(name, method, memory mode) of each model measured: memory_vit once per memory mode."""
    variants = []
    for method in config.methods:
        modes = config.memory_modes if method == "memory_vit" else [""]
        for mode in modes:
            variants.append((f"{method} ({mode})" if mode else method, method, mode))
    return variants


# -- the supervised and few-shot protocols ----------------------------------------------------


def train_and_test(
    model: nn.Module,
    config: MemoryConfig,
    splits: DataSplits,
    transform,
    device,
    out_dir: Path,
) -> dict[str, dict[str, float]]:
    """Trains the model's trainable parts on ``splits.train`` with the engine (best checkpoint
    on ``splits.val``) and tests both weights once; a written memory is written with the
    training split instead, no gradient step. Returns the test metrics of the last and best."""
    batch_size = min(config.batch_size, len(splits.train))
    engine = dataclasses.replace(config, out_dir=str(out_dir), batch_size=batch_size)
    train_loader, val_loader, test_loader = loaders_for(engine, splits)
    task = ClassificationTask(transform, len(splits.classes))
    if isinstance(model, MemoryAugmentedViT) and model.memory_mode != "learned":
        model.to(device).eval()
        for images, labels in readable_batches(loader_once(splits.train, engine)):
            model.write_memory(transform(images.to(device), train=False), labels.to(device))
        metrics = task.evaluate(model, test_loader, device)
        return {"last": metrics, "best": metrics}
    trainer = Trainer(
        model, task, train_loader, val_loader, engine, plain(engine), device, job="memory"
    )
    trainer.fit()
    return trainer.test(test_loader)


def loader_once(dataset, config: MemoryConfig):
    """Every item of ``dataset`` once, in order (what a memory is written with)."""
    return make_loader(dataset, config.batch_size, False, config.num_workers, config.seed)


def per_class_accuracy(model, splits: DataSplits, transform, config, device) -> dict[str, float]:
    """The test split's accuracy of each class, by name."""
    matrix, _, _ = confusion_matrix(
        model, loader_once(splits.test, config), transform, len(splits.classes), device
    )
    recall = matrix.diag() / matrix.sum(1).clamp_min(1)
    return dict(zip(splits.classes, recall.tolist()))


def supervised(config: MemoryConfig, splits, transform, weights, device) -> dict:
    """Each method trained on the training split and tested once."""
    results = {}
    for name, method, mode in method_variants(config):
        model = build_method(
            method, mode, config, weights, len(splits.classes), splits.image_shape[0]
        )
        out_dir = Path(config.out_dir) / name.replace(" ", "").replace("(", "-").rstrip(")")
        started = time.perf_counter()
        test = train_and_test(model, config, splits, transform, device, out_dir)
        results[name] = {
            "test_acc": test["last"]["acc"],
            "best_test_acc": test["best"]["acc"],
            "per_class_test_acc": per_class_accuracy(model, splits, transform, config, device),
            "time_s": time.perf_counter() - started,
        }
        classes = ", ".join(
            f"{c} {100 * a:.0f} %" for c, a in results[name]["per_class_test_acc"].items()
        )
        print(
            f"{name}: test accuracy {100 * test['last']['acc']:.1f} % (last weights), "
            f"{100 * test['best']['acc']:.1f} % (best on validation); per class: {classes}",
            flush=True,
        )
    return results


def few_shot(config: MemoryConfig, splits, transform, weights, device) -> dict:
    """Each method trained on K seeded shots of every class (K more per class validate), tested
    on the test split, over ``repeats`` draws of the shots."""
    labels = labels_of(splits.train)
    results: dict[str, dict] = {}
    for shot in config.shots:
        for name, method, mode in method_variants(config):
            accuracies, started = [], time.perf_counter()
            for repeat in range(config.repeats):
                train_idx, val_idx = draw_shots(
                    labels, shot, config.seed + repeat, draws=2, class_names=splits.classes
                )
                shots = dataclasses.replace(
                    splits,
                    train=subset(splits.train, train_idx, train=True),
                    val=subset(splits.train, val_idx, train=False),
                )
                model = build_method(
                    method, mode, config, weights, len(splits.classes), splits.image_shape[0]
                )
                folder = Path(config.out_dir) / f"few_shot-{shot}-{method}{mode}-{repeat}"
                test = train_and_test(model, config, shots, transform, device, folder)
                accuracies.append(test["best"]["acc"])
            record(results, name, f"{shot}-shot", accuracies, time.perf_counter() - started)
            print_row(f"{len(splits.classes)}-way {shot}-shot", name, results[name][f"{shot}-shot"])
    return results


def record(results: dict, name: str, column: str, accuracies: list[float], seconds: float):
    mean, half_width = confidence_interval(accuracies)
    results.setdefault(name, {})[column] = {
        "accuracy": mean,
        "ci95": half_width,
        "runs": len(accuracies),
        "time_s": seconds,
    }


def print_row(setting: str, name: str, cell: dict) -> None:
    print(
        f"{setting} {name:<28} {100 * cell['accuracy']:5.1f} ± {100 * cell['ci95']:.1f} % "
        f"({cell['runs']} runs, {cell['time_s']:.0f} s)",
        flush=True,
    )


# -- the methods on one episode ---------------------------------------------------------------

# A learner adapts to an episode's support set and returns logits for its queries.
Learner = Callable[[Tensor, Tensor, Tensor], Tensor]


def fit_support(
    forward: Callable[[], Tensor], labels: Tensor, params: list[nn.Parameter], config
) -> None:
    """Full-batch AdamW steps of cross-entropy on the support set (an episode's adaptation)."""
    optimizer = torch.optim.AdamW(params, lr=config.adapt_lr, weight_decay=0.0)
    for _ in range(config.adapt_steps):
        loss = F.cross_entropy(forward(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def reset_each_episode(model: nn.Module, adapt_and_predict: Learner) -> Learner:
    """Restores the model's initial weights and buffers before every episode."""
    initial = {key: value.clone() for key, value in model.state_dict().items()}

    def learner(support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
        model.load_state_dict(initial)
        return adapt_and_predict(support, labels, query)

    return learner


def trained_learner(model: nn.Module, config: MemoryConfig) -> Learner:
    """Trains the model's trainable parameters (prompts, memories, head) on the support set."""
    params = [p for p in model.parameters() if p.requires_grad]

    def adapt_and_predict(support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
        model.train()
        fit_support(lambda: model(support), labels, params, config)
        model.eval()
        with torch.no_grad():
            return model(query)

    return reset_each_episode(model, adapt_and_predict)


def linear_probe_learner(model: LinearProbeViT, config: MemoryConfig) -> Learner:
    """Trains the head on the frozen features (computed once per episode: the backbone is
    frozen and in eval mode, so this is the same as running it at every step)."""

    def features(images: Tensor) -> Tensor:
        with torch.no_grad():
            return model.backbone.forward_head(
                model.backbone.forward_features(images), pre_logits=True
            )

    def adapt_and_predict(support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
        support_features = features(support)
        fit_support(
            lambda: model.head(support_features), labels, list(model.head.parameters()), config
        )
        with torch.no_grad():
            return model.head(features(query))

    return reset_each_episode(model.eval(), adapt_and_predict)


def written_memory_learner(model: MemoryAugmentedViT) -> Learner:
    """Writes the support set into the memory (no gradient step) and reads the queries."""

    def adapt_and_predict(support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
        model.clear_memory()
        model.write_memory(support, labels)
        with torch.no_grad():
            return model(query)

    return adapt_and_predict


def ncm_learner(model: LinearProbeViT) -> Learner:
    """Nearest class mean by cosine on the frozen class-token features."""
    model.eval()

    @torch.no_grad()
    def predict(support: Tensor, labels: Tensor, query: Tensor) -> Tensor:
        def features(images: Tensor) -> Tensor:
            tokens = model.backbone.forward_features(images)
            return F.normalize(model.backbone.forward_head(tokens, pre_logits=True), dim=-1)

        support_features = features(support)
        means = torch.stack(
            [support_features[labels == c].mean(0) for c in range(int(labels.max()) + 1)]
        )
        return features(query) @ F.normalize(means, dim=-1).T

    return predict


def episode_learner(model: nn.Module, method: str, config: MemoryConfig) -> Learner:
    """How ``method`` meets an episode."""
    if method == "linear_probe":
        return linear_probe_learner(model, config)
    if method == "ncm":
        return ncm_learner(model)
    if isinstance(model, MemoryAugmentedViT) and model.memory_mode != "learned":
        return written_memory_learner(model.eval())
    return trained_learner(model, config)


def confidence_interval(accuracies: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (normal approximation)."""
    values = torch.tensor(accuracies, dtype=torch.float64)
    spread = values.std().item() if len(values) > 1 else 0.0
    return values.mean().item(), Z_95 * spread / math.sqrt(len(values))


def run_episodes(learner: Learner, episodes: FewShotEpisodes, prepare) -> list[float]:
    accuracies = []
    for episode in episodes:
        logits = learner(
            prepare(episode.support_images), episode.support_labels, prepare(episode.query_images)
        )
        accuracies.append((logits.argmax(-1) == episode.query_labels).float().mean().item())
    return accuracies


def episodic(config: MemoryConfig, splits, transform, weights, device) -> dict:
    """Every method on the same seeded episodes of the task's classes (test split)."""
    results: dict[str, dict] = {}
    channels = splits.image_shape[0]
    for shot in config.shots:
        episodes = FewShotEpisodes(
            splits.test, config.n_way, shot, config.n_query, config.episodes, config.seed
        )
        for name, method, mode in method_variants(config):
            model = build_method(method, mode, config, weights, config.n_way, channels)
            learner = episode_learner(model.to(device), method, config)
            started = time.perf_counter()
            accuracies = run_episodes(
                learner, episodes, lambda images: transform(images.to(device), train=False)
            )
            record(results, name, f"{shot}-shot", accuracies, time.perf_counter() - started)
            print_row(f"{config.n_way}-way {shot}-shot", name, results[name][f"{shot}-shot"])
    return results


def print_table(results: dict) -> None:
    columns = list(next(iter(results.values())))
    print("\n| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in results.items():
        cells = [f"{100 * row[c]['accuracy']:.1f} ± {100 * row[c]['ci95']:.1f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


PROTOCOL_RUNS = {"supervised": supervised, "few_shot": few_shot, "episodic": episodic}


def run(config: MemoryConfig) -> dict:
    started = time.perf_counter()
    device = start(config)
    splits, transform = data_for(config)
    transform = Resized(transform, config.image_size)
    base, task = class_split(config, len(splits.classes))
    task_splits = restrict(splits, task)
    checked_classes(config, task_splits)
    summary: dict = {
        "protocol": config.protocol,
        "base_classes": list(base),
        "task_classes": list(task),
        "classes": list(task_splits.classes),
    }
    if config.protocol == "pretrain":
        classes = pretraining_classes(config, base, task)
        summary["weights"] = str(pretrain_backbone(config, splits, transform, classes, device))
    else:
        weights = backbone_weights(config, splits, transform, base, task, device)
        print(
            f"{config.protocol}: {len(task)} classes of {config.dataset}, device {device}, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        protocol = PROTOCOL_RUNS[config.protocol]
        summary["weights"] = weights
        summary["results"] = protocol(config, task_splits, transform, weights, device)
        if config.protocol != "supervised":
            print_table(summary["results"])
    summary["time_s"] = time.perf_counter() - started
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"config": plain(config), **summary}, indent=2))
    print(f"done in {summary['time_s']:.0f} s; results in {out / 'results.json'}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run_job(MemoryConfig, run, argv, "train.memory", __doc__)


def cli() -> None:
    """Console-script entry point (``main`` returns results for programmatic use)."""
    main()


if __name__ == "__main__":
    cli()
