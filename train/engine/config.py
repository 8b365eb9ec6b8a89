"""Job configuration: a dataclass of defaults, a YAML file over it, command-line flags over that.

Every field of a job's config dataclass becomes a flag (``batch_size`` → ``--batch-size``;
booleans also get ``--no-…``; dict fields take YAML, e.g. ``--model-args '{depth: 4}'``; list
fields take YAML or comma-separated values, e.g. ``--depths 2,6,4``). A field may be a *section*:
a dataclass of settings of its own (declared with ``field`` like a config's), given as a YAML
mapping of some of its keys (``--token-merging '{enabled: true}'``), the rest keeping their
defaults; a section names its place in the source layout in ``KEY`` (``model.token_merging``).

A job may also read the configuration files of the source design it comes from: its config
class declares ``SOURCE_KEYS``, the one table translating that design's dotted keys into its own
settings (see ``read_yaml``). ``--config`` takes a file or the name of one in ``configs/``
(``--config cifar10_tiny``); ``--list-configs`` lists the names a job reads.

Every setting is checked in one place, ``check_settings``, which a config dataclass calls from
its ``__post_init__``: the value's type against the field's annotation (no string taken as a
boolean or a number, no fractional epochs) and its allowed values, declared with the field
(``field(0.0, "...", allowed=Range(0, 1, high_open=True))`` or ``allowed=("none", "bf16")``).
"""

import argparse
import copy
import dataclasses
import math
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

Config = TypeVar("Config")

# The repository's named configurations (``--config NAME`` reads CONFIG_DIR/NAME.yaml).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# How one key of a source design's config file becomes settings: the name of the setting that
# takes its value, or a function of (dotted key, value) returning settings.
Translation = str | Callable[[str, Any], dict[str, Any]]


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
    parser.add_argument(
        "--config",
        "--config-path",
        type=config_path,
        help=f"YAML file of settings, or the name of one in {CONFIG_DIR.name}/; flags override it",
    )
    parser.add_argument(
        "--list-configs",
        action=ListConfigs,
        config_class=cls,
        help=f"list the configurations in {CONFIG_DIR.name}/ this job reads, and exit",
    )
    # What ``python -m torch.distributed.launch`` passes each process (torchrun sets the variable).
    parser.add_argument(
        "--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )
    for field in dataclasses.fields(cls):
        flags = ["--" + field.name.replace("_", "-"), *field.metadata.get("aliases", ())]
        field_type = _field_type(cls, field)
        help_text = field.metadata.get("help", "")
        allowed = allowed_values(cls, field.name)
        if allowed is not None:
            help_text = f"{help_text} [{_describe(allowed)}]"
        if is_section(field_type):
            keys = ", ".join(item.name for item in dataclasses.fields(field_type))
            help_text = f"{help_text} [a YAML mapping of any of: {keys}]"
        if field_type is bool:
            parser.add_argument(
                *flags, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                *flags,
                type=_parser_for(field_type),
                default=None,
                metavar=field.name.upper(),
                help=help_text,
            )
        for flag, constant in field.metadata.get("constants", {}).items():
            parser.add_argument(
                flag,
                dest=field.name,
                action="store_const",
                const=constant,
                help=f"{field.name}: {constant}",
            )
    return parser


def config_path(text: str) -> Path:
    """A config file's path, or the file a name stands for in CONFIG_DIR."""
    path = Path(text)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{text}.yaml"
    if path.suffix == "" and named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a file nor a configuration in {CONFIG_DIR} (known: {known})"
    )


def readable_configs(cls: type) -> list[Path]:
    """The files of CONFIG_DIR that configure ``cls`` (whose keys it reads)."""
    readable = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        try:
            read_yaml(cls, path)
        except ValueError:
            continue
        readable.append(path)
    return readable


