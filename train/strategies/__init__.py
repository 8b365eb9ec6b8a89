"""Continual-learning algorithms: EWC, LwF, iCaRL, experience replay and the memory-augmented ViT
as a class-incremental learner. Each works on a plain ``nn.Module`` (iCaRL on any classifier of
``python_models.contract``) and keeps its state as tensors in plain containers
(``state_dict()`` loads with ``torch.load(weights_only=True)``); ``incremental`` wraps each as
the engine task ``python -m train.continual`` runs."""

from .ewc import EWC, EWC_MODES
from .icarl import embed, herding_selection, iCaRL
from .lwf import LwF, distillation_loss, frozen_copy
from .prototype import prototype_learner
from .replay import REPLAY_MODES, ReplayBuffer

__all__ = [
    "EWC",
    "EWC_MODES",
    "LwF",
    "REPLAY_MODES",
    "ReplayBuffer",
    "distillation_loss",
    "embed",
    "frozen_copy",
    "herding_selection",
    "iCaRL",
    "prototype_learner",
]
