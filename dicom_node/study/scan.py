"""Read a folder of DICOM files into per-frame records (headers only).

Everything downstream (stacks, stitching, the SEG's references) works on frames: a
single-frame MR image is one frame, an Enhanced MR instance contributes one record per frame
with its own position from the per-frame functional groups. Files that are not usable DICOM
images are reported as problems with the reason, never raised.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from common.study import ECHO_KINDS, Frame
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.patients import PatientIdentity, identity_of

# Large values (pixel data) are left on disk until a frame is loaded.
_DEFER_SIZE = "64 KB"


@dataclass
class ScanResult:
    """Frames found under a folder, and a readable reason for every file that was skipped."""

    frames: list[Frame] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    patients: dict[str, PatientIdentity] = field(default_factory=dict)  # by SOP Instance UID


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
        except Exception as exc:  # noqa: BLE001 - pydicom fails in many ways on hostile bytes
            result.problems.append(f"{path}: not a readable DICOM file ({_short(exc)})")
            continue
        try:
            frames = frames_of(ds, path, rules)
        except ValueError as exc:
            result.problems.append(f"{path}: {exc}")
            continue
        result.frames.extend(frames)
        if frames:
            result.patients[frames[0].sop_instance_uid] = identity_of(ds)
    return result


def frames_of(ds: Dataset, path: Path, rules: DixonRules) -> list[Frame]:
    """The frames of one dataset; raises ValueError with the reason when it is no usable image.

    Every value read is checked before it is used (a header comes from any host on the
    network): numbers must be finite and in range, vectors of the right length, the image
    orientation two orthogonal unit vectors, and NumberOfFrames must be backed by per-frame
    functional groups and by pixel data that can hold that many frames, so no work is done
    for frames that are not there."""
    uids = [text_value(ds, keyword) for keyword in
            ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
    for keyword, uid in zip(("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"), uids):
        if not uid:
            raise ValueError(f"missing {keyword}")
    pixels = next((keyword for keyword in _PIXEL_BITS if keyword in ds), None)
    if pixels is None:
        raise ValueError("no pixel data")
    rows = integer_value(ds, "Rows", 1, MAX_MATRIX)
    columns = integer_value(ds, "Columns", 1, MAX_MATRIX)
    if rows is None or columns is None:
        raise ValueError("missing Rows or Columns")
    n_frames = _frame_count(ds, rows * columns, pixels)
    multi = element_value(ds, "PerFrameFunctionalGroupsSequence") is not None or n_frames > 1
    try:
        roles = rules.roles(ds)
    except Exception as exc:  # noqa: BLE001 - any failure to read the attributes is the header's
        raise ValueError(f"cannot read Dixon role attributes ({_short(exc)})") from exc
    common = {
        "field_strength_t": field_strength(ds),
        "echo_number": _echo_number(ds),
        "path": path,
        "sop_instance_uid": uids[0],
        "sop_class_uid": text_value(ds, "SOPClassUID"),
        "study_instance_uid": uids[1],
        "series_instance_uid": uids[2],
        "series_number": integer_value(ds, "SeriesNumber", *_IS_RANGE),
        "series_description": text_value(ds, "SeriesDescription"),
        "acquisition_number": integer_value(ds, "AcquisitionNumber", *_IS_RANGE),
        "frame_of_reference_uid": text_value(ds, "FrameOfReferenceUID"),
        "rows": rows,
        "columns": columns,
        "manufacturer": text_value(ds, "Manufacturer"),
    }
    frames = []
    for index in range(n_frames):
        geometry = _frame_geometry(ds, index) if multi else _single_geometry(ds)
        echo_time = _echo_time(ds, index if multi else None)
        role = roles[index] if index < len(roles) else None
        if role in ECHO_KINDS and echo_time is None:
            role = None  # an echo image is only usable with its echo time
        frames.append(
            Frame(
                frame_number=index + 1 if multi else None,
                stack_id=geometry.pop("stack_id", None),
                role=role,
                echo_time_ms=echo_time,
                **common,
                **geometry,
            )
        )
    return frames


# -- echo time and field strength: read leniently (a water image with a broken EchoTime is
# still a water image; an echo image without an echo time gets no role) ----------------------

MAX_ECHO_TIME_MS = 1000.0
MAX_ECHOES = 1024
MAX_FIELD_STRENGTH_T = 20.0
GYROMAGNETIC_MHZ_PER_T = 42.577  # 1H


def _echo_number(ds: Dataset) -> int | None:
    try:
        return integer_value(ds, "EchoNumbers", 1, MAX_ECHOES)
    except ValueError:  # absent is None; several values or text say nothing usable either
        return None


def _in_range(ds: Dataset | None, keyword: str, high: float) -> float | None:
    """``keyword`` as one number in (0, high]; None when absent, unreadable or outside."""
    if ds is None:
        return None
    try:
        value = element_value(ds, keyword)
        number = None if value is None else _number(value, keyword)
    except ValueError:
        return None
    return number if number is not None and 0 < number <= high else None


def _echo_time(ds: Dataset, index: int | None) -> float | None:
    """EchoTime (ms) of a single-frame image, or the EffectiveEchoTime of frame ``index``."""
    if index is None:
        return _in_range(ds, "EchoTime", MAX_ECHO_TIME_MS)
    try:
        echo = functional_group(ds, index, "MREchoSequence")
    except ValueError:
        return None
    return _in_range(echo, "EffectiveEchoTime", MAX_ECHO_TIME_MS)


def field_strength(ds: Dataset) -> float | None:
    """B0 in tesla: MagneticFieldStrength, else the 1H ImagingFrequency / 42.577 MHz/T."""
    tesla = _in_range(ds, "MagneticFieldStrength", MAX_FIELD_STRENGTH_T)
    if tesla is not None:
        return tesla
    frequency = _in_range(ds, "ImagingFrequency", MAX_FIELD_STRENGTH_T * GYROMAGNETIC_MHZ_PER_T)
    return round(frequency / GYROMAGNETIC_MHZ_PER_T, 2) if frequency is not None else None


# -- reading values that any sender may have written ----------------------------------------

# Coordinates beyond 1 km, pixels beyond 1 m, matrices beyond the 16-bit range: no body fits.
MAX_COORDINATE_MM = 1e6
MAX_SPACING_MM = 1e3
MAX_MATRIX = 65535
_IS_RANGE = (-(2**31), 2**31 - 1)  # what an Integer String (IS) may hold
# Row and column direction cosines: unit length and orthogonal to this tolerance.
_ORIENTATION_TOLERANCE = 0.01
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Pixel data elements and their bits per sample (None: BitsAllocated says).
_PIXEL_BITS = {"PixelData": None, "FloatPixelData": 32, "DoubleFloatPixelData": 64}


def element_value(ds: Dataset, keyword: str) -> object | None:
    """The value of ``keyword`` in ``ds``; None when absent or empty. ValueError when the
    element's bytes cannot be read as its VR (pydicom converts values when first used)."""
    try:
        value = ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - a failed conversion of untrusted bytes is the header's
        raise ValueError(f"{keyword} cannot be read ({_short(exc)})") from exc
    if value is None or (isinstance(value, str) and not value.strip(" \0")):
        return None
    if isinstance(value, bytes) and not value.strip(b" \0"):
        return None
    return value


