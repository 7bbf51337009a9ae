"""Embedded default configuration (YAML files), installed as the package ``myonode_config``."""

from importlib import resources
from pathlib import Path

import yaml


def config_path(name: str) -> Path:
    """Path of an embedded YAML file, so every command works without a site config."""
    return Path(str(resources.files(__name__).joinpath(name)))


def load_yaml(path: str | Path | None, default_name: str) -> dict:
    """Load a site YAML file, or the embedded default of that name when no path is given."""
    source = Path(path) if path else config_path(default_name)
    with open(source, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}
