"""Resolved run configuration and `--set key=value` overrides.

Precedence, lowest to highest: dataclass defaults < dataset recipe defaults < preset < a tuned
configuration file (`--tuned`, read here; written by `curb tune`, curb/tuning.py) < command line
(`--epochs`, `--set`). The fully resolved config is saved in every result file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CurbError

if TYPE_CHECKING:  # imported where used: `ConfigError` must not cost a torch import (instant CLI)
    from .backbone import BackboneConfig
    from .method import TrainConfig
    from .streams import SplitConfig


class ConfigError(CurbError, ValueError):
    """A configuration key or value is invalid; the message lists the valid choices."""


@dataclass
class RunConfig:
    preset: str
    backbone: BackboneConfig
    train: TrainConfig
    split: SplitConfig
    method: Any  # the method's Config dataclass
    tuned: str | None = None  # `<file>@<sha12>` of the tuned configuration applied, if any

    def as_dict(self) -> dict:
        return {
            "preset": self.preset, "tuned": self.tuned,
            "backbone": dataclasses.asdict(self.backbone),
            "train": dataclasses.asdict(self.train),
            "split": dataclasses.asdict(self.split),
            "method": dataclasses.asdict(self.method),
        }


def _coerce(text: str, tp: Any, key: str) -> Any:
    """Parse `text` as type `tp` (bool, int, float, str, tuples, Optional, Literal)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(text, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is typing.Literal:
        if text not in args:
            raise ConfigError(f"{key}: {text!r} is not one of {list(args)}")
        return text
    if origin is tuple:
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        inner = args[0] if args else str
        return tuple(_coerce(p.strip(), inner, key) for p in parts)
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {text!r}")
    if tp in (int, float):
        try:
            val = tp(text)
        except ValueError:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {text!r}") from None
        if not math.isfinite(val):  # nan/inf pass float() but no knob means them
            raise ConfigError(f"{key}: expected a finite number, got {text!r}")
        return val
    if tp is str:
        return text
    raise ConfigError(f"{key}: cannot set a value of type {tp}")


def apply(obj: Any, values: dict[str, str], section: str) -> Any:
    """Return a copy of dataclass `obj` with string `values` coerced to its field types."""
    if not values:
        return obj
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for k, v in values.items():
        if k not in names:
            raise ConfigError(f"unknown key {section}.{k}; valid keys: {', '.join(f'{section}.{n}' for n in names) or '(none)'}")
        changes[k] = _coerce(v, hints[k], f"{section}.{k}")
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{section}: {e}") from None


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def resolve(method_name: str, method_config: Any, dataset_defaults: dict[str, str],
            preset: str | None, overrides: dict[str, str]) -> RunConfig:
    """Merge defaults, dataset defaults, preset and overrides into one RunConfig."""
    from .backbone import PRESETS
    from .method import TrainConfig
    from .streams import SplitConfig

    merged = {**dataset_defaults, **overrides}
    preset = preset or merged.pop("preset", None) or "paper"
    merged.pop("preset", None)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    sections: dict[str, dict[str, str]] = {"backbone": {}, "train": {}, "split": {}, "method": {}}
    for key, val in merged.items():
        head, _, rest = key.partition(".")
        if not rest:
            raise ConfigError(f"config key {key!r} needs a section: backbone., train., split. or {method_name}.")
        if head in (method_name, "method"):
            sections["method"][rest] = val
        elif head in sections:
            sections[head][rest] = val
        elif head in _other_method_names(method_name):
            continue  # a knob of another method in a multi-method run
        else:
            raise ConfigError(
                f"config key {key!r}: unknown section {head!r}; valid: backbone, train, split, method, {method_name}"
            )
    return RunConfig(
        preset=preset,
        backbone=apply(PRESETS[preset].backbone, sections["backbone"], "backbone"),
        train=apply(TrainConfig(), sections["train"], "train"),
        split=apply(SplitConfig(), sections["split"], "split"),
        method=apply(method_config, sections["method"], method_name),
    )


def _other_method_names(current: str) -> list[str]:
    from .method import available_methods

    return [m for m in available_methods() if m != current]


# ------------------------------------------------------------- tuned-configuration files
def read_tuned(path: str | Path) -> tuple[str, dict[str, dict[str, str]]]:
    """(tag `<path>@<sha12>`, per-method overrides) of a tuned-configuration file."""
    try:
        raw = Path(path).read_bytes()
        doc = tomllib.loads(raw.decode())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"tuned configuration {path}: cannot read it ({e})") from None
    methods = doc.get("methods", {})
    if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
        raise ConfigError(f"tuned configuration {path}: expected [methods.<name>] tables of \"key\" = \"value\"")
    tag = f"{path}@{hashlib.sha256(raw).hexdigest()[:12]}"
    return tag, {m: {str(k): str(v) for k, v in ov.items()} for m, ov in methods.items()}


def tuned_values(tag: str, method: str) -> dict[str, str]:
    """The overrides a `tuned=<path>@<sha12>` spec entry stands for; the file must be unchanged."""
    path, _, digest = tag.rpartition("@")
    if not path or len(digest) != 12:
        raise ConfigError(f"tuned={tag!r}: expected <file>@<12 hex digits of its SHA-256>")
    got, per_method = read_tuned(path)
    if got != tag:
        raise ConfigError(f"tuned configuration {path} changed since the cell was planned "
                          f"(digest {got.rpartition('@')[2]}, the cell names {digest}); plan again")
    return per_method.get(method, {})
