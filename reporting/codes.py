"""Every coded concept that myonode writes into DICOM objects, in one place.

Why one module: a code in a SEG or SR is a claim about meaning that other systems act on, so
each must be traceable to its source, and a private code must exist only where no standard
one does. Muscle codes, laterality and the segmentation category are NOT repeated here: they
live in ``config/muscles.yaml`` (with their sources) and are read through
:func:`common.muscles.load_muscles`; this module only turns them into highdicom codes.

Sources
  [DCM]  DICOM PS3.16 (Content Mapping Resource), as encoded in pydicom 3.0.2
         ``pydicom.sr.codedict`` (the CIDs named at each code).
  [LN]   LOINC imaging document/procedure codes ("MR Thigh" 24702-3), as listed e.g. in the
         LOINC Imaging Document Codes value set (OID 1.3.6.1.4.1.12009.10.2.5) and in the
         HL7 IPS "Results Radiology Observation" expansion (LOINC class RAD).
  [UCUM] Unified Code for Units of Measure; "ml" and "%" are valid UCUM expressions
         (PS3.16 CID 7181 lists "%"; UCUM defines "ml" = millilitre).

Not listed here: the concept names that the DICOM templates themselves fix (Measurement
Group, Tracking Identifier, Referenced Segment, Finding Site, Laterality, Derivation, Source
series for segmentation, Algorithm Name/Version, the SEG derivation code "Segmentation", ...):
highdicom writes those as TID 1500/1411/1419/4019 and the SEG IOD prescribe.

Choices
  * Muscles WITH their own SNOMED CT concept: SegmentedPropertyType = that concept.
  * Muscles WITHOUT one (``snomed: null`` in muscles.yaml, 11 of 18): SegmentedPropertyType
    = the muscle's ``group`` concept (e.g. "Structure of quadriceps femoris muscle" for vastus
    intermedius), and the muscle's own name goes into SegmentLabel and SegmentDescription
    (SEG) and into the Tracking Identifier (SR), because the group code alone does not say
    which muscle it is. No SNOMED CT id is ever invented, and no private muscle codes are
    made up either, so a receiving system that understands SNOMED CT gets a true (if broader)
    statement. Replace the group fallback by the real concept in muscles.yaml once verified.
  * Laterality is a SegmentedPropertyTypeModifier (SEG) / the FindingSite laterality (SR).
  * Private codes: "Contractile muscle volume" (volume x (1 - mean FF)) and the fat-fraction
    methods (which images the FF came from, as the TID 1419 "Measurement Method" of every FF
    measurement); PS3.16 has concepts for neither (its only FF-related concepts are "Fat
    fraction", "Water/fat in phase" and "Water/fat out of phase", CID 7180). The scheme
    designator starts with "99" as PS3.3 section 8.2 reserves for private coding schemes, and
    every SR that uses it carries a CodingSchemeIdentification item for it
    (:func:`private_coding_scheme`).
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

from common.muscles import Muscle, MuscleTable

# --- SEG --------------------------------------------------------------------------------
# [DCM] CID 7162 Surgical/Segmentation Algorithm Family (Algorithm Family Code Sequence).
ALGORITHM_FAMILY_AI = Code("123110", "DCM", "Artificial Intelligence")

# --- SR: document and context ------------------------------------------------------------
# [LN] 24702-3 "MR Thigh": the procedure, in the SR header's Performed Procedure Code
# Sequence. TID 1500 "Procedure Reported" draws on CID 100 (Quantitative Diagnostic Imaging
# Procedures), which has no thigh or lower-limb MR entry (its MR codes: unspecified body
# region, knee, pelvis, prostate, whole body) and PixelMed's SR validator rejects codes outside
# it although the CID is extensible, so the content tree uses CID 100's general MR code.
PROCEDURE_MR_THIGH = Code("24702-3", "LN", "MR Thigh")
# [DCM] CID 100 member (LOINC).
PROCEDURE_MR_UNSPECIFIED = Code("25056-3", "LN", "MRI unspecified body region")
# [DCM] CID 270 Observer Type: the SR's observer is a device (myonode), not a person.
OBSERVER_DEVICE = Code("121007", "DCM", "Device")
# [DCM] CID 12101 / DCM 121106 "Comment": free text, used for the model's intended use in the
# TID 1500 "Qualitative Evaluations" container (PS3.16 has no "intended use" concept).
COMMENT = Code("121106", "DCM", "Comment")
# UMLS C0034375 "Qualitative Evaluations": the concept name PS3.16 TID 1500 gives its
# report-level evaluations container (not in pydicom's codedict; the same code is used by
# dcmjs and by the HL7 "DICOM SR to FHIR" implementation guide).
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# --- SR: measurements (TID 1419 inside the TID 1411 groups) ------------------------------
# [DCM] CID 7469 Generic Intensity and Size Measurements, CID 7472 Volume Measurements.
VOLUME = Code("118565006", "SCT", "Volume")
# [DCM] CID 7180 / CID 7469 (and CID 218): DCM 129100 "Fat fraction".
FAT_FRACTION = Code("129100", "DCM", "Fat fraction")
# [DCM] CID 7464 General Region of Interest Measurement Modifiers (TID 1419 "Derivation").
MEAN = Code("373098007", "SCT", "Mean")
MEDIAN = Code("373099004", "SCT", "Median")
STANDARD_DEVIATION = Code("386136009", "SCT", "Standard Deviation")
# [DCM] CID 7192 / CID 4: the finding site of the whole-thigh FF (all segmented muscles).
MUSCLE_OF_LOWER_LIMB = Code("102292000", "SCT", "Muscle of lower limb")
# [DCM] CID 244 Laterality: "Bilateral" for the figure over both legs.
BILATERAL = Code("51440002", "SCT", "Bilateral")

# [UCUM] units.
UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_PERCENT = Code("%", "UCUM", "Percent")

# --- Private coding scheme (only where PS3.16 has nothing) --------------------------------
PRIVATE_SCHEME = "99MYONODE"
PRIVATE_SCHEME_NAME = "myonode private codes"
PRIVATE_SCHEME_ORGANIZATION = "myonode project"
# Muscle volume x (1 - mean fat fraction / 100): the fat-free (contractile) part of a muscle,
# a standard outcome in muscle MRI studies without a standard code.
CONTRACTILE_VOLUME = Code("MYO0001", PRIVATE_SCHEME, "Contractile muscle volume")
# How the FF map was made, by its source (inference.fat_fraction.SOURCES); the concept name
# of the modifier, "Measurement Method" (SCT 370129005), is fixed by TID 1419.
FF_METHODS = {
    "water_fat": Code("MYO0002", PRIVATE_SCHEME, "Fat fraction from water and fat images"),
    "fat_fraction": Code("MYO0003", PRIVATE_SCHEME, "Scanner fat fraction map"),
    "complex_echoes": Code("MYO0004", PRIVATE_SCHEME, "Fat fraction fitted to complex echoes"),
    "magnitude_echoes": Code("MYO0005", PRIVATE_SCHEME,
                             "Fat fraction fitted to magnitude echoes"),
    "ip_op": Code("MYO0006", PRIVATE_SCHEME, "Fat fraction from in-phase and opposed-phase"),
}


def private_coding_scheme() -> CodingSchemeIdentificationItem:
    """The CodingSchemeIdentificationSequence item that declares :data:`PRIVATE_SCHEME`."""
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        responsible_organization=PRIVATE_SCHEME_ORGANIZATION,
    )


def laterality(table: MuscleTable, side: str) -> Code:
    """SNOMED CT laterality qualifier of a side ("right"/"left") from muscles.yaml."""
    code, meaning = table.laterality[side]
    return Code(code, "SCT", meaning)


def segmentation_category(table: MuscleTable) -> Code:
    """SegmentedPropertyCategory of every muscle segment ("Anatomical Structure")."""
    scheme, code, meaning = table.category
    return Code(code, scheme, meaning)


def muscle_concept(muscle: Muscle) -> Code:
    """The muscle's own SNOMED CT concept, or its group's where it has none (see above)."""
    if muscle.snomed_code is not None and muscle.snomed_meaning is not None:
        return Code(muscle.snomed_code, "SCT", muscle.snomed_meaning)
    return Code(muscle.group_code, "SCT", muscle.group_meaning)


def has_own_code(muscle: Muscle) -> bool:
    """False when :func:`muscle_concept` falls back to the group concept."""
    return muscle.snomed_code is not None
