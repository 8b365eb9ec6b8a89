"""The training engine every job uses.

A job supplies a model, data loaders and a ``Task`` (how a batch becomes a loss, how a model is
evaluated, which metric decides the best checkpoint); the engine supplies the rest: AMP (bf16 or
fp16 with a gradient scaler), AdamW with linear warm-up and a cosine, step or plateau schedule,
gradient clipping, an optional EMA of the weights, early stopping, atomic best/last/every-N-epochs
checkpoints with exact resume, progress bars, metric logs and plots, DistributedDataParallel under
``torchrun``, and the one evaluation of the test split at the end (``Trainer.test``).

Every choice a run makes — the best checkpoint, early stopping, the plateau schedule — is made on
the validation loader; the test split is only seen by ``Trainer.test``.
"""

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..metrics.logger import MetricsLogger
from . import checkpoint, distributed, run_lock
from .config import FRACTION, POSITIVE, Range, at_least, check_settings, checked, field

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SCHEDULERS = ("cosine", "step", "plateau")


def mixed_precision(key: str, value: Any) -> dict[str, Any]:
    """`amp`: auto when true (bf16 or fp16 on GPUs, none on the CPU), none when false"""
    return {"amp": "auto" if checked(key, value, bool) else "none"}


@dataclasses.dataclass
class EngineConfig:
    """Settings of the training loop, shared by every job."""

    epochs: int = field(10, "training epochs", at_least(1))
    batch_size: int = field(128, "images per step on each process", at_least(1))
    lr: float = field(1e-3, "peak learning rate (AdamW)", POSITIVE)
    min_lr: float = field(
        1e-5, "lowest learning rate of every schedule (the cosine's end)", at_least(0)
    )
    warmup_epochs: float = field(1.0, "linear warm-up, in epochs", at_least(0))
    scheduler: str = field("cosine", "learning-rate schedule after the warm-up", SCHEDULERS)
    step_size: int = field(30, "step schedule: epochs between decays", at_least(1))
    gamma: float = field(0.1, "step schedule: factor of each decay", Range(0, 1, low_open=True))
    plateau_patience: int = field(
        5,
        "plateau schedule: epochs without a better validation metric before a decay",
        at_least(0),
    )
    plateau_factor: float = field(
        0.1, "plateau schedule: factor of each decay", Range(0, 1, True, True)
    )
    weight_decay: float = field(
        0.05, "AdamW weight decay (not applied to norms, biases, embeddings)", at_least(0)
    )
    clip_grad: float = field(1.0, "clip the gradient norm to this (0: off)", at_least(0))
    amp: str = field(
        "auto",
        "mixed precision (auto: bf16 on GPUs that have it, else fp16; none on the CPU)",
        ("auto", "none", *AMP_DTYPES),
        aliases=("--autocast-dtype",),
        constants={"--no-amp": "none"},
    )
    ema_decay: float = field(
        0.0, "keep an EMA of the weights with this decay and evaluate it (0: off)", FRACTION
    )
    patience: int = field(
        0, "stop after this many epochs without a better validation metric (0: off)", at_least(0)
    )
    seed: int = field(0, "random seed")
    device: str = field("auto", "auto, cpu, cuda or cuda:N")
    threads: int = field(0, "CPU threads for torch (0: torch's default)", at_least(0))
    num_workers: int = field(2, "data-loader worker processes", at_least(0))
    out_dir: str = field("runs/job", "where checkpoints, metrics and plots go")
    resume: str = field("", "checkpoint to resume from exactly ('last' = OUT_DIR/last.pt)")
    save_every: int = field(
        0, "also keep the checkpoint of every this many epochs, checkpoint_epoch_N.pt", at_least(0)
    )
    checkpoint_path: str = field("", "also write the best checkpoint (best.pt) to this file")
    checkpoint_every: int = field(
        0,
        "also write last.pt every this many training steps, resumable mid-epoch (0: off)",
        at_least(0),
    )
    grad_checkpointing: bool = field(
        False,
        "recompute the blocks' activations in the backward (models with set_grad_checkpointing)",
    )

    def __post_init__(self) -> None:
        check_settings(self)


