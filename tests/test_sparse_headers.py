"""``myonode process`` on sources stripped of every optional attribute, as anonymised studies are.

Real studies often lack Type 2 attributes (PatientBirthDate, AccessionNumber, StudyID, ...) or
carry them empty, and carry few Type 3 ones. The node accepts such instances (it needs only
identity, pixels and plane geometry), so SEG and SR must be written for them, with the Type 2
attributes empty and nothing made up, and dciodvfy must find no error in them. What still
makes a SEG impossible (a Type 1 attribute the node does not check, a value highdicom refuses)
fails before segmentation with a message naming the file and the attribute.

Which attributes are Type 1, 2 or 3 comes from PS3.3 as highdicom ships it (its
``_standard`` tables, the data its own checks use).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from highdicom._standard_utils import (
    get_iod_module_map,
    get_module_attribute_map,
    get_sop_class_iod_map,
)
from validators import dciodvfy_errors

from dicom_node.phantom.study import PhantomOptions, make_phantom
from dicom_node.process import run_process

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
VENDORS = {"siemens": MR_IMAGE_STORAGE, "philips-enhanced": ENHANCED_MR_IMAGE_STORAGE}
REQUIRED = ("1", "1C")
# Attribute families by module of the MR Image IOD (PS3.3 A.4).
FAMILIES = {
    "patient": ("patient", "clinical-trial-subject"),
    "study": ("general-study", "patient-study", "clinical-trial-study"),
    "series": ("general-series", "clinical-trial-series"),
    "equipment": ("general-equipment",),
}
# What the node needs to accept and place an instance (receive/scp.py identity and pixel
# checks, study/scan.py geometry) and to give it a Dixon role (ImageType, Siemens rules).
NODE_NEEDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
    "BitsAllocated", "PixelData", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "ImageType",
)
# Type 2 attributes of the SEG and SR that are copied from the source: empty, never guessed.
COPIED_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "ReferringPhysicianName",
)


def _root_attributes(
    sop_class: str, modules: tuple[str, ...] | None, types: tuple[str, ...]
) -> set[str]:
    """Keywords of the IOD's top-level attributes of ``types`` (in ``modules``); the
    functional groups of Enhanced MR are kept whole."""
    iod = get_sop_class_iod_map()[sop_class]
    table = get_module_attribute_map()
    return {
        attribute["keyword"]
        for module in get_iod_module_map()[iod]
        if modules is None or module["key"] in modules
        for attribute in table[module["key"]]
        if not attribute["path"] and attribute["type"] in types
    }


def _strip(folder: Path, keep: set[str] | None = None, drop: set[str] | None = None) -> None:
    """Rewrite every file of ``folder``: only ``keep`` left, or ``drop`` removed."""
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        for element in list(ds):
            if (keep is not None and element.keyword not in keep) or (
                drop is not None and element.keyword in drop
            ):
                del ds[element.tag]
        ds.save_as(path, enforce_file_format=True)


def _phantom(root: Path, vendor: str) -> Path:
    make_phantom(root, PhantomOptions(vendor=vendor, stacks=2, slices=8, matrix=48, seed=7))
    return root / "dicom"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Siemens-style study (one single-frame series per role and stack)."""
    return _phantom(tmp_path_factory.mktemp("sparse-phantom"), "siemens")


def _copy(phantom: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "dicom"
    shutil.copytree(phantom, folder)
    return folder


def _process_and_validate(folder: Path, out: Path, pipeline: Path) -> list[pydicom.Dataset]:
    result = run_process(folder, out, pipeline, "cpu")
    paths = [*result.seg_paths, result.sr_path]
    assert len(result.seg_paths) == 2 and result.sr_path is not None
    for path in paths:
        assert dciodvfy_errors(path) == [], path
    return [pydicom.dcmread(path) for path in paths]


@pytest.mark.parametrize("vendor", sorted(VENDORS))
def test_only_type_1_attributes_still_give_seg_and_sr(
    vendor: str, phantom: Path, tmp_path: Path, tiny_pipeline: Path
) -> None:
    keep = _root_attributes(VENDORS[vendor], None, REQUIRED)
    if vendor == "siemens":
        assert set(NODE_NEEDS) <= keep
        folder = _copy(phantom, tmp_path)
    else:  # geometry and roles are in the functional groups
        folder = _phantom(tmp_path / "study", vendor)
    _strip(folder, keep=keep)
    left = set(pydicom.dcmread(next(folder.rglob("*.dcm"))).dir())
    assert "PatientBirthDate" not in left and "AccessionNumber" not in left
    assert left <= keep
    for ds in _process_and_validate(folder, tmp_path / "out", tiny_pipeline):
        for keyword in COPIED_TYPE2:
            assert keyword in ds and ds[keyword].value in (None, ""), (keyword, ds.Modality)
    seg = pydicom.dcmread(tmp_path / "out" / "seg" / "stack0.dcm")
    # the SEG's own voxels are as thick as its planes are apart (Type 1C in Pixel Measures)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(float(measures.SpacingBetweenSlices))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_family_without_optional_attributes(
    family: str, phantom: Path, tmp_path: Path, tiny_pipeline: Path
) -> None:
    drop = _root_attributes(MR_IMAGE_STORAGE, FAMILIES[family], ("2", "2C", "3"))
    folder = _copy(phantom, tmp_path)
    _strip(folder, drop=drop)
    assert not drop & set(pydicom.dcmread(next(folder.rglob("*.dcm"))).dir())
    _process_and_validate(folder, tmp_path / "out", tiny_pipeline)


def test_a_missing_frame_of_reference_fails_before_segmentation(
    phantom: Path, tmp_path: Path, tiny_pipeline: Path
) -> None:
    # Type 1, but not checked on receipt: a SEG cannot place its frames without it
    folder = _copy(phantom, tmp_path)
    _strip(folder, drop={"FrameOfReferenceUID"})
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"\.dcm: FrameOfReferenceUID or SOPClassUID missing"):
        run_process(folder, out, tiny_pipeline, "cpu")
    assert not (out / "labels.nii.gz").exists()  # stopped before segmenting


@pytest.mark.parametrize(
    ("keyword", "value"), [("PatientBirthDate", "1990"), ("PatientSex", "male")]
)
def test_a_value_highdicom_refuses_fails_before_segmentation(
    keyword: str, value: str, phantom: Path, tmp_path: Path, tiny_pipeline: Path
) -> None:
    folder = _copy(phantom, tmp_path)
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds[keyword].value = value
        ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"\.dcm: {keyword} '{value}' is not"):
        run_process(folder, out, tiny_pipeline, "cpu")
    assert not (out / "labels.nii.gz").exists()
