"""The muscle table (codes, regions, label numbers, SNOMED CT codes, colours) as typed objects.

Every part of the pipeline that names a muscle or a label value goes through this table, so
label arithmetic (right leg n, left leg offset + n) and coding live in exactly one place:
``config/muscles.yaml``. Loading validates the file and fails with a message that names the
offending entry, because a wrong label map silently corrupts every downstream number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from myonode_config import load_yaml
from stdnum import verhoeff

DEFAULT_NAME = "muscles.yaml"
SIDES = ("right", "left")
REGIONS = ("thigh", "calf")  # body regions (stations) a model segments, knee to hip / ankle to knee
MAX_LABEL = 99
MIN_LEFT_OFFSET = MAX_LABEL + 1
# SNOMED CT partition identifiers of concept ids (short format "00", extension "10").
CONCEPT_PARTITIONS = ("00", "10")

class MuscleConfigError(ValueError):
    """The muscle table file is malformed; the message names the entry and the field."""


def is_concept_sctid(code: str) -> bool:
    """True for a well-formed SNOMED CT concept id: 6-18 digits, concept partition, check digit.

    Catches typos in hand-edited configuration before they end up in DICOM objects.
    """
    return (
        6 <= len(code) <= 18
        and code.isdigit()
        and code[0] != "0"
        and code[-3:-1] in CONCEPT_PARTITIONS
        and verhoeff.is_valid(code)  # the check digit scheme of SNOMED CT identifiers
    )


@dataclass(frozen=True)
class Muscle:
    """One muscle; ``snomed_code`` is None where no SNOMED CT concept was found."""

    code: str
    name: str
    region: str  # one of REGIONS
    label: int
    snomed_code: str | None
    snomed_meaning: str | None
    group_code: str
    group_meaning: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class LabelGroup:
    """One group of a coarser label set: the muscles it merges."""

    code: str
    name: str
    members: tuple[str, ...]  # muscle codes


@dataclass(frozen=True)
class LabelSet:
    """A coarser labelling derived from the muscles, as some publications segment them."""

    name: str
    region: str
    source: str
    groups: tuple[LabelGroup, ...]  # group n of the tuple has label n (left: offset + n)


@dataclass(frozen=True)
class MuscleTable:
    """All muscles plus the label and coding conventions shared by both legs."""

    muscles: tuple[Muscle, ...]
    left_label_offset: int
    laterality: dict[str, tuple[str, str]]  # side -> (SCT code, meaning)
    category: tuple[str, str, str]  # (scheme, code, meaning)
    label_sets: dict[str, LabelSet] = field(default_factory=dict)

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions that have muscles, in the order of REGIONS."""
        present = {m.region for m in self.muscles}
        return tuple(r for r in REGIONS if r in present)

    def for_region(self, region: str) -> MuscleTable:
        """The same table restricted to the muscles of ``region`` (labels unchanged)."""
        if region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        return MuscleTable(
            tuple(m for m in self.muscles if m.region == region),
            self.left_label_offset,
            self.laterality,
            self.category,
            {k: v for k, v in self.label_sets.items() if v.region == region},
        )

    def group_labels(self, set_name: str) -> dict[int, int]:
        """Combined muscle label -> combined label of its group in label set ``set_name``;
        muscles outside every group are absent (their voxels become background)."""
        if set_name not in self.label_sets:
            raise KeyError(f"unknown label set {set_name!r}; known: {', '.join(self.label_sets)}")
        mapping = {}
        for n, group in enumerate(self.label_sets[set_name].groups, start=1):
            for code in group.members:
                mapping[self.label_of(code, "right")] = n
                mapping[self.label_of(code, "left")] = n + self.left_label_offset
        return mapping

    def by_code(self, code: str) -> Muscle:
        """The muscle with abbreviation ``code`` (e.g. "RF")."""
        for muscle in self.muscles:
            if muscle.code == code:
                return muscle
        known = ", ".join(m.code for m in self.muscles)
        raise KeyError(f"unknown muscle code {code!r}; known codes: {known}")

    def label_of(self, code: str, side: str) -> int:
        """Combined-volume label of muscle ``code`` on the patient's ``side`` ("left"/"right")."""
        _check_side(side)
        label = self.by_code(code).label
        return label + self.left_label_offset if side == "left" else label

    def decode(self, label: int) -> tuple[Muscle, str]:
        """The muscle and side ("left"/"right") that a combined-volume label stands for."""
        for muscle in self.muscles:
            if label == muscle.label:
                return muscle, "right"
            if label == muscle.label + self.left_label_offset:
                return muscle, "left"
        raise ValueError(f"label {label} is not a muscle label (0 is background)")

    def combined_labels(self) -> dict[int, tuple[str, str]]:
        """Every combined-volume label -> (muscle code, side); right leg first, then left."""
        return {
            self.label_of(m.code, side): (m.code, side) for side in SIDES for m in self.muscles
        }


