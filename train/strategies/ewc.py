"""Elastic weight consolidation (Kirkpatrick et al. 2017): a quadratic pull of every trained
parameter towards its value after a past task, weighted by the diagonal of the Fisher
information there."""

import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

EWC_MODES = ("separate", "online")
Batches = Iterable[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


class EWC:
    """The EWC penalty λ/2 · Σ_t Σ_i F_t,i (θ_i − θ*_t,i)² of ``model``'s trainable parameters.

    ``consolidate(batches)`` anchors the current weights θ* of a task just learned with the
    diagonal empirical Fisher F from its data: the mean over the samples of the squared
    gradient of each sample's loss (per-sample gradients, not squared batch gradients).

    Modes: ``separate`` keeps one (θ*, F) pair per past task and sums their penalties;
    ``online`` (Schwarz et al. 2018) keeps one pair, F ← decay · F + F_new and θ* the latest
    weights.

    Args:
        model: the network being trained.
        dataloader: batches (inputs, targets) of a task already learned; anchored now (None:
            nothing is anchored until ``consolidate``).
        ewc_lambda: weight λ of the penalty.
        mode: ``separate`` or ``online``.
        decay: ``online``: the weight of the previous Fisher.
        loss_fn: a batch's negative log-likelihood from (outputs, targets), averaged over the
            batch (default: cross-entropy); the Fisher is of this loss per sample.
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Batches | None = None,
        ewc_lambda: float = 1000.0,
        mode: str = "separate",
        decay: float = 1.0,
        loss_fn: LossFn = F.cross_entropy,
    ):
        if mode not in EWC_MODES:
            raise ValueError(f"mode: expected one of {EWC_MODES}, got {mode!r}")
        if ewc_lambda < 0:
            raise ValueError(f"ewc_lambda: expected >= 0, got {ewc_lambda}")
        if not 0 <= decay <= 1:
            raise ValueError(f"decay: expected a value in [0, 1], got {decay}")
        self.model = model
        self.ewc_lambda = ewc_lambda
        self.mode = mode
        self.decay = decay
        self.loss_fn = loss_fn
        self.anchors: list[dict[str, Tensor]] = []
        self.fishers: list[dict[str, Tensor]] = []
        if dataloader is not None:
            self.consolidate(dataloader)

    def trained_parameters(self) -> dict[str, Tensor]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def fisher(self, batches: Batches) -> dict[str, Tensor]:
        """The diagonal empirical Fisher of the model's trainable parameters on ``batches``,
        with the model in eval mode (no dropout)."""
        params = {name: p.detach() for name, p in self.trained_parameters().items()}
        frozen = {
            name: t.detach()
            for name, t in (*self.model.named_parameters(), *self.model.named_buffers())
            if name not in params
        }

        def sample_loss(trained: dict[str, Tensor], inputs: Tensor, target: Tensor) -> Tensor:
            outputs = functional_call(self.model, {**frozen, **trained}, (inputs[None],))
            return self.loss_fn(outputs, target[None])

        per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        sums = {name: torch.zeros_like(p) for name, p in params.items()}
        count = 0
        was_training = self.model.training
        self.model.eval()
        try:
            with warnings.catch_warnings():
                # vmap runs the attention kernels without a batching rule one sample at a time;
                # correct, and the Fisher is computed once per task.
                warnings.filterwarnings("ignore", message="There is a performance drop")
                for inputs, targets in batches:
                    for name, g in per_sample_grads(params, inputs, targets).items():
                        sums[name] += g.pow(2).sum(0)
                    count += inputs.shape[0]
        finally:
            self.model.train(was_training)
        if count == 0:
            raise ValueError("dataloader: expected at least one sample to compute the Fisher from")
        return {name: total / count for name, total in sums.items()}

    @torch.no_grad()
    def consolidate(self, batches: Batches) -> None:
        """Anchors the current weights with the Fisher of ``batches`` (a task just learned)."""
        fisher = self.fisher(batches)
        anchor = {name: p.detach().clone() for name, p in self.trained_parameters().items()}
        if self.mode == "online" and self.fishers:
            fisher = {name: self.decay * self.fishers[0][name] + f for name, f in fisher.items()}
            self.anchors, self.fishers = [], []
        self.anchors.append(anchor)
        self.fishers.append(fisher)

    def penalty(self) -> Tensor:
        """λ/2 · Σ F (θ − θ*)², differentiable in the model's parameters (0 before any
        consolidation)."""
        params = self.trained_parameters()
        total = torch.zeros((), device=next(self.model.parameters()).device)
        for anchor, fisher in zip(self.anchors, self.fishers):
            for name, weight in fisher.items():
                total = total + (weight * (params[name] - anchor[name]).pow(2)).sum()
        return 0.5 * self.ewc_lambda * total

    def state_dict(self) -> dict:
        """Anchors and Fishers as tensors in plain containers (``weights_only`` loadable)."""
        return {"mode": self.mode, "anchors": self.anchors, "fishers": self.fishers}

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"state: saved in mode {state['mode']!r}, this EWC is {self.mode!r}")
        self.anchors, self.fishers = list(state["anchors"]), list(state["fishers"])
