"""Enhanced MR Image Storage (multi-frame) files, as a Philips console exports mDIXON stacks.

One file per stack holds every role as frames, slice-major with the type varying fastest,
each frame placed and labelled by its own functional groups (plane position, MR Image Frame
Type, pixel value transformation) and by Philips' legacy private per-frame block (2005,140F).
Sources are listed in ``dicom_node/phantom/flavours.py`` ([PHE], [DICOM]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import EnhancedMRImageStorage

from dicom_node.phantom.attributes import (
    StackPlan,
    StudyInfo,
    common_dataset,
    derived_uid,
    ds_number,
    ds_numbers,
    file_meta,
    image_pixel,
)
from dicom_node.phantom.classic import series_folder
from dicom_node.phantom.flavours import (
    PHILIPS_CREATOR_001,
    PHILIPS_CREATOR_005,
    VendorFlavour,
)

LEGACY_BLOCK = Tag(0x2005, 0x140F)  # Philips per-frame private sequence (creator DD 005)
IMAGE_TYPE_MR = Tag(0x2005, 0x1011)  # Philips "Image Type MR" (creator DD 001)
FRAME_CONTENT = Tag(0x0020, 0x9111)
ACQUISITION_DURATION_S = 150.0  # a 140-slice 6-point Dixon slab with SENSE, roughly


def write_enhanced_stack(out_dir: Path, flavour: VendorFlavour, info: StudyInfo,
                         plan: StackPlan) -> list[Path]:
    """Write one stack as a single Enhanced MR instance in its own series."""
    geometry = plan.geometry
    nk, nj, ni = geometry.shape
    series_number = flavour.series_number(plan.index, 0)
    description = flavour.series_description(plan.station, None)
    series_uid = derived_uid(info.study_instance_uid, "series", plan.index, series_number)
    sop_uid = derived_uid(info.study_instance_uid, "instance", series_uid, 1)
    acquired_dt = plan.acquired[0] + plan.acquired[1]

    ds = common_dataset(flavour, info, EnhancedMRImageStorage, series_uid, series_number,
                        description, plan.station, flavour.acquisition_number(plan.index),
                        plan.acquired)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    labels = [flavour.roles[r] for r in plan.roles]
    frame_values4 = {label.frame_type[3] for label in labels}
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIXON",
                    frame_values4.pop() if len(frame_values4) == 1 else "MIXED"]
    components = {label.complex_component for label in labels}
    _enhanced_mr_image(ds, flavour, acquired_dt,
                       components.pop() if len(components) == 1 else "MIXED")
    _pulse_sequence(ds, flavour, plan.acquisition_type)
    image_pixel(ds, flavour, nj, ni)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence()
    _dimensions(ds, info.study_instance_uid, series_uid)
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(flavour, plan)])
    ds.PerFrameFunctionalGroupsSequence = Sequence(_per_frame_groups(flavour, plan, acquired_dt))
    ds.NumberOfFrames = nk * len(plan.roles)
    # Slice-major, role fastest: the frame order of Philips exports.
    frames = np.stack([plan.scaled.stored[r] for r in plan.roles], axis=1)
    ds.PixelData = frames.reshape(-1, nj, ni).tobytes()
    ds.file_meta = file_meta(EnhancedMRImageStorage, sop_uid)

    folder = series_folder(out_dir, series_number, description)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "IM00001.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return [path]


def _enhanced_mr_image(ds: Dataset, flavour: VendorFlavour, acquired_dt: str,
                       complex_component: str) -> None:
    """Enhanced MR Image module (MR Image and Spectroscopy Instance, image description)."""
    ds.AcquisitionDateTime = acquired_dt
    ds.AcquisitionDuration = ACQUISITION_DURATION_S
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = ds_number(flavour.field_strength)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = complex_component
    ds.AcquisitionContrast = "T1"  # [DICOM]: no WATER/FAT term; the Dixon GRE is T1-weighted


def _pulse_sequence(ds: Dataset, flavour: VendorFlavour, acquisition_type: str) -> None:
    """MR Pulse Sequence module: a 3D (or 2D multi-slice) spoiled multi-echo gradient echo."""
    ds.PulseSequenceName = flavour.sequence_name
    ds.MRAcquisitionType = acquisition_type
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def _dimensions(ds: Dataset, study_uid: str, series_uid: str) -> None:
    """Stack ID, In-Stack Position and Philips' private Image Type MR, as Philips declares."""
    organization = derived_uid(study_uid, "dimension-organization", series_uid)
    item = Dataset()
    item.DimensionOrganizationUID = organization
    ds.DimensionOrganizationSequence = Sequence([item])
    indices = []
    for pointer, label in ((Tag(0x0020, 0x9056), "Stack ID"),
                           (Tag(0x0020, 0x9057), "In-Stack Position Number"),
                           (IMAGE_TYPE_MR, "Image Type MR")):
        index = Dataset()
        index.DimensionOrganizationUID = organization
        index.DimensionIndexPointer = pointer
        if pointer == IMAGE_TYPE_MR:
            index.FunctionalGroupPointer = LEGACY_BLOCK
            index.DimensionIndexPrivateCreator = PHILIPS_CREATOR_001
            index.FunctionalGroupPrivateCreator = PHILIPS_CREATOR_005
        else:
            index.FunctionalGroupPointer = FRAME_CONTENT
        index.DimensionDescriptionLabel = label
        indices.append(index)
    ds.DimensionIndexSequence = Sequence(indices)


def _item(**attributes: object) -> Sequence:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return Sequence([item])


