"""Dixon role rules: every vendor flavour, real-world variants, non-Dixon images, site rules."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from common.geometry import VolumeGeometry
from dicom_node.phantom.attributes import StudyInfo
from dicom_node.phantom.writer import VENDORS, StackImages, write_study
from dicom_node.study.dixon_roles import ROLES, DixonRules, RulesError

INFO = StudyInfo(
    patient_name="PHANTOM^ROLES", patient_id="R1", birth_date="19700101", sex="O",
    study_instance_uid="1.2.826.0.1.3680043.10.2.1", study_date="20260103",
    study_time="090000", accession="R1", frame_of_reference_uid="1.2.826.0.1.3680043.10.2.2",
)
# Each role a constant: after rescale, magnitudes are c * (1, 2, 3, 4) x 100 with one c per
# stack (c * 100 is far above 100), fat fraction is 25 percent.
LEVELS = {"water": 100.0, "fat": 200.0, "in_phase": 300.0, "out_of_phase": 400.0}
FF_PERCENT = 25.0


@pytest.fixture(scope="module")
def rules() -> DixonRules:
    return DixonRules.load()


def constant_stack() -> StackImages:
    geometry = VolumeGeometry((3, 8, 8), (2.0, 1.5, 1.5), (-6.0, -6.0, 0.0),
                              (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    images = {role: np.full(geometry.shape, level, np.float32) for role, level in LEVELS.items()}
    images["fat_fraction"] = np.full(geometry.shape, FF_PERCENT, np.float32)
    return StackImages(geometry, images)


def frame_means(path: Path) -> list[float]:
    """Mean real-world value of each frame of a file (stored * slope + intercept)."""
    ds = pydicom.dcmread(path)
    if "PerFrameFunctionalGroupsSequence" in ds:
        planes = ds.pixel_array
        slopes = [float(g.PixelValueTransformationSequence[0].RescaleSlope)
                  for g in ds.PerFrameFunctionalGroupsSequence]
    else:
        planes = ds.pixel_array[None]
        slopes = [float(ds.get("RescaleSlope", 1.0))]
    return [float(plane.mean()) * slope for plane, slope in zip(planes, slopes)]


@pytest.mark.parametrize("vendor", VENDORS)
def test_every_written_role_is_recognised(vendor, rules, tmp_path):
    paths = write_study(tmp_path, vendor, INFO, [constant_stack()], np.random.default_rng(5))
    values, found = [], []
    for path in paths:
        values.extend(frame_means(path))
        found.extend(rules.roles(pydicom.dcmread(path, stop_before_pixels=True)))
    unit = min(v for v in values if v > 2 * FF_PERCENT) / LEVELS["water"]
    by_level = {level: role for role, level in LEVELS.items()}
    truth = ["fat_fraction" if abs(v - FF_PERCENT) < 0.05 else by_level[round(v / unit, -2)]
             for v in values]
    assert found == truth
    expected = set(ROLES) if vendor.startswith("philips") else set(LEVELS)
    assert set(found) == expected


def test_enhanced_roles_are_per_frame(rules, tmp_path):
    (path,) = write_study(tmp_path, "philips-enhanced", INFO, [constant_stack()],
                          np.random.default_rng(5))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    order = ["water", "fat", "in_phase", "out_of_phase", "fat_fraction"]
    assert rules.roles(ds) == order * 3  # slice-major, the type varies fastest


def image(image_type: list[str], manufacturer: str = "SIEMENS", description: str = "",
          protocol: str = "") -> Dataset:
    ds = Dataset()
    ds.ImageType = image_type
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = description
    ds.ProtocolName = protocol
    return ds


def philips_private(ds: Dataset, code: str, block: int = 0x10) -> Dataset:
    ds.add_new((0x2005, block), "LO", "Philips MR Imaging DD 001")
    ds.add_new((0x2005, (block << 8) | 0x11), "CS", code)
    return ds


def lower_case(values: list[str]) -> Dataset:
    """Non-conforming lower-case ImageType (pydicom warns; some writers do it anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return image(values)


def philips_unknown_vr(ds: Dataset, code: str) -> Dataset:
    """The code as raw bytes (UN), as implicit-syntax files without a private dictionary give."""
    ds.add_new((0x2005, 0x0010), "LO", "Philips MR Imaging DD 001")
    ds.add_new((0x2005, 0x1011), "UN", code.encode("ascii"))
    return ds


def ge_private(ds: Dataset, value: int) -> Dataset:
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", value)
    return ds


VARIANTS = [
    ("siemens OUT_PHASE spelling", image(["DERIVED", "PRIMARY", "DIXON", "OUT_PHASE"]),
     "out_of_phase"),
    ("siemens extra values", image(["DERIVED", "PRIMARY", "DIXON", "WATER", "NORM", "DIS3D"]),
     "water"),
    ("lower-case image type", lower_case(["derived", "primary", "dixon", "fat"]), "fat"),
    ("siemens description only",
     image(["ORIGINAL", "PRIMARY", "M", "ND"], description="t1_vibe_dixon_cor_opp"),
     "out_of_phase"),
    ("siemens numbered suffix",
     image(["DERIVED", "PRIMARY", "M"], description="wb_t1_vibe_dixon_tra_W_1"), "water"),
    ("ge InPhase image type", image(["DERIVED", "PRIMARY", "DIXON", "INPHASE"],
                                    "GE MEDICAL SYSTEMS"), "in_phase"),
    ("ge description only",
     image(["ORIGINAL", "PRIMARY", "OTHER"], "GE MEDICAL SYSTEMS", "WATER: Ax LAVA-Flex"),
     "water"),
    ("ge OutPhase description",
     image(["ORIGINAL", "PRIMARY", "OTHER"], "GE MEDICAL SYSTEMS", "OutPhase: Ax LAVA-Flex"),
     "out_of_phase"),
    ("ge magnitude private code", ge_private(image(["DERIVED", "PRIMARY", "DIXON", "FAT"],
                                                   "GE MEDICAL SYSTEMS"), 0), "fat"),
    ("philips classic W", image(["DERIVED", "PRIMARY", "W", "W", "DERIVED"],
                                "Philips Healthcare"), "water"),
    ("philips classic FF", image(["DERIVED", "PRIMARY", "FF", "FF", "DERIVED"],
                                 "Philips Medical Systems"), "fat_fraction"),
    ("philips private only, other block",
     philips_private(image(["ORIGINAL", "PRIMARY", "T1", "MIXED"], "Philips"), "OP", 0x11),
     "out_of_phase"),
    ("philips private as UN bytes",
     philips_unknown_vr(image(["ORIGINAL", "PRIMARY", "T1"], "Philips"), "IP"), "in_phase"),
    ("fat fraction description", image(["DERIVED", "SECONDARY", "OTHER"],
                                       description="mDIXON Quant PDFF"), "fat_fraction"),
]


@pytest.mark.parametrize("label, ds, role", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_real_world_variants(label, ds, role, rules):
    assert rules.roles(ds) == [role]


NOT_DIXON = [
    ("localizer", image(["ORIGINAL", "PRIMARY", "LOCALIZER"], "GE MEDICAL SYSTEMS",
                        "3-Plane Loc")),
    ("siemens localizer", image(["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"],
                                description="localizer")),
    ("phase of a dixon series", image(["ORIGINAL", "PRIMARY", "P", "ND"],
                                      description="t1_vibe_dixon_tra_opp")),
    ("philips phase map", image(["ORIGINAL", "PRIMARY", "PHASE MAP", "P", "FFE"],
                                "Philips Medical Systems", "mDIXON_6pt_tra")),
    ("ge phase by private code", ge_private(
        image(["ORIGINAL", "PRIMARY", "OTHER"], "GE MEDICAL SYSTEMS", "InPhase: Ax LAVA-Flex"),
        1)),
    ("short code from another vendor", image(["DERIVED", "PRIMARY", "W"], "SIEMENS")),
    ("t2 tse", image(["ORIGINAL", "PRIMARY", "M", "NORM"], description="t2_tse_cor")),
    ("no image type at all", Dataset()),
]


@pytest.mark.parametrize("label, ds", NOT_DIXON, ids=[v[0] for v in NOT_DIXON])
def test_non_dixon_images_have_no_role(label, ds, rules):
    assert rules.roles(ds) == [None]


def frame_group(frame_type: list[str], component: str = "MAGNITUDE") -> Dataset:
    frame = Dataset()
    frame.FrameType = frame_type
    frame.ComplexImageComponent = component
    group = Dataset()
    group.MRImageFrameTypeSequence = Sequence([frame])
    return group


def test_enhanced_frame_types_pre_r12_and_phase_frames(rules):
    ds = Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "T1", "MIXED"]
    ds.Manufacturer = "Philips Medical Systems"
    ds.NumberOfFrames = 4
    ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    ds.PerFrameFunctionalGroupsSequence = Sequence([
        frame_group(["ORIGINAL", "PRIMARY", "T1", "W"]),
        frame_group(["ORIGINAL", "PRIMARY", "T1", "OP"]),
        frame_group(["ORIGINAL", "PRIMARY", "T1", "WATER"], component="PHASE"),
        frame_group(["ORIGINAL", "PRIMARY", "T1", "M"]),
    ])
    assert rules.roles(ds) == ["water", "out_of_phase", None, None]


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site_rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_site_rules_extend_and_override_the_defaults(rules, tmp_path):
    canon = image(["ORIGINAL", "PRIMARY", "WFOP", "W_ONLY"], "CANON_MEC")
    siemens_fat = image(["DERIVED", "PRIMARY", "DIXON", "FAT"], description="dixon_F")
    siemens_water = image(["DERIVED", "PRIMARY", "DIXON", "WATER"])
    assert rules.roles(canon) == [None]
    site = DixonRules.load(write_rules(tmp_path, """
extends_default: true
rules:
  - name: canon-wfop-water
    role: water
    manufacturer: canon
    image_type: [W_ONLY]
  - name: ignore-test-fat
    role: null
    series_description: '^dixon_F$'
"""))
    assert site.roles(canon) == ["water"]
    assert site.roles(siemens_fat) == [None]  # the site rule is tried before the defaults
    assert site.roles(siemens_water) == ["water"]  # defaults still apply
    alone = DixonRules.load(write_rules(tmp_path, """
rules:
  - name: canon-wfop-water
    role: water
    image_type: [W_ONLY]
"""))
    assert alone.roles(canon) == ["water"]
    assert alone.roles(siemens_water) == [None]


@pytest.mark.parametrize("text, message", [
    ("rules:\n  - {name: a, role: wter, image_type: [WATER]}\n",
     r"rule 1 \('a'\): field 'role': unknown role 'wter'"),
    ("rules:\n  - {name: ok, role: fat, image_type: [FAT]}\n"
     "  - {name: b, role: water, series_description: '_w('}\n",
     r"rule 2 \('b'\): field 'series_description': bad regular expression"),
    ("rules:\n  - name: c\n    role: water\n    tags: [{tag: '2005-1011', values: [W]}]\n",
     r"rule 1 \('c'\): field 'tags' entry 1: bad tag '2005-1011'"),
    ("rules:\n  - name: d\n    role: water\n"
     "    tags: [{tag: '0008,0008', private_creator: X, values: [W]}]\n",
     r"rule 1 \('d'\): field 'tags' entry 1: tag 0008,0008 is public"),
    ("rules:\n  - {name: e, role: water}\n", r"rule 1 \('e'\): no condition"),
    ("rules:\n  - {name: f, role: water, imagetype: [WATER]}\n",
     r"rule 1 \('f'\): unknown field\(s\) \['imagetype'\]"),
    ("rules:\n  - {name: g, image_type: [WATER]}\n", r"rule 1 \('g'\): field 'role': required"),
    ("rules:\n  - {name: h, role: fat, image_type: [FAT]}\n"
     "  - {name: h, role: water, image_type: [WATER]}\n", r"rule 2 \('h'\).*duplicate"),
    ("rules:\n  - {role: fat, image_type: [FAT]}\n", r"rule 1: field 'name': required"),
    ("rules: [\n", r"not valid YAML"),
    ("rulez: []\n", r"unknown top-level key"),
    ("rules:\n  - name: i\n    role: fat\n    tags: [{tag: '0043,102F', values: []}]\n",
     r"rule 1 \('i'\): field 'tags' entry 1: values must be a non-empty list"),
])
def test_malformed_rules_name_the_rule_and_field(text, message, tmp_path):
    with pytest.raises(RulesError, match=message) as caught:
        DixonRules.load(write_rules(tmp_path, text))
    assert "site_rules.yaml" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_rules_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        DixonRules.load(tmp_path / "absent.yaml")
