"""Load and validate the workflow configuration against its JSON schema.

The schema (schemas/config.schema.yaml) is the single reference for keys and defaults: the
workflow, the command line and the tests all fill defaults from it, so they cannot drift apart.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"


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
