"""Read a folder of DICOM files into per-frame records (headers only).

Everything downstream (stacks, stitching, the SEG's references) works on frames: a
single-frame MR image is one frame, an Enhanced MR instance contributes one record per frame
with its own position from the per-frame functional groups. Files that are not usable DICOM
images are reported as problems with the reason, never raised.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from common.study import Frame
from dicom_node.study.dixon_roles import DixonRules

# Large values (pixel data) are left on disk until a frame is loaded.
_DEFER_SIZE = "64 KB"


@dataclass
class ScanResult:
    """Frames found under a folder, and a readable reason for every file that was skipped."""

    frames: list[Frame] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def iter_files(root: Path) -> Iterable[Path]:
    """Every regular file below ``root`` in a stable order (hidden files included)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def read_header(path: Path) -> Dataset:
    """Read a DICOM file lazily; files without the Part 10 preamble are accepted when they
    hold a dataset with a SOP Instance UID (older systems write such raw datasets)."""
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=True)
        if "SOPInstanceUID" not in ds:
            raise
        return ds


def scan_folder(root: Path, rules: DixonRules) -> ScanResult:
    """Index every DICOM image below ``root``; non-images become ``problems`` entries."""
    result = ScanResult()
    for path in iter_files(root):
        try:
            ds = read_header(path)
        except InvalidDicomError:
            result.problems.append(f"{path}: not a DICOM file")
            continue
        except (OSError, EOFError, ValueError, TypeError, KeyError) as exc:
            result.problems.append(f"{path}: not a readable DICOM file ({_short(exc)})")
            continue
        try:
            result.frames.extend(frames_of(ds, path, rules))
        except ValueError as exc:
            result.problems.append(f"{path}: {exc}")
    return result


def frames_of(ds: Dataset, path: Path, rules: DixonRules) -> list[Frame]:
    """The frames of one dataset; raises ValueError with the reason when it is no usable image."""
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ds.get(keyword):
            raise ValueError(f"missing {keyword}")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise ValueError("no pixel data")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    multi = "PerFrameFunctionalGroupsSequence" in ds or n_frames > 1
    try:
        roles = rules.roles(ds)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read Dixon role attributes ({_short(exc)})") from exc
    frames = []
    for index in range(n_frames):
        geometry = _frame_geometry(ds, index) if multi else _single_geometry(ds)
        frames.append(
            Frame(
                path=path,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                frame_number=index + 1 if multi else None,
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                series_number=_int_or_none(ds.get("SeriesNumber")),
                series_description=str(ds.get("SeriesDescription", "")),
                acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
                stack_id=geometry.pop("stack_id", None),
                frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                role=roles[index] if index < len(roles) else None,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                manufacturer=str(ds.get("Manufacturer", "")),
                **geometry,
            )
        )
    return frames


def _single_geometry(ds: Dataset) -> dict:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise ValueError(f"missing {keyword}: the image cannot be placed in patient space")
    return {
        "position": _vector(ds.ImagePositionPatient, 3, "ImagePositionPatient"),
        "orientation": _vector(ds.ImageOrientationPatient, 6, "ImageOrientationPatient"),
        "pixel_spacing": _vector(ds.PixelSpacing, 2, "PixelSpacing"),
        "slice_thickness": _float_or_none(ds.get("SliceThickness")),
    }


def functional_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The item of a functional-group macro for frame ``index``: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    candidates = []
    if per_frame and index < len(per_frame):
        candidates.append(per_frame[index])
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        item = group.get(sequence)
        if item:
            return item[0]
    return None


def _frame_geometry(ds: Dataset, index: int) -> dict:
    position = functional_group(ds, index, "PlanePositionSequence")
    orientation = functional_group(ds, index, "PlaneOrientationSequence")
    measures = functional_group(ds, index, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise ValueError(f"frame {index + 1}: plane position, orientation or pixel measures missing")
    content = functional_group(ds, index, "FrameContentSequence")
    stack_id = content.get("StackID") if content is not None else None
    return {
        "position": _vector(position.ImagePositionPatient, 3, "ImagePositionPatient"),
        "orientation": _vector(orientation.ImageOrientationPatient, 6, "ImageOrientationPatient"),
        "pixel_spacing": _vector(measures.PixelSpacing, 2, "PixelSpacing"),
        "slice_thickness": _float_or_none(measures.get("SliceThickness")),
        "stack_id": str(stack_id) if stack_id else None,
    }


def _vector(value: object, length: int, name: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not numeric") from exc
    if len(numbers) != length:
        raise ValueError(f"{name} has {len(numbers)} values, expected {length}")
    return numbers


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _float_or_none(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
