"""The SEG and SR of an echo-only study: SEGs on the echo that stands in for in-phase, and the
FF method in the SR (TID 1419 Measurement Method code and a Comment), valid for dciodvfy
and PixelMed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from test_multi_echo import echo_stacks
from validators import (
    dciodvfy_errors,
    missing_tool,
    pixelmed_errors,
    pixelmed_missing,
    start_pixelmed,
)

from common.muscles import load_muscles
from dicom_node.phantom.attributes import StudyInfo
from dicom_node.phantom.writer import write_study
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import plan_stitch
from inference.quantify import quantify
from reporting import codes
from reporting.seg import ModelInfo, build_segmentations, load_reporting_config
from reporting.sr import build_report, ff_method_text

TABLE = load_muscles()
MODEL = ModelInfo(name="echo-model", version="0.1", intended_use="tests only")
INFO = StudyInfo(
    patient_name="PHANTOM^ECHOREPORT", patient_id="E2", birth_date="19700101", sex="O",
    study_instance_uid="1.2.826.0.1.3680043.8.498.3", study_date="20260101",
    study_time="080000", accession="E2", frame_of_reference_uid="1.2.826.0.1.3680043.8.498.4",
)
FF_RECORD = {
    "source": "magnitude_echoes",
    "method": "three-point magnitude fit with a multi-peak fat spectrum.",
    "limits": "fat-water swaps possible where the fit has two minima.",
    "echo_times_ms": [3.45, 4.6, 5.75],
    "field_strength_t": 3.0,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("echo-report")
    write_study(root / "dicom", "siemens", INFO, echo_stacks("siemens"), np.random.default_rng(7))
    [study] = group_studies(scan_folder(root / "dicom", DixonRules.load()).frames)
    grid = plan_stitch(study.stacks).geometry
    labels = np.zeros(grid.shape, dtype=np.uint16)
    for n, (code, side) in enumerate([("VL", "right"), ("VL", "left"), ("RF", "right")]):
        labels[2:8, 2 + 4 * n: 5 + 4 * n, 3:12] = TABLE.label_of(code, side)
    ff = np.full(grid.shape, 12.5, dtype=np.float32)
    quantification = quantify(labels, ff, grid.spacing, TABLE.combined_labels())
    results = {
        "study_instance_uid": study.study_instance_uid,
        "overall_ff_pct": quantification.overall.ff_mean_pct,
        "muscles": [m.to_dict() for m in quantification.muscles],
        "fat_fraction": FF_RECORD,
    }
    config = replace(load_reporting_config(), reference_role="in_phase")
    segs = build_segmentations(study, labels, grid, MODEL, config)
    sr = build_report(study, segs, results, MODEL, config)
    paths = []
    for index, seg in enumerate(segs):
        paths.append(root / f"seg{index}.dcm")
        seg.save_as(paths[-1], enforce_file_format=True)
    sr_path = root / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    return study, segs, paths, sr_path


def test_segs_reference_the_in_phase_echo_series(report):
    study, segs, _, _ = report
    for stack, seg in zip(study.stacks, segs):
        [series] = seg.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == stack.series["echo_magnitude_4.60ms"]


def test_every_ff_measurement_carries_the_method(report):
    _, _, _, sr_path = report
    content = hd.sr.srread(sr_path).content
    groups = content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 4  # three muscles and all muscles
    for group in groups:
        for measurement in group.get_measurements():
            method = measurement.method
            if measurement.name == codes.FAT_FRACTION:
                assert method is not None and method.value == "MYO0005"
                assert method.scheme_designator == codes.PRIVATE_SCHEME
            else:
                assert method is None


def test_the_method_is_a_comment_too(report):
    _, _, _, sr_path = report
    root = hd.sr.srread(sr_path).ContentSequence
    texts = [item.TextValue for container in root
             if container.ConceptNameCodeSequence[0].CodeValue == "C0034375"
             for item in container.ContentSequence]
    assert texts[1] == (
        "Fat fraction from magnitude_echoes: three-point magnitude fit with a multi-peak fat "
        "spectrum. Echo times 3.45, 4.6, 5.75 ms at 3 T. Limits: fat-water swaps possible "
        "where the fit has two minima."
    )
    assert ff_method_text({}) is None


def test_validators_find_no_error(report):
    _, _, seg_paths, sr_path = report
    for path in [*seg_paths, sr_path]:
        assert dciodvfy_errors(path) == [], path
    missing = pixelmed_missing()
    if missing:
        missing_tool(missing)
    reports = start_pixelmed(seg_paths[:1], [Path(sr_path)]).reports()
    for path, text in reports.items():
        assert "validation complete" in text, (path, text[-2000:])
        assert pixelmed_errors(text) == [], (path, text[-4000:])
