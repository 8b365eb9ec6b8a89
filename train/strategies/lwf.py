"""Learning without forgetting (Li & Hoiem 2016): while a new task is learned, the outputs on the
old classes are kept close to those of the model as it was before the task."""

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distillation_loss(logits: Tensor, old_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(old / T) ‖ softmax(new / T)), averaged over the batch: the knowledge
    distillation term of LwF and iCaRL (the soft cross-entropy of LwF's paper less the targets'
    entropy, which has no gradient; zero where the two models agree)."""
    return F.kl_div(
        F.log_softmax(logits.float() / temperature, dim=-1),
        F.log_softmax(old_logits.float() / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode without gradients: the teacher of a distillation."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class LwF:
    """The LwF term α · distillation_loss(new[:, :k], old[:, :k], T) on the first k outputs (the
    old classes).

    Args:
        model: the network being trained.
        old_model: its frozen copy from before the current task (``frozen_copy(model)``).
        alpha: weight of the distillation term.
        temperature: softmax temperature T of both models' outputs.
        num_old_classes: the k outputs distilled (None: every output of the old model).
    """

    def __init__(
        self,
        model: nn.Module,
        old_model: nn.Module,
        alpha: float = 1.0,
        temperature: float = 2.0,
        num_old_classes: int | None = None,
    ):
        if alpha < 0:
            raise ValueError(f"alpha: expected >= 0, got {alpha}")
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        if num_old_classes is not None and num_old_classes < 1:
            raise ValueError(f"num_old_classes: expected >= 1 or None, got {num_old_classes}")
        self.model = model
        self.old_model = old_model.eval().requires_grad_(False)
        self.alpha = alpha
        self.temperature = temperature
        self.num_old_classes = num_old_classes

    def penalty(self, inputs: Tensor, logits: Tensor) -> Tensor:
        """The term for a batch: ``logits`` are the trained model's outputs on ``inputs``."""
        with torch.no_grad():
            old_logits = self.old_model(inputs)
        k = self.num_old_classes or old_logits.shape[-1]
        if logits.shape[-1] < k:
            raise ValueError(
                f"logits: expected at least num_old_classes={k} outputs, got {logits.shape[-1]}"
            )
        return self.alpha * distillation_loss(logits[:, :k], old_logits[:, :k], self.temperature)

    def state_dict(self) -> dict:
        return {"old_model": self.old_model.state_dict(), "num_old_classes": self.num_old_classes}

    def load_state_dict(self, state: dict) -> None:
        self.old_model.load_state_dict(state["old_model"])
        self.num_old_classes = state["num_old_classes"]
