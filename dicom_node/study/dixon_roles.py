"""Recognise the Dixon role (water, fat, in/out-of-phase, fat fraction) of every frame, or
that it is an echo image (``echo_magnitude``, ``echo_phase``) that Dixon images are made from.

Vendors label Dixon images differently (ImageType words, private codes, per-frame FrameType,
series descriptions) and sites meet variants no default covers, so the recognition is a list
of declarative rules in YAML (``config/dixon_rules.yaml`` documents the format) that a site
can extend without code. Only headers are read: a dataset read with ``stop_before_pixels``
is enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from myonode_config import config_path
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag

from common.study import ECHO_KINDS

ROLES = ("water", "fat", "in_phase", "out_of_phase", "fat_fraction")
# What a rule may give: a Dixon role, or an echo image (its echo time is read by the scan).
RULE_ROLES = (*ROLES, *ECHO_KINDS)
DEFAULT_RULES = "dixon_rules.yaml"

_RULE_KEYS = {"name", "role", "note", "manufacturer", "series_description", "protocol_name",
              "image_type", "frame_type", "tags"}
_CONDITIONS = _RULE_KEYS - {"name", "role", "note"}
_TOP_KEYS = {"version", "extends_default", "rules"}
_TAG_KEYS = {"tag", "private_creator", "values"}
_TAG_TEXT = re.compile(r"^\s*\(?\s*([0-9a-fA-F]{4})\s*,\s*([0-9a-fA-F]{4})\s*\)?\s*$")
IMAGE_TYPE = Tag(0x0008, 0x0008)
FRAME_TYPE = Tag(0x0008, 0x9007)


class RulesError(ValueError):
    """A rules file that cannot be used; the message names the file, rule and field."""


@dataclass(frozen=True)
class TagTest:
    """One element test: the element (public, or private by creator) has one of the values."""

    group: int
    element: int  # full element of a public tag; low byte (offset in the block) if private
    private_creator: str | None
    texts: frozenset[str]  # upper-case text values
    numbers: frozenset[float]  # values that are numbers


@dataclass(frozen=True)
class Rule:
    """A validated rule: every condition given must hold for ``role`` to apply."""

    name: str
    role: str | None
    manufacturer: re.Pattern[str] | None
    series_description: re.Pattern[str] | None
    protocol_name: re.Pattern[str] | None
    image_type: tuple[frozenset[str], ...]  # each entry: alternatives, one must be a value
    frame_type: tuple[frozenset[str], ...]
    tags: tuple[TagTest, ...]


class DixonRules:
    """An ordered rule list; the first rule that matches a frame gives its role."""

    def __init__(self, rules: list[Rule], source: str) -> None:
        self.rules = tuple(rules)
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> DixonRules:
        """Rules from a YAML file, or the embedded defaults when ``path`` is None."""
        default = config_path(DEFAULT_RULES)
        source = Path(path) if path is not None else default
        data = _read_yaml(source)
        rules, extends = _parse_file(data, str(source))
        if extends and source != default:
            default_rules, _ = _parse_file(_read_yaml(default), str(default))
            rules = rules + default_rules
        return cls(rules, str(source))

    def roles(self, ds: Dataset) -> list[str | None]:
        """The role of every frame (one entry for a single-frame image); None: not Dixon."""
        top = _TopLevel(ds)
        return [self._role(_FrameView(containers), top)
                for containers in _frame_containers(ds)]

    def _role(self, frame: _FrameView, top: _TopLevel) -> str | None:
        for rule in self.rules:
            if _matches(rule, frame, top):
                return rule.role
        return None


# ---- matching ---------------------------------------------------------------------------


class _TopLevel:
    """Instance-level text attributes, read once per dataset."""

    def __init__(self, ds: Dataset) -> None:
        self.text = {
            "manufacturer": str(ds.get("Manufacturer", "") or ""),
            "series_description": str(ds.get("SeriesDescription", "") or ""),
            "protocol_name": str(ds.get("ProtocolName", "") or ""),
        }


class _FrameView:
    """Element values seen from one frame: its functional groups first, then the dataset."""

    def __init__(self, containers: list[Dataset]) -> None:
        self.containers = containers
        self.cache: dict[tuple[int, int, str | None], tuple[object, ...] | None] = {}

    def values(self, group: int, element: int, creator: str | None) -> tuple[object, ...] | None:
        key = (group, element, creator)
        if key not in self.cache:
            self.cache[key] = self._lookup(group, element, creator)
        return self.cache[key]

    def _lookup(self, group: int, element: int, creator: str | None) -> tuple[object, ...] | None:
        for container in self.containers:
            tag = _resolve(container, group, element, creator)
            if tag is not None and tag in container:
                return _element_values(container[tag].value)
        return None

    def words(self, tag: BaseTag) -> frozenset[str] | None:
        found = self.values(tag.group, tag.element, None)
        if found is None:
            return None
        return frozenset(str(v).strip().upper() for v in found)


def _frame_containers(ds: Dataset) -> list[list[Dataset]]:
    """Per frame: the datasets to search, most specific first (per-frame, shared, instance)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    n_frames = int(ds.get("NumberOfFrames", 0) or 0) or (len(per_frame) if per_frame else 1)
    shared_part = _with_items(shared[0]) if shared else []
    frames = []
    for index in range(n_frames):
        own = _with_items(per_frame[index]) if per_frame and index < len(per_frame) else []
        frames.append(own + shared_part + [ds])
    return frames


