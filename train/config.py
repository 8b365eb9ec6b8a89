"""Job configuration: a dataclass of defaults, a YAML file over it, command-line flags over that.

Every field of a job's config dataclass becomes a flag (``batch_size`` → ``--batch-size``;
booleans also get ``--no-…``; dict fields take YAML, e.g. ``--model-args '{depth: 4}'``; list
fields take YAML or comma-separated values, e.g. ``--depths 2,6,4``).

Every setting is checked in one place, ``check_settings``, which a config dataclass calls from
its ``__post_init__``: the value's type against the field's annotation (no string taken as a
boolean or a number, no fractional epochs) and its allowed values, declared with the field
(``field(0.0, "...", allowed=Range(0, 1, high_open=True))`` or ``allowed=("none", "bf16")``).
"""

import argparse
import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

Config = TypeVar("Config")


def _field_type(cls: type, field: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[field.name]


def _parser_for(field_type: Any):
    """How a flag's text becomes the field's value."""
    if field_type in (int, float, str):
        return field_type
    if field_type is list:
        return parse_list
    return parse_yaml  # dicts and optional values: YAML text


def parse_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not valid YAML: {text!r} ({error})") from error


def parse_list(text: str) -> list:
    """A YAML list, or comma-separated YAML scalars: "2,6,4" and "[2, 6, 4]" are [2, 6, 4]."""
    value = parse_yaml(text if text.lstrip().startswith("[") else f"[{text}]")
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a list, got {text!r}")
    return value


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="YAML file of settings; flags override it")
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        field_type = _field_type(cls, field)
        help_text = field.metadata.get("help", "")
        allowed = allowed_values(cls, field.name)
        if allowed is not None:
            help_text = f"{help_text} [{_describe(allowed)}]"
        if field_type is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag,
                type=_parser_for(field_type),
                default=None,
                metavar=field.name.upper(),
                help=help_text,
            )
    return parser


def load_config(cls: type[Config], argv: list[str] | None, prog: str, description: str) -> Config:
    """The dataclass defaults, overridden by ``--config FILE`` and then by the flags given; a
    dict flag updates the file's dict key by key (``--experts '{top_k: 2}'`` keeps the file's
    other expert settings)."""
    args = build_parser(cls, prog, description).parse_args(argv)
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(read_yaml(cls, args.config))
    for name, value in vars(args).items():
        if name == "config" or value is None:
            continue
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            value = {**values[name], **value}
        values[name] = value
    return cls(**values)


# Sections a YAML file may group its settings under; a section's ``name`` sets the field named
# like the section (``model: {name: memory_vit, mem_size: 100}`` sets model and mem_size).
SECTIONS = ("model", "training", "data")


def read_yaml(cls: type, path: Path) -> dict[str, Any]:
    """A YAML mapping of ``cls`` fields, flat or in ``SECTIONS``; unknown keys are an error, not
    silently ignored."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file (not UTF-8: {error})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got a {type(document).__name__}")
    values = flatten_sections(document)
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    return values


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers from ``low`` to ``high`` (None: unbounded), each end included unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above_low = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below_high = self.high is None or (
            value < self.high if self.high_open else value <= self.high
        )
        return above_low and below_high

    def __str__(self) -> str:
        if self.high is None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"a number {'<' if self.high_open else '<='} {self.high:g}"
        opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"a number in {opening}{self.low:g}, {self.high:g}{closing}"


def at_least(low: float) -> Range:
    return Range(low=low)


POSITIVE = Range(low=0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # a probability-like weight that must leave some mass
# Image and frame sides above this would not fit in memory at any batch size worth training.
MAX_IMAGE_SIDE = 4096
IMAGE_SIDE = Range(1, MAX_IMAGE_SIDE)
# Frames of one clip: far above any video model's, far below what exhausts memory.
FRAMES = Range(1, 1024)
# Classes of a label space given by number (0: inferred): ImageNet-21k's fit, a typo's do not.
CLASS_COUNT = Range(0, 100_000)

Allowed = Range | tuple


def field(default: Any, help: str, allowed: Allowed | None = None) -> Any:
    """A dataclass field with a help text for its flag and, optionally, its allowed values (a
    ``Range`` of numbers or a tuple of choices); mutable defaults are copied."""
    metadata = {"help": help, "allowed": allowed}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def allowed_values(cls: type, name: str) -> Allowed | None:
    """The allowed values of setting ``name``: a job that only changes a field's default keeps
    the allowed values its base class declared."""
    for base in cls.__mro__:
        declared = getattr(base, "__dataclass_fields__", {}).get(name)
        if declared is not None and declared.metadata.get("allowed") is not None:
            return declared.metadata["allowed"]
    return None


def _describe(allowed: Allowed) -> str:
    return str(allowed) if isinstance(allowed, Range) else f"one of {allowed}"


def check_settings(settings: Any) -> None:
    """Checks every field of the config dataclass ``settings`` against its annotated type and
    allowed values; an error names the key, what it allows and what it got. Whole numbers where
    a float belongs become floats, and so does numeric text (YAML 1.1 reads ``1e-3`` as text)."""
    hints = typing.get_type_hints(type(settings))
    for item in dataclasses.fields(settings):
        allowed = allowed_values(type(settings), item.name)
        value = checked(item.name, getattr(settings, item.name), hints[item.name], allowed)
        setattr(settings, item.name, value)


def checked(name: str, value: Any, expected: type, allowed: Allowed | None = None) -> Any:
    """``value`` as the ``expected`` type and among the ``allowed`` values, or a ValueError
    naming the setting ``name`` (also for the keys of a job's nested sections)."""
    value = _as_type(name, expected, value)
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name}: expected {_describe(allowed)}, got {value!r}")
    return value


TYPE_NAMES = {
    bool: "true or false",
    int: "a whole number",
    float: "a finite number",
    str: "text",
    dict: "a mapping",
    list: "a list",
}


def _as_type(name: str, expected: type, value: Any) -> Any:
    """``value`` as the ``expected`` type, or a ValueError naming the setting."""
    if expected is float and isinstance(value, str):
        value = _number_from_text(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    valid = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if expected is float and valid:
        valid = math.isfinite(value)
    if not valid:
        raise ValueError(
            f"{name}: expected {TYPE_NAMES[expected]}, got {value!r} ({type(value).__name__})"
        )
    return value


def _number_from_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def flatten_sections(values: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            section = dict(value)
            if "name" in section:
                flat[key] = section.pop("name")
            flat.update(section)
        else:
            flat[key] = value
    return flat
