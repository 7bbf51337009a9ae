"""DICOM-SEG and SR output (reporting/), checked against phantom truth and real validators.

Each phantom is written once per module: a 3-stack Siemens-style study (single-frame images,
one series per role) and a 2-stack Philips Enhanced MR study (one multi-frame instance per
stack holding every role). The phantom truth labels on the stitched grid are the
segmentation, and ``inference.quantify`` on the phantom's F/(F+W) gives ``results.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from validators import (
    PixelMedRun,
    dciodvfy_errors,
    dcmjs_segments,
    missing_tool,
    pixelmed_errors,
    pixelmed_missing,
    start_pixelmed,
)

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from common.study import StudyStacks
from dicom_node.phantom.study import PhantomOptions, make_phantom, stack_slabs
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import plan_stitch, stitch
from inference.fat_fraction import ff_from_water_fat
from inference.quantify import quantify
from reporting import codes
from reporting.resample import labels_on_stack
from reporting.seg import (
    ModelInfo,
    ReportingConfigError,
    build_segmentations,
    load_reporting_config,
    myonode_version,
    study_segments,
)
from reporting.sr import build_report

MODEL = ModelInfo("phantom-model", "0.1", "Not for clinical use: trained on synthetic phantoms.")
SIEMENS = PhantomOptions(vendor="siemens", stacks=3, slices=24, matrix=96, seed=3)
ENHANCED = PhantomOptions(vendor="philips-enhanced", stacks=2, slices=20, matrix=64, seed=4)
TABLE = load_muscles()
AXES = ((1, 0, 0), (0, 1, 0), (0, 0, 1))  # row, column, slice directions of an axial grid
BINARY_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"


@dataclass
class Case:
    """One phantom study with its SEGs and SR built, written and being validated."""

    options: PhantomOptions
    study: StudyStacks
    grid: VolumeGeometry
    labels: np.ndarray
    results: dict
    segs: list[Dataset]
    sr: Dataset
    seg_paths: list[Path]
    sr_path: Path
    pixelmed: PixelMedRun | None
    pixelmed_missing: str = ""

    def stack_truth(self, index: int) -> np.ndarray:
        """Truth labels of stack ``index``: its slab of the phantom's stitched grid."""
        start, stop = stack_slabs(self.options)[index]
        return self.labels[start:stop]

    def segment_numbers(self) -> np.ndarray:
        return segment_numbers(self.labels)


def segment_numbers(labels: np.ndarray) -> np.ndarray:
    """Combined label -> expected segment number (sorted present labels -> 1..N)."""
    lut = np.zeros(labels.max() + 1, dtype=np.int64)
    present = np.unique(labels[labels > 0])
    lut[present] = np.arange(1, present.size + 1)
    return lut


def results_for(study: StudyStacks, labels: np.ndarray, grid: VolumeGeometry) -> dict:
    """``results.json`` content as ``myonode process`` writes it."""
    images = stitch(study, roles=["water", "fat"]).images
    quantification = quantify(
        labels, ff_from_water_fat(images["water"], images["fat"]), grid.spacing,
        TABLE.combined_labels(),
    )
    return {
        "study_instance_uid": study.study_instance_uid,
        "model": {"name": MODEL.name, "version": MODEL.version},
        "overall_ff_pct": quantification.overall.ff_mean_pct,
        "muscles": [m.to_dict() for m in quantification.muscles],
        "timings_s": {},
    }


def load_study(root: Path) -> tuple[StudyStacks, VolumeGeometry, np.ndarray]:
    studies = group_studies(scan_folder(root / "dicom", DixonRules.load()).frames)
    assert len(studies) == 1
    study = studies[0]
    # the NIfTI holds the [k, j, i] truth transposed to [i, j, k]
    labels = np.asarray(nib.load(root / "truth" / "labels.nii.gz").dataobj).transpose(2, 1, 0)
    return study, plan_stitch(study.stacks).geometry, np.ascontiguousarray(labels)


