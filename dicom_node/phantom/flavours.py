"""How each scanner vendor labels and stores a Dixon study (the phantom writer's flavours).

Real studies reach the node from Siemens, Philips and GE scanners, each with its own way of
telling water from fat: ImageType values, private tags, series descriptions, one series per
role or all roles in one series, classic single-frame or Enhanced MR multi-frame files. The
phantom writes every flavour so the folder scanner and the role rules are exercised on what
they will meet. Where a convention is not documented by the vendor, the comment says which
public source was followed and what is our own choice.

Sources (see also /work/notes/vendors_readme.md):

* [SIE] Siemens syngo VIBE Dixon: ImageType ``DERIVED\\PRIMARY\\DIXON\\WATER`` (also ``FAT``,
  ``IN_PHASE``, ``OPP_PHASE``), one series per role whose description ends in ``_W``, ``_F``,
  ``_in``, ``_opp`` (e.g. ``wholebody_t1_vibe_dixon_tra_mbh_dyn_W``), as recorded in public
  open-source Siemens Dixon post-processing code (an MRD "Musclemap" pipeline that strips
  ``_(W|F|IN|OPP)`` suffixes and reads ImageType value 4). Pixel data 12 bit, no rescale.
* [PHC] Philips classic single-frame mDIXON: all reconstructed types in one series, told apart
  by ImageType ``DERIVED\\PRIMARY\\W\\W\\DERIVED`` / ``F`` / ``IP`` / ``OP`` and
  ``DERIVED\\PRIMARY\\FF\\FF\\DERIVED`` (fat fraction in percent, Ingenia), per D. Atkinson's
  (UCL) MATLAB DICOM toolbox ``d2mat.m``; the same short code is in the private element
  (2005,1011) of creator "Philips MR Imaging DD 001". Scaling: displayed value
  DV = PV * RescaleSlope + RescaleIntercept, Philips floating value FP = DV / (RS * SS) with SS
  the private scale slope (2005,100E) (Chenevert et al. 2014, PMC3998685, as cited by dcm2niix).
* [PHE] Philips Enhanced MR: per-frame MR Image Frame Type FrameType whose last value is the
  type, ``W``/``F``/``IP``/``OP`` before release 12 and ``WATER``/``FAT``/``IN_PHASE``/
  ``OUT_OF_PHASE`` from release 12, and a legacy per-frame private block (2005,140F) repeating
  the classic ImageType and (2005,1011); dimensions Stack / In-Stack Position / Image Type MR
  (dcm2niix developer notes on Philips Dixon handling). dcm2niix issue #1022 shows a recent
  Philips file with FrameType ``ORIGINAL\\PRIMARY\\DIXON\\FAT`` / ``WATER`` / ``FAT_FRACTION``,
  the fat fraction frames having Complex Image Component REAL.
* [GE] GE LAVA-Flex (pulse sequence ``efgre3d``): one series per role, ImageType
  ``DERIVED\\PRIMARY\\DIXON\\WATER`` (also ``FAT``, ``IN_PHASE``, ``OUT_PHASE``), description
  starting with ``WATER:`` (e.g. ``WATER: BH Ax LAVA-Flex-2min``), as documented in a public
  conversion plan of a GE SIGNA Artist/Explorer 1.5 T cohort; private (0043,102F) of creator
  GEMS_PARM_01 is 0 magnitude, 1 phase, 2 real, 3 imaginary (several public converters). The
  ``InPhase:``/``OutPhase:`` description prefixes are from GE Flex exports we have seen, not
  from a document: treat them as plausible, not authoritative.
* [DICOM] PS3.3 C.8.13.3.1.2: Acquisition Contrast has no WATER/FAT defined term, so Dixon
  frames are ``T1`` (a spoiled T1-weighted gradient echo); C.8.16.1: Image Type value 4 is
  ``MIXED`` when the frames of an instance differ.
* [SEED] Huysmans et al. 2023 (the method paper): Philips Ingenia 1.5 T, 6-point Dixon 3D,
  TR/TE/dTE 9.2/1.36/1.3 ms, flip angle 12 degrees, 384x384 at 1.2 mm, 140 slices of 2 mm.

Echo exports (``--dixon-output echoes`` / ``echoes+phase``: the echo images instead of the
scanner's reconstructions):

* [SIE-E] Siemens 3 T 3-point Dixon as the real scans in shared/real-dixon (public test data
  of SWastling/musclemap): echo times 3.45, 4.60, 5.75 ms (out-of-phase, in-phase,
  out-of-phase at 3 T), one series per echo for the magnitude and one for the phase, numbered
  in turn (magnitude, phase, next echo, ...) and described ``..._TE_345``; TR 23 ms and flip
  angle 5 degrees from the calf series' name (``dix3d_TR23_448m_fa05``). ImageType
  ``ORIGINAL\\PRIMARY\\M\\ND`` / ``ORIGINAL\\PRIMARY\\P\\ND`` (syngo VE11, as dcm2niix
  issue #851 shows). Phase stored 0..4095 with RescaleSlope 2, RescaleIntercept -4096 (-pi..
  pi over -4096..4094; dcm2niix issue #406, CMRR-C2P/MB issue #238).
* [GE-E] GE 1.5 T LAVA-Flex echoes: the two echoes of the [GE] protocol (2.2 ms
  out-of-phase, 4.4 ms in-phase), all images of a stack in one series told apart by EchoTime,
  EchoNumbers and (0043,102F) 0 magnitude / 1 phase; ImageType ``ORIGINAL\\PRIMARY\\OTHER``
  (GE's ImageType does not say magnitude or phase: dcm2niix issue #881); pixels signed 16 bit,
  the phase in milliradians (-3142..3141). One series for all echoes is our reading of GE
  exports, not a document.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from common.study import ECHO_MAGNITUDE, ECHO_PHASE, echo_role

# Dixon roles in the order a stack lists them (shared with dicom_node.study.dixon_roles.ROLES).
MAGNITUDE_ROLES = ("water", "fat", "in_phase", "out_of_phase")
FAT_FRACTION = "fat_fraction"

PHILIPS_CREATOR_001 = "Philips MR Imaging DD 001"  # block holding (2005,100E) and (2005,1011)
PHILIPS_CREATOR_005 = "Philips MR Imaging DD 005"  # block holding the (2005,140F) sequence
GE_CREATOR_ACQU = "GEMS_ACQU_01"  # (0019,109C) pulse sequence name
GE_CREATOR_PARM = "GEMS_PARM_01"  # (0043,102F) private image type


@dataclass(frozen=True)
class RoleLabel:
    """How one vendor marks one Dixon role."""

    image_type: tuple[str, ...]  # (0008,0008), or the legacy per-frame copy for Enhanced MR
    description: str  # the role's part of the series description ("" when roles share one)
    echo_time: float  # ms, what the vendor writes as EchoTime for this reconstructed type
    private_code: str | int | None = None  # Philips (2005,1011) / GE (0043,102F) value
    frame_type: tuple[str, ...] = ()  # Enhanced MR FrameType (0008,9007)
    complex_component: str = "MAGNITUDE"
    echo_number: int = 1  # EchoNumbers (0018,0086)


@dataclass(frozen=True)
class EchoExport:
    """How a vendor exports the echo images of its Dixon protocol (sources [SIE-E], [GE-E])."""

    echo_times_ms: tuple[float, ...]
    field_strength: float  # tesla
    imaging_frequency: float  # MHz, 1H at that field
    model: str
    layout: str  # "per_role": a series per echo and image kind; "combined": one per stack
    magnitude_image_type: tuple[str, ...]
    phase_image_type: tuple[str, ...]
    phase_storage: str  # "siemens": 0..4095, slope 2, intercept -4096; "milliradians"
    protocol: str  # with {station}
    repetition_time: float
    flip_angle: float
    sequence_name: str
    signed: bool = False  # PixelRepresentation 1 for every image of the export
    magnitude_code: int | None = None  # GE (0043,102F)
    phase_code: int | None = None


@dataclass(frozen=True)
class Scaling:
    """How magnitudes become stored integers (one factor per stack for every magnitude role)."""

    bits_stored: int
    target_max: tuple[float, float]  # the stack maximum is scaled to a value drawn in this range
    rescale: bool  # writes RescaleSlope/RescaleIntercept (Philips); else stored = real world
    slope_range: tuple[float, float] = (1.0, 1.0)  # RescaleSlope drawn per stack (Philips)
    signed: bool = False  # PixelRepresentation 1 (GE's echo export)


@dataclass(frozen=True)
class VendorFlavour:
    """Everything the writer needs to imitate one vendor's Dixon export."""

    name: str
    manufacturer: str
    model: str
    software_versions: tuple[str, ...]
    station_name: str
    institution: str
    layout: str  # "per_role": a series per role; "combined": one series; "enhanced": one file
    roles: dict[str, RoleLabel]  # written roles, in series order
    protocol: str  # format string with {station}: the stack's protocol name
    first_series: int  # series number of the first stack's first series
    series_step: int  # series numbers between stacks
    acquisition_per_stack: bool  # AcquisitionNumber counts stacks (else 1 in every series)
    scaling: Scaling
    repetition_time: float
    flip_angle: float
    sequence_name: str
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    pixel_bandwidth: float
    receive_coil: str
    transmit_coil: str
    field_strength: float = 1.5
    imaging_frequency: float = 63.87  # MHz, 1H at 1.5 T
    role_prefix: bool = False  # the role leads the description ("WATER: ...") instead of ending it
    echoes: EchoExport | None = None  # how its echo images are exported (None: not written)

    def series_description(self, station: int, role: str | None) -> str:
        """SeriesDescription of one series; ``role`` is None for a combined series."""
        base = self.protocol.format(station=station)
        if role is None:
            return base
        label = self.roles[role].description
        if self.role_prefix:
            return f"{label}: {base}"  # [GE] "WATER: Ax LAVA-Flex"
        return f"{base}_{label}"  # [SIE] "t1_vibe_dixon_tra_1_W"

    def series_number(self, stack_index: int, role_index: int) -> int:
        """Series numbers as the console assigns them (our reading of each vendor's habit)."""
        return self.first_series + self.series_step * stack_index + role_index

    def acquisition_number(self, stack_index: int) -> int:
        """Philips numbers acquisitions by scan; Siemens and GE write 1 in each series."""
        if self.acquisition_per_stack:
            return self.series_number(stack_index, 0) // 100
        return 1