def _with_items(group: Dataset) -> list[Dataset]:
    """A functional-group item and the items of its macros' sequences."""
    found = [group]
    for element in group:
        if element.VR == "SQ":
            found.extend(item for item in element.value)
    return found


def _resolve(ds: Dataset, group: int, element: int, creator: str | None) -> BaseTag | None:
    if creator is None:
        return Tag(group, element)
    for tag in ds.keys():
        if tag.group == group and 0x10 <= tag.element <= 0xFF:
            value = ds[tag].value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            if text.strip("\x00 ") == creator:
                return Tag(group, (tag.element << 8) | element)
    return None


def _element_values(value: object) -> tuple[object, ...] | None:
    if isinstance(value, Sequence):
        return None
    if isinstance(value, bytes):  # private element of unknown VR (UN, implicit syntax)
        text = value.decode("latin-1").strip("\x00 ")
        if text.isprintable():
            return tuple(text.split("\\"))
        if len(value) in (2, 4):
            return (int.from_bytes(value, "little", signed=True),)
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return tuple(value)
    return (value,)


def _matches(rule: Rule, frame: _FrameView, top: _TopLevel) -> bool:
    for key in ("manufacturer", "series_description", "protocol_name"):
        pattern = getattr(rule, key)
        if pattern is not None and not pattern.search(top.text[key]):
            return False
    if rule.image_type and not _words_match(rule.image_type, frame.words(IMAGE_TYPE)):
        return False
    if rule.frame_type and not _words_match(rule.frame_type, frame.words(FRAME_TYPE)):
        return False
    return all(_tag_matches(test, frame) for test in rule.tags)


def _words_match(required: tuple[frozenset[str], ...], present: frozenset[str] | None) -> bool:
    return present is not None and all(alternatives & present for alternatives in required)


def _tag_matches(test: TagTest, frame: _FrameView) -> bool:
    found = frame.values(test.group, test.element, test.private_creator)
    if found is None:
        return False
    for value in found:
        number = _number(value)
        if number is not None and number in test.numbers:
            return True
        if str(value).strip().upper() in test.texts:
            return True
    return False


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


# ---- loading and validation -------------------------------------------------------------


