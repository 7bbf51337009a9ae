"""The processing settings (``config/pipeline.yaml``), typed and validated before a study is read.

Why a module of its own: ``myonode process`` and the node's job worker both run the pipeline
on these settings, and a typo in a site file must stop the run at once, in one line naming
the file and the key, not as a traceback from deep inside inference after the whole study was
read. The embedded ``config/pipeline.yaml`` is the single documented source of the defaults;
a site file names only what it changes and is merged over it (sections key by key), and a
key it does not know is refused, as the node's own configuration does. ``null`` means the
default (for ``model``: the shipped package; for ``inference.batch_size``: chosen per device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from myonode_config import config_path, read_mapping

from inference.fat_fraction import FF_UNITS, SOURCES

DEFAULT_CONFIG = "pipeline.yaml"
DEVICES = ("auto", "cpu", "cuda")
CORES = ("3d", "2d")
SECTIONS = {
    "inference": ("overlap", "batch_size"),
    "fat_fraction": ("prefer", "scanner_map_units"),
    "stitching": ("match_intensity",),
    "quantification": ("core",),
}
TOP_KEYS = ("model", "device", *SECTIONS)


@dataclass(frozen=True)
class PipelineConfig:
    """What ``config/pipeline.yaml`` documents, one field per key (sections flattened)."""

    model: Path | None  # model package folder; None: the shipped one
    device: str
    overlap: float
    batch_size: int | None
    ff_prefer: tuple[str, ...]
    ff_units: str
    match_intensity: bool
    core: str


def load_pipeline_config(path: str | Path | None = None) -> PipelineConfig:
    """The embedded defaults, with the site file at ``path`` (if any) merged over them.

    Raises ValueError (FileNotFoundError for a missing file) whose message starts with the
    file, then the dotted key: ``site.yaml: inference.overlap: must be ...``.
    """
    if path is None:
        embedded = config_path(DEFAULT_CONFIG)
        return _parse(read_mapping(embedded), str(embedded))
    return pipeline_config_from(read_mapping(Path(path)), str(path))


def pipeline_config_from(site: dict, where: str) -> PipelineConfig:
    """A site's settings (as read from YAML) merged over the embedded defaults and checked;
    ``where`` (the file) starts every error message."""
    embedded = config_path(DEFAULT_CONFIG)
    defaults = read_mapping(embedded)
    _parse(defaults, str(embedded))  # a broken installed default is named as such
    return _parse(_merge(defaults, site, where), where)


def _merge(defaults: dict, site: dict, where: str) -> dict:
    merged = {key: dict(value) if isinstance(value, dict) else value
              for key, value in defaults.items()}
    for key, value in site.items():
        _known(key, TOP_KEYS, where, "")
        if value is None:
            continue
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {key}: must be a mapping of "
                                 f"{', '.join(SECTIONS[key])}, got {value!r}")
            for name, item in value.items():
                _known(name, SECTIONS[key], where, f"{key}.")
                if item is not None:
                    merged[key][name] = item
        else:
            merged[key] = value
    return merged


def _known(key: Any, allowed: tuple[str, ...], where: str, prefix: str) -> None:
    if key not in allowed:
        raise ValueError(
            f"{where}: {prefix}{key}: unknown key; expected one of {', '.join(allowed)}"
        )


def _parse(data: dict, where: str) -> PipelineConfig:
    for key in data:
        _known(key, TOP_KEYS, where, "")
    sections = {}
    for name, keys in SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{where}: {name}: must be a mapping of {', '.join(keys)}")
        for key in section:
            _known(key, keys, where, f"{name}.")
        sections[name] = section

    def fail(key: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"{where}: {key}: must be {expected}, got {value!r}")

    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise fail("model", "the path of a model package folder, or null", model)
    if model is not None and not Path(model).expanduser().is_dir():
        raise ValueError(f"{where}: model: no model package folder at {model}")
    device = data.get("device")
    if device not in DEVICES:
        raise fail("device", f"one of {', '.join(DEVICES)}", device)
    overlap = sections["inference"].get("overlap")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not (
        0 <= overlap < 1
    ):
        raise fail("inference.overlap", "a number from 0 to below 1", overlap)
    batch = sections["inference"].get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise fail("inference.batch_size", "a positive integer, or null", batch)
    prefer = sections["fat_fraction"].get("prefer")
    if (
        not isinstance(prefer, list) or not prefer or len(set(map(str, prefer))) != len(prefer)
        or any(source not in SOURCES for source in prefer)
    ):
        raise fail("fat_fraction.prefer",
                   f"a list of distinct sources among {', '.join(SOURCES)}", prefer)
    units = sections["fat_fraction"].get("scanner_map_units")
    if units not in tuple(FF_UNITS):
        raise fail("fat_fraction.scanner_map_units", f"one of {', '.join(FF_UNITS)}", units)
    match = sections["stitching"].get("match_intensity")
    if not isinstance(match, bool):
        raise fail("stitching.match_intensity", "true or false", match)
    core = sections["quantification"].get("core")
    if core not in CORES:
        raise fail("quantification.core", f"one of {', '.join(CORES)}", core)
    return PipelineConfig(
        model=Path(model).expanduser() if model is not None else None,
        device=device,
        overlap=float(overlap),
        batch_size=batch,
        ff_prefer=tuple(prefer),
        ff_units=units,
        match_intensity=match,
        core=core,
    )
