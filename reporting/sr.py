"""Per-muscle results as a DICOM Comprehensive 3D SR, TID 1500 "Measurement Report".

Why an SR: PACS, viewers (OHIF) and research databases read measurements from TID 1500
reports, each tied to the segment it was measured in, so numbers and masks stay linked.

Content tree (codes and their sources: :mod:`reporting.codes`):

* Procedure reported "MRI unspecified body region" (CID 100); the header's Performed
  Procedure Code is LOINC "MR Thigh". Observer: device myonode <version>.
* Imaging Measurements, all TID 1411 volumetric groups, each with tracking identifier and
  UID (the same UID as the SEG segments), algorithm (model name and version), finding site
  (muscle concept + laterality), a Referenced Segment with its source series, and:
  - per muscle and side with voxels: volume (mL), fat fraction mean / median / SD (%),
    contractile volume (mL, private code);
  - "All thigh muscles, both sides": mean fat fraction over all muscle voxels
    (``overall_ff_pct``), finding site "Muscle of lower limb", bilateral, referencing every
    segment of one SEG (see below).
* Qualitative Evaluations: the model's intended use as a TEXT "Comment", and how the fat
  fraction was computed (source, method, echo times, field strength, limits) as another.
* Every fat-fraction measurement carries its method as the TID 1419 "Measurement Method"
  modifier, a private code per FF source (:data:`reporting.codes.FF_METHODS`), so a
  receiving system can tell a scanner FF map from a two-point in/opposed-phase estimate.

Choices forced by the templates and checked with PixelMed's DicomSRValidator:

* One Referenced Segment per group: TID 1411 allows a single one, while a muscle usually
  spans several stacks, i.e. several SEGs. A group references the SEG in which its segment
  has the most frames; the other stacks' SEGs carry the same segment number and tracking UID.
* The whole-thigh figure is a TID 1411 group too, not a TID 1501 one: a report whose groups
  reference segments is validated as TID 1411 throughout, and TID 1420 (derived
  measurements) cannot be validated at all. It references all segments of the SEG with the
  most frames (Referenced Segment Number is multi-valued); the figure itself covers all stacks.
* "Source series for segmentation" instead of listing each source image: TID 1411 allows
  either. Listing them took ~100 IMAGE items per muscle (thousands per report), tripled the
  SR's size and build time and made PixelMed's validator run out of memory; the SEG already
  references its source image frame by frame.
* Procedure reported: CID 100 has no thigh or lower-limb MR code and PixelMed treats codes
  outside it as errors, hence the unspecified-region code plus the header code.

Measurements are those of ``results`` (the stitched volume), never recomputed here.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from common.muscles import MuscleTable, load_muscles
from common.study import StudyStacks
from reporting import codes
from reporting.seg import (
    PRODUCT,
    ModelInfo,
    ReportingConfig,
    load_reporting_config,
    myonode_version,
    tracking_uid,
)

LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
# results.json key -> (concept, unit, derivation) of each per-muscle measurement
MUSCLE_MEASUREMENTS = (
    ("volume_ml", codes.VOLUME, codes.UNIT_ML, None),
    ("ff_mean_pct", codes.FAT_FRACTION, codes.UNIT_PERCENT, codes.MEAN),
    ("ff_median_pct", codes.FAT_FRACTION, codes.UNIT_PERCENT, codes.MEDIAN),
    ("ff_sd_pct", codes.FAT_FRACTION, codes.UNIT_PERCENT, codes.STANDARD_DEVIATION),
    ("contractile_volume_ml", codes.CONTRACTILE_VOLUME, codes.UNIT_ML, None),
)
OVERALL_TRACKING_ID = "All thigh muscles, both sides"

__all__ = ["ModelInfo", "SegmentFrames", "build_report", "index_segments"]  # ModelInfo: API


@dataclass
class SegmentFrames:
    """One segment (by tracking UID) in one SEG: its number, label and frame count there."""

    seg: Dataset
    number: int
    label: str
    frames: int = 0


def _frame_segment_numbers(seg: Dataset) -> list[np.ndarray]:
    """The segment numbers present in each frame of a SEG."""
    if seg.SOPClassUID == LABELMAP_SOP_CLASS:  # frames hold segment numbers as pixel values
        pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
        return [np.unique(frame[frame != 0]) for frame in pixels]
    return [
        np.array([int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)])
        for item in seg.PerFrameFunctionalGroupsSequence
    ]


def index_segments(segs: Sequence[Dataset]) -> dict[str, list[SegmentFrames]]:
    """Tracking UID -> that segment in every SEG (in SEG order), with its frame counts."""
    index: dict[str, list[SegmentFrames]] = defaultdict(list)
    for seg in segs:
        by_number: dict[int, SegmentFrames] = {}
        for item in seg.SegmentSequence:
            if int(item.SegmentNumber) == 0 or "TrackingUID" not in item:  # LABELMAP background
                continue
            entry = SegmentFrames(seg, int(item.SegmentNumber), str(item.SegmentLabel))
            by_number[entry.number] = entry
            index[str(item.TrackingUID)].append(entry)
        for numbers in _frame_segment_numbers(seg):
            for number in numbers:
                by_number[int(number)].frames += 1
    return index


def _referenced_segment(seg: Dataset, numbers: int | list[int]) -> hd.sr.ReferencedSegment:
    """Segment(s) of one SEG, with the series the SEG was derived from."""
    return hd.sr.ReferencedSegment(
        seg.SOPClassUID,
        seg.SOPInstanceUID,
        numbers,  # type: ignore[arg-type]  # multi-valued Referenced Segment Number
        source_series=hd.sr.SourceSeriesForSegmentation(
            seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        ),
    )


def _defined(value: object) -> bool:
    """results.json writes undefined statistics as null; NaN is treated the same."""
    return value is not None and not math.isnan(float(value))  # type: ignore[arg-type]


def ff_method(results: dict) -> Code | None:
    """The coded FF method (TID 1419 Measurement Method) of ``results["fat_fraction"]``;
    None for results that do not say (or a source without a code)."""
    source = (results.get("fat_fraction") or {}).get("source")
    return codes.FF_METHODS.get(source) if source else None


def _measurements(entry: dict, method: Code | None) -> list[hd.sr.Measurement]:
    """The TID 1419 measurements of one muscle (statistics that are undefined are left out);
    the FF ones carry ``method``."""
    return [
        hd.sr.Measurement(concept, float(entry[key]), unit, derivation=derivation,
                          method=method if concept == codes.FAT_FRACTION else None)
        for key, concept, unit, derivation in MUSCLE_MEASUREMENTS
        if _defined(entry.get(key))
    ]


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        model.name, model.version, family=codes.ALGORITHM_FAMILY_AI
    )


def _muscle_groups(
    study_uid: str,
    results: dict,
    index: dict[str, list[SegmentFrames]],
    model: ModelInfo,
    table: MuscleTable,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    groups = []
    for entry in results["muscles"]:
        if not entry.get("voxels"):
            continue  # not segmented (e.g. outside the field of view): no segment to refer to
        muscle, side = table.by_code(entry["code"]), entry["side"]
        uid = tracking_uid(study_uid, muscle, side)
        if uid not in index:
            raise ValueError(
                f"results list {muscle.code} {side} with {entry['voxels']} voxels, but no SEG "
                "has its segment: were results and SEGs made from the same labels?"
            )
        best = max(index[uid], key=lambda e: e.frames)  # first (lowest stack) on ties
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=best.label),
                referenced_segment=_referenced_segment(best.seg, best.number),
                algorithm_id=_algorithm(model),
                finding_sites=[
                    hd.sr.FindingSite(
                        codes.muscle_concept(muscle), laterality=codes.laterality(table, side)
                    )
                ],
                measurements=_measurements(entry, ff_method(results)),
            )
        )
    return groups


def _overall_group(
    study_uid: str, results: dict, segs: Sequence[Dataset], model: ModelInfo
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | None:
    """Mean FF of all muscle voxels, referencing every segment of the SEG with most frames."""
    value = results.get("overall_ff_pct")
    if not _defined(value):
        return None
    seg = max(segs, key=lambda s: int(s.NumberOfFrames))
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence if int(item.SegmentNumber)]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["myonode-all-muscles", study_uid]),
            identifier=OVERALL_TRACKING_ID,
        ),
        referenced_segment=_referenced_segment(seg, numbers),
        algorithm_id=_algorithm(model),
        finding_sites=[hd.sr.FindingSite(codes.MUSCLE_OF_LOWER_LIMB, laterality=codes.BILATERAL)],
        measurements=[
            hd.sr.Measurement(
                codes.FAT_FRACTION, float(value), codes.UNIT_PERCENT, derivation=codes.MEAN,
                method=ff_method(results),
            )
        ],
    )


def ff_method_text(results: dict) -> str | None:
    """How the FF was computed, in words: the method and limits lines of
    ``results["fat_fraction"]``, with the echo times and field strength when given."""
    record = results.get("fat_fraction")
    if not record:
        return None
    parts = [f"Fat fraction from {record['source']}: {record['method']}"]
    if record.get("echo_times_ms"):
        times = ", ".join(f"{te:g}" for te in record["echo_times_ms"])
        field = record.get("field_strength_t")
        parts.append(f"Echo times {times} ms" + (f" at {field:g} T" if field else ""))
    if record.get("limits"):
        parts.append(f"Limits: {record['limits']}")
    return ". ".join(part.rstrip(".") for part in parts) + "."


def _qualitative_evaluations(model: ModelInfo, results: dict) -> hd.sr.ContainerContentItem:
    """TID 1500 Qualitative Evaluations container: the model's intended use and, where the
    results say, how the fat fraction was computed (TEXT "Comment" items, which viewers
    show as they are)."""
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    texts = [f"Intended use of model {model.name} {model.version}: {model.intended_use}",
             ff_method_text(results)]
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.COMMENT,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for text in texts if text
        ]
    )
    return container


def _evidence(segs: Sequence[Dataset]) -> list[Dataset]:
    """The SEGs, then one stub per source image they reference (UIDs are all the SR needs)."""
    evidence = list(segs)
    for seg in segs:
        for series in seg.get("ReferencedSeriesSequence", []):
            for instance in series.ReferencedInstanceSequence:
                stub = Dataset()
                stub.SOPClassUID = instance.ReferencedSOPClassUID
                stub.SOPInstanceUID = instance.ReferencedSOPInstanceUID
                stub.SeriesInstanceUID = series.SeriesInstanceUID
                stub.StudyInstanceUID = seg.StudyInstanceUID
                evidence.append(stub)
    return evidence


def build_report(
    study: StudyStacks,
    segs: list[Dataset],
    results: dict,
    model: ModelInfo,
    config: ReportingConfig | None = None,
) -> Dataset:
    """The study's TID 1500 Measurement Report over ``results`` (``results.json`` content),
    referencing the segments of ``segs`` (from :func:`reporting.seg.build_segmentations`)."""
    config = config or load_reporting_config()
    if not segs:
        raise ValueError("no SEG given: the report's measurements must reference segments")
    study_uid = study.study_instance_uid
    for uid in {results.get("study_instance_uid", study_uid), *(s.StudyInstanceUID for s in segs)}:
        if uid != study_uid:
            raise ValueError(f"study {uid} in results or SEGs is not the study {study_uid}")
    table = load_muscles()
    version = myonode_version()
    groups: list = [g for g in [_overall_group(study_uid, results, segs, model)] if g is not None]
    groups += _muscle_groups(study_uid, results, index_segments(segs), model, table)
    if not groups:
        raise ValueError("results hold no measurement to report")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["myonode-device", version]),
        name=PRODUCT,
        manufacturer_name=config.manufacturer,
        model_name=f"{PRODUCT} {version}",
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.OBSERVER_DEVICE,
                observer_identifying_attributes=device,
            )
        ),
        procedure_reported=codes.PROCEDURE_MR_UNSPECIFIED,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_qualitative_evaluations(model, results))
    return hd.sr.Comprehensive3DSR(
        evidence=_evidence(segs),
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=config.sr_series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=config.manufacturer,
        institution_name=config.institution_name,
        is_complete=True,
        is_final=False,  # PRELIMINARY and UNVERIFIED: no person has checked these results
        series_description=config.sr_series_description[:64],
        manufacturer_model_name=PRODUCT,
        software_versions=version,
        coding_schemes=[codes.private_coding_scheme()],
        performed_procedure_codes=[codes.PROCEDURE_MR_THIGH],
    )
