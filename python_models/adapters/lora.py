"""LoRA: low-rank adapters on the ``nn.Linear`` layers of any model (a ViT, a Vision Mamba, the
video model), chosen by name.

A wrapped layer computes ``base(x) + scaling · B(A(dropout(x)))`` with ``A`` (in → r) and ``B``
(r → out, zero at first, so a fresh adapter changes nothing). A layer holds any number of named
adapters (one per domain, say): one is active at a time, or per-sample weights mix them within
a batch. Adapters can be folded into the base weights for inference and taken back out, and
saved and loaded on their own.

    names = inject_lora(model, LoraConfig(r=8), adapters=("sports", "news"))
    mark_only_lora_trainable(model)          # adapters and the head train, the rest is frozen
    with use_adapter(model, "news"):
        logits = model(clips)
    torch.save(lora_state_dict(model), "adapters.pt")
"""

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

REGEX_PREFIX = "re:"


@dataclasses.dataclass
class LoraConfig:
    """Shape of the adapters and which layers get them.

    Args:
        r: rank of each update.
        lora_alpha: the update is scaled by ``lora_alpha / r``.
        lora_dropout: dropout on the adapter's input (training only).
        target_modules: name patterns of the ``nn.Linear`` layers to adapt. A pattern matches a
            qualified module name equal to it or ending with ``"." + pattern``; a pattern that
            starts with ``re:`` is a regular expression matched against the whole name.
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraConfig: r must be an integer >= 1, got {self.r!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"LoraConfig: lora_alpha must be > 0, got {self.lora_alpha!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(
                f"LoraConfig: lora_dropout must be in [0, 1), got {self.lora_dropout!r}"
            )
        if isinstance(self.target_modules, str):
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(
            isinstance(pattern, str) and pattern.removeprefix(REGEX_PREFIX)
            for pattern in self.target_modules
        ):
            raise ValueError(
                "LoraConfig: target_modules must be a non-empty sequence of non-empty name "
                f"patterns, got {self.target_modules!r}"
            )
        for pattern in self.target_modules:
            if pattern.startswith(REGEX_PREFIX):
                try:
                    re.compile(pattern.removeprefix(REGEX_PREFIX))
                except re.error as error:
                    raise ValueError(
                        f"LoraConfig: target_modules pattern {pattern!r} is not a valid regular "
                        f"expression ({error})"
                    ) from None

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def matches(self, name: str) -> bool:
        """Whether the qualified module ``name`` is one of the targets."""
        for pattern in self.target_modules:
            if pattern.startswith(REGEX_PREFIX):
                if re.fullmatch(pattern.removeprefix(REGEX_PREFIX), name):
                    return True
            elif name == pattern or name.endswith("." + pattern):
                return True
        return False


class LoraLinear(nn.Module):
    """An ``nn.Linear`` (``base_layer``) plus named low-rank adapters (``lora_A[name]``,
    ``lora_B[name]``, each with its own rank, scaling and input dropout).

    The output is the base layer's, plus the active adapter's update, or, while per-sample
    weights (batch, n) are set, Σ_a w[b, a] · update_a over the adapters named in
    ``mixing_names``. An adapter merged into the base weights is never added again.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        config: LoraConfig | None = None,
        adapters: Sequence[str] = ("default",),
    ):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoraLinear: base_layer must be an nn.Linear, got {type(base_layer)}")
        self.base_layer = base_layer
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        self.mixing_names: tuple[str, ...] = ()
        self.mixing_weights: Tensor | None = None
        for name in adapters:
            self.add_adapter(name, config or LoraConfig())
        self.active_adapter = adapters[0] if adapters else None

    def add_adapter(self, name: str, config: LoraConfig) -> None:
        """A new adapter: A as ``nn.Linear`` initialises its weight, B zero."""
        if name in self.lora_A:
            raise ValueError(f"LoraLinear: adapter {name!r} already exists")
        weight = self.base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        down = nn.Linear(self.base_layer.in_features, config.r, bias=False, **factory)
        up = nn.Linear(config.r, self.base_layer.out_features, bias=False, **factory)
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
        nn.init.zeros_(up.weight)
        self.lora_A[name], self.lora_B[name] = down, up
        self.lora_dropout[name] = (
            nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        )
        self.scaling[name] = config.scaling

    def delta_weight(self, name: str) -> Tensor:
        """The adapter's update as an (out, in) weight: scaling · B A."""
        return self.scaling[name] * (self.lora_B[name].weight @ self.lora_A[name].weight)

    def update(self, name: str, x: Tensor) -> Tensor:
        """The adapter's contribution to the output for input ``x``."""
        return self.scaling[name] * self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.mixing_weights is not None:
            return out + self._mixed_update(x)
        name = self.active_adapter
        if name is not None and name != self.merged_adapter and name in self.lora_A:
            out = out + self.update(name, x)
        return out

    def _mixed_update(self, x: Tensor) -> Tensor:
        """Σ_a w[b, a] · update_a. Inputs whose batch is k times the weights' (a layer that
        runs on rows of each sample, sample-major, e.g. one row per frame) take each sample's
        weights for its k rows."""
        weights = self.mixing_weights
        if x.dim() < 2 or x.shape[0] % weights.shape[0]:
            raise ValueError(
                f"LoraLinear: per-sample adapter weights for a batch of {weights.shape[0]} "
                f"need inputs (k · {weights.shape[0]} rows, ..., features), got shape "
                f"{tuple(x.shape)}"
            )
        weights = weights.repeat_interleave(x.shape[0] // len(weights), 0)
        weights = weights.to(x.device, x.dtype).view(len(weights), *[1] * (x.dim() - 2), -1)
        total = 0
        for column, name in enumerate(self.mixing_names):
            if name in self.lora_A:
                total = total + weights[..., column, None] * self.update(name, x)
        return total

    def extra_repr(self) -> str:
        return f"adapters={list(self.lora_A)}, active={self.active_adapter!r}"


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLinear]]:
    """Every ``LoraLinear`` of ``model`` with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear):
            yield name, module


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters of ``model``, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.lora_A))
    return list(names)


def _as_tuple(names: str | Sequence[str]) -> tuple[str, ...]:
    """A name or a sequence of names as a tuple (a lone string is one name, not its letters)."""
    return (names,) if isinstance(names, str) else tuple(names)


def _check_known(model: nn.Module, names: Sequence[str]) -> None:
    known = adapter_names(model)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KeyError(f"unknown LoRA adapter(s) {unknown}; the model has {known}")


def _targets(model: nn.Module, config: LoraConfig) -> list[tuple[str, nn.Module]]:
    """The matching linear layers (plain or already wrapped), never the inside of a wrapper."""
    inside = {id(module) for _, layer in lora_layers(model) for module in layer.modules()}
    inside -= {id(layer) for _, layer in lora_layers(model)}
    return [
        (name, module)
        for name, module in model.named_modules()
        if name
        and id(module) not in inside
        and isinstance(module, (nn.Linear, LoraLinear))
        and config.matches(name)
    ]


def inject_lora(
    model: nn.Module, config: LoraConfig, adapters: Sequence[str] = ("default",)
) -> list[str]:
    """Wraps every ``nn.Linear`` whose name matches ``config.target_modules`` in a
    ``LoraLinear`` holding ``adapters`` (in place); layers wrapped before get the new adapters
    added. Makes the first of ``adapters`` active. Returns the names of the layers."""
    adapters = _as_tuple(adapters)
    if not adapters or len(set(adapters)) != len(adapters):
        raise ValueError(f"inject_lora: adapters must be distinct names, got {list(adapters)}")
    for name in adapters:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"inject_lora: an adapter name must be a non-empty string without '.', got {name!r}"
            )
    existing = [name for name in adapters if name in adapter_names(model)]
    if existing:
        raise ValueError(f"inject_lora: the model already has adapter(s) {existing}")
    targets = _targets(model, config)
    if not targets:
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"inject_lora: target_modules {list(config.target_modules)} match no nn.Linear of "
            f"{type(model).__name__}; some of its linear layers: {linear[:8]}"
        )
    for name, module in targets:
        if isinstance(module, LoraLinear):
            for adapter in adapters:
                module.add_adapter(adapter, config)
        else:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, LoraLinear(module, config, adapters))
    set_active_adapter(model, adapters[0])
    return [name for name, _ in targets]


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Makes adapter ``name`` active in every layer that has it (None: the base layers only)."""
    if name is not None:
        _check_known(model, [name])
    for _, layer in lora_layers(model):
        layer.active_adapter = name