def text_value(ds: Dataset, keyword: str) -> str:
    """``keyword`` as text ("" when absent); ValueError when it cannot be read."""
    value = element_value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\0 ")
    return str(value).strip()


def integer_value(ds: Dataset, keyword: str, low: int, high: int) -> int | None:
    """``keyword`` as one integer from ``low`` to ``high``; None when absent or empty;
    ValueError for anything else (text, several values, inf, NaN, out of range)."""
    value = element_value(ds, keyword)
    if value is None:
        return None
    number = _number(value, keyword)
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"{keyword} {_shown(value)} is not an integer from {low} to {high}")
    return int(number)


def sequence_items(ds: Dataset, keyword: str) -> list[Dataset] | None:
    """The items of the sequence ``keyword``; None when absent; ValueError when the element
    is not a sequence of datasets."""
    value = element_value(ds, keyword)
    if value is None:
        return None
    if not isinstance(value, Sequence) or not all(isinstance(i, Dataset) for i in value):
        raise ValueError(f"{keyword} is not a sequence")
    return list(value)


def _frame_count(ds: Dataset, pixels_per_frame: int, keyword: str) -> int:
    """How many frames the instance holds: NumberOfFrames (1 when absent), if per-frame
    functional groups describe that many frames and the pixel data can hold them."""
    declared = integer_value(ds, "NumberOfFrames", 0, _IS_RANGE[1]) or 1
    per_frame = sequence_items(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame is None and declared > 1:
        raise ValueError(f"NumberOfFrames {declared} without per-frame functional groups: "
                         "the frames cannot be placed")
    if per_frame is not None and declared > len(per_frame):
        raise ValueError(f"NumberOfFrames {declared} but {len(per_frame)} per-frame "
                         "functional group item(s)")
    held = _frames_in_pixel_data(ds, pixels_per_frame, keyword)
    if declared > held:
        raise ValueError(f"NumberOfFrames {declared} but the pixel data holds "
                         f"{held} frame(s) at most")
    return declared


def _frames_in_pixel_data(ds: Dataset, pixels_per_frame: int, keyword: str) -> int:
    """The most frames the pixel data element ``keyword`` can hold, from its length (the
    pixel data is not loaded)."""
    bits = _PIXEL_BITS[keyword]
    element = ds.get_item(keyword, keep_deferred=True)
    value = element.value
    length = element.length if isinstance(element, RawDataElement) else len(value or b"")
    if length == _UNDEFINED_LENGTH or _encapsulated(ds):
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"{keyword} is encapsulated but cannot be read")
        return max(1, _fragments(value))
    if bits is None:
        bits = integer_value(ds, "BitsAllocated", 1, 64)
        if bits is None:
            raise ValueError("missing BitsAllocated")
    samples = integer_value(ds, "SamplesPerPixel", 1, 4) or 1
    return (length * 8) // (pixels_per_frame * samples * bits)