def build_case(root: Path, options: PhantomOptions, pixelmed_sr: bool) -> Case:
    make_phantom(root, options)
    study, grid, labels = load_study(root)
    results = results_for(study, labels, grid)
    segs = build_segmentations(study, labels, grid, MODEL)
    sr = build_report(study, segs, results, MODEL)
    out = root / "reporting"
    out.mkdir()
    seg_paths = []
    for index, seg in enumerate(segs):
        seg_paths.append(out / f"seg{index}.dcm")
        seg.save_as(seg_paths[-1], enforce_file_format=True)
    sr_path = out / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    pixelmed_srs = []
    if pixelmed_sr:
        # PixelMed's SR validator takes about a second per measurement group, a minute for
        # the full report, so it checks a report of the same build over three muscles (all
        # groups have the same structure); dciodvfy and highdicom check the full one.
        subset = dict(results, muscles=[m for m in results["muscles"] if m["voxels"]][:3])
        pixelmed_srs.append(out / "sr_three_muscles.dcm")
        build_report(study, segs, subset, MODEL).save_as(pixelmed_srs[0], enforce_file_format=True)
    # PixelMed needs tens of seconds: start it now, collect its reports in the PixelMed test
    missing = pixelmed_missing()
    run = None if missing else start_pixelmed(seg_paths, pixelmed_srs)
    return Case(options, study, grid, labels, results, segs, sr, seg_paths, sr_path, run, missing)


@pytest.fixture(scope="module")
def siemens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    case = build_case(tmp_path_factory.mktemp("siemens"), SIEMENS, pixelmed_sr=True)
    yield case
    if case.pixelmed is not None:
        case.pixelmed.stop()


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Case]:
    # its SR has the same structure as the Siemens one
    case = build_case(tmp_path_factory.mktemp("enhanced"), ENHANCED, pixelmed_sr=False)
    yield case
    if case.pixelmed is not None:
        case.pixelmed.stop()


@pytest.fixture(scope="module", autouse=True)
def both_studies_first(siemens: Case, enhanced: Case) -> None:
    """Build both studies before any test, so that PixelMed runs behind all the others."""


@pytest.fixture(scope="module", params=["siemens", "enhanced"])
def case(request: pytest.FixtureRequest) -> Case:
    return request.getfixturevalue(request.param)


# --- configuration -------------------------------------------------------------------------


def test_default_configuration() -> None:
    config = load_reporting_config()
    assert config.reference_role == "water"
    assert config.segmentation_type == "BINARY"


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "reporting.yaml"
    text = (Path(__file__).parents[1] / "config" / "reporting.yaml").read_text()
    path.write_text(text.replace("segmentation_type: BINARY", "segmentation_type: FRACTIONAL"))
    with pytest.raises(ReportingConfigError, match="segmentation_type"):
        load_reporting_config(path)
    path.write_text(text.replace("reference_role: water", "reference_role: phase"))
    with pytest.raises(ReportingConfigError, match="reference_role"):
        load_reporting_config(path)


def test_model_info_from_a_model_package() -> None:
    package = SimpleNamespace(name="huysmans-thigh", version="1.0", intended_use="research")
    assert ModelInfo.from_package(package) == ModelInfo("huysmans-thigh", "1.0", "research")


# --- resampling ------------------------------------------------------------------------------


def test_labels_on_a_slab_are_copied() -> None:
    grid = VolumeGeometry((10, 6, 5), (2.0, 1.5, 1.5), (-3.0, -4.0, 7.0), *AXES)
    labels = np.random.default_rng(0).integers(0, 120, grid.shape).astype(np.uint8)
    assert np.array_equal(labels_on_stack(labels, grid, grid.sub_slab(3, 8)), labels[3:8])


def test_labels_on_a_coarser_shifted_grid_take_the_nearest_voxel() -> None:
    grid = VolumeGeometry((12, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), *AXES)
    labels = np.arange(np.prod(grid.shape), dtype=np.int32).reshape(grid.shape)
    # 2 mm slices and pixels, origin 0.4 mm off: stack voxel (k, j, i) sits at grid
    # (2k + 0.4, 2j + 0.4, 2i + 0.4) -> nearest (2k, 2j, 2i)
    stack = VolumeGeometry((8, 4, 4), (2.0, 2.0, 2.0), (0.4, 0.4, 0.4), *AXES)
    out = labels_on_stack(labels, grid, stack)
    assert np.array_equal(out[:6], labels[0:12:2, 0:8:2, 0:8:2])
    assert not out[6:].any()  # beyond the stitched grid


# --- SEG content -----------------------------------------------------------------------------


