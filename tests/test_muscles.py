"""The embedded muscle table: order, codes, SNOMED CT identifiers, label arithmetic, errors."""

from __future__ import annotations

import copy
import itertools
import math
import re

import pytest
import yaml
from myonode_config import config_path
from pydicom.sr.codedict import codes

from common.muscles import (
    MuscleConfigError,
    is_concept_sctid,
    load_muscles,
)

# Huysmans 2023 Table 1, in the project's label order.
EXPECTED_ORDER = [
    "RF", "VL", "VM", "VI", "PC", "AB", "AL", "AM", "BFL",
    "BFB", "ST", "SM", "SR", "TFL", "GC", "Gma", "Gme", "Gmi",
]


# Every muscle of the lower leg, knee to ankle, in label order (labels 19..30).
CALF_MUSCLES = ["TA", "EDL", "EHL", "PL", "PB", "TP", "FDL", "FHL", "SOL", "MG", "LG", "POP"]


@pytest.fixture(scope="module")
def table():
    return load_muscles()


@pytest.fixture()
def raw():
    with open(config_path("muscles.yaml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def all_sctids(table) -> list[str]:
    found = [table.category[1], *(code for code, _ in table.laterality.values())]
    for muscle in table.muscles:
        found.append(muscle.group_code)
        if muscle.snomed_code is not None:
            found.append(muscle.snomed_code)
    return found


def test_eighteen_thigh_muscles_in_table_1_order(table):
    thigh = table.for_region("thigh")
    assert [m.code for m in thigh.muscles] == EXPECTED_ORDER
    assert [m.label for m in thigh.muscles] == list(range(1, 19))
    assert all(m.name for m in table.muscles)


def test_every_calf_muscle_follows_with_its_own_label(table):
    calf = table.for_region("calf")
    assert [m.code for m in calf.muscles] == CALF_MUSCLES
    assert [m.label for m in calf.muscles] == list(range(19, 31))
    assert table.regions == ("thigh", "calf")
    assert table.for_region("calf").label_sets.keys() == {"rohm2021"}
    assert table.for_region("thigh").label_sets == {}
    with pytest.raises(ValueError, match="region must be one of thigh, calf"):
        table.for_region("arm")


def test_rohm_seven_groups_derive_from_the_calf_muscles(table):
    groups = table.label_sets["rohm2021"].groups
    assert [g.code for g in groups] == ["GL", "GM", "SOL", "TA", "PER", "EDL", "TP"]
    mapping = table.group_labels("rohm2021")
    assert mapping[table.label_of("PL", "right")] == mapping[table.label_of("PB", "right")] == 5
    assert mapping[table.label_of("EHL", "left")] == table.left_label_offset + 6
    for code in ("FDL", "FHL", "POP", "RF"):  # not segmented by Rohm 2021
        assert table.label_of(code, "right") not in mapping
    assert sorted(set(mapping.values())) == [*range(1, 8), *range(101, 108)]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["muscles"][0].pop("region"), "muscle 'RF' (muscles[0]): missing field 'region'"),
        (lambda d: d["muscles"][0].update(region="hip"), "region must be one of thigh, calf, got 'hip'"),
        (lambda d: d["label_sets"]["rohm2021"]["groups"][0]["members"].append("RF"),
         "groups[0]: 'RF' is not a calf muscle"),
        (lambda d: d["label_sets"]["rohm2021"]["groups"][1]["members"].append("LG"),
         "groups[1]: 'LG' is already in group 'GL'"),
    ],
)
def test_region_and_label_set_errors_name_the_entry(raw, tmp_path, edit, message):
    edit(raw)
    path = tmp_path / "muscles.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(MuscleConfigError, match=re.escape(message)):
        load_muscles(path)


def test_codes_labels_and_snomed_codes_are_unique(table):
    assert len({m.code for m in table.muscles}) == 30
    assert len({m.label for m in table.muscles}) == 30
    own = [m.snomed_code for m in table.muscles if m.snomed_code is not None]
    assert len(own) == len(set(own))


def test_checker_accepts_dicom_codes_and_rejects_corrupted_ones():
    # Independent reference data: the SNOMED CT codes of DICOM PS3.16 context groups.
    dicom = [
        getattr(group, name).value
        for group in (codes.cid244, codes.cid7150, codes.cid7166, codes.cid7192)
        for name in group.dir()
        if getattr(group, name).scheme_designator == "SCT"
    ]
    assert len(dicom) > 100
    for code in dicom:
        assert is_concept_sctid(code), code
        wrong_check = code[:-1] + str((int(code[-1]) + 1) % 10)
        assert not is_concept_sctid(wrong_check), code


