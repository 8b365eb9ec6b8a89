"""``python -m train.memory``: few-shot classification with the memory-augmented ViT and its
baselines, on classes the backbone never saw.

With no arguments it runs on the built-in 30-class data set (shapes × fills): a small ViT is
pretrained on the 20 base classes (by the training engine; the checkpoint is cached and reused),
then every method meets the same seeded 5-way episodes of the 10 novel classes, 1- and 5-shot,
and the mean query accuracy is printed with its 95 % confidence interval over the episodes.

    python -m train.memory
    python -m train.memory --model memory_vit --memory-modes class_prototype --n-shot 5
    python -m train.memory --config configs/memory_vit_cifar10.yaml --pretrained weights.pth
"""

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from python_models import LinearProbeViT, MemoryAugmentedViT, VPTDeep, VPTShallow, create_model

from . import checkpoint
from .classification import ClassificationTask
from .common import (
    BuiltinJobConfig,
    DataConfig,
    build_backbone,
    data_for,
    loaders_for,
    plain,
    run_job,
    start,
)
from .config import POSITIVE, at_least, field
from .data import BatchTransform, DataSplits
from .data.fewshot import FewShotEpisodes
from .data.shapes import BASE_PATTERN_CLASSES, NOVEL_PATTERN_CLASSES
from .engine import EngineConfig, Trainer

METHODS = ("linear_probe", "vpt_shallow", "vpt_deep", "memory_vit", "ncm")
DEFAULT_SHOTS = (1, 5)
Z_95 = 1.959964  # two-sided 95 % quantile of the normal distribution


@dataclasses.dataclass
class MemoryConfig(BuiltinJobConfig):
    """Defaults: the built-in few-shot job (the engine settings are the backbone's pretraining)."""

    model: str = field("all", "the few-shot method, or all of them", (*METHODS, "all"))
    model_args: dict = field({}, "overrides of the backbone preset's arguments")
    backbone: str = field("vit_micro_patch4_32", "registered ViT preset of every method")
    pretrained: str = field(
        "",
        "backbone weights: '' pretrains on the base classes (cached), 'timm' loads timm's, "
        "or a .pth/.safetensors path",
    )
    dataset: str = field("shape_patterns", "data set (shape_patterns is built in)")
    novel_classes: list = field(
        [], "classes of the episodes (empty: the built-in split's novel ones, or all classes)"
    )
    few_shot: bool = field(True, "run the few-shot protocol (--no-few-shot: pretraining only)")
    n_way: int = field(5, "classes per episode", at_least(2))
    n_shot: int = field(0, "support images per class (0: 1 and 5)", at_least(0))
    n_query: int = field(15, "query images per class", at_least(1))
    episodes: int = field(
        50, "episodes per setting (the same episodes for every method)", at_least(1)
    )
    memory_modes: list = field(
        ["class_prototype", "associative", "learned"], "memory modes of memory_vit"
    )
    mem_size: int = field(1000, "slots of each Hopfield memory", at_least(1))
    hopfield_position: str = field(
        "after_ffn", "where each Hopfield memory reads", ("after_attn", "after_ffn")
    )
    hopfield_blocks: list = field([-1], "blocks that get a Hopfield memory")
    beta: float = field(0.125, "Hopfield inverse temperature", POSITIVE)
    n_steps: int = field(1, "Hopfield updates per read", at_least(1))
    match_threshold: float = field(0.9, "associative memory: similarity at which a feature joins")
    num_prompts: int = field(10, "VPT prompts (per block for VPT-deep)")
    adapt_steps: int = field(30, "full-batch AdamW steps on an episode's support set")
    adapt_lr: float = field(0.02, "learning rate of those steps")
    label_smoothing: float = field(0.1, "label smoothing of the pretraining")
    # Pretraining defaults of the built-in job.
    epochs: int = field(12, "training epochs")
    lr: float = field(2e-3, "peak learning rate (AdamW)")
    crop_padding: int = field(2, "random crop after zero padding by this many pixels (0: off)")
    shapes_train_size: int = field(12000, "training images of the built-in data set")
    shapes_test_size: int = field(3000, "test images of the built-in data set")
    out_dir: str = field("runs/memory", "where the pretrained backbone and results go")

    @property
    def methods(self) -> tuple[str, ...]:
        return METHODS if self.model == "all" else (self.model,)

    @property
    def shots(self) -> tuple[int, ...]:
        return DEFAULT_SHOTS if self.n_shot == 0 else (self.n_shot,)