# Siemens 1.5 T VIBE Dixon: opposed phase is the first echo (TE 2.39 ms), in phase the second
# (4.77 ms) [SIE]; the W/F maps carry the first echo's time. Series order opp, in, F, W is the
# order we remember from Siemens consoles (not documented); numbering from 2 leaves 1 to the
# localizer.
SIEMENS = VendorFlavour(
    name="siemens",
    manufacturer="SIEMENS",
    model="MAGNETOM Aera",
    software_versions=("syngo MR E11",),
    station_name="AWP45123",
    institution="myonode phantom site",
    layout="per_role",
    roles={
        "out_of_phase": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "OPP_PHASE"), "opp", 2.39),
        "in_phase": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "IN_PHASE"), "in", 4.77),
        "fat": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "FAT"), "F", 2.39),
        "water": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "WATER"), "W", 2.39),
    },
    protocol="t1_vibe_dixon_tra_{station}",
    first_series=2,
    series_step=4,
    acquisition_per_stack=False,
    scaling=Scaling(bits_stored=12, target_max=(3000.0, 4000.0), rescale=False),
    repetition_time=6.73,
    flip_angle=10.0,
    sequence_name="*fl3d2",
    scanning_sequence=("GR",),
    sequence_variant=("SP", "OSP"),
    scan_options=("PFP",),
    pixel_bandwidth=490.0,
    receive_coil="BO1,2;SP3-5",
    transmit_coil="Body",
    echoes=EchoExport(
        echo_times_ms=(3.45, 4.60, 5.75),
        field_strength=3.0,
        imaging_frequency=123.25,
        model="MAGNETOM Prisma",
        layout="per_role",
        magnitude_image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
        phase_image_type=("ORIGINAL", "PRIMARY", "P", "ND"),
        phase_storage="siemens",
        protocol="dixon3pt_tra_{station}",
        repetition_time=23.0,
        flip_angle=5.0,
        sequence_name="*fl3d3",
    ),
)