def test_one_seg_per_stack_on_the_water_series(case: Case) -> None:
    assert len(case.segs) == len(case.study.stacks)
    for stack, seg in zip(case.study.stacks, case.segs):
        assert seg.SOPClassUID == BINARY_SOP_CLASS and seg.SegmentationType == "BINARY"
        water = [f for f in stack.roles["water"] if f is not None]
        series = seg.ReferencedSeriesSequence
        assert [s.SeriesInstanceUID for s in series] == [stack.series["water"]]
        instances = {i.ReferencedSOPInstanceUID for i in series[0].ReferencedInstanceSequence}
        assert instances == {f.sop_instance_uid for f in water}
        # frame numbers: None for single-frame images, the water frames of an Enhanced MR
        # instance that also holds fat, in-phase and out-of-phase frames
        water_frames = {(f.sop_instance_uid, f.frame_number) for f in water}
        for item in seg.PerFrameFunctionalGroupsSequence:
            (source,) = item.DerivationImageSequence[0].SourceImageSequence
            number = source.get("ReferencedFrameNumber")
            frame = int(number) if number else None
            assert (source.ReferencedSOPInstanceUID, frame) in water_frames


def test_patient_study_and_frame_of_reference_are_carried_over(case: Case) -> None:
    source = pydicom.dcmread(case.study.stacks[0].roles["water"][0].path, stop_before_pixels=True)
    for seg in case.segs:
        for keyword in (
            "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
            "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "FrameOfReferenceUID",
        ):
            assert seg[keyword].value == source[keyword].value, keyword
    assert case.sr.PatientID == source.PatientID
    assert case.sr.StudyInstanceUID == source.StudyInstanceUID


def test_segments_are_numbered_and_coded_alike_in_every_seg(case: Case) -> None:
    present = np.unique(case.labels[case.labels > 0])
    tracking = {}
    for seg in case.segs:
        numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
        assert numbers == list(range(1, present.size + 1))
        for number, (segment, label) in enumerate(zip(seg.SegmentSequence, present), start=1):
            muscle, side = TABLE.decode(int(label))
            assert segment.SegmentLabel == f"{muscle.name}, {side}"
            category = segment.SegmentedPropertyCategoryCodeSequence[0]
            assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
            kind = segment.SegmentedPropertyTypeCodeSequence[0]
            own = muscle.snomed_code is not None
            assert kind.CodeValue == (muscle.snomed_code if own else muscle.group_code)
            assert (muscle.name in segment.SegmentDescription)
            assert own or muscle.group_meaning in segment.SegmentDescription
            (modifier,) = kind.SegmentedPropertyTypeModifierCodeSequence
            assert modifier.CodeValue == TABLE.laterality[side][0]
            assert segment.SegmentAlgorithmType == "AUTOMATIC"
            (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
            assert algorithm.AlgorithmName == MODEL.name
            assert algorithm.AlgorithmVersion == MODEL.version
            assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
            lab = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue)
            assert np.allclose(lab.to_rgb(), muscle.color, atol=1)
            tracking.setdefault(number, segment.TrackingUID)
            assert segment.TrackingUID == tracking[number]  # same segment, every SEG


def test_masks_round_trip_to_the_truth_on_each_stack(case: Case) -> None:
    lut = case.segment_numbers()
    for index, (stack, path) in enumerate(zip(case.study.stacks, case.seg_paths)):
        seg = hd.seg.segread(path)
        expected = lut[case.stack_truth(index)]
        water = stack.roles["water"]
        if case.options.vendor == "philips-enhanced":
            masks = seg.get_pixels_by_source_frame(
                water[0].sop_instance_uid,
                [f.frame_number for f in water],
                combine_segments=True,
                assert_missing_frames_are_empty=True,
            )
        else:
            masks = seg.get_pixels_by_source_instance(
                [f.sop_instance_uid for f in water],
                combine_segments=True,
                assert_missing_frames_are_empty=True,
            )
        assert np.array_equal(masks, expected)
        # empty frames are left out: every frame holds some of its segment
        assert all(np.any(frame) for frame in seg.pixel_array)