@contextlib.contextmanager
def use_adapter(model: nn.Module, name: str | None):
    """Adapter ``name`` active inside the block, the previous one again after it."""
    previous = {layer: layer.active_adapter for _, layer in lora_layers(model)}
    set_active_adapter(model, name)
    try:
        yield model
    finally:
        for layer, active in previous.items():
            layer.active_adapter = active


@contextlib.contextmanager
def adapter_weights(model: nn.Module, weights: Tensor):
    """Per-sample mixing inside the block: sample b's update is Σ_a weights[b, a] · update_a,
    the columns in the order of ``adapter_names(model)`` (one-hot rows pick one adapter per
    sample: a batch of several domains)."""
    names = tuple(adapter_names(model))
    if not isinstance(weights, Tensor) or weights.dim() != 2 or weights.shape[1] != len(names):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(
            f"adapter_weights: weights must be a (batch, {len(names)}) tensor over the adapters "
            f"{list(names)}, got {shape}"
        )
    layers = [layer for _, layer in lora_layers(model)]
    merged = {layer.merged_adapter for layer in layers} - {None}
    if merged:
        raise RuntimeError(
            f"adapter_weights: adapter(s) {sorted(merged)} are merged into the base weights; "
            "call unmerge_lora before mixing adapters per sample"
        )
    for layer in layers:
        layer.mixing_names, layer.mixing_weights = names, weights
    try:
        yield model
    finally:
        for layer in layers:
            layer.mixing_names, layer.mixing_weights = (), None


