"""The strategies of ``python -m train.continual``, each an engine ``Task`` (how a batch of the
current task becomes a loss: cross-entropy over the classes seen so far plus the strategy's
term) with the hooks the runner calls around the tasks: which data a task trains on, what the
strategy does once a task is learned, how it predicts, and its state for checkpoints."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..data import BatchTransform, ImageTensorDataset, make_loader, readable_batches
from ..data.splits import ClassIncrementalSplit, concat
from ..engine import distributed
from .ewc import EWC
from .icarl import iCaRL
from .lwf import LwF, frozen_copy
from .prototype import prototype_learner
from .replay import ReplayBuffer


class Finetune:
    """Plain fine-tuning on each task's data in turn: the lower bound."""

    monitor = "acc"
    mode = "max"

    def __init__(
        self, model: nn.Module, transform: BatchTransform, split: ClassIncrementalSplit, config
    ):
        self.model = model
        self.transform = transform
        self.split = split
        self.config = config
        self.task = 0

    @property
    def seen(self) -> int:
        """Classes seen so far, the current task's included: the outputs trained and read."""
        return self.split.seen_classes(self.task)

    @property
    def task_data(self) -> ImageTensorDataset:
        """The current task's training data (without any exemplars or replayed items)."""
        return self.split.train[self.task]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- around a task -------------------------------------------------------------------------

    def begin_task(self, task: int) -> ImageTensorDataset | None:
        """Starts task ``task``; returns the data to train on (None: no training)."""
        self.task = task
        return self.split.train[task]

    def end_task(self) -> None:
        """What the strategy keeps once the current task is learned."""

    # -- the engine's Task -----------------------------------------------------------------------

    def training_loss(self, model: nn.Module, batch: list[Tensor]) -> Tensor:
        images, labels = self.training_batch(batch)
        inputs = self.transform(images, train=True)
        logits = model(inputs)[:, : self.seen]
        return F.cross_entropy(logits, labels) + self.penalty(inputs, logits)

    def training_batch(self, batch: list[Tensor]) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return images, labels

    def penalty(self, inputs: Tensor, logits: Tensor) -> Tensor:
        """The strategy's term added to the cross-entropy of a batch."""
        return logits.new_zeros(())

    def evaluate(self, model: nn.Module, loader: DataLoader, device) -> dict[str, float]:
        """The trained network's accuracy on the current task's test set (the engine's
        monitor; the runner's accuracy matrix uses ``predict``)."""
        return {"acc": accuracy(lambda x: model(x)[:, : self.seen], loader, self.transform, device)}

    # -- prediction and state ----------------------------------------------------------------------

    def predict(self, inputs: Tensor) -> Tensor:
        """Scores over the classes seen so far, for prepared inputs."""
        return self.model(inputs)[:, : self.seen]

    @property
    def state_holder(self):
        """What holds the strategy's state between tasks (None: nothing)."""
        return None

    def state_dict(self) -> dict:
        return {} if self.state_holder is None else self.state_holder.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.state_holder is not None:
            self.state_holder.load_state_dict(state)

    def prepared_batches(self, dataset: ImageTensorDataset, limit: int):
        """(inputs, labels) on the device, evaluation-transformed, of the first ``limit`` items."""
        images, labels = dataset.images[:limit], dataset.labels[:limit]
        for chunk, chunk_labels in zip(
            images.split(self.config.batch_size), labels.split(self.config.batch_size)
        ):
            inputs = self.transform(chunk.to(self.device), train=False)
            yield inputs, chunk_labels.to(self.device)


class Joint(Finetune):
    """Training on every task's data seen so far: the upper bound."""

    def begin_task(self, task: int) -> ImageTensorDataset:
        super().begin_task(task)
        return concat(list(self.split.train[: task + 1]))


class EWCStrategy(Finetune):
    """Fine-tuning plus the EWC penalty of every task learned before."""

    def __init__(self, model, transform, split, config):
        super().__init__(model, transform, split, config)
        self.ewc = EWC(
            model,
            ewc_lambda=config.ewc_lambda,
            mode=config.ewc_mode,
            decay=config.ewc_decay,
            loss_fn=lambda logits, labels: F.cross_entropy(logits[:, : self.seen], labels),
        )

    def penalty(self, inputs, logits):
        return self.ewc.penalty()

    def end_task(self):
        self.ewc.consolidate(self.prepared_batches(self.task_data, self.config.ewc_fisher_samples))

    @property
    def state_holder(self):
        return self.ewc