# -- classes and the backbone ----------------------------------------------------------------


def class_split(config: MemoryConfig, num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(base, novel) classes: the built-in split, or novel = ``novel_classes`` (default all)
    and base = the rest."""
    if config.dataset == "shape_patterns" and not config.novel_classes:
        return BASE_PATTERN_CLASSES, NOVEL_PATTERN_CLASSES
    novel = tuple(config.novel_classes) or tuple(range(num_classes))
    return tuple(c for c in range(num_classes) if c not in novel), novel


# Settings that change the pretrained backbone, hashed into its cache folder's name.
PRETRAINING_FIELDS = tuple(
    name
    for name in (
        f.name for f in (*dataclasses.fields(EngineConfig), *dataclasses.fields(DataConfig))
    )
    if name not in ("out_dir", "resume", "device", "threads", "num_workers", "data_dir", "download")
) + ("backbone", "model_args", "label_smoothing", "novel_classes")


def pretrain_backbone(
    config: MemoryConfig,
    splits: DataSplits,
    transform: BatchTransform,
    base: tuple[int, ...],
    device,
) -> Path:
    """Trains the backbone on the base classes with the engine, once: the checkpoint lives in a
    folder named by a digest of the settings, and a run with the same settings reuses it (an
    interrupted pretraining resumes)."""
    settings = {name: getattr(config, name) for name in PRETRAINING_FIELDS}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(config.out_dir) / f"backbone-{config.backbone}-{digest}"
    path = folder / "last.pt"
    if path.is_file() and checkpoint.load(path, accept=("memory",))["epoch"] >= config.epochs:
        print(f"backbone: pretrained on the base classes, cached in {path}", flush=True)
        return path
    if not base:
        raise ValueError(
            "pretrained: no base classes to pretrain on (every class is novel); pass --pretrained "
            "timm or a weights path, or --novel-classes"
        )
    base_splits = dataclasses.replace(
        splits,
        train=splits.train.subset_classes(base),
        test=splits.test.subset_classes(base),
        classes=tuple(splits.classes[c] for c in base),
    )
    model = build_backbone(config.backbone, config.model_args, base_splits, len(base))
    engine = dataclasses.replace(
        config, out_dir=str(folder), resume="last" if path.is_file() else ""
    )
    train_loader, test_loader = loaders_for(config, base_splits)
    task = ClassificationTask(transform, len(base), config.label_smoothing)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"backbone: pretraining {config.backbone} ({params / 1e6:.2f} M parameters) on "
        f"{len(base)} base classes ({len(base_splits.train)} images) into {folder}",
        flush=True,
    )
    trainer = Trainer(
        model, task, train_loader, test_loader, engine, settings, device, job="memory"
    )
    trainer.fit()
    return path


def backbone_weights(config: MemoryConfig, splits, transform, base, device) -> bool | str:
    """The ``pretrained`` argument every method's backbone is built with."""
    if config.pretrained == "timm":
        return True
    if config.pretrained:
        return config.pretrained
    return str(pretrain_backbone(config, splits, transform, base, device))


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


def build_learners(config: MemoryConfig, weights: bool | str, channels: int):
    """(name, learner) for each asked-for method (memory_vit once per memory mode)."""
    common = dict(
        backbone_name=config.backbone,
        pretrained=weights,
        backbone_args={"in_chans": channels, **config.model_args},
    )
    way = config.n_way
    for method in config.methods:
        if method == "linear_probe":
            yield method, linear_probe_learner(LinearProbeViT(num_classes=way, **common), config)
        elif method == "ncm":
            yield method, ncm_learner(LinearProbeViT(num_classes=way, **common))
        elif method in ("vpt_shallow", "vpt_deep"):
            cls = VPTShallow if method == "vpt_shallow" else VPTDeep
            model = cls(num_classes=way, num_prompts=config.num_prompts, **common)
            yield method, trained_learner(model, config)
        else:
            for mode in config.memory_modes:
                model = MemoryAugmentedViT(
                    num_classes=way,
                    mem_size=config.mem_size,
                    hopfield_position=config.hopfield_position,
                    beta=config.beta,
                    memory_mode=mode,
                    hopfield_blocks=tuple(config.hopfield_blocks),
                    n_steps=config.n_steps,
                    match_threshold=config.match_threshold,
                    **common,
                )
                learner = (
                    trained_learner(model, config)
                    if mode == "learned"
                    else written_memory_learner(model.eval())
                )
                yield f"memory_vit ({mode})", learner


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


def image_preparation(transform: BatchTransform, size: int, device) -> Callable[[Tensor], Tensor]:
    """uint8 images → normalised float images on the device, resized to the backbone's side."""

    def prepare(images: Tensor) -> Tensor:
        x = transform(images.to(device), train=False)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    return prepare


def episodes_by_shot(config: MemoryConfig, splits, novel) -> dict[int, FewShotEpisodes]:
    """The seeded episodes of the novel classes (test split) for each number of shots."""
    return {
        shot: FewShotEpisodes(
            splits.test, config.n_way, shot, config.n_query, config.episodes, config.seed, novel
        )
        for shot in config.shots
    }


def few_shot(config: MemoryConfig, splits, transform, episodes, weights, device) -> dict:
    """Every method on the same episodes."""
    channels = splits.image_shape[0]
    size = create_model(config.backbone, num_classes=0, **config.model_args).patch_embed.img_size
    prepare = image_preparation(transform, size, device)
    results: dict[str, dict] = {}
    for shot, shot_episodes in episodes.items():
        for name, learner in build_learners(config, weights, channels):
            started = time.perf_counter()
            accuracies = run_episodes(learner, shot_episodes, prepare)
            mean, half_width = confidence_interval(accuracies)
            seconds = time.perf_counter() - started
            results.setdefault(name, {})[f"{shot}-shot"] = {
                "accuracy": mean,
                "ci95": half_width,
                "episodes": len(accuracies),
                "time_s": seconds,
            }
            print(
                f"{config.n_way}-way {shot}-shot {name:<28} {100 * mean:5.1f} ± {100 * half_width:.1f} % "
                f"({len(accuracies)} episodes, {seconds:.0f} s)",
                flush=True,
            )
    return results


def print_table(results: dict, shots: tuple[int, ...]) -> None:
    columns = [f"{shot}-shot" for shot in shots]
    print("\n| method | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, row in results.items():
        cells = [f"{100 * row[c]['accuracy']:.1f} ± {100 * row[c]['ci95']:.1f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")


def run(config: MemoryConfig) -> dict:
    started = time.perf_counter()
    device = start(config)
    splits, transform = data_for(config)
    base, novel = class_split(config, len(splits.classes))
    episodes = episodes_by_shot(config, splits, novel) if config.few_shot else {}
    weights = backbone_weights(config, splits, transform, base, device)
    summary: dict = {"base_classes": list(base), "novel_classes": list(novel), "weights": weights}
    if config.few_shot:
        print(
            f"few-shot: {config.n_way}-way, {config.n_query} queries per class, {config.episodes} "
            f"episodes of the {len(novel)} novel classes (test split), device {device}, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        summary["results"] = few_shot(config, splits, transform, episodes, weights, device)
        print_table(summary["results"], config.shots)
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