def _read_yaml(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from exc


def _parse_file(data: object, source: str) -> tuple[list[Rule], bool]:
    if not isinstance(data, dict):
        raise RulesError(f"{source}: expected a mapping with a 'rules' list at the top level")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise RulesError(f"{source}: unknown top-level key(s) {sorted(map(str, unknown))}; "
                         f"allowed: {sorted(_TOP_KEYS)}")
    if data.get("version", 1) != 1:
        raise RulesError(f"{source}: version {data['version']!r} is not supported (use 1)")
    extends = data.get("extends_default", False)
    if not isinstance(extends, bool):
        raise RulesError(f"{source}: extends_default must be true or false")
    items = data.get("rules")
    if not isinstance(items, list) or (not items and not extends):
        raise RulesError(f"{source}: 'rules' must be a non-empty list of rules")
    rules: list[Rule] = []
    names: set[str] = set()
    for index, item in enumerate(items, start=1):
        rule = _parse_rule(item, f"{source}: rule {index}")
        if rule.name in names:
            raise RulesError(f"{source}: rule {index} ({rule.name!r}): field 'name': "
                             "duplicate rule name")
        names.add(rule.name)
        rules.append(rule)
    return rules, extends


def _parse_rule(item: object, where: str) -> Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: a rule must be a mapping of fields")
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RulesError(f"{where}: field 'name': required, a non-empty text")
    where = f"{where} ({name!r})"
    unknown = set(item) - _RULE_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown field(s) {sorted(map(str, unknown))}; "
                         f"allowed: {sorted(_RULE_KEYS)}")
    if "role" not in item:
        raise RulesError(f"{where}: field 'role': required (one of {', '.join(RULE_ROLES)}, "
                         "or null for not-Dixon)")
    role = item["role"]
    if role is not None and role not in RULE_ROLES:
        raise RulesError(f"{where}: field 'role': unknown role {role!r}; use one of "
                         f"{', '.join(RULE_ROLES)}, or null for not-Dixon")
    if not _CONDITIONS & set(item):
        raise RulesError(f"{where}: no condition; give at least one of {sorted(_CONDITIONS)}")
    return Rule(
        name=name,
        role=role,
        manufacturer=_regex(item, "manufacturer", where),
        series_description=_regex(item, "series_description", where),
        protocol_name=_regex(item, "protocol_name", where),
        image_type=_words(item, "image_type", where),
        frame_type=_words(item, "frame_type", where),
        tags=_tag_tests(item, where),
    )


def _regex(item: dict, field: str, where: str) -> re.Pattern[str] | None:
    if field not in item:
        return None
    pattern = item[field]
    if not isinstance(pattern, str) or not pattern:
        raise RulesError(f"{where}: field {field!r}: must be a non-empty regular expression")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise RulesError(f"{where}: field {field!r}: bad regular expression {pattern!r}: "
                         f"{exc}") from exc


def _words(item: dict, field: str, where: str) -> tuple[frozenset[str], ...]:
    if field not in item:
        return ()
    entries = item[field]
    if not isinstance(entries, list) or not entries:
        raise RulesError(f"{where}: field {field!r}: must be a non-empty list of words, "
                         "e.g. [DIXON, WATER] or ['OPP_PHASE|OUT_PHASE']")
    parsed = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise RulesError(f"{where}: field {field!r}: {entry!r} is not a word")
        alternatives = frozenset(a.strip().upper() for a in entry.split("|"))
        if "" in alternatives:
            raise RulesError(f"{where}: field {field!r}: empty alternative in {entry!r}")
        parsed.append(alternatives)
    return tuple(parsed)


def _tag_tests(item: dict, where: str) -> tuple[TagTest, ...]:
    if "tags" not in item:
        return ()
    entries = item["tags"]
    if not isinstance(entries, list) or not entries:
        raise RulesError(f"{where}: field 'tags': must be a non-empty list of "
                         "{tag, private_creator, values} tests")
    tests = []
    for number, entry in enumerate(entries, start=1):
        at = f"{where}: field 'tags' entry {number}"
        if not isinstance(entry, dict):
            raise RulesError(f"{at}: must be a mapping with 'tag' and 'values'")
        unknown = set(entry) - _TAG_KEYS
        if unknown:
            raise RulesError(f"{at}: unknown key(s) {sorted(map(str, unknown))}; "
                             f"allowed: {sorted(_TAG_KEYS)}")
        text = entry.get("tag")
        found = _TAG_TEXT.match(text) if isinstance(text, str) else None
        if found is None:
            raise RulesError(f"{at}: bad tag {text!r}; write it as \"gggg,eeee\" in "
                             "hexadecimal, quoted, e.g. \"2005,1011\"")
        group, element = int(found.group(1), 16), int(found.group(2), 16)
        creator = entry.get("private_creator")
        if creator is not None:
            if not isinstance(creator, str) or not creator.strip():
                raise RulesError(f"{at}: private_creator must be a non-empty text")
            if group % 2 == 0:
                raise RulesError(f"{at}: tag {text} is public (even group) but has a "
                                 "private_creator")
            element &= 0xFF
        values = entry.get("values")
        if not isinstance(values, list) or not values or any(
            isinstance(v, bool) or not isinstance(v, (str, int, float)) for v in values
        ):
            raise RulesError(f"{at}: values must be a non-empty list of texts or numbers")
        numbers = {n for n in (_number(v) for v in values) if n is not None}
        tests.append(TagTest(group, element, creator.strip() if creator else None,
                             frozenset(str(v).strip().upper() for v in values),
                             frozenset(numbers)))
    return tuple(tests)