def adapter_weights_in_force(model: nn.Module) -> contextlib.AbstractContextManager:
    """A context that sets again the per-sample adapter weights in force now (``adapter_weights``;
    none: a context that does nothing). Activation checkpointing recomputes a block in the
    backward, after the ``adapter_weights`` block has ended: this puts its weights back."""
    mixing = next(
        (layer for _, layer in lora_layers(model) if layer.mixing_weights is not None), None
    )
    if mixing is None:
        return contextlib.nullcontext()
    return adapter_weights(model, mixing.mixing_weights)


def _lora_parameters(
    model: nn.Module, adapters: Sequence[str] | None = None
) -> dict[str, nn.Parameter]:
    """The LoRA parameters of ``adapters`` (all if None), by their names in ``state_dict``."""
    if adapters is not None:
        adapters = _as_tuple(adapters)
        _check_known(model, adapters)
    chosen = {}
    for layer_name, layer in lora_layers(model):
        for adapter in layer.lora_A:
            if adapters is None or adapter in adapters:
                for part in ("lora_A", "lora_B"):
                    weight = getattr(layer, part)[adapter].weight
                    chosen[f"{layer_name}.{part}.{adapter}.weight"] = weight
    return chosen


def mark_only_lora_trainable(
    model: nn.Module, adapters: Sequence[str] | None = None, also: Sequence[str] = ("head",)
) -> None:
    """Freezes every parameter but the LoRA ones of ``adapters`` (all if None) and those whose
    qualified names start with one of the prefixes ``also``."""
    lora = {id(parameter) for parameter in _lora_parameters(model, adapters).values()}
    prefixes = _as_tuple(also)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(id(parameter) in lora or name.startswith(prefixes))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    parameters = list(model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return trainable, sum(p.numel() for p in parameters)


def merge_lora(model: nn.Module, adapter: str) -> None:
    """Folds ``adapter`` into the base weights of every layer that has it; it then costs
    nothing at inference and is not added again."""
    _check_known(model, [adapter])
    layers = [layer for _, layer in lora_layers(model)]
    for layer in layers:
        if layer.merged_adapter is not None:
            raise RuntimeError(
                f"merge_lora: adapter {layer.merged_adapter!r} is already merged; call "
                "unmerge_lora first"
            )
        if layer.mixing_weights is not None:
            raise RuntimeError(
                "merge_lora: per-sample adapter weights are set (adapter_weights); merge outside "
                "that block"
            )
    with torch.no_grad():
        for layer in layers:
            if adapter in layer.lora_A:
                weight = layer.base_layer.weight
                weight += layer.delta_weight(adapter).to(weight.dtype)
                layer.merged_adapter = adapter


def unmerge_lora(model: nn.Module) -> None:
    """Takes the merged adapter back out of the base weights."""
    layers = [layer for _, layer in lora_layers(model) if layer.merged_adapter is not None]
    if not layers:
        raise RuntimeError("unmerge_lora: no adapter is merged")
    with torch.no_grad():
        for layer in layers:
            weight = layer.base_layer.weight
            weight -= layer.delta_weight(layer.merged_adapter).to(weight.dtype)
            layer.merged_adapter = None


def lora_state_dict(model: nn.Module, adapters: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The LoRA tensors of ``adapters`` (all if None), named as in ``model.state_dict()``."""
    return {name: weight.detach() for name, weight in _lora_parameters(model, adapters).items()}


def load_lora_state_dict(
    model: nn.Module, state: dict[str, Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Copies LoRA tensors into an injected model; returns (missing, unexpected) keys, which
    are an error with ``strict``."""
    parameters = _lora_parameters(model)
    missing = sorted(set(parameters) - set(state))
    unexpected = sorted(set(state) - set(parameters))
    if strict and (missing or unexpected):
        raise KeyError(
            f"load_lora_state_dict: missing keys {missing}, unexpected keys {unexpected}"
        )
    merged = [name for name, layer in lora_layers(model) if layer.merged_adapter is not None]
    if merged:
        raise RuntimeError(f"load_lora_state_dict: unmerge_lora first (merged in {merged[:3]})")
    for name in sorted(set(parameters) & set(state)):
        if parameters[name].shape != state[name].shape:
            raise ValueError(
                f"load_lora_state_dict: {name} has shape {tuple(parameters[name].shape)} in the "
                f"model, {tuple(state[name].shape)} in the state"
            )
    with torch.no_grad():
        for name in set(parameters) & set(state):
            parameters[name].copy_(state[name])
    return missing, unexpected
