"""Embedded default configuration (YAML files), installed as the package ``myonode_config``."""

from importlib import resources
from pathlib import Path

import yaml


def config_path(name: str) -> Path:
    """Path of an embedded YAML file, so every command works without a site config."""
    return Path(str(resources.files(__name__).joinpath(name)))


def read_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (empty file: ``{}``); ValueError naming the
    file otherwise, so a malformed site file is one clear line, never a traceback."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"{path}: not valid YAML{line} ({problem})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: must be a mapping of settings (key: value), got {type(data).__name__} "
            f"{repr(data)[:40]}"
        )
    return data


def load_yaml(path: str | Path | None, default_name: str) -> dict:
    """Load a site YAML file, or the embedded default of that name when no path is given."""
    source = Path(path) if path else config_path(default_name)
    with open(source, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}