class Task(Protocol):
    """What a job tells the engine. A task may also define ``before_step(model, step,
    total_steps)``, called before every training step (e.g. a curriculum on the model), and
    ``after_epoch(model, epoch, out_dir)``, called on the main process after each epoch's
    validation with the evaluated model (e.g. to draw its outputs)."""

    monitor: str  # the validation metric that picks the best checkpoint
    mode: Literal["min", "max"]

    def training_loss(self, model: nn.Module, batch: list[Tensor]) -> Tensor:
        """The loss of one training batch (already on the device)."""

    def evaluate(
        self, model: nn.Module, loader: DataLoader, device: torch.device
    ) -> dict[str, float]:
        """Validation metrics, reduced over every process."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for one-dimensional parameters (biases, norm scales) and for the
    parameters the model names in ``no_weight_decay()`` (positional embeddings, learned tokens,
    SSM decay rates: the classifier contract of ``python_models.contract``)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class LearningRateCurve:
    """The learning-rate multiplier of every training step: a linear warm-up, then the chosen
    schedule — ``cosine`` down to ``min_ratio``; ``step``, times ``gamma`` every ``step_size``
    epochs; ``plateau``, times ``plateau_factor`` once the validation metric (``observe``, once
    per epoch) has not improved for more than ``plateau_patience`` epochs (as
    ``ReduceLROnPlateau``) — never below ``min_ratio``. An object, not a closure, so that
    ``LambdaLR``'s state dict carries the plateau's state into a resumed run."""

    def __init__(
        self,
        config: "EngineConfig",
        steps_per_epoch: int,
        mode: Literal["min", "max"] = "max",
    ):
        self.kind = config.scheduler
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.total_steps = config.epochs * steps_per_epoch
        self.min_ratio = config.min_lr / config.lr
        self.step_size, self.gamma = config.step_size, config.gamma
        self.patience, self.factor = config.plateau_patience, config.plateau_factor
        self.mode = mode
        self.plateau_scale = 1.0
        self.plateau_best: float | None = None
        self.epochs_without_better = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            after_warmup = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / after_warmup)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            decays = step // self.steps_per_epoch // self.step_size
            return max(self.min_ratio, self.gamma**decays)
        return max(self.min_ratio, self.plateau_scale)

    def observe(self, value: float) -> None:
        """One epoch's validation metric (what the plateau schedule decays on)."""
        if self.kind != "plateau":
            return
        if self.plateau_best is None or _better(value, self.plateau_best, self.mode):
            self.plateau_best, self.epochs_without_better = value, 0
            return
        self.epochs_without_better += 1
        if self.epochs_without_better > self.patience:
            self.plateau_scale *= self.factor
            self.epochs_without_better = 0


def _better(value: float, best: float, mode: Literal["min", "max"]) -> bool:
    return value < best if mode == "min" else value > best


@dataclasses.dataclass
class EpochProgress:
    """How far the current epoch got: what a mid-epoch checkpoint needs to finish it exactly."""

    steps: int = 0
    images: int = 0
    loss_totals: list = dataclasses.field(default_factory=lambda: [0.0, 0.0])  # sum, count


class ModelEma:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)


def take_skipped(dataset, device: torch.device) -> int | None:
    """Items ``dataset`` skipped since the last call (unreadable files), summed over the
    processes; None for a data set that does not count them (``take_skipped()``, e.g.
    ``VideoDataset``)."""
    take = getattr(dataset, "take_skipped", None)
    if take is None:
        return None
    skipped = torch.tensor(take(), dtype=torch.float64, device=device)
    distributed.all_reduce_sum(skipped)
    return int(skipped.item())


