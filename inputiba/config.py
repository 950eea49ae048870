"""InputIBA settings from data files (TOML or JSON), never from code.

A file has up to four parts, each overriding the published defaults::

    max_batch = 8

    [feature]          # IBAConfig of the feature stage
    beta = 20

    [gan]              # GANConfig
    epochs = 10
    critic = "gp"

    [input]            # IBAConfig of the input stage
    steps = 60
"""
from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from pathlib import Path

from .gan import GANConfig
from .iba import IBAConfig
from .pipeline import InputIBAConfig

__all__ = ["config_from_dict", "load_config", "read_data_file"]


def _override(obj, values: dict, where: str):
    known = {f.name for f in fields(obj)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} in [{where}]; known: {sorted(known)}")
    return replace(obj, **values)


def config_from_dict(data: dict) -> InputIBAConfig:
    """An :class:`InputIBAConfig` with the given parts overriding the defaults."""
    cfg = InputIBAConfig()
    unknown = set(data) - {"feature", "gan", "input", "max_batch"}
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: feature, gan, input, max_batch")
    parts = {}
    for name, cls in (("feature", IBAConfig), ("gan", GANConfig), ("input", IBAConfig)):
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ValueError(f"[{name}] must be a table of settings")
        parts[name] = _override(getattr(cfg, name), section, name)
    if "max_batch" in data:
        parts["max_batch"] = int(data["max_batch"])
    return replace(cfg, **parts)


def read_data_file(path: str | os.PathLike) -> dict:
    """The table in a ``.toml`` or ``.json`` configuration file (data only, never code).

    Raises:
        ValueError: another suffix, a syntax error (with the file named), or
            a JSON file whose top level is not an object.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            raise ValueError(f"{path}: configuration files are .toml or .json")
    except (json.JSONDecodeError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper()}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a table of settings")
    return data


def load_config(path: str | os.PathLike) -> InputIBAConfig:
    """Read an :class:`InputIBAConfig` from a ``.toml`` or ``.json`` file."""
    return config_from_dict(read_data_file(path))
