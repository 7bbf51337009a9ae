"""The phantom writer's DICOM output, for every vendor flavour, read back with pydicom."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage

from common.geometry import VolumeGeometry
from dicom_node.phantom.attributes import StudyInfo
from dicom_node.phantom.flavours import FLAVOURS
from dicom_node.phantom.writer import VENDORS, StackImages, write_study

MAGNITUDES = ("water", "fat", "in_phase", "out_of_phase")
INFO = StudyInfo(
    patient_name="PHANTOM^TEST", patient_id="T1", birth_date="19700101", sex="O",
    study_instance_uid="1.2.826.0.1.3680043.10.1.1", study_date="20260102",
    study_time="101500", accession="A1", frame_of_reference_uid="1.2.826.0.1.3680043.10.1.2",
)


def tiny_stacks(n_stacks: int = 2, nk: int = 5, n: int = 16) -> list[StackImages]:
    """Oblique, anisotropic stacks with ramps and random magnitudes (and an FF map)."""
    rng = np.random.default_rng(7)
    stacks = []
    for s in range(n_stacks):
        geometry = VolumeGeometry.from_orientation(
            (nk, n, n), (2.5, 1.25, 1.5), (-11.0, -9.0, 40.0 + 12.5 * s),
            (1.0, 0.0, 0.0, 0.0, 0.96, -0.28),
        )
        ramp = np.arange(nk * n * n, dtype=np.float32).reshape(nk, n, n) / 7.0
        water = ramp + rng.uniform(0, 50, (nk, n, n)).astype(np.float32)
        fat = rng.uniform(0, 300, (nk, n, n)).astype(np.float32)
        stacks.append(StackImages(geometry, {
            "water": water, "fat": fat, "in_phase": water + fat,
            "out_of_phase": np.abs(water - fat),
            "fat_fraction": (100 * fat / (water + fat + 1e-3)).astype(np.float32),
        }))
    return stacks


def read_frames(paths: list[Path], vendor: str) -> list[dict]:
    """One record per frame: stack key, role (from the flavour's labels), geometry, real value."""
    flavour = FLAVOURS[vendor]
    by_image_type = {label.image_type: role for role, label in flavour.roles.items()}
    frames = []
    for path in paths:
        ds = pydicom.dcmread(path)
        base = {"path": path, "sop_class": ds.SOPClassUID, "sop_uid": ds.SOPInstanceUID,
                "meta_uid": ds.file_meta.MediaStorageSOPInstanceUID,
                "series_uid": ds.SeriesInstanceUID, "series_number": int(ds.SeriesNumber),
                "acquired": ds.get("AcquisitionDateTime") or ds.AcquisitionDate
                + ds.AcquisitionTime}
        if "PerFrameFunctionalGroupsSequence" in ds:
            pixels = ds.pixel_array
            shared = ds.SharedFunctionalGroupsSequence[0]
            for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
                legacy = group[0x2005, 0x140F].value[0]
                transform = group.PixelValueTransformationSequence[0]
                frames.append({
                    **base, "frame": index,
                    "role": by_image_type[tuple(legacy.ImageType)],
                    "frame_type": tuple(group.MRImageFrameTypeSequence[0].FrameType),
                    "position": [float(v) for v in group.PlanePositionSequence[0]
                                 .ImagePositionPatient],
                    "orientation": [float(v) for v in shared.PlaneOrientationSequence[0]
                                    .ImageOrientationPatient],
                    "spacing": [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                    "thickness": float(shared.PixelMeasuresSequence[0].SliceThickness),
                    "real": pixels[index] * float(transform.RescaleSlope)
                    + float(transform.RescaleIntercept),
                    "stored_max": int(pixels[index].max()),
                })
        else:
            frames.append({
                **base, "frame": None,
                "role": by_image_type[tuple(ds.ImageType)],
                "position": [float(v) for v in ds.ImagePositionPatient],
                "orientation": [float(v) for v in ds.ImageOrientationPatient],
                "spacing": [float(v) for v in ds.PixelSpacing],
                "thickness": float(ds.SliceThickness),
                "real": ds.pixel_array * float(ds.get("RescaleSlope", 1.0))
                + float(ds.get("RescaleIntercept", 0.0)),
                "stored_max": int(ds.pixel_array.max()),
            })
    return frames


def by_stack(frames: list[dict]) -> list[list[dict]]:
    """Group frames by acquisition start: each stack is its own acquisition."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for frame in frames:
        groups[frame["acquired"]].append(frame)
    return [groups[key] for key in sorted(groups)]


def slice_index(frame: dict, geometry: VolumeGeometry) -> int:
    k, _, _ = geometry.lps_to_voxel(np.asarray(frame["position"]))
    assert abs(k - round(k)) < 1e-4
    return int(round(k))


@pytest.fixture(scope="module", params=VENDORS)
def written(request, tmp_path_factory):
    vendor = request.param
    stacks = tiny_stacks()
    out = tmp_path_factory.mktemp(vendor.replace("-", "_"))
    paths = write_study(out / "a", vendor, INFO, stacks, np.random.default_rng(3))
    return vendor, stacks, out, paths, read_frames(paths, vendor)


def test_sop_class_and_unique_uids(written):
    vendor, stacks, _, paths, frames = written
    expected = EnhancedMRImageStorage if vendor == "philips-enhanced" else MRImageStorage
    assert {f["sop_class"] for f in frames} == {expected}
    assert all(f["sop_uid"] == f["meta_uid"] for f in frames)
    assert len({f["sop_uid"] for f in frames}) == len(paths)
    assert all(p.is_file() and p.suffix == ".dcm" for p in paths)


def test_deterministic_bytes(written):
    vendor, stacks, out, paths, _ = written
    again = write_study(out / "b", vendor, INFO, tiny_stacks(), np.random.default_rng(3))
    assert [p.relative_to(out / "b") for p in again] == [p.relative_to(out / "a") for p in paths]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(paths, again))


def test_roles_written_per_vendor(written):
    vendor, stacks, _, _, frames = written
    expected = set(MAGNITUDES) | ({"fat_fraction"} if vendor.startswith("philips") else set())
    for stack_frames, stack in zip(by_stack(frames), stacks):
        roles = defaultdict(int)
        for frame in stack_frames:
            roles[frame["role"]] += 1
        assert roles == {role: stack.geometry.shape[0] for role in expected}


def test_geometry_matches_the_grid(written):
    _, stacks, _, _, frames = written
    for stack_frames, stack in zip(by_stack(frames), stacks):
        geometry = stack.geometry
        positions = geometry.slice_positions()
        dz, dy, dx = geometry.spacing
        seen = set()
        for frame in stack_frames:
            k = slice_index(frame, geometry)
            seen.add(k)
            np.testing.assert_allclose(frame["position"], positions[k], atol=1e-6)
            np.testing.assert_allclose(frame["orientation"], geometry.orientation, atol=1e-9)
            np.testing.assert_allclose(frame["spacing"], [dy, dx])
            assert frame["thickness"] == pytest.approx(dz)
        assert seen == set(range(geometry.shape[0]))


def test_real_values_proportional_with_one_factor_per_stack(written):
    vendor, stacks, _, _, frames = written
    for stack_frames, stack in zip(by_stack(frames), stacks):
        geometry = stack.geometry
        pairs = [(f["real"], stack.images[f["role"]][slice_index(f, geometry)])
                 for f in stack_frames if f["role"] != "fat_fraction"]
        factor = sum(float((r * t).sum()) for r, t in pairs) / sum(
            float((t * t).sum()) for _, t in pairs
        )
        assert factor > 0
        for frame in stack_frames:
            k = slice_index(frame, geometry)
            truth = stack.images[frame["role"]][k]
            if frame["role"] == "fat_fraction":
                np.testing.assert_allclose(frame["real"], truth, atol=0.051)  # percent
            else:
                # Stored values are rounded (half a stored step in real-world units); the
                # fitted factor adds a relative error of well under 1e-4.
                step = frame["real"].max() / max(frame["stored_max"], 1)
                np.testing.assert_allclose(frame["real"], factor * truth,
                                           rtol=1e-4, atol=0.5 * step + 1e-6)


def test_stacks_are_separate_series_and_acquisitions(written):
    vendor, stacks, _, _, frames = written
    groups = by_stack(frames)
    assert len(groups) == len(stacks)
    series = [{f["series_uid"] for f in group} for group in groups]
    numbers = [{f["series_number"] for f in group} for group in groups]
    assert not series[0] & series[1] and not numbers[0] & numbers[1]
    per_series_roles = defaultdict(set)
    for frame in frames:
        per_series_roles[frame["series_uid"]].add(frame["role"])
    layout = FLAVOURS[vendor].layout
    if layout == "per_role":
        assert all(len(roles) == 1 for roles in per_series_roles.values())
    else:
        assert len(per_series_roles) == len(stacks)


def test_vendor_pixel_ranges(written):
    vendor, _, _, paths, frames = written
    bits = pydicom.dcmread(paths[0], stop_before_pixels=True).BitsStored
    assert bits == FLAVOURS[vendor].scaling.bits_stored
    assert max(f["stored_max"] for f in frames) <= 2**bits - 1
    if vendor == "siemens":
        assert 2500 <= max(f["stored_max"] for f in frames) <= 4095


def test_enhanced_frames_interleave_roles_slice_major(tmp_path):
    paths = write_study(tmp_path, "philips-enhanced", INFO, tiny_stacks(1),
                        np.random.default_rng(3))
    frames = read_frames(paths, "philips-enhanced")
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert len(paths) == 1 and int(ds.NumberOfFrames) == 5 * 5
    assert [f["role"] for f in frames[:5]] == list(FLAVOURS["philips-enhanced"].roles)
    content = ds.PerFrameFunctionalGroupsSequence[7].FrameContentSequence[0]
    assert content.StackID == "1" and content.InStackPositionNumber == 2
    assert list(content.DimensionIndexValues) == [1, 2, 3]
    assert frames[7]["frame_type"] == ("ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE")
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "DIXON", "MIXED"]
    assert ds.ComplexImageComponent == "MIXED"  # fat fraction frames are REAL


def test_dciodvfy_reports_no_error(written):
    vendor, _, _, paths, _ = written
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not on PATH (Debian package dicom3tools)")
    for path in (paths[0], paths[-1]):
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                                timeout=60)
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("Error")]
        assert errors == [], f"{vendor} {path.name}: {errors}"


def test_bad_input_is_refused(tmp_path):
    stacks = tiny_stacks(1)
    with pytest.raises(ValueError, match="unknown vendor"):
        write_study(tmp_path, "canon", INFO, stacks, np.random.default_rng(0))
    stacks[0].images["water"] = stacks[0].images["water"][:-1]
    with pytest.raises(ValueError, match="shape"):
        write_study(tmp_path, "siemens", INFO, stacks, np.random.default_rng(0))
    only_ff = tiny_stacks(1)
    only_ff[0].images = {"fat_fraction": only_ff[0].images["fat_fraction"]}
    with pytest.raises(ValueError, match="exported by siemens"):
        write_study(tmp_path, "siemens", INFO, only_ff, np.random.default_rng(0))