# Philips Ingenia 1.5 T, 6-point mDIXON as in [SEED]; IP/OP are synthesised at the 1.5 T
# in/opposed-phase times (4.6/2.3 ms), W/F/FF carry the first echo (1.36 ms). One series per
# scan, numbered scan*100 + 1, AcquisitionNumber = scan ([PHC]; Philips habit).
_PHILIPS_ROLES = {
    "water": RoleLabel(("DERIVED", "PRIMARY", "W", "W", "DERIVED"), "", 1.36, "W",
                       ("ORIGINAL", "PRIMARY", "DIXON", "WATER")),
    "fat": RoleLabel(("DERIVED", "PRIMARY", "F", "F", "DERIVED"), "", 1.36, "F",
                     ("ORIGINAL", "PRIMARY", "DIXON", "FAT")),
    "in_phase": RoleLabel(("DERIVED", "PRIMARY", "IP", "IP", "DERIVED"), "", 4.6, "IP",
                          ("ORIGINAL", "PRIMARY", "DIXON", "IN_PHASE")),
    "out_of_phase": RoleLabel(("DERIVED", "PRIMARY", "OP", "OP", "DERIVED"), "", 2.3, "OP",
                              ("ORIGINAL", "PRIMARY", "DIXON", "OUT_OF_PHASE")),
    FAT_FRACTION: RoleLabel(("DERIVED", "PRIMARY", "FF", "FF", "DERIVED"), "", 1.36, "FF",
                            ("ORIGINAL", "PRIMARY", "DIXON", "FAT_FRACTION"), "REAL"),
}

