"""What every flavour of the phantom writer shares: the study identity, UIDs, pixel scaling
and common modules.

Kept apart from the single-frame and Enhanced MR writers so both fill the patient, study,
equipment and MR acquisition attributes the same way, and so the stored values of water and
fat of one stack always share one scale factor (F/(F+W) must survive the round trip).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from common.study import ECHO_MAGNITUDE, ECHO_PHASE, parse_echo_role
from dicom_node.phantom.flavours import FAT_FRACTION, MAGNITUDE_ROLES, VendorFlavour

if TYPE_CHECKING:
    from common.geometry import VolumeGeometry

@dataclass
class StudyInfo:
    """Patient and study identity shared by every file of the study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    accession: str
    frame_of_reference_uid: str
    study_id: str = "1"
    study_description: str = "MR thighs Dixon"
    referring_physician: str = ""


# Fat fraction maps are stored as percent x 10 with RescaleSlope 0.1 (real world = percent).
FF_STORED_PER_PERCENT = 10.0


def derived_uid(study_uid: str, *parts: object) -> str:
    """A UID fixed by the study UID and the object's indices, so reruns give the same files.

    ``2.25.`` + a name-based UUID (PS3.5 B.2). Not ``generate_uid(prefix=None, ...)``: that
    ignores its entropy sources and returns a random UUID.
    """
    name = "|".join([study_uid, *(str(p) for p in parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def ds_number(value: float) -> str:
    """A decimal string that fits DICOM's 16-character DS."""
    return format_number_as_ds(float(value))


def ds_numbers(values: Iterable[float]) -> list[str]:
    """Several DS values (positions, orientations, spacings)."""
    return [ds_number(v) for v in values]


def shifted_datetime(date: str, time: str, seconds: float) -> tuple[str, str]:
    """(DA, TM) ``seconds`` after the study start: each stack is acquired later than the last."""
    start = dt.datetime.strptime(date + time.split(".")[0].ljust(6, "0"), "%Y%m%d%H%M%S")
    moment = start + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S.%f")[:13]


@dataclass
class ScaledStack:
    """One stack's roles as stored integers, with the rescale that restores real values.

    ``slope`` (and ``intercept``, 0 but for phases) maps stored values to the real world as
    the reader applies it (value = stored * slope + intercept). Every magnitude role of a
    stack, echo magnitudes included, has the same slope, so water/fat ratios are exact up to
    rounding.
    """

    stored: dict[str, np.ndarray]  # role -> uint16 (int16 for signed exports) [k, j, i]
    slope: dict[str, float]  # RescaleSlope per role (1.0 where the vendor writes none)
    private_scale: dict[str, float]  # Philips (2005,100E) per role
    window: dict[str, tuple[float, float]]  # (centre, width) in real-world units
    intercept: dict[str, float] = field(default_factory=dict)  # RescaleIntercept, if not 0


# Siemens phase: one turn over 12 bits, read as stored * 2 - 4096 ([SIE-E]).
SIEMENS_PHASE_LEVELS = 4096
SIEMENS_PHASE_SLOPE = 2.0
SIEMENS_PHASE_INTERCEPT = -4096.0
MILLIRADIANS = 1000.0


def scale_stack(images: dict[str, np.ndarray], flavour: VendorFlavour,
                rng: np.random.Generator) -> ScaledStack:
    """Scale a stack's magnitudes into the vendor's stored range with one factor for all;
    echo phases (radians) are stored as the vendor stores phase."""
    scaling = flavour.scaling
    echoes = [(r, echo) for r in flavour.roles if r in images
              and (echo := parse_echo_role(r)) is not None]
    magnitudes = [r for r in MAGNITUDE_ROLES if r in images and r in flavour.roles]
    magnitudes += [r for r, (kind, _) in echoes if kind == ECHO_MAGNITUDE]
    peak = max((float(np.max(images[r])) for r in magnitudes), default=0.0)
    target = float(rng.uniform(*scaling.target_max))
    factor = target / peak if peak > 0 else 1.0
    low, high = _stored_range(scaling.bits_stored, scaling.signed)
    slope = 1.0
    if scaling.rescale:
        slope = float(ds_number(round(float(rng.uniform(*scaling.slope_range)), 5)))
    stored: dict[str, np.ndarray] = {}
    slopes: dict[str, float] = {}
    intercepts: dict[str, float] = {}
    private: dict[str, float] = {}
    window: dict[str, tuple[float, float]] = {}
    for role in magnitudes:
        stored[role] = _to_stored(images[role], factor, 0, high, scaling.signed)
        slopes[role] = slope
        private[role] = factor  # Philips FP = DV / (RS * SS) = stored / factor = input value
    if FAT_FRACTION in images and FAT_FRACTION in flavour.roles:
        stored[FAT_FRACTION] = _to_stored(images[FAT_FRACTION], FF_STORED_PER_PERCENT, 0,
                                          int(100 * FF_STORED_PER_PERCENT), scaling.signed)
        slopes[FAT_FRACTION] = 1.0 / FF_STORED_PER_PERCENT
        private[FAT_FRACTION] = FF_STORED_PER_PERCENT
    for role, values in stored.items():
        top = float(values.max()) * slopes[role]
        window[role] = (max(top / 2.0, 1.0), max(top, 2.0))
    for role, (kind, _) in echoes:
        if kind == ECHO_PHASE:
            stored[role], slopes[role], intercepts[role] = _phase_stored(
                images[role], flavour, low)
            private[role] = 1.0
            lowest, highest = (float(v) * slopes[role] + intercepts[role]
                               for v in (stored[role].min(), stored[role].max()))
            window[role] = ((lowest + highest) / 2.0, max(highest - lowest, 2.0))
    return ScaledStack(stored, slopes, private, window, intercepts)


def _phase_stored(radians: np.ndarray, flavour: VendorFlavour,
                  low: int) -> tuple[np.ndarray, float, float]:
    """(stored, slope, intercept) of a phase image in the vendor's convention."""
    storage = flavour.echoes.phase_storage if flavour.echoes else ""
    signed = flavour.scaling.signed
    wrapped = np.mod(np.asarray(radians, dtype=np.float64) + np.pi, 2 * np.pi)  # 0..2pi
    if storage == "siemens":
        levels = wrapped * (SIEMENS_PHASE_LEVELS / (2 * np.pi))
        return (_to_stored(levels, 1.0, 0, SIEMENS_PHASE_LEVELS - 1, signed),
                SIEMENS_PHASE_SLOPE, SIEMENS_PHASE_INTERCEPT)
    if storage == "milliradians":
        if low >= 0:
            raise ValueError(f"{flavour.name}: milliradian phase needs signed pixels")
        limit = int(np.floor(np.pi * MILLIRADIANS))
        return (_to_stored(wrapped - np.pi, MILLIRADIANS, -limit, limit, signed), 1.0, 0.0)
    raise ValueError(f"{flavour.name}: no phase storage for echo phases")


def _stored_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _to_stored(values: np.ndarray, factor: float, low: int, high: int,
               signed: bool) -> np.ndarray:
    scaled = np.multiply(values, factor, dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, low, high, out=scaled)
    return scaled.astype(np.int16 if signed else np.uint16)


@dataclass
class StackPlan:
    """One stack as the writers see it: its grid, roles, stored pixels and acquisition time."""

    index: int  # 0-based position in the study
    geometry: VolumeGeometry
    roles: list[str]  # written roles, in the vendor's series order
    scaled: ScaledStack
    acquired: tuple[str, str]  # (DA, TM) of the acquisition start
    slice_thickness: float | None = None  # 2D multi-slice thickness (mm); None: 3D stack

    @property
    def station(self) -> int:
        """1-based stack number as it appears in protocol names."""
        return self.index + 1

    @property
    def acquisition_type(self) -> str:
        """MR Acquisition Type: ``2D`` for multi-slice stacks, ``3D`` for contiguous slabs."""
        return "3D" if self.slice_thickness is None else "2D"

    @property
    def thickness_mm(self) -> float:
        """SliceThickness; a 3D stack's slices are as thick as they are apart."""
        return self.geometry.spacing[0] if self.slice_thickness is None else self.slice_thickness


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """Part 10 header; explicit VR little endian keeps private VRs readable everywhere."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MYONODE_PHANTOM"
    return meta


def common_dataset(flavour: VendorFlavour, info: StudyInfo, sop_class_uid: str,
                   series_uid: str, series_number: int, description: str,
                   station: int, acquisition_number: int,
                   acquired: tuple[str, str]) -> Dataset:
    """Patient, study, series, equipment, frame of reference and SOP common attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = acquired
    ds.StudyDate = info.study_date
    ds.StudyTime = info.study_time
    ds.SeriesDate, ds.SeriesTime = acquired
    ds.ContentDate, ds.ContentTime = acquired
    ds.AccessionNumber = info.accession
    ds.Modality = "MR"
    ds.Manufacturer = flavour.manufacturer
    ds.InstitutionName = flavour.institution
    ds.ReferringPhysicianName = info.referring_physician
    ds.StationName = flavour.station_name
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = description
    ds.ManufacturerModelName = flavour.model
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.BodyPartExamined = "LEG"
    ds.DeviceSerialNumber = "4711"
    ds.SoftwareVersions = list(flavour.software_versions)
    ds.ProtocolName = flavour.protocol.format(station=station)
    ds.PatientPosition = "FFS"  # thighs are scanned feet first, supine
    ds.StudyInstanceUID = info.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = info.study_id
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = acquisition_number
    ds.FrameOfReferenceUID = info.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    return ds


def mr_acquisition(ds: Dataset, flavour: VendorFlavour, plan: StackPlan) -> None:
    """MR acquisition attributes shared by a stack's series (single-frame MR Image module).

    SpacingBetweenSlices is centre to centre (PS3.3 C.8.3.1): thickness plus gap in 2D.
    """
    geometry = plan.geometry
    dz, dy, dx = geometry.spacing
    _, nj, ni = geometry.shape
    ds.ScanningSequence = list(flavour.scanning_sequence)
    ds.SequenceVariant = list(flavour.sequence_variant)
    ds.ScanOptions = list(flavour.scan_options)
    ds.MRAcquisitionType = plan.acquisition_type
    ds.SequenceName = flavour.sequence_name
    ds.AngioFlag = "N"
    ds.SliceThickness = ds_number(plan.thickness_mm)
    ds.RepetitionTime = ds_number(flavour.repetition_time)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = ds_number(flavour.imaging_frequency)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = ds_number(flavour.field_strength)
    ds.SpacingBetweenSlices = ds_number(dz)
    ds.NumberOfPhaseEncodingSteps = str(int(round(nj * 0.73)))
    ds.EchoTrainLength = "1"
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = ds_number(100.0 * nj * dy / (ni * dx))
    ds.PixelBandwidth = ds_number(flavour.pixel_bandwidth)
    ds.ReceiveCoilName = flavour.receive_coil
    ds.TransmitCoilName = flavour.transmit_coil
    ds.AcquisitionMatrix = [0, int(round(ni * 0.83)), int(round(nj * 0.73)), 0]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.FlipAngle = ds_number(flavour.flip_angle)
    ds.VariableFlipAngleFlag = "N"
    ds.SAR = "0.85"
    ds.dBdt = "0"


def image_pixel(ds: Dataset, flavour: VendorFlavour, rows: int, columns: int) -> None:
    """Image Pixel module of 16-bit MONOCHROME2 data (signed where the export is)."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = flavour.scaling.bits_stored
    ds.HighBit = flavour.scaling.bits_stored - 1
    ds.PixelRepresentation = 1 if flavour.scaling.signed else 0