def _shared_groups(flavour: VendorFlavour, plan: StackPlan) -> Dataset:
    """Functional groups equal for every frame: grid, orientation, acquisition parameters.

    Pixel Measures SpacingBetweenSlices is centre to centre: thickness plus gap in 2D.
    """
    geometry = plan.geometry
    dz, dy, dx = geometry.spacing
    nk, nj, ni = geometry.shape
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(PixelSpacing=ds_numbers((dy, dx)),
                                         SliceThickness=ds_number(plan.thickness_mm),
                                         SpacingBetweenSlices=ds_number(dz))
    shared.PlaneOrientationSequence = _item(
        ImageOrientationPatient=ds_numbers(geometry.orientation)
    )
    shared.FrameAnatomySequence = _item(
        AnatomicRegionSequence=_item(CodeValue="68367000", CodingSchemeDesignator="SCT",
                                     CodeMeaning="Thigh"),
        FrameLaterality="B",
    )
    shared.MRTimingAndRelatedParametersSequence = _item(
        RepetitionTime=flavour.repetition_time, FlipAngle=flavour.flip_angle,
        EchoTrainLength=6, RFEchoTrainLength=0, GradientEchoTrainLength=6,
        GradientOutputType="DB_DT", GradientOutput=40.0,
        SpecificAbsorptionRateSequence=_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                             SpecificAbsorptionRateValue=0.85),
        OperatingModeSequence=_item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL"),
    )
    fov = _item(
        InPlanePhaseEncodingDirection="COLUMN",
        MRAcquisitionFrequencyEncodingSteps=int(round(ni * 0.83)),
        MRAcquisitionPhaseEncodingStepsInPlane=int(round(nj * 0.73)),
        PercentSampling="100",
        PercentPhaseFieldOfView=ds_number(100.0 * nj * dy / (ni * dx)),
    )
    if plan.acquisition_type == "3D":  # Type 1C: only a 3D acquisition encodes out of plane
        fov[0].MRAcquisitionPhaseEncodingStepsOutOfPlane = nk
    shared.MRFOVGeometrySequence = fov
    shared.MRModifierSequence = _item(
        InversionRecovery="NO", FlowCompensation="NONE", Spoiling="RF_AND_GRADIENT",
        T2Preparation="NO", SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE",
        PartialFourier="NO", ParallelAcquisition="YES", ParallelAcquisitionTechnique="SENSE",
        ParallelReductionFactorInPlane=2.0, ParallelReductionFactorOutOfPlane=1.0,
        ParallelReductionFactorSecondInPlane=1.0,
    )
    shared.MRImagingModifierSequence = _item(
        MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
        TransmitterFrequency=flavour.imaging_frequency,
        PixelBandwidth=ds_number(flavour.pixel_bandwidth),
    )
    shared.MRReceiveCoilSequence = _item(
        ReceiveCoilName=flavour.receive_coil, ReceiveCoilManufacturerName=flavour.manufacturer,
        ReceiveCoilType="MULTICOIL", QuadratureReceiveCoil="NO",
        MultiCoilDefinitionSequence=_item(MultiCoilElementName="dStream Torso",
                                          MultiCoilElementUsed="YES"),
    )
    shared.MRTransmitCoilSequence = _item(
        TransmitCoilName=flavour.transmit_coil,
        TransmitCoilManufacturerName=flavour.manufacturer, TransmitCoilType="BODY",
    )
    shared.MRAveragesSequence = _item(NumberOfAverages="1")
    return shared


def _per_frame_groups(flavour: VendorFlavour, plan: StackPlan,
                      acquired_dt: str) -> list[Dataset]:
    """Position, frame type, echo, scaling and Philips legacy block of every frame."""
    scaled = plan.scaled
    positions = [ds_numbers(p) for p in plan.geometry.slice_positions()]
    duration_ms = ACQUISITION_DURATION_S * 1000.0
    groups = []
    for k, position in enumerate(positions):
        for type_index, role in enumerate(plan.roles, start=1):
            label = flavour.roles[role]
            centre, width = scaled.window[role]
            group = Dataset()
            group.FrameContentSequence = _item(
                FrameReferenceDateTime=acquired_dt, FrameAcquisitionDateTime=acquired_dt,
                FrameAcquisitionDuration=duration_ms, StackID="1", InStackPositionNumber=k + 1,
                DimensionIndexValues=[1, k + 1, type_index],
            )
            group.PlanePositionSequence = _item(ImagePositionPatient=position)
            group.MRImageFrameTypeSequence = _item(
                FrameType=list(label.frame_type), PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
                ComplexImageComponent=label.complex_component, AcquisitionContrast="T1",
            )
            group.MREchoSequence = _item(EffectiveEchoTime=label.echo_time)
            group.PixelValueTransformationSequence = _item(
                RescaleIntercept="0", RescaleSlope=ds_number(scaled.slope[role]),
                RescaleType="US",
            )
            group.FrameVOILUTSequence = _item(WindowCenter=ds_number(round(centre, 3)),
                                              WindowWidth=ds_number(round(width, 3)))
            group.add_new(Tag(0x2005, 0x0014), "LO", PHILIPS_CREATOR_005)
            group.add_new(LEGACY_BLOCK, "SQ", _legacy_block(label.image_type,
                                                             str(label.private_code),
                                                             scaled.private_scale[role]))
            groups.append(group)
    return groups


def _legacy_block(image_type: tuple[str, ...], code: str, scale_slope: float) -> Sequence:
    """Philips (2005,140F) item: the classic ImageType and private type code of the frame."""
    item = Dataset()
    item.ImageType = list(image_type)
    item.add_new(Tag(0x2005, 0x0010), "LO", PHILIPS_CREATOR_001)
    item.add_new(Tag(0x2005, 0x100E), "FL", scale_slope)
    item.add_new(IMAGE_TYPE_MR, "CS", code)
    return Sequence([item])