def load_muscles(path: str | Path | None = None) -> MuscleTable:
    """Load and validate a muscle table; ``None`` reads the embedded ``muscles.yaml``."""
    data = load_yaml(path, DEFAULT_NAME)
    where = str(path) if path else DEFAULT_NAME
    if not isinstance(data, dict):
        raise MuscleConfigError(f"{where}: top level must be a mapping")
    offset = _require(data, "left_label_offset", where)
    if not _is_int(offset) or offset < MIN_LEFT_OFFSET:
        raise MuscleConfigError(
            f"{where}: left_label_offset must be an integer >= {MIN_LEFT_OFFSET} so that "
            f"left labels never collide with right labels 1..{MAX_LABEL}, got {offset!r}"
        )
    laterality = _parse_laterality(_require(data, "laterality", where), where)
    category = _parse_category(_require(data, "segmentation_category", where), where)
    entries = _require(data, "muscles", where)
    if not isinstance(entries, list) or not entries:
        raise MuscleConfigError(f"{where}: muscles must be a non-empty list")
    muscles = tuple(_parse_muscle(entry, i, where) for i, entry in enumerate(entries))
    _check_unique(muscles, where)
    label_sets = _parse_label_sets(data.get("label_sets") or {}, muscles, where)
    return MuscleTable(muscles, offset, laterality, category, label_sets)


def _parse_muscle(entry: Any, index: int, where: str) -> Muscle:
    here = f"{where}: muscles[{index}]"
    if not isinstance(entry, dict):
        raise MuscleConfigError(f"{here} must be a mapping")
    code = _require(entry, "code", here)
    here = f"{where}: muscle {code!r} (muscles[{index}])"
    if not isinstance(code, str) or not code:
        raise MuscleConfigError(f"{here}: code must be a non-empty string")
    name = _require(entry, "name", here)
    if not isinstance(name, str) or not name:
        raise MuscleConfigError(f"{here}: name must be a non-empty string")
    region = _require(entry, "region", here)
    if region not in REGIONS:
        raise MuscleConfigError(f"{here}: region must be one of {', '.join(REGIONS)}, got {region!r}")
    label = _require(entry, "label", here)
    if not _is_int(label) or not 1 <= label <= MAX_LABEL:
        raise MuscleConfigError(
            f"{here}: label must be an integer in 1..{MAX_LABEL}, got {label!r}"
        )
    snomed = _require(entry, "snomed", here)
    snomed_code, snomed_meaning = (
        (None, None) if snomed is None else _parse_code(snomed, f"{here}: snomed")
    )
    group_code, group_meaning = _parse_code(_require(entry, "group", here), f"{here}: group")
    color = _parse_color(_require(entry, "color", here), here)
    return Muscle(code, name, region, label, snomed_code, snomed_meaning, group_code, group_meaning, color)