class Trainer:
    """Runs ``config.epochs`` epochs of ``task`` on ``model`` (or resumes a run).

    ``job_config`` is saved in every checkpoint (plain values only) so that a checkpoint can be
    evaluated or fine-tuned without its original command line; ``job`` (one of
    ``checkpoint.JOBS``) signs the checkpoints, and only its own are resumed. Nothing is written
    to ``config.out_dir`` before ``fit`` holds it.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_loader: DataLoader,
        val_loader: DataLoader,
        config: EngineConfig,
        job_config: dict[str, Any],
        device: torch.device,
        *,
        job: str,
    ):
        self.config = config
        self.job_config = job_config
        self.job = job
        self.task = task
        self.device = device
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.out_dir = Path(config.out_dir)
        if config.grad_checkpointing:
            if not hasattr(model, "set_grad_checkpointing"):
                raise ValueError(
                    f"grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing"
                )
            model.set_grad_checkpointing(True)
        self.model = model.to(device)
        self.ddp_model = (
            DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
            if distributed.is_distributed()
            else self.model
        )
        steps_per_epoch = len(train_loader)
        if steps_per_epoch == 0:
            raise ValueError(
                f"batch_size: {train_loader.batch_size} is more than this process's "
                f"{len(train_loader.sampler)} training samples, so no step would train (the last "
                "partial batch is dropped); use a smaller batch_size"
            )
        self.total_steps = config.epochs * steps_per_epoch
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, config.weight_decay), lr=config.lr
        )
        self.lr_curve = LearningRateCurve(config, steps_per_epoch, task.mode)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_curve)
        self.amp_dtype = amp_dtype(config.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEma(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.epoch = 0
        self.best: float | None = None
        self.best_path = self.out_dir / "best.pt"  # where the best checkpoint was written
        self.epochs_since_best = 0
        self.progress = EpochProgress()
        self.record: dict[str, Any] = {}  # the last epoch's
        self.resumed_from = self._resume_path()
        if self.resumed_from is not None:
            self._load(self.resumed_from)

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Trains to the last epoch (or until early stopping), holding the output folder
        meanwhile; returns the last epoch's record (the checkpoint's when a resumed run has
        nothing left to train)."""
        with run_lock.hold(self.out_dir):
            self._note_start()
            logger = MetricsLogger(
                self.out_dir,
                enabled=distributed.is_main(),
                resume_epoch=self.epoch if self.resumed_from else None,
            )
            try:
                self._train(logger)
            finally:
                logger.close()
        return self.record

    def _note_start(self) -> None:
        if not distributed.is_main():
            return
        if self.epoch >= self.config.epochs:
            print(
                f"nothing left to train: {self.epoch} of {self.config.epochs} epochs done",
                flush=True,
            )
        elif self.resumed_from is None and (self.out_dir / "last.pt").is_file():
            print(
                f"note: {self.out_dir} holds an earlier run's checkpoints; this run replaces them "
                "(--resume last continues that run instead)",
                flush=True,
            )

    def _train(self, logger: MetricsLogger) -> None:
        while self.epoch < self.config.epochs and not self._should_stop():
            start = time.perf_counter()
            train_loss, images = self.train_one_epoch()
            val_metrics = self.task.evaluate(self.eval_model, self.val_loader, self.device)
            self.epoch += 1
            improved = self._track_best(val_metrics[self.task.monitor])
            self.lr_curve.observe(val_metrics[self.task.monitor])
            seconds = time.perf_counter() - start
            self.record = {
                "epoch": self.epoch,
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in val_metrics.items()},
                "lr": self.optimizer.param_groups[0]["lr"],
                "epoch_time_s": seconds,
                "images_per_s": images / seconds,
                **self._skipped_items(),
            }
            logger.log(self.record)
            self._save(improved)
            after_epoch = getattr(self.task, "after_epoch", None)
            if after_epoch is not None and distributed.is_main():
                after_epoch(self.eval_model, self.epoch, self.out_dir)
            if distributed.is_main():
                summary = ", ".join(f"{k} {v:.4g}" for k, v in self.record.items() if k != "epoch")
                print(f"epoch {self.epoch}/{self.config.epochs}: {summary}", flush=True)

    def _skipped_items(self) -> dict[str, int]:
        """Items skipped this epoch (unreadable files) by the data sets that count them."""
        counts = {}
        for split, loader in (("train", self.train_loader), ("val", self.val_loader)):
            skipped = take_skipped(loader.dataset, self.device)
            if skipped is not None:
                counts[f"{split}_skipped"] = skipped
        return counts

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def train_one_epoch(self) -> tuple[float, int]:
        """One pass over the training data (the rest of it after a mid-epoch resume); returns
        the mean loss (over every process) and the number of images this process saw."""
        self.ddp_model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        progress = self.progress
        total = torch.tensor(progress.loss_totals, dtype=torch.float64, device=self.device)
        bar = tqdm(
            self._remaining_batches(),
            total=len(self.train_loader),
            initial=progress.steps,
            desc=f"epoch {self.epoch + 1}",
            leave=False,
            disable=not _show_progress(),
        )
        for batch in bar:
            batch = [t.to(self.device, non_blocking=True) for t in batch]
            loss = self.train_step(batch)
            total += torch.stack(
                [loss.detach().double(), torch.ones((), dtype=torch.float64, device=self.device)]
            )
            progress.steps += 1
            progress.images += batch[0].shape[0]
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            every = self.config.checkpoint_every
            if every and self.global_step % every == 0 and progress.steps < len(self.train_loader):
                progress.loss_totals = total.tolist()
                self._save(improved=False)
        self.progress = EpochProgress()
        distributed.all_reduce_sum(total)
        return (total[0] / total[1]).item(), progress.images

    @property
    def global_step(self) -> int:
        """Training steps taken since the start of the run."""
        return self.scheduler.last_epoch

    def _remaining_batches(self):
        """This epoch's batches, after the ones a mid-epoch checkpoint had already trained on.
        The rest of the epoch goes through a loader over the remaining indices in the same
        order; the random state of the checkpoint is put back after that loader starts, so the
        run continues as it would have (exactly with ``num_workers`` 0: workers draw their own
        seeds)."""
        loader, done = self.train_loader, self.progress.steps
        if done == 0:
            return iter(loader)
        state = checkpoint.rng_state()
        remaining = list(loader.sampler)[done * loader.batch_size :]
        rest = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=remaining,
            drop_last=loader.drop_last,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
        )
        batches = iter(rest)
        checkpoint.set_rng_state(state)
        return batches

    def train_step(self, batch: list[Tensor]) -> Tensor:
        before_step = getattr(self.task, "before_step", None)
        if before_step is not None:
            before_step(self.model, self.global_step, self.total_steps)
        amp_dtype = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = self.task.training_loss(self.ddp_model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss

    # -- best metric, early stopping -----------------------------------------------------------

    def _track_best(self, value: float) -> bool:
        better = self.best is None or _better(value, self.best, self.task.mode)
        if better:
            self.best = value
            self.epochs_since_best = 0
        else:
            self.epochs_since_best += 1
        return better

    def _should_stop(self) -> bool:
        stop = self.config.patience > 0 and self.epochs_since_best >= self.config.patience
        if stop and distributed.is_main():
            print(
                f"early stopping: no better {self.task.monitor} for {self.epochs_since_best} epochs",
                flush=True,
            )
        return stop

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "rng": checkpoint.rng_state(),
            "epoch": self.epoch,
            "best": self.best,
            "best_path": str(self.best_path.resolve()),
            "epochs_since_best": self.epochs_since_best,
            "epoch_progress": dataclasses.asdict(self.progress),
            "batch_layout": self._batch_layout(),
            "record": self.record,
            "config": self.job_config,
        }

    def _batch_layout(self) -> dict[str, int]:
        """What one training step is: a batch of this size on each of this many processes."""
        return {"batch_size": self.train_loader.batch_size, "world_size": distributed.world_size()}

    def _save(self, improved: bool) -> None:
        """last.pt; best.pt (and ``checkpoint_path``) when the validation metric improved; at
        the end of every ``save_every``-th epoch, checkpoint_epoch_N.pt."""
        if distributed.is_main():
            paths = [self.out_dir / "last.pt"]
            if improved:
                self.best_path = self.out_dir / "best.pt"
                paths.append(self.best_path)
                if self.config.checkpoint_path:
                    paths.append(Path(self.config.checkpoint_path))
            every = self.config.save_every
            if every and self.epoch % every == 0 and self.progress.steps == 0:
                paths.append(self.out_dir / f"checkpoint_epoch_{self.epoch}.pt")
            checkpoint.save(self.state_dict(), *paths, job=self.job)
        distributed.barrier()

    # -- the test split, once --------------------------------------------------------------------

    def test(self, loader: DataLoader) -> dict[str, dict[str, float]]:
        """The task's metrics on ``loader`` (the test split) with the last weights and with the
        best checkpoint's (the EMA's where there is one): the one look at the test split."""
        results = {"last": self.task.evaluate(self.eval_model, loader, self.device)}
        best = self.best_model()
        results["best"] = self.task.evaluate(best, loader, self.device)
        return results

    def best_model(self) -> nn.Module:
        """A copy of the evaluated model holding the best checkpoint's weights (written by this
        run, or by the run it resumed)."""
        state = checkpoint.load(self.best_path, accept=(self.job,))
        model = copy.deepcopy(self.eval_model)
        model.load_state_dict(state["ema"] if self.ema is not None else state["model"])
        return model

    def _resume_path(self) -> Path | None:
        if not self.config.resume:
            return None
        return (
            self.out_dir / "last.pt" if self.config.resume == "last" else Path(self.config.resume)
        )

    def _load(self, path: Path) -> None:
        # On the CPU: the random states must be CPU tensors; the rest is copied to the device.
        state = checkpoint.load(path, accept=(self.job,))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise checkpoint.CheckpointError(
                    f"{path} holds no EMA weights but ema_decay > 0 was asked for"
                )
            self.ema.module.load_state_dict(state["ema"])
        checkpoint.set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.best = state["best"]
        self.best_path = Path(state["best_path"])
        self.epochs_since_best = state["epochs_since_best"]
        self.progress = EpochProgress(**state["epoch_progress"])
        self._check_batch_layout(path, state["batch_layout"])
        self.record = state["record"]
        if distributed.is_main():
            within = f", step {self.progress.steps} of the next" if self.progress.steps else ""
            print(f"resumed from {path} after epoch {self.epoch}{within}", flush=True)

    def _check_batch_layout(self, path: Path, saved: dict[str, int]) -> None:
        """The rest of an epoch cut short is the sampler's indices after the steps taken: only
        the same steps find it."""
        if self.progress.steps and saved != self._batch_layout():
            batch, processes = saved["batch_size"], saved["world_size"]
            raise checkpoint.CheckpointError(
                f"{path} was written in the middle of epoch {self.epoch + 1} after "
                f"{self.progress.steps} steps of {batch} images on {processes} process(es); "
                f"finish that epoch the same way (--batch-size {batch} on {processes} "
                "process(es)), or resume from a checkpoint written at the end of an epoch"
            )


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting on ``device`` (None: full precision)."""
    if amp != "auto":
        return AMP_DTYPES.get(amp)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _show_progress() -> bool:
    return distributed.is_main() and sys.stderr.isatty()