def test_sctids_have_check_digit_and_international_concept_partition(table):
    for code in all_sctids(table):
        assert code.isdigit() and 6 <= len(code) <= 18, code
        assert is_concept_sctid(code), code
        assert code[-3:-1] == "00", code  # concept partition of the International Edition


def test_laterality_and_category_match_dicom(table):
    assert table.laterality["right"] == (codes.cid244.Right.value, codes.cid244.Right.meaning)
    assert table.laterality["left"] == (codes.cid244.Left.value, codes.cid244.Left.meaning)
    anatomical = codes.cid7150.AnatomicalStructure
    assert table.category == ("SCT", anatomical.value, anatomical.meaning)


def test_colours_are_valid_and_distinct(table):
    for muscle in table.muscles:
        assert len(muscle.color) == 3 and all(0 <= c <= 255 for c in muscle.color)
    closest = min(
        math.dist(a.color, b.color) for a, b in itertools.combinations(table.muscles, 2)
    )
    assert closest >= 50


@pytest.mark.parametrize("side", ["right", "left"])
def test_label_round_trip(table, side):
    for muscle in table.muscles:
        label = table.label_of(muscle.code, side)
        assert table.decode(label) == (muscle, side)
        assert label == muscle.label + (100 if side == "left" else 0)


def test_combined_labels_cover_both_legs(table):
    labels = table.combined_labels()
    assert sorted(labels) == list(range(1, 31)) + list(range(101, 131))
    assert labels[7] == ("AL", "right")
    assert labels[118] == ("Gmi", "left")
    assert labels[128] == ("MG", "left")


def test_lookup_errors(table):
    with pytest.raises(KeyError, match="unknown muscle code 'XX'"):
        table.by_code("XX")
    with pytest.raises(ValueError, match="side must be"):
        table.label_of("RF", "both")
    for label in (0, 31, 100, 131):
        with pytest.raises(ValueError, match="not a muscle label"):
            table.decode(label)


def write(tmp_path, data):
    path = tmp_path / "muscles.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_site_file_loads(tmp_path, raw):
    data = copy.deepcopy(raw)
    data["muscles"][0]["color"] = [1, 2, 3]
    table = load_muscles(write(tmp_path, data))
    assert table.by_code("RF").color == (1, 2, 3)


def test_missing_snomed_concept_is_none(table):
    vi = table.by_code("VI")
    assert vi.snomed_code is None and vi.snomed_meaning is None
    assert is_concept_sctid(vi.group_code)


def mutate_first(raw, **changes):
    data = copy.deepcopy(raw)
    data["muscles"][0].update(changes)
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: mutate_first(r, label=2), "duplicate label 2"),
        (lambda r: mutate_first(r, code="VL"), "duplicate code 'VL'"),
        (lambda r: mutate_first(r, label=0), r"label must be an integer in 1\.\.99"),
        (lambda r: mutate_first(r, label=100), r"label must be an integer in 1\.\.99"),
        (lambda r: mutate_first(r, label=True), r"label must be an integer in 1\.\.99"),
        (lambda r: mutate_first(r, color=[256, 0, 0]), r"color must be \[r, g, b\]"),
        (lambda r: mutate_first(r, color=[1, 2]), r"color must be \[r, g, b\]"),
        (lambda r: mutate_first(r, color=[245, 130, 48]), "duplicate color"),
        (lambda r: mutate_first(r, snomed={"code": "72226002", "meaning": "x"}), "not a valid"),
        (lambda r: mutate_first(r, snomed={"code": 72226001, "meaning": "x"}), "not a valid"),
        (lambda r: {**r, "left_label_offset": 50}, "left_label_offset must be"),
        (lambda r: {k: v for k, v in r.items() if k != "laterality"}, "missing field 'laterality'"),
        (lambda r: {**r, "muscles": []}, "non-empty list"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, raw, change, message):
    with pytest.raises(MuscleConfigError, match=message):
        load_muscles(write(tmp_path, change(raw)))


def test_missing_field_names_the_muscle(tmp_path, raw):
    data = copy.deepcopy(raw)
    del data["muscles"][3]["name"]
    expected = r"muscle 'VI' \(muscles\[3\]\): missing field 'name'"
    with pytest.raises(MuscleConfigError, match=expected):
        load_muscles(write(tmp_path, data))
