"""A registry of model constructors: ``@register_model`` adds one, ``create_model`` builds it."""

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}


def register_model(factory: ModelFactory) -> ModelFactory:
    """Registers ``factory`` under its function name; it takes keyword overrides."""
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"register_model: a model named {name!r} is already registered")
    _MODELS[name] = factory
    return factory


def create_model(name: str, **overrides) -> nn.Module:
    """Builds the registered model ``name``; ``overrides`` replace its preset's arguments."""
    if name not in _MODELS:
        raise ValueError(f"create_model: unknown model {name!r}; known: {list_models()}")
    return _MODELS[name](**overrides)


def list_models() -> list[str]:
    return sorted(_MODELS)
