"""Muscle labels as DICOM-SEG objects: one per source stack, on that stack's own images.

Why one SEG per stack: viewers (OHIF, Slicer, PACS viewers) overlay a SEG only on the series
it references, and a study has one series per stack (and role), so a SEG on the stitched grid
would be shown on none of them. Each SEG references the stack's images of one configurable
Dixon role (``reference_role``, default water) frame by frame; for Enhanced MR sources, whose
single instance holds every role, each SEG frame references exactly the frame of that role.

Segments: one per muscle and side present anywhere in the study's labels, numbered the same
in every SEG of the study (sorted combined labels -> 1..N: right leg first, then left), so a
segment number means the same muscle in each stack's SEG and in the SR. A stack that does
not reach a muscle still describes its segment, with no frames. Coding: see
:mod:`reporting.codes` (own SNOMED CT concept, or the group concept plus the muscle name in
SegmentLabel/SegmentDescription; laterality as SegmentedPropertyTypeModifier).

highdicom needs the source images' headers, not their pixels: it copies patient, study and
frame-of-reference attributes from the first (read with ``stop_before_pixels=True``) and
reads only identity and plane geometry from the others, which the scan's :class:`Frame`
records already hold (see :func:`_source_images`). Empty frames are left out.

Sparse sources: an anonymised study often lacks Type 2 attributes (PatientBirthDate,
AccessionNumber, ...), which highdicom reads without a default. Absent means unknown, which
DICOM writes as an empty value, so they are added empty to the header highdicom is given
(:func:`source_header`); no value is ever made up. What would still make a SEG impossible
(no image of the reference role, no Frame of Reference UID, a value highdicom refuses) is
found by :func:`check_reportable` before the study is segmented.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from myonode_config import config_path, read_mapping
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, format_number_as_ds

from common.geometry import VolumeGeometry
from common.muscles import Muscle, MuscleTable, load_muscles
from common.study import Frame, Stack, StudyStacks
from reporting import codes
from reporting.resample import labels_on_stack

DEFAULT_CONFIG = "reporting.yaml"
ROLES = ("water", "fat", "in_phase", "out_of_phase", "fat_fraction")
SEGMENTATION_TYPES = ("BINARY", "LABELMAP")
MAX_SERIES = 2**31 - 1  # IS value range
MAX_LO = 64  # Long String
CONTENT_LABEL = "MUSCLES"
PRODUCT = "myonode"
COUNT_CHUNK_SLICES = 16
# Type 2 attributes highdicom reads from the first source without a default (Patient, General
# Study and Image Plane modules): added empty when the source lacks them.
SOURCE_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "SliceThickness",
)
SOURCE_DATES = ("PatientBirthDate", "StudyDate")
PATIENT_SEX = ("M", "F", "O", "", None)


class ReportingConfigError(ValueError):
    """``reporting.yaml`` is malformed; the message names the field."""


@dataclass(frozen=True)
class ReportingConfig:
    """How SEG and SR objects are written (``config/reporting.yaml`` documents each field)."""

    reference_role: str
    segmentation_type: str
    manufacturer: str
    seg_series_number: int
    sr_series_number: int
    seg_series_description: str
    sr_series_description: str
    institution_name: str | None


def load_reporting_config(path: str | Path | None = None) -> ReportingConfig:
    """Read and check a reporting configuration; ``None`` reads the embedded default.

    Every error is a :class:`ReportingConfigError` naming the file (and the field)."""
    source = Path(path) if path else config_path(DEFAULT_CONFIG)
    where = str(source)
    try:
        data = read_mapping(source)
    except ValueError as exc:
        raise ReportingConfigError(str(exc)) from exc
    missing = [f for f in ReportingConfig.__dataclass_fields__ if f not in data]
    if missing:
        raise ReportingConfigError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(map(str, set(data) - set(ReportingConfig.__dataclass_fields__)))
    if unknown:
        raise ReportingConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if data["reference_role"] not in ROLES:
        raise ReportingConfigError(
            f"{where}: reference_role must be one of {', '.join(ROLES)}, "
            f"got {data['reference_role']!r}"
        )
    kind = str(data["segmentation_type"]).upper()
    if kind not in SEGMENTATION_TYPES:
        raise ReportingConfigError(
            f"{where}: segmentation_type must be BINARY or LABELMAP, "
            f"got {data['segmentation_type']!r}"
        )
    for field in ("seg_series_number", "sr_series_number"):
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SERIES:
            raise ReportingConfigError(
                f"{where}: {field} must be an integer 1..{MAX_SERIES}, got {value!r}"
            )
    for field in ("manufacturer", "seg_series_description", "sr_series_description"):
        if not isinstance(data[field], str) or not data[field]:
            raise ReportingConfigError(f"{where}: {field} must be a non-empty string")
    institution = data["institution_name"]
    if institution is not None and not isinstance(institution, str):
        raise ReportingConfigError(f"{where}: institution_name must be a string or null")
    for field in ("manufacturer", "institution_name"):  # written as is: a DICOM LO value
        value = data[field]
        if value is not None and (len(value) > MAX_LO or "\\" in value):
            raise ReportingConfigError(
                f"{where}: {field} must be at most {MAX_LO} characters without a backslash"
            )
    return ReportingConfig(**{**data, "segmentation_type": kind})


@dataclass(frozen=True)
class ModelInfo:
    """The model that made the labels: named in every SEG segment and SR measurement group."""

    name: str
    version: str
    intended_use: str

    @classmethod
    def from_package(cls, package: Any) -> ModelInfo:
        """From an ``inference.models.package.ModelPackage`` (or anything with those fields)."""
        return cls(str(package.name), str(package.version), str(package.intended_use))


@dataclass(frozen=True)
class SegmentInfo:
    """One muscle and side as a segment: the identity shared by every SEG and the SR."""

    number: int
    label: int  # combined-volume label (right n, left offset + n)
    muscle: Muscle
    side: str
    tracking_id: str
    tracking_uid: str

    @property
    def description(self) -> str:
        """SegmentDescription: the muscle and side, and the coding fallback when it applies."""
        text = f"{self.muscle.name} ({self.muscle.code}), {self.side}"
        if codes.has_own_code(self.muscle):
            return text
        return (
            f"{text}. Coded with the SNOMED CT concept of its muscle group "
            f"({self.muscle.group_code} {self.muscle.group_meaning}): no SNOMED CT concept "
            "of its own is configured."
        )


def myonode_version() -> str:
    """The installed myonode version (SoftwareVersions, device observer)."""
    return importlib.metadata.version(PRODUCT)


def tracking_uid(study_uid: str, muscle: Muscle, side: str) -> str:
    """Same muscle and side in the same study -> same UID (SEG segments of every stack, SR)."""
    return generate_uid(entropy_srcs=["myonode-segment", study_uid, muscle.code, side])


def study_segments(
    labels: np.ndarray, study_uid: str, table: MuscleTable | None = None
) -> list[SegmentInfo]:
    """The segments of a study: every muscle label present in ``labels``, numbered 1..N."""
    table = table or load_muscles()
    if labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative")
    counts = np.zeros(1, dtype=np.int64)
    for start in range(0, labels.shape[0], COUNT_CHUNK_SLICES):  # bounded temporary memory
        chunk = np.bincount(labels[start : start + COUNT_CHUNK_SLICES].ravel())
        counts = np.pad(counts, (0, max(0, chunk.size - counts.size)))
        counts[: chunk.size] += chunk
    present = np.flatnonzero(counts)
    segments = []
    for number, label in enumerate((int(v) for v in present if v != 0), start=1):
        muscle, side = table.decode(label)
        segments.append(
            SegmentInfo(
                number=number,
                label=label,
                muscle=muscle,
                side=side,
                tracking_id=f"{muscle.name}, {side}",
                tracking_uid=tracking_uid(study_uid, muscle, side),
            )
        )
    return segments


def segment_description(
    segment: SegmentInfo, table: MuscleTable, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    """SegmentSequence item: codes, laterality modifier, colour, algorithm, tracking."""
    description = hd.seg.SegmentDescription(
        segment_number=segment.number,
        segment_label=segment.tracking_id,
        segmented_property_category=codes.segmentation_category(table),
        segmented_property_type=codes.muscle_concept(segment.muscle),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=segment.tracking_uid,
        tracking_id=segment.tracking_id,
        display_color=hd.color.CIELabColor.from_rgb(*segment.muscle.color),
    )
    description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.laterality(table, segment.side))
    ]
    description.SegmentDescription = segment.description
    return description


def source_header(frame: Frame) -> Dataset:
    """The header of ``frame``'s instance as highdicom gets it: missing Type 2 attributes
    added empty; ValueError naming the file and attribute for a value highdicom refuses."""
    ds = pydicom.dcmread(frame.path, stop_before_pixels=True)
    for keyword in SOURCE_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    for keyword in SOURCE_DATES:
        try:
            DA(ds[keyword].value)
        except ValueError as exc:
            raise ValueError(
                f"{frame.path}: {keyword} {ds[keyword].value!r} is not a DICOM date (DA) "
                f"({exc}); the SEG and SR would copy it"
            ) from exc
    if ds.PatientSex not in PATIENT_SEX:
        raise ValueError(
            f"{frame.path}: PatientSex {ds.PatientSex!r} is not one of M, F, O or empty; "
            "the SEG and SR would copy it"
        )
    return ds


def _source_images(frames: list[Frame]) -> list[Dataset]:
    """The source images highdicom needs, in frame order: one per instance.

    The first instance is read from disk (headers only, see :func:`source_header`): highdicom
    copies its patient, study and frame-of-reference attributes. For the others highdicom
    reads only identity and plane geometry, which the scan already holds in each
    :class:`Frame` (read from the same files), so they are built from it; re-reading 140
    headers per stack cost about 1 s.
    """
    first = source_header(frames[0])
    sources = [first]
    seen = {frames[0].sop_instance_uid}
    for frame in frames[1:]:
        if frame.sop_instance_uid not in seen:
            seen.add(frame.sop_instance_uid)
            sources.append(_frame_header(frame))
    return sources


def _frame_header(frame: Frame) -> Dataset:
    """A single-frame image header with the attributes highdicom reads from further sources."""
    ds = Dataset()
    ds.SOPClassUID = frame.sop_class_uid
    ds.SOPInstanceUID = frame.sop_instance_uid
    ds.StudyInstanceUID = frame.study_instance_uid
    ds.SeriesInstanceUID = frame.series_instance_uid
    ds.FrameOfReferenceUID = frame.frame_of_reference_uid
    ds.Rows = frame.rows
    ds.Columns = frame.columns
    ds.ImagePositionPatient = list(frame.position)
    ds.ImageOrientationPatient = list(frame.orientation)
    ds.PixelSpacing = list(frame.pixel_spacing)
    ds.SliceThickness = frame.slice_thickness  # Type 2: empty when the source has none
    return ds


def reference_frames(stack: Stack, role: str) -> list[tuple[int, Frame]]:
    """(slice index, frame) of the reference role, slices without such a frame left out;
    ValueError when no SEG can reference them."""
    if role not in stack.roles:
        available = ", ".join(sorted(stack.roles))
        raise ValueError(
            f"stack {stack.index} has no {role} images to reference (it has {available}); "
            "set reference_role in the reporting configuration"
        )
    references = [(k, frame) for k, frame in enumerate(stack.roles[role]) if frame is not None]
    if not references:
        raise ValueError(f"stack {stack.index} has no {role} frame at all")
    multi_frame = {frame.frame_number is not None for _, frame in references}
    if len(multi_frame) > 1:
        raise ValueError(f"stack {stack.index}: mixes single-frame and multi-frame sources")
    instances = {frame.sop_instance_uid for _, frame in references}
    if True in multi_frame and len(instances) > 1:
        raise ValueError(
            f"stack {stack.index}: its {role} frames lie in {len(instances)} multi-frame "
            "instances; a SEG can reference only one"
        )
    return references


def check_reportable(study: StudyStacks, config: ReportingConfig) -> None:
    """Raise ValueError, with the reason, when a SEG of some stack of ``study`` could not be
    written; run before segmenting, so a study that cannot be reported fails in seconds."""
    for stack in study.stacks:
        references = reference_frames(stack, config.reference_role)
        source_header(references[0][1])
        for _, frame in references:
            if not frame.frame_of_reference_uid or not frame.sop_class_uid:
                raise ValueError(
                    f"{frame.path}: FrameOfReferenceUID or SOPClassUID missing (Type 1); "
                    "a SEG cannot reference this image"
                )


def _keep_reference_frames(seg: Dataset, frame_numbers: set[int]) -> None:
    """Make every SEG frame derive from the reference-role frame only.

    highdicom matches SEG planes to source frames by position, and in an Enhanced MR instance
    that holds every Dixon role all roles sit at the same position, so it lists them all.
    """
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            derivation.SourceImageSequence = [
                source
                for source in derivation.SourceImageSequence
                if int(source.ReferencedFrameNumber) in frame_numbers
            ]


def _fill_slice_thickness(seg: Dataset, stack: Stack) -> None:
    """Slice Thickness of the SEG's Pixel Measures (Type 1C) when the source has none (Type
    2, copied empty): the SEG's planes sample the labels every slice step of the stack, so
    that step is the thickness of a SEG voxel; no thickness is claimed for the source."""
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if measures.get("SliceThickness") in (None, ""):
        measures.SliceThickness = format_number_as_ds(float(stack.geometry.spacing[0]))


def build_segmentation(
    stack: Stack,
    stack_labels: np.ndarray,
    segments: list[SegmentInfo],
    model: ModelInfo,
    config: ReportingConfig,
    table: MuscleTable,
) -> Dataset:
    """The DICOM-SEG of one stack; ``stack_labels`` are the combined labels on its grid."""
    references = reference_frames(stack, config.reference_role)
    multi_frame = references[0][1].frame_number is not None
    sources = _source_images([frame for _, frame in references])

    small = len(segments) <= np.iinfo(np.uint8).max  # uint8 masks are cheaper to compare
    lut = np.zeros(max(s.label for s in segments) + 1, dtype=np.uint8 if small else np.uint16)
    for segment in segments:
        lut[segment.label] = segment.number
    slices = [k for k, _ in references]
    pixels = lut[stack_labels[slices]]
    positions = [
        hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, frame.position)
        for _, frame in references
    ]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name, family=codes.ALGORITHM_FAMILY_AI, version=model.version, source=PRODUCT
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=config.segmentation_type,
        segment_descriptions=[segment_description(s, table, algorithm) for s in segments],
        series_instance_uid=generate_uid(),
        series_number=config.seg_series_number + stack.index,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=config.manufacturer,
        manufacturer_model_name=PRODUCT,
        software_versions=myonode_version(),
        # Enhanced General Equipment makes it type 1; software has no serial, so the version
        device_serial_number=myonode_version(),
        plane_positions=positions,
        omit_empty_frames=True,
        content_label=CONTENT_LABEL,
        content_description=f"Thigh muscles, model {model.name} {model.version}"[:64],
        series_description=f"{config.seg_series_description} stack {stack.index}"[:64],
    )
    _fill_slice_thickness(seg, stack)
    if multi_frame:
        _keep_reference_frames(seg, {frame.frame_number for _, frame in references})
    # Both legs: General Image "Image Laterality" B. Without it General Series Laterality
    # (type 2C, R or L only) would be required for a paired body part such as the thigh.
    seg.ImageLaterality = "B"
    return seg


def build_segmentations(
    study: StudyStacks,
    labels: np.ndarray,
    grid: VolumeGeometry,
    model: ModelInfo,
    config: ReportingConfig | None = None,
) -> list[Dataset]:
    """One DICOM-SEG per stack of ``study`` (in stack order) from stitched combined labels.

    ``labels`` ``[k, j, i]`` on ``grid`` (right leg n, left leg offset + n, 0 background) are
    resampled (nearest) onto each stack's grid; slices where the stack has no image of the
    reference role are left out, and so are empty frames.
    """
    config = config or load_reporting_config()
    table = load_muscles()
    segments = study_segments(labels, study.study_instance_uid, table)
    if not segments:
        raise ValueError("the labels hold no muscle: there is nothing to segment")
    return [
        build_segmentation(
            stack, labels_on_stack(labels, grid, stack.geometry), segments, model, config, table
        )
        for stack in study.stacks
    ]