PHILIPS = VendorFlavour(
    name="philips",
    manufacturer="Philips Medical Systems",
    model="Ingenia",
    software_versions=("5.7.1", "5.7.1.2"),
    station_name="PHILIPS-MR01",
    institution="myonode phantom site",
    layout="combined",
    roles=_PHILIPS_ROLES,
    protocol="mDIXON_6pt_tra_{station}",
    first_series=301,
    series_step=100,
    acquisition_per_stack=True,
    scaling=Scaling(bits_stored=12, target_max=(3000.0, 4000.0), rescale=True,
                    slope_range=(1.2, 3.5)),
    repetition_time=9.2,
    flip_angle=12.0,
    sequence_name="T1FFE",
    scanning_sequence=("GR",),
    sequence_variant=("SP",),
    scan_options=("PFP",),
    pixel_bandwidth=1085.0,
    receive_coil="MULTI COIL",
    transmit_coil="B",
)

# Enhanced MR export of the same scan, as a release-12 console writes it ([PHE]).
PHILIPS_ENHANCED = replace(
    PHILIPS, name="philips-enhanced", layout="enhanced", software_versions=("12.1.1", "12.1.1.2")
)

# GE SIGNA Artist 1.5 T LAVA-Flex ([GE]); GE puts the four Flex outputs in consecutive series
# (our choice of numbers) and stores magnitudes without rescale, here in 16 bits.
GE = VendorFlavour(
    name="ge",
    manufacturer="GE MEDICAL SYSTEMS",
    model="SIGNA Artist",
    software_versions=("27", "LX", "MR ABCD.0"),
    station_name="GEMR01",
    institution="myonode phantom site",
    layout="per_role",
    roles={
        "water": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "WATER"), "WATER", 2.2, 0),
        "fat": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "FAT"), "FAT", 2.2, 0),
        "in_phase": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "IN_PHASE"), "InPhase", 4.4, 0),
        "out_of_phase": RoleLabel(("DERIVED", "PRIMARY", "DIXON", "OUT_PHASE"), "OutPhase",
                                  2.2, 0),
    },
    protocol="Ax LAVA-Flex thigh {station}",
    first_series=3,
    series_step=4,
    acquisition_per_stack=False,
    scaling=Scaling(bits_stored=16, target_max=(8000.0, 16000.0), rescale=False),
    repetition_time=6.6,
    flip_angle=12.0,
    sequence_name="efgre3d",
    scanning_sequence=("GR",),
    sequence_variant=("SS", "SK"),
    scan_options=("FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS"),
    pixel_bandwidth=325.5,
    receive_coil="32Ch Body",
    transmit_coil="BODY",
    role_prefix=True,
    echoes=EchoExport(
        echo_times_ms=(2.2, 4.4),
        field_strength=1.5,
        imaging_frequency=63.87,
        model="SIGNA Artist",
        layout="combined",
        magnitude_image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        phase_image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        phase_storage="milliradians",
        protocol="Ax LAVA-Flex thigh {station}",
        repetition_time=6.6,
        flip_angle=12.0,
        sequence_name="efgre3d",
        signed=True,
        magnitude_code=0,
        phase_code=1,
    ),
)

def echo_flavour(flavour: VendorFlavour, phases: bool) -> VendorFlavour:
    """The vendor's echo export as a flavour whose roles are the echoes (``echo_role``
    names): magnitude of each echo, then its phase when ``phases``, in series order."""
    export = flavour.echoes
    if export is None:
        raise ValueError(f"the {flavour.name} flavour writes no echo images; "
                         f"use one of {', '.join(n for n, f in FLAVOURS.items() if f.echoes)}")
    roles = {}
    for number, te in enumerate(export.echo_times_ms, start=1):
        description = f"TE_{round(te * 100):d}" if export.layout == "per_role" else ""
        roles[echo_role(ECHO_MAGNITUDE, te)] = RoleLabel(
            export.magnitude_image_type, description, te, export.magnitude_code,
            echo_number=number)
        if phases:
            roles[echo_role(ECHO_PHASE, te)] = RoleLabel(
                export.phase_image_type, description, te, export.phase_code,
                complex_component="PHASE", echo_number=number)
    return replace(
        flavour, roles=roles, layout=export.layout, model=export.model,
        field_strength=export.field_strength, imaging_frequency=export.imaging_frequency,
        protocol=export.protocol, repetition_time=export.repetition_time,
        flip_angle=export.flip_angle, sequence_name=export.sequence_name,
        series_step=len(roles) if export.layout == "per_role" else flavour.series_step,
        role_prefix=False,
        scaling=replace(flavour.scaling, signed=export.signed),
    )


FLAVOURS: dict[str, VendorFlavour] = {
    f.name: f for f in (SIEMENS, PHILIPS, PHILIPS_ENHANCED, GE)
}