@pytest.mark.parametrize("vendor", ["philips", "ge"])
def test_other_single_frame_vendors(vendor: str, tmp_path: Path) -> None:
    # Philips classic keeps every role in one series: the SEG references its water images only
    options = PhantomOptions(vendor=vendor, stacks=1, slices=8, matrix=32, seed=5)
    make_phantom(tmp_path, options)
    study, grid, labels = load_study(tmp_path)
    (seg,) = build_segmentations(study, labels, grid, MODEL)
    water = study.stacks[0].roles["water"]
    (series,) = seg.ReferencedSeriesSequence
    instances = {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence}
    assert instances == {f.sop_instance_uid for f in water}
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    masks = hd.seg.segread(path).get_pixels_by_source_instance(
        [f.sop_instance_uid for f in water],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    assert np.array_equal(masks, segment_numbers(labels)[labels])
    assert dciodvfy_errors(path) == []


def test_resampling_reproduces_the_phantom_slabs(siemens: Case) -> None:
    for index, stack in enumerate(siemens.study.stacks):
        on_stack = labels_on_stack(siemens.labels, siemens.grid, stack.geometry)
        assert np.array_equal(on_stack, siemens.stack_truth(index))


def test_study_segments_are_sorted_labels() -> None:
    labels = np.zeros((2, 3, 3), dtype=np.int16)
    labels[0, 0, 0], labels[1, 2, 2], labels[0, 1, 1] = 101, 3, 18
    segments = study_segments(labels, "1.2.3")
    assert [(s.number, s.label, s.side) for s in segments] == [
        (1, 3, "right"), (2, 18, "right"), (3, 101, "left")
    ]


def test_missing_reference_role_is_an_error(siemens: Case) -> None:
    config = replace(load_reporting_config(), reference_role="fat_fraction")
    with pytest.raises(ValueError, match="fat_fraction"):
        build_segmentations(siemens.study, siemens.labels, siemens.grid, MODEL, config)


# --- SR content ------------------------------------------------------------------------------


def _groups(path: Path) -> dict[str, hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    report = hd.sr.srread(path).content
    return {str(g.tracking_identifier): g for g in report.get_volumetric_roi_measurement_groups()}


def test_report_values_equal_results(case: Case) -> None:
    groups = _groups(case.sr_path)
    segs = {seg.SOPInstanceUID: seg for seg in case.segs}
    measured = [m for m in case.results["muscles"] if m["voxels"]]
    assert len(groups) == len(measured) + 1
    overall = groups["All thigh muscles, both sides"]
    (value,) = overall.get_measurements(name=codes.FAT_FRACTION)
    assert value.value == case.results["overall_ff_pct"]
    for entry in measured:
        muscle = TABLE.by_code(entry["code"])
        group = groups[f"{muscle.name}, {entry['side']}"]
        values = {
            (m.name.value, m.derivation.value if m.derivation else None): m.value
            for m in group.get_measurements()
        }
        assert values == {
            ("118565006", None): entry["volume_ml"],
            ("129100", "373098007"): entry["ff_mean_pct"],
            ("129100", "373099004"): entry["ff_median_pct"],
            ("129100", "386136009"): entry["ff_sd_pct"],
            ("MYO0001", None): entry["contractile_volume_ml"],
        }
        units = {m.name.value: m.unit.value for m in group.get_measurements()}
        assert units == {"118565006": "ml", "129100": "%", "MYO0001": "ml"}
        (site,) = group.finding_sites
        assert site.value.value == codes.muscle_concept(muscle).value
        assert site.laterality.value == TABLE.laterality[entry["side"]][0]
        # the referenced segment is this muscle's segment in one of the study's SEGs
        (reference,) = group.referenced_segment[:1]
        seg = segs[reference.value[1]]
        (number,) = reference.referenced_segment_numbers
        segment = seg.SegmentSequence[number - 1]
        assert segment.SegmentLabel == str(group.tracking_identifier)
        assert segment.TrackingUID == str(group.tracking_uid)


def test_report_context_codes_and_intended_use(siemens: Case) -> None:
    sr = hd.sr.srread(siemens.sr_path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    root = sr.ContentSequence
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    procedure = [i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    assert procedure[0].ConceptCodeSequence[0].CodeValue == codes.PROCEDURE_MR_UNSPECIFIED.value
    assert sr.PerformedProcedureCodeSequence[0].CodeValue == "24702-3"
    texts = [
        item.TextValue
        for container in root
        if container.ConceptNameCodeSequence[0].CodeValue == "C0034375"
        for item in container.ContentSequence
    ]
    assert texts == [f"Intended use of model phantom-model 0.1: {MODEL.intended_use}"]
    texts_by_name = {i.ConceptNameCodeSequence[0].CodeMeaning: i.get("TextValue") for i in root}
    assert texts_by_name["Device Observer Name"] == "myonode"
    assert texts_by_name["Device Observer Model Name"] == f"myonode {myonode_version()}"
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == codes.PRIVATE_SCHEME


def test_results_with_a_muscle_the_segs_lack_are_refused(enhanced: Case) -> None:
    entry = next(m for m in enhanced.results["muscles"] if m["voxels"])
    labels = enhanced.labels.copy()
    labels[labels == TABLE.label_of(entry["code"], entry["side"])] = 0
    segs = build_segmentations(enhanced.study, labels, enhanced.grid, MODEL)
    with pytest.raises(ValueError, match="no SEG has its segment"):
        build_report(enhanced.study, segs, enhanced.results, MODEL)


# --- LABELMAP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelmap_paths(siemens: Case, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The Siemens study's SEGs as LABELMAP, written to files."""
    config = replace(load_reporting_config(), segmentation_type="LABELMAP")
    segs = build_segmentations(siemens.study, siemens.labels, siemens.grid, MODEL, config)
    folder = tmp_path_factory.mktemp("labelmap")
    paths = []
    for index, seg in enumerate(segs):
        assert seg.SOPClassUID == LABELMAP_SOP_CLASS
        paths.append(folder / f"seg{index}.dcm")
        seg.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_labelmap_segs_round_trip_and_report(
    siemens: Case, labelmap_paths: list[Path], tmp_path: Path
) -> None:
    lut = siemens.segment_numbers()
    for index, (stack, path) in enumerate(zip(siemens.study.stacks, labelmap_paths)):
        masks = hd.seg.segread(path).get_pixels_by_source_instance(
            [f.sop_instance_uid for f in stack.roles["water"]],
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
        assert np.array_equal(masks, lut[siemens.stack_truth(index)])
    segs = [pydicom.dcmread(path) for path in labelmap_paths]
    config = replace(load_reporting_config(), segmentation_type="LABELMAP")
    build_report(siemens.study, segs, siemens.results, MODEL, config).save_as(
        tmp_path / "sr.dcm", enforce_file_format=True
    )
    groups = _groups(tmp_path / "sr.dcm")
    assert len(groups) == len([m for m in siemens.results["muscles"] if m["voxels"]]) + 1
    assert {g.referenced_segment[0].value[1] for g in groups.values()} <= {
        seg.SOPInstanceUID for seg in segs
    }


def test_dcmjs_lists_the_segments_of_a_labelmap_seg(
    siemens: Case, labelmap_paths: list[Path]
) -> None:
    # dcmjs 0.52 parses a label map SEG (its viewer adapter cannot load one yet)
    found = dcmjs_segments(labelmap_paths[0])
    assert found["sop_class_uid"] == LABELMAP_SOP_CLASS
    numbers = [s["number"] for s in found["segments"]]
    assert numbers == [0, *range(1, siemens.segment_numbers().max() + 1)]  # 0: background


# --- real validators -----------------------------------------------------------------------
# dicom3tools and PixelMed in Debian 12 (2022 releases) predate Label Map Segmentation
# Storage (DICOM 2024), so only BINARY SEGs (the default) and their SRs are validated.


def test_dciodvfy_finds_no_error(case: Case) -> None:
    for path in [*case.seg_paths, case.sr_path]:
        assert dciodvfy_errors(path) == [], path


def test_pixelmed_finds_no_error(case: Case) -> None:
    if case.pixelmed is None:
        missing_tool(case.pixelmed_missing)
    reports = case.pixelmed.reports()
    for path, report in reports.items():
        assert "validation complete" in report, (path, report[-2000:])
        assert pixelmed_errors(report) == [], (path, report[-4000:])


def test_dcmjs_loads_every_segment_onto_the_source_images(case: Case) -> None:
    lut = case.segment_numbers()
    for index, (stack, path) in enumerate(zip(case.study.stacks, case.seg_paths)):
        sources = sorted({f.path for f in stack.roles["water"] if f is not None})
        found = dcmjs_segments(path, tuple(sources))
        assert [s["number"] for s in found["segments"]] == list(range(1, lut.max() + 1))
        truth = lut[case.stack_truth(index)]
        expected = {str(n): int(c) for n, c in enumerate(np.bincount(truth.ravel())) if n and c}
        assert found["voxels"] == expected
        # each segment lands on as many images as it has slices
        slices = {str(n): int(np.any(truth == n, axis=(1, 2)).sum()) for n in map(int, expected)}
        assert found["images"] == slices