class LwFStrategy(Finetune):
    """Fine-tuning plus distillation of the previous model's outputs on the old classes."""

    def __init__(self, model, transform, split, config):
        super().__init__(model, transform, split, config)
        self.lwf: LwF | None = None

    def penalty(self, inputs, logits):
        return (
            super().penalty(inputs, logits)
            if self.lwf is None
            else self.lwf.penalty(inputs, logits)
        )

    def end_task(self):
        self.lwf = LwF(
            self.model,
            frozen_copy(self.model),
            self.config.lwf_alpha,
            self.config.temperature,
            num_old_classes=self.seen,
        )

    def state_dict(self):
        return {} if self.lwf is None else self.lwf.state_dict()

    def load_state_dict(self, state):
        if state:
            self.end_task()
            self.lwf.load_state_dict(state)


class ICaRLStrategy(Finetune):
    """iCaRL: training on the task's data and the exemplars, with distillation on the old
    classes; prediction by the nearest mean of exemplars."""

    def __init__(self, model, transform, split, config):
        super().__init__(model, transform, split, config)
        self.icarl = iCaRL(
            model,
            split.num_classes,
            config.memory_size,
            config.temperature,
            preprocess=lambda images: transform(images, train=False),
        )

    def begin_task(self, task):
        data = super().begin_task(task)
        if self.icarl.exemplar_images is None:
            return data
        exemplars = ImageTensorDataset(
            self.icarl.exemplar_images, self.icarl.exemplar_labels, data.classes
        )
        return concat([data, exemplars])

    def penalty(self, inputs, logits):
        return self.icarl.distillation(inputs, logits)

    def end_task(self):
        self.icarl.update(self.task_data.images, self.task_data.labels)

    def predict(self, inputs):
        return self.icarl.classify(inputs)[:, : self.seen]

    @property
    def state_holder(self):
        return self.icarl


class Replay(Finetune):
    """Experience replay: past items from a fixed-size buffer mixed into every batch."""

    def __init__(self, model, transform, split, config):
        super().__init__(model, transform, split, config)
        self.buffer = ReplayBuffer(config.memory_size, config.replay_mode, config.seed)

    def training_batch(self, batch):
        images, labels = batch
        if len(self.buffer) == 0:
            return images, labels
        old_images, old_labels = self.buffer.sample(self.config.replay_batch_size or len(labels))
        return (
            torch.cat([images, old_images.to(images.device)]),
            torch.cat([labels, old_labels.to(labels.device)]),
        )

    def end_task(self):
        self.buffer.add(self.task_data.images, self.task_data.labels)

    @property
    def state_holder(self):
        return self.buffer


class PrototypeMemory(Finetune):
    """The memory-augmented ViT: the network is trained on the first task only, then frozen
    under a class_prototype memory into which every task's classes are written."""

    def __init__(self, model, transform, split, config):
        super().__init__(model, transform, split, config)
        self.memory: nn.Module | None = None

    def begin_task(self, task):
        data = super().begin_task(task)
        return data if task == 0 else None

    def end_task(self):
        if self.memory is None:
            self._build_memory()
        for inputs, labels in self.prepared_batches(self.task_data, len(self.task_data)):
            self.memory.write_memory(inputs, labels)

    def _build_memory(self) -> None:
        channels, height, _ = self.split.train[0].image_shape
        self.memory = prototype_learner(
            self.config.model,
            self.model.state_dict(),
            self.split.num_classes,
            self.config.memory_beta,
            backbone_args={"img_size": height, "in_chans": channels, **self.config.model_args},
        ).to(self.device)

    def predict(self, inputs):
        return self.memory(inputs)[:, : self.seen]

    def state_dict(self):
        return {} if self.memory is None else {"memory": self.memory.state_dict()}

    def load_state_dict(self, state):
        if state:
            self._build_memory()
            self.memory.load_state_dict(state["memory"])


STRATEGIES = {
    "finetune": Finetune,
    "ewc": EWCStrategy,
    "lwf": LwFStrategy,
    "icarl": ICaRLStrategy,
    "replay": Replay,
    "memory": PrototypeMemory,
    "joint": Joint,
}


@torch.no_grad()
def accuracy(predict, loader: DataLoader, transform: BatchTransform, device) -> float:
    """Top-1 accuracy of ``predict`` (prepared inputs → scores) over a loader, summed over the
    processes."""
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for images, labels in readable_batches(loader):
        images, labels = images.to(device), labels.to(device)
        correct = predict(transform(images, train=False)).argmax(-1) == labels
        counts += torch.tensor([correct.sum().item(), labels.numel()], device=device)
    distributed.all_reduce_sum(counts)
    return (counts[0] / counts[1]).item()


def evaluate_seen(strategy: Finetune, batch_size: int) -> list[float]:
    """The accuracy on each task's test set learned so far: one row of the accuracy matrix."""
    strategy.model.eval()
    return [
        accuracy(
            strategy.predict,
            make_loader(test, batch_size, False, 0, 0),
            strategy.transform,
            strategy.device,
        )
        for test in strategy.split.test[: strategy.task + 1]
    ]
