"""The classifier contract every classification model here follows (timm's):

- ``forward_features(x)``: the tokens (or features) before pooling;
- ``forward_head(features, pre_logits=False)``: the pooled features, (batch, ``num_features``),
  with ``pre_logits=True``, otherwise the logits, (batch, ``num_classes``);
- ``forward(x) = forward_head(forward_features(x))``;
- ``reset_classifier(num_classes)``: a new head (0: none, the logits are the pooled features);
- ``no_weight_decay()``: the full names (as in ``named_parameters``) of the parameters that are
  not weights to decay: positional embeddings, learned tokens, SSM decay rates.

A consumer types against ``Classifier``; a model inherits ``ClassifierMixin`` (before
``nn.Module``) for ``forward``, ``reset_classifier`` and ``no_weight_decay``. Each module states
which of its own parameters skip weight decay in a ``no_weight_decay_params`` class attribute;
``no_weight_decay_names`` gathers them over a model's modules. Norm scales and biases are not
listed: a trainer skips one-dimensional parameters by their shape.
"""

from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Classifier(Protocol):
    """What a consumer (a trainer, a continual-learning strategy) may rely on in a classifier."""

    num_classes: int  # width of the logits; 0 when the model has no head
    num_features: int  # width of forward_head(..., pre_logits=True)

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor: ...

    def forward(self, x: Tensor) -> Tensor: ...

    def reset_classifier(self, num_classes: int) -> None: ...

    def no_weight_decay(self) -> set[str]: ...


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that ``model``'s modules list in ``no_weight_decay_params``
    (a listed attribute that is not a parameter of that module, e.g. an absent class token, is
    passed over)."""
    names = set()
    for prefix, module in model.named_modules():
        for local in getattr(module, "no_weight_decay_params", ()):
            if local in dict(module.named_parameters(recurse=False)):
                names.add(f"{prefix}.{local}" if prefix else local)
    return names


class NoWeightDecayMixin:
    """``no_weight_decay()`` for any model (classifier or not) built of modules that state their
    ``no_weight_decay_params``."""

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters to train without weight decay."""
        return no_weight_decay_names(self)


def linear_head(num_features: int, num_classes: int, like: nn.Module | None = None) -> nn.Module:
    """A linear classifier of ``num_features`` → ``num_classes`` (0: ``nn.Identity``), on the
    device and in the dtype of ``like``'s parameters when given."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes: expected an int >= 0, got {num_classes!r}")
    if num_classes == 0:
        return nn.Identity()
    reference = next(like.parameters(), None) if like is not None else None
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    return nn.Linear(num_features, num_classes, **factory)


class ClassifierMixin(NoWeightDecayMixin):
    """``forward``, ``reset_classifier`` and ``no_weight_decay`` of a ``Classifier`` whose
    classifier is the module ``head`` on ``num_features`` pooled features. Put it before
    ``nn.Module`` in the bases (its ``forward`` replaces ``nn.Module``'s placeholder)."""

    head: nn.Module
    num_classes: int
    num_features: int

    def forward(self, x: Tensor) -> Tensor:
        """Logits (or, without a head, the pooled features) of the input."""
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replaces the head by a freshly initialised one of ``num_classes`` (0: no head,
        ``forward`` returns the pooled features), on the model's device and dtype."""
        self.head = linear_head(self.num_features, num_classes, like=self)
        self.num_classes = num_classes
