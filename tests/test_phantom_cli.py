"""``myonode phantom`` and ``myonode inspect`` end to end, as a user runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from common.geometry import LPS_TO_RAS
from dicom_node.cli import main
from dicom_node.phantom.study import PhantomOptions, stack_slabs
from dicom_node.study.dixon_roles import DixonRules

SMALL = ["--stacks", "3", "--slices", "40", "--matrix", "128", "--seed", "7"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """One small 3-stack study per vendor flavour (the issue's acceptance command)."""
    made = {}
    for vendor in ("siemens", "philips", "philips-enhanced", "ge"):
        folder = tmp_path_factory.mktemp(vendor)
        assert main(["phantom", str(folder), "--vendor", vendor, *SMALL]) == 0
        made[vendor] = folder
    return made


@pytest.mark.parametrize("vendor", ["siemens", "philips", "philips-enhanced", "ge"])
def test_inspect_finds_three_stacks_with_four_roles(phantoms, capsys, vendor):
    code, out, _ = _run(capsys, "inspect", str(phantoms[vendor]), "--json")
    assert code == 0
    report = json.loads(out)
    assert len(report["studies"]) == 1
    study = report["studies"][0]
    assert len(study["stacks"]) == 3
    for stack in study["stacks"]:
        assert set(stack["roles"]) == {"water", "fat", "in_phase", "out_of_phase"}
        assert stack["slices"] == 40
    lows = [s["z_range_mm"][0] for s in study["stacks"]]
    highs = [s["z_range_mm"][1] for s in study["stacks"]]
    assert study["stitched"]["z_range_mm"] == pytest.approx([min(lows), max(highs)], abs=0.01)
    step = 40 - PhantomOptions(slices=40).overlap_slices()
    assert study["stitched"]["shape"] == [2 * step + 40, 128, 128]
    assert study["warnings"] == []


def test_truth_matches_the_dicom_geometry(phantoms):
    folder = phantoms["siemens"]
    image = nib.load(folder / "truth" / "labels.nii.gz")
    labels = np.asarray(image.dataobj)
    truth = json.loads((folder / "truth" / "truth.json").read_text())
    assert labels.shape[2] == 2 * (40 - PhantomOptions(slices=40).overlap_slices()) + 40
    codes = {(m["code"], m["side"]) for m in truth["muscles"]}
    assert len(codes) == 36
    # The NIfTI affine puts voxel (0, 0, 0) at the first slice's ImagePositionPatient.
    first = min(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in (folder / "dicom").rglob("*")
         if p.is_file()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    lps = np.asarray([float(v) for v in first.ImagePositionPatient])
    ras0 = image.affine @ np.array([0, 0, 0, 1.0])
    assert np.allclose((LPS_TO_RAS @ np.append(lps, 1))[:3], ras0[:3], atol=1e-3)
    # Left-leg labels (100 + n) lie at patient left: RAS x < 0.
    i_left = np.argwhere(labels > 100)[:, 0].mean()
    i_right = np.argwhere((labels > 0) & (labels < 100))[:, 0].mean()
    x_left = (image.affine @ np.array([i_left, 0, 0, 1]))[0]
    x_right = (image.affine @ np.array([i_right, 0, 0, 1]))[0]
    assert x_left < x_right


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_phantom_is_deterministic(tmp_path, capsys):
    args = ["--stacks", "2", "--slices", "12", "--matrix", "48", "--seed", "5"]
    assert main(["phantom", str(tmp_path / "a"), *args]) == 0
    assert main(["phantom", str(tmp_path / "b"), *args]) == 0
    assert main(["phantom", str(tmp_path / "c"), *args[:-1], "6"]) == 0
    capsys.readouterr()
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_stack_slabs_overlap():
    options = PhantomOptions(stacks=3, slices=140)
    assert stack_slabs(options) == [(0, 140), (108, 248), (216, 356)]


def test_bad_input_gives_a_message_not_a_traceback(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not dicom")
    ds = pydicom.Dataset()
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    pydicom.dcmwrite(tmp_path / "nopixels.dcm", ds, implicit_vr=True)
    code, out, err = _run(capsys, "inspect", str(tmp_path))
    assert code != 0
    assert "notes.txt: not a DICOM file" in out
    assert "nopixels.dcm: no pixel data" in out
    code, _, err = _run(capsys, "inspect", str(tmp_path / "absent"))
    assert code != 0 and "is not a folder" in err and "Traceback" not in err


def test_missing_role_is_reported(tmp_path, capsys):
    folder = tmp_path / "p"
    assert main(["phantom", str(folder), "--stacks", "1", "--slices", "8", "--matrix", "32"]) == 0
    capsys.readouterr()
    for path in (folder / "dicom").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if DixonRules.load().roles(ds) == ["out_of_phase"]:
                path.unlink()
    code, out, _ = _run(capsys, "inspect", str(folder), "--json")
    assert code == 0
    warnings = json.loads(out)["studies"][0]["warnings"]
    assert "stack 0: no out_of_phase images" in warnings
