"""Every vendor flavour writes every region and slice protocol, and ``myonode inspect`` reads
each back.

Regions: the thigh station, the calf station, and both stations in one study (separate series).

Protocols: the seed's contiguous 3D stack, a 2D multi-slice protocol of 10 mm slices with
10 mm gaps (Musclesense-like), and 2D 5 mm slices without gaps (Agosti-like). Spacing larger
than the thickness is a normal 2D protocol: no gap or irregular-spacing warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from common.muscles import load_muscles
from dicom_node.cli import main
from dicom_node.phantom.study import PhantomOptions, default_slices, stitched_grid
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import scan_folder
from inference.phantom.anatomy import make_subject, render
from inference.phantom.thick_slices import render_thick, substep_offsets

VENDORS = ("siemens", "philips", "philips-enhanced", "ge")
# name -> (extra options, slices per stack, thickness, spacing, MR Acquisition Type); the 3D
# stack of 8 slices keeps the reference 280 mm stack, so its slices are 35 mm apart.
PROTOCOLS = {
    "3d": ([], 8, 35.0, 35.0, "3D"),
    "2d-10mm-gap-10mm": (["--slice-thickness", "10", "--slice-gap", "10"], 6, 10.0, 20.0, "2D"),
    "2d-5mm": (["--slice-thickness", "5"], 8, 5.0, 5.0, "2D"),
}
REGIONS = ("thigh", "calf", "both")
LARGE_CALF = ("TA", "EDL", "PL", "SOL", "MG", "LG")
STACKS = 2  # per station
OVERLAP = 2


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[tuple[str, str, str], Path]:
    """A small phantom of 2 stacks per station for every region x vendor x protocol."""
    made = {}
    for region in REGIONS:
        for protocol, (extra, slices, *_) in PROTOCOLS.items():
            for vendor in VENDORS:
                folder = tmp_path_factory.mktemp(f"{region}-{vendor}-{protocol}")
                argv = ["phantom", str(folder), "--vendor", vendor, "--stacks", str(STACKS),
                        "--slices", str(slices), "--overlap", str(OVERLAP), "--matrix", "32",
                        "--seed", "5", "--region", region, *extra]
                assert main(argv) == 0
                made[region, vendor, protocol] = folder
    return made


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True)
            for p in sorted((folder / "dicom").rglob("*.dcm"))]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("region", REGIONS)
def test_inspect_reads_every_region_and_protocol_as_stacks(studies, capsys, region, vendor,
                                                         protocol):
    _, slices, thickness, spacing, _ = PROTOCOLS[protocol]
    folder = studies[region, vendor, protocol]
    code, out, _ = _run(capsys, "inspect", str(folder / "dicom"), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["problems"] == []
    assert len(report["studies"]) == 1
    study = report["studies"][0]
    stations = 2 if region == "both" else 1
    assert len(study["stacks"]) == STACKS * stations
    frames = scan_folder(folder / "dicom", DixonRules.load()).frames
    assert frames and all(f.slice_thickness == pytest.approx(thickness) for f in frames)
    assert len({f.series_instance_uid for f in frames}) >= STACKS * stations
    for stack in study["stacks"]:
        assert stack["slices"] == slices
        assert set(stack["roles"]) >= {"water", "fat", "in_phase", "out_of_phase"}
        lo, hi = stack["z_range_mm"]
        assert hi - lo == pytest.approx((slices - 1) * spacing, abs=0.01)
    if region == "both":
        return  # two stations are not one volume: stitching them is not the phantom's test
    assert study["warnings"] == []
    for stack in study["stacks"]:
        assert stack["slices"] == slices
        assert set(stack["roles"]) >= {"water", "fat", "in_phase", "out_of_phase"}
        lo, hi = stack["z_range_mm"]
        assert hi - lo == pytest.approx((slices - 1) * spacing, abs=0.01)
    stitched = study["stitched"]
    assert stitched["spacing_mm"][0] == pytest.approx(spacing, abs=1e-3)
    assert stitched["shape"][0] == STACKS * slices - (STACKS - 1) * OVERLAP


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("region", REGIONS)
def test_dicom_attributes_of_every_region_and_protocol(studies, region, vendor, protocol):
    _, _, thickness, spacing, acquisition = PROTOCOLS[protocol]
    descriptions = {"thigh": "MR thighs Dixon", "calf": "MR calves Dixon",
                    "both": "MR thighs and calves Dixon"}
    for ds in _headers(studies[region, vendor, protocol]):
        assert ds.StudyDescription == descriptions[region]
        assert ds.MRAcquisitionType == acquisition
        if "SharedFunctionalGroupsSequence" in ds:  # Enhanced MR: Pixel Measures
            measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
            fov = ds.SharedFunctionalGroupsSequence[0].MRFOVGeometrySequence[0]
            assert ("MRAcquisitionPhaseEncodingStepsOutOfPlane" in fov) == (acquisition == "3D")
        else:
            measures = ds
        assert float(measures.SliceThickness) == pytest.approx(thickness)
        assert float(measures.SpacingBetweenSlices) == pytest.approx(spacing)


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_truth_is_on_the_stitched_grid(studies, protocol):
    _, slices, thickness, spacing, acquisition = PROTOCOLS[protocol]
    folder = studies["thigh", "siemens", protocol]
    labels = nib.load(folder / "truth" / "labels.nii.gz")
    assert labels.shape == (32, 32, STACKS * slices - (STACKS - 1) * OVERLAP)
    assert labels.header.get_zooms()[2] == pytest.approx(spacing)
    truth = json.loads((folder / "truth" / "truth.json").read_text())
    assert truth["slices"]["acquisition"] == acquisition
    assert truth["slices"]["thickness_mm"] == pytest.approx(thickness)
    assert truth["slices"]["spacing_mm"] == pytest.approx(spacing)
    present = {m["label"] for m in truth["muscles"]}
    assert present == set(np.unique(np.asarray(labels.dataobj))) - {0}
    assert len(present) >= 10 and min(present) < 100 < max(present)  # muscles of both legs
    assert all(0 <= m["ff_mean_pct"] <= 100 for m in truth["muscles"])


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_each_station_has_its_own_truth_with_its_own_muscles(studies, protocol):
    table = load_muscles()
    for region, truth_dirs in (("thigh", {"thigh": "truth"}), ("calf", {"calf": "truth"}),
                               ("both", {"thigh": "truth/thigh", "calf": "truth/calf"})):
        folder = studies[region, "siemens", protocol]
        for station, sub in truth_dirs.items():
            truth = json.loads((folder / sub / "truth.json").read_text())
            labels = np.asarray(nib.load(folder / sub / "labels.nii.gz").dataobj)
            assert truth["region"] == station
            own = {m.code for m in table.for_region(station).muscles}
            found = {(m["code"], m["side"]) for m in truth["muscles"]}
            assert {code for code, _ in found} <= own, (region, station)
            assert {table.decode(int(v))[0].code for v in np.unique(labels) if v} <= own
            if station == "calf":  # at 14 mm pixels the small calf muscles may have no voxel
                assert found >= {(c, side) for c in LARGE_CALF for side in ("left", "right")}
        if region == "both":
            assert not (folder / "truth" / "labels.nii.gz").exists()


def test_a_calf_study_has_every_calf_muscle_on_each_side(tmp_path):
    assert main(["phantom", str(tmp_path), "--region", "calf", "--seed", "5", "--matrix", "96",
                 "--slices", "24"]) == 0
    truth = json.loads((tmp_path / "truth" / "truth.json").read_text())
    calf = [m.code for m in load_muscles().for_region("calf").muscles]
    found = {(m["code"], m["side"]) for m in truth["muscles"]}
    assert found == {(code, side) for code in calf for side in ("left", "right")}
    assert len(calf) == 12


def test_thick_slices_average_the_slab_and_keep_centre_labels():
    options = PhantomOptions(stacks=1, slices=6, matrix=32, slice_thickness=10.0,
                             slice_gap=10.0)
    subject = make_subject(options.seed, options.infiltration)
    grid = stitched_grid(options, subject)
    thick = render_thick(subject, grid, 10.0)
    centre = render(subject, grid)
    np.testing.assert_array_equal(thick.labels, centre.labels)
    # Partial volume across the 10 mm slab: the averaged signal differs from the centre's.
    assert np.abs(thick.water - centre.water).max() > 0.05
    assert list(substep_offsets(10.0)) == pytest.approx([-4.0, -2.0, 0.0, 2.0, 4.0])


def test_default_slices_cover_the_reference_stack():
    assert default_slices(None) == 140
    assert default_slices(10.0, 10.0) == 14
    assert default_slices(5.0) == 56


@pytest.mark.parametrize(
    "extra",
    [["--slice-gap", "5"], ["--slice-thickness", "0"], ["--slice-thickness", "5",
                                                        "--slice-gap", "-1"]],
    ids=["gap-without-thickness", "zero-thickness", "negative-gap"],
)
def test_bad_slice_protocols_are_refused(tmp_path, capsys, extra):
    code, _, err = _run(capsys, "phantom", str(tmp_path), "--slices", "6", "--matrix", "32",
                        *extra)
    assert code == 2
    assert "--slice-" in err
