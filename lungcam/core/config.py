"""Load and validate the workflow configuration against its JSON schema.

The schema (schemas/config.schema.yaml) is the single reference for keys and defaults: the
workflow, the command line and the tests all fill defaults from it, so they cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).parents[1] / "schemas"


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the key."""


# libyaml's loader where PyYAML has it: the config schema loads in 8 ms instead of 70 ms, and every
# Snakemake invocation (and every job on a cluster, which parses the workflow again) loads it.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_schema(name: str) -> dict:
    with open(SCHEMA_DIR / name) as handle:
        return yaml.load(handle, Loader=YAML_LOADER)


_PARSERS = {"integer": int, "number": float, "boolean": lambda text: {"true": True, "false": False}[text.strip().lower()]}


def _from_text(value, schema: dict):
    """`value` converted where it is text but the schema wants a number or boolean.

    Snakemake reads nested `--config` values (`train={"folds": 3}`) with YAML's BaseLoader, so
    every scalar inside arrives as a string; values that do not convert stay as they are and
    fail validation with their key named.
    """
    kind = schema.get("type")
    if isinstance(value, str) and isinstance(kind, str) and kind in _PARSERS:
        try:
            return _PARSERS[kind](value)
        except (ValueError, KeyError):
            return value
    if isinstance(value, list) and kind == "array" and isinstance(schema.get("items"), dict):
        return [_from_text(item, schema["items"]) for item in value]
    return value


def _with_defaults(validator_class):
    """A validator that also fills `default:` values of absent properties (jsonschema FAQ) and
    converts text to the numbers and booleans the schema asks for."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
                elif key in instance:
                    instance[key] = _from_text(instance[key], sub)
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def record_validator(schema: dict, fill_defaults: bool = True) -> Callable[[dict], list[str]]:
    """A function that validates a record in place (filling defaults) and returns readable error
    messages. Building the validator costs more than using it, so a sample sheet of thousands of
    rows builds it once."""
    cls = _with_defaults(jsonschema.Draft202012Validator) if fill_defaults else jsonschema.Draft202012Validator
    validator = cls(schema)

    def messages(record: dict) -> list[str]:
        found = []
        for error in sorted(validator.iter_errors(record), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            found.append(f"{where}: {error.message}")
        return found

    return messages


def validate_record(record: dict, schema: dict, fill_defaults: bool = True) -> list[str]:
    """Validate one `record` in place (filling defaults); return readable error messages."""
    return record_validator(schema, fill_defaults)(record)


def validate_config(config: dict) -> dict:
    """Validate a configuration dict in place, filling defaults; raise ConfigError if invalid."""
    problems = validate_record(config, load_schema("config.schema.yaml"))
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config


def apply_demo_overrides(config: dict) -> dict:
    """In demo mode, replace train and cache keys with those of demo.train and demo.cache, unless
    demo.overrides is false."""
    if not config["demo"]["overrides"]:
        return config
    for section in ("train", "cache"):
        config[section] = {**config[section], **config["demo"][section]}
    return validate_config(config)


def load_config(path: Path | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config (or start empty), apply overrides, validate and fill defaults."""
    config = {}
    if path is not None:
        with open(path) as handle:
            config = yaml.load(handle, Loader=YAML_LOADER) or {}
    for key, value in (overrides or {}).items():
        config[key] = value
    return validate_config(config)


def config_hash(config: dict) -> str:
    """A short, stable hash of a resolved configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


T = typing.TypeVar("T")


def settings_from(cls: type[T], section: dict) -> T:
    """A settings dataclass from a validated config section: each field takes the section's key
    of its name, converted to the field's type (nested settings by their own `from_config`, or
    this function). The schema holds the defaults; the dataclasses hold none."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _as_type(hints[f.name], section[f.name]) for f in dataclasses.fields(cls)})


def default_settings(cls: type[T], *path: str) -> T:
    """`cls` built from the schema's defaults of the config section at `path`."""
    section = validate_config({})
    for key in path:
        section = section[key]
    return cls.from_config(section) if hasattr(cls, "from_config") else settings_from(cls, section)


def _as_type(hint, value):
    if dataclasses.is_dataclass(hint):
        return hint.from_config(value) if hasattr(hint, "from_config") else settings_from(hint, value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # e.g. float | tuple[float, float]: by the value's shape
        sequence = isinstance(value, (list, tuple))
        chosen = next(a for a in args if (typing.get_origin(a) in (tuple, list, frozenset)) == sequence)
        return _as_type(chosen, value)
    if origin is tuple:
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_as_type(a, v) for a, v in zip(items, value))
    if origin is frozenset:
        return frozenset(_as_type(args[0], v) for v in value)
    if hint in (float, int, bool, str):
        return hint(value)
    return value