def _parse_label_sets(value: Any, muscles: tuple[Muscle, ...], where: str) -> dict[str, LabelSet]:
    if not isinstance(value, dict):
        raise MuscleConfigError(f"{where}: label_sets must be a mapping of name -> label set")
    region_of = {m.code: m.region for m in muscles}
    result = {}
    for name, entry in value.items():
        here = f"{where}: label set {name!r}"
        if not isinstance(entry, dict):
            raise MuscleConfigError(f"{here} must be a mapping with region, source and groups")
        region = _require(entry, "region", here)
        if region not in REGIONS:
            raise MuscleConfigError(f"{here}: region must be one of {', '.join(REGIONS)}, got {region!r}")
        source = _require(entry, "source", here)
        groups_raw = _require(entry, "groups", here)
        if not isinstance(source, str) or not source:
            raise MuscleConfigError(f"{here}: source must be a non-empty string")
        if not isinstance(groups_raw, list) or not groups_raw:
            raise MuscleConfigError(f"{here}: groups must be a non-empty list")
        groups: list[LabelGroup] = []
        seen: dict[str, str] = {}
        for i, group in enumerate(groups_raw):
            there = f"{here}: groups[{i}]"
            if not isinstance(group, dict):
                raise MuscleConfigError(f"{there} must be a mapping with code, name and members")
            code, label_name = _require(group, "code", there), _require(group, "name", there)
            members = _require(group, "members", there)
            if not isinstance(members, list) or not members:
                raise MuscleConfigError(f"{there}: members must be a non-empty list of muscle codes")
            for member in members:
                if region_of.get(member) != region:
                    raise MuscleConfigError(f"{there}: {member!r} is not a {region} muscle")
                if member in seen:
                    raise MuscleConfigError(f"{there}: {member!r} is already in group {seen[member]!r}")
                seen[member] = code
            groups.append(LabelGroup(str(code), str(label_name), tuple(members)))
        result[str(name)] = LabelSet(str(name), region, source, tuple(groups))
    return result


def _parse_code(value: Any, here: str) -> tuple[str, str]:
    if not isinstance(value, dict):
        raise MuscleConfigError(f"{here} must be a mapping with code and meaning")
    code = _require(value, "code", here)
    meaning = _require(value, "meaning", here)
    if not isinstance(code, str) or not is_concept_sctid(code):
        raise MuscleConfigError(
            f"{here}: code {code!r} is not a valid SNOMED CT concept id (write it as a quoted "
            "string of digits; the Verhoeff check digit and concept partition are checked)"
        )
    if not isinstance(meaning, str) or not meaning:
        raise MuscleConfigError(f"{here}: meaning must be a non-empty string")
    return code, meaning


def _parse_color(value: Any, here: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(_is_int(c) and 0 <= c <= 255 for c in value)
    ):
        raise MuscleConfigError(
            f"{here}: color must be [r, g, b] with integers 0..255, got {value!r}"
        )
    return (value[0], value[1], value[2])


def _parse_laterality(value: Any, where: str) -> dict[str, tuple[str, str]]:
    if not isinstance(value, dict):
        raise MuscleConfigError(f"{where}: laterality must be a mapping with right and left")
    here = f"{where}: laterality"
    return {side: _parse_code(_require(value, side, here), f"{here}.{side}") for side in SIDES}


def _parse_category(value: Any, where: str) -> tuple[str, str, str]:
    here = f"{where}: segmentation_category"
    if not isinstance(value, dict):
        raise MuscleConfigError(f"{here} must be a mapping with scheme, code and meaning")
    scheme = _require(value, "scheme", here)
    if scheme != "SCT":
        raise MuscleConfigError(f"{here}: scheme must be 'SCT', got {scheme!r}")
    code, meaning = _parse_code(value, here)
    return scheme, code, meaning


def _check_unique(muscles: tuple[Muscle, ...], where: str) -> None:
    for field in ("code", "label", "color"):
        seen: dict[Any, str] = {}
        for muscle in muscles:
            value = getattr(muscle, field)
            if value in seen:
                raise MuscleConfigError(
                    f"{where}: duplicate {field} {value!r} "
                    f"(muscles {seen[value]!r} and {muscle.code!r})"
                )
            seen[value] = muscle.code


def _check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def _require(mapping: dict, key: str, here: str) -> Any:
    if key not in mapping:
        raise MuscleConfigError(f"{here}: missing field {key!r}")
    return mapping[key]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
