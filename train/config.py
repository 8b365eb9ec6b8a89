"""Job configuration: a dataclass of defaults, a YAML file over it, command-line flags over that.

Every field of a job's config dataclass becomes a flag (``batch_size`` → ``--batch-size``;
booleans also get ``--no-…``; dict fields take YAML, e.g. ``--model-args '{depth: 4}'``; list
fields take YAML or comma-separated values, e.g. ``--depths 2,6,4``).
"""

import argparse
import dataclasses
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
    return yaml.safe_load  # dicts and optional values: YAML text


def parse_list(text: str) -> list:
    """A YAML list, or comma-separated YAML scalars: "2,6,4" and "[2, 6, 4]" are [2, 6, 4]."""
    value = yaml.safe_load(text if text.lstrip().startswith("[") else f"[{text}]")
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
        document = yaml.safe_load(Path(path).read_text()) or {}
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


def field(default: Any, help: str) -> Any:
    """A dataclass field with a help text for its flag (mutable defaults are copied)."""
    if isinstance(default, (dict, list)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


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