class ListConfigs(argparse.Action):
    """``--list-configs``: prints the names of the configurations a job reads, and exits."""

    def __init__(self, option_strings, dest, config_class: type, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.config_class = config_class

    def __call__(self, parser, namespace, values, option_string=None):
        for path in readable_configs(self.config_class):
            print(path.stem)
        parser.exit()


def load_config(cls: type[Config], argv: list[str] | None, prog: str, description: str) -> Config:
    """The dataclass defaults, overridden by ``--config FILE`` and then by the flags given; a
    dict flag updates the file's dict key by key (``--experts '{top_k: 2}'`` keeps the file's
    other expert settings)."""
    args = build_parser(cls, prog, description).parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(read_yaml(cls, args.config))
    for name, value in vars(args).items():
        if name in ("config", "local_rank") or value is None:
            continue
        merge_setting(values, name, value)
    return cls(**values)


def merge_setting(values: dict[str, Any], name: str, value: Any) -> None:
    """Sets ``values[name]``; a dict updates the dict already there key by key."""
    if isinstance(value, dict) and isinstance(values.get(name), dict):
        value = {**values[name], **value}
    values[name] = value


# Sections a YAML file may group its settings under; a section's ``name`` sets the field named
# like the section (``model: {name: memory_vit, mem_size: 100}`` sets model and mem_size).
SECTIONS = ("model", "training", "data")


def read_yaml(cls: type, path: Path) -> dict[str, Any]:
    """The settings of a YAML file for config class ``cls``: its own fields, flat or in
    ``SECTIONS``, and the keys of its source design's layout (``cls.SOURCE_KEYS``, dotted key →
    translation), even mixed in one file. Unknown keys are an error, not silently ignored."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file (not UTF-8: {error})") from error
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got a {type(document).__name__}")
    reader = _SettingsReader(cls)
    reader.visit(document, prefix="")
    if reader.unknown:
        raise ValueError(
            f"{path}: unknown settings {reader.unknown}; known: {sorted(reader.fields)}"
            + (f" and, from {source_name(cls)}, {sorted(reader.table)}" if reader.table else "")
        )
    return reader.settings


def source_name(cls: type) -> str:
    """The source design whose config files ``cls.SOURCE_KEYS`` translates."""
    return getattr(cls, "SOURCE_NAME", "its source design")


def to_model_arg(name: str, expected: type):
    """A translation of a source key into the model's constructor argument ``name``."""

    def translate(key: str, value: Any) -> dict[str, Any]:
        return {"model_args": {name: checked(key, value, expected)}}

    translate.__doc__ = f"`model_args.{name}`"
    return translate


class _SettingsReader:
    """Walks a config document, collecting settings and the keys that are none."""

    def __init__(self, cls: type):
        self.hints = typing.get_type_hints(cls)
        self.fields = {field.name for field in dataclasses.fields(cls)}
        self.table: dict[str, Translation] = getattr(cls, "SOURCE_KEYS", {})
        self.settings: dict[str, Any] = {}
        self.unknown: list[str] = []

    def visit(self, mapping: dict, prefix: str) -> None:
        section = prefix[:-1]
        for key, value in mapping.items():
            dotted = f"{prefix}{key}"
            if dotted in self.table:
                self._translate(dotted, value)
            elif dotted in SECTIONS and isinstance(value, dict):
                self.visit(value, dotted + ".")
            elif key in self.fields and (not prefix or section in SECTIONS):
                merge_setting(self.settings, key, value)
            elif key == "name" and section in SECTIONS and section in self.fields:
                merge_setting(self.settings, section, value)
            elif isinstance(value, dict) and self._opens(dotted):
                self.visit(value, dotted + ".")
            else:
                self.unknown.append(dotted)

    def _opens(self, dotted: str) -> bool:
        """Whether keys under ``dotted`` may be source keys."""
        return any(key.startswith(dotted + ".") for key in self.table)

    def _translate(self, dotted: str, value: Any) -> None:
        translation = self.table[dotted]
        if callable(translation):
            translated = translation(dotted, value)
        else:
            expected = self.hints[translation]
            if expected in TYPE_NAMES:
                value = checked(f"{dotted} (setting {translation})", value, expected)
            translated = {translation: value}
        for name, setting in translated.items():
            merge_setting(self.settings, name, setting)


def source_key_table(cls: type) -> str:
    """``cls.SOURCE_KEYS`` as the rows of a Markdown table: source key | setting (a function's
    first docstring line for the keys that become several settings)."""
    rows = []
    for key, translation in cls.SOURCE_KEYS.items():
        target = (
            f"`{translation}`"
            if isinstance(translation, str)
            else (translation.__doc__ or "").strip().splitlines()[0]
        )
        rows.append(f"| `{key}` | {target} |")
    return "\n".join(rows)


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


def field(
    default: Any,
    help: str,
    allowed: Allowed | None = None,
    aliases: tuple[str, ...] = (),
    constants: dict[str, Any] | None = None,
) -> Any:
    """A dataclass field with a help text for its flag and, optionally, its allowed values (a
    ``Range`` of numbers or a tuple of choices), other spellings of its flag (``aliases``, e.g.
    a source design's ``--num-epochs``) and flags that set it to a constant (``constants``,
    e.g. ``{"--no-amp": "none"}``); mutable defaults are copied."""
    metadata = {"help": help, "allowed": allowed, "aliases": aliases, "constants": constants or {}}
    if isinstance(default, (dict, list)) or is_section(type(default)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
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


def check_settings(settings: Any, prefix: str = "") -> None:
    """Checks every field of the config dataclass ``settings`` against its annotated type and
    allowed values; an error names the key, what it allows and what it got. Whole numbers where
    a float belongs become floats, and so does numeric text (YAML 1.1 reads ``1e-3`` as text).
    A section's mapping becomes the section, checked the same way (``prefix``: its dotted key)."""
    hints = typing.get_type_hints(type(settings))
    for item in dataclasses.fields(settings):
        value, expected = getattr(settings, item.name), hints[item.name]
        if is_section(expected):
            value = section_from(expected, value, getattr(expected, "KEY", prefix + item.name))
        else:
            allowed = allowed_values(type(settings), item.name)
            value = checked(prefix + item.name, value, expected, allowed)
        setattr(settings, item.name, value)


def is_section(field_type: Any) -> bool:
    """Whether a field's type is a section: a dataclass of settings."""
    return isinstance(field_type, type) and dataclasses.is_dataclass(field_type)


def section_from(cls: type[Config], value: Any, key: str) -> Config:
    """The section ``cls`` from a mapping of some of its keys (a YAML file's, a flag's, a
    checkpoint's) or from an instance, every key checked; an unknown key is an error naming it
    and the allowed ones."""
    if isinstance(value, cls):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
    names = sorted(item.name for item in dataclasses.fields(cls))
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValueError(f"{key}: unknown keys {unknown}; allowed: {names}")
    section = cls(**value)
    check_settings(section, prefix=key + ".")
    return section


def checked(name: str, value: Any, expected: type, allowed: Allowed | None = None) -> Any:
    """``value`` as the ``expected`` type and among the ``allowed`` values, or a ValueError
    naming the setting ``name`` (also for the keys of a job's nested sections)."""
    value = _as_type(name, expected, value)
    if isinstance(allowed, tuple) and isinstance(value, str):
        value = _choice_named(value, allowed)
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name}: expected {_describe(allowed)}, got {value!r}")
    return value


def _choice_named(value: str, choices: tuple) -> str:
    """The choice ``value`` names, matched without regard to case (``CIFAR10`` is cifar10)."""
    matches = [choice for choice in choices if str(choice).lower() == value.lower()]
    return matches[0] if len(matches) == 1 else value


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
            f"{name}: expected {TYPE_NAMES.get(expected, expected)}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def _number_from_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text