def _encapsulated(ds: Dataset) -> bool:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return bool(syntax is not None and syntax.is_encapsulated)
    except (AttributeError, ValueError):
        return False


def _fragments(value: bytes | bytearray) -> int:
    """Fragments after the Basic Offset Table of encapsulated pixel data."""
    try:
        offset_table_length = int.from_bytes(value[4:8], "little")
        return parse_fragments(bytes(value[8 + offset_table_length:]))[0]
    except (ValueError, IndexError, struct.error) as exc:
        raise ValueError(f"encapsulated pixel data is malformed ({_short(exc)})") from exc


def _single_geometry(ds: Dataset) -> dict:
    return {
        "position": _vector(ds, "ImagePositionPatient", 3),
        "orientation": _orientation(ds),
        "pixel_spacing": _spacing(ds),
        "slice_thickness": _thickness(ds),
    }


def functional_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The item of a functional-group macro for frame ``index``: per-frame first, then shared.
    ValueError when a functional group is not a sequence of datasets."""
    per_frame = sequence_items(ds, "PerFrameFunctionalGroupsSequence")
    shared = sequence_items(ds, "SharedFunctionalGroupsSequence")
    candidates = []
    if per_frame and index < len(per_frame):
        candidates.append(per_frame[index])
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        items = sequence_items(group, sequence)
        if items:
            return items[0]
    return None


def _frame_geometry(ds: Dataset, index: int) -> dict:
    position = functional_group(ds, index, "PlanePositionSequence")
    orientation = functional_group(ds, index, "PlaneOrientationSequence")
    measures = functional_group(ds, index, "PixelMeasuresSequence")
    if position is None or orientation is None or measures is None:
        raise ValueError(f"frame {index + 1}: plane position, orientation or pixel measures missing")
    content = functional_group(ds, index, "FrameContentSequence")
    stack_id = text_value(content, "StackID") if content is not None else ""
    try:
        return {
            "position": _vector(position, "ImagePositionPatient", 3),
            "orientation": _orientation(orientation),
            "pixel_spacing": _spacing(measures),
            "slice_thickness": _thickness(measures),
            "stack_id": stack_id or None,
        }
    except ValueError as exc:
        raise ValueError(f"frame {index + 1}: {exc}") from exc


def _vector(ds: Dataset, keyword: str, length: int) -> tuple[float, ...]:
    value = element_value(ds, keyword)
    if value is None:
        raise ValueError(f"missing {keyword}: the image cannot be placed in patient space")
    values = (value,) if isinstance(value, (str, bytes, int, float)) else value
    try:
        numbers = tuple(_number(v, keyword) for v in values)  # type: ignore[union-attr]
    except TypeError as exc:
        raise ValueError(f"{keyword} is not numeric") from exc
    if len(numbers) != length:
        raise ValueError(f"{keyword} has {len(numbers)} values, expected {length}")
    if any(abs(v) > MAX_COORDINATE_MM for v in numbers):
        raise ValueError(f"{keyword} {_shown(value)} is out of range")
    return numbers


def _orientation(ds: Dataset) -> tuple[float, ...]:
    cosines = _vector(ds, "ImageOrientationPatient", 6)
    row, column = cosines[:3], cosines[3:]
    lengths = [math.sqrt(sum(v * v for v in axis)) for axis in (row, column)]
    dot = sum(a * b for a, b in zip(row, column))
    if any(abs(n - 1) > _ORIENTATION_TOLERANCE for n in lengths) or \
            abs(dot) > _ORIENTATION_TOLERANCE:
        raise ValueError(f"ImageOrientationPatient {_shown(cosines)} is not two orthogonal "
                         "unit vectors")
    return cosines


def _spacing(ds: Dataset) -> tuple[float, ...]:
    spacing = _vector(ds, "PixelSpacing", 2)
    if not all(0 < v <= MAX_SPACING_MM for v in spacing):
        raise ValueError(f"PixelSpacing {_shown(spacing)} is not from 0 to {MAX_SPACING_MM:g} mm")
    return spacing


def _thickness(ds: Dataset) -> float | None:
    """SliceThickness in mm; None when absent or 0 (some derived images write 0)."""
    value = element_value(ds, "SliceThickness")
    if value is None:
        return None
    thickness = _number(value, "SliceThickness")
    if not 0 <= thickness <= MAX_SPACING_MM:
        raise ValueError(f"SliceThickness {_shown(value)} is not from 0 to "
                         f"{MAX_SPACING_MM:g} mm")
    return thickness or None


def _number(value: object, keyword: str) -> float:
    """One finite number (a single-valued element); ValueError otherwise."""
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) != 1:
            raise ValueError(f"{keyword} has {len(value)} values, expected 1")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{keyword} {_shown(value)} is not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{keyword} {_shown(value)} is not a number") from exc
    if not math.isfinite(number):
        raise ValueError(f"{keyword} {_shown(value)} is not a finite number")
    return number


def _shown(value: object) -> str:
    text = repr(value if not isinstance(value, MultiValue) else list(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
