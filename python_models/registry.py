"""A registry of model constructors: ``@register_model`` adds one, ``create_model`` builds it.

A preset has one canonical name (its function's, see "Preset names" in docs/models.md) and may
keep former names as aliases, which ``create_model`` accepts and ``list_models`` leaves out."""

from collections.abc import Callable, Sequence

from torch import nn

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}
_ALIASES: dict[str, str] = {}  # former name → canonical name


def register_model(
    factory: ModelFactory | None = None, *, aliases: Sequence[str] = ()
) -> ModelFactory | Callable[[ModelFactory], ModelFactory]:
    """Registers ``factory`` under its function name; it takes keyword overrides. Used bare
    (``@register_model``) or with the names the preset also answers to
    (``@register_model(aliases=("old_name",))``)."""
    if factory is None:
        return lambda factory: register_model(factory, aliases=aliases)
    name = factory.__name__
    aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
    for new in (name, *aliases):
        if new in _MODELS or new in _ALIASES:
            raise ValueError(f"register_model: a model named {new!r} is already registered")
    _MODELS[name] = factory
    _ALIASES.update(dict.fromkeys(aliases, name))
    return factory


def canonical_name(name: str) -> str:
    """The canonical name of a registered preset given by its name or an alias."""
    name = _ALIASES.get(name, name)
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known: {list_models()}")
    return name


def create_model(name: str, **overrides) -> nn.Module:
    """Builds the registered model ``name`` (or alias); ``overrides`` replace its preset's
    arguments."""
    return _MODELS[canonical_name(name)](**overrides)


def list_models() -> list[str]:
    """The canonical names of the registered presets, sorted (aliases left out)."""
    return sorted(_MODELS)


def model_aliases() -> dict[str, str]:
    """Every alias with the canonical name it stands for."""
    return dict(_ALIASES)
