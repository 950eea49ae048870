"""InputIBA settings from data files (TOML or JSON), never from code.

A file has up to six parts, each overriding the defaults of a schedule
(``schedule = "default"`` or ``"published"``; the default one if absent)::

    schedule = "default"
    max_batch = 8
    mask_start = "bits"
    precision = "bfloat16"   # both bottleneck stages (InputIBAConfig.with_precision)

    [feature]          # IBAConfig of the feature stage
    beta = 20

    [gan]              # GANConfig; a table adds a GAN stage to a schedule without one,
    epochs = 10        # and `gan = false` removes it
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
from .pipeline import InputIBAConfig, schedule

__all__ = ["config_from_dict", "load_config", "read_data_file"]


def _override(obj, values: dict, where: str):
    known = {f.name for f in fields(obj)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} in [{where}]; known: {sorted(known)}")
    return replace(obj, **values)


def config_from_dict(data: dict, text: bool = False) -> InputIBAConfig:
    """An :class:`InputIBAConfig`: a named schedule with the given parts overriding it.

    Args:
        data: the table (see the module docstring).
        text: start from the text version of the schedule.
    """
    known = {"schedule", "feature", "gan", "input", "max_batch", "mask_start", "precision"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(sorted(known))}")
    cfg = schedule(data.get("schedule", "default"), text)
    parts = {}
    for name in ("feature", "input"):
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ValueError(f"[{name}] must be a table of settings")
        parts[name] = _override(getattr(cfg, name), section, name)
    if "gan" in data:
        section = data["gan"]
        if section is False:
            parts["gan"] = None
        elif isinstance(section, dict):
            parts["gan"] = _override(cfg.gan or GANConfig(), section, "gan")
        else:
            raise ValueError("[gan] must be a table of settings, or `gan = false` for no GAN stage")
    if "max_batch" in data:
        parts["max_batch"] = int(data["max_batch"])
    if "mask_start" in data:
        parts["mask_start"] = data["mask_start"]
    cfg = replace(cfg, **parts)
    return cfg.with_precision(data["precision"]) if "precision" in data else cfg


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


def load_config(path: str | os.PathLike, text: bool = False) -> InputIBAConfig:
    """Read an :class:`InputIBAConfig` from a ``.toml`` or ``.json`` file (``text``: on the text schedule)."""
    return config_from_dict(read_data_file(path), text)
