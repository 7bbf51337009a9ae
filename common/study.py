"""What every stage knows of a study: its frames (2D images placed in patient space) and its
stacks (one acquisition each, with the frame of every Dixon role at every slice).

Besides the scanner's Dixon reconstructions (water, fat, in/out-of-phase, FF map) a study may
carry only the echo images they are made from: magnitudes (and phases) of each echo. Their
frames have the rule role ``echo_magnitude`` or ``echo_phase`` and an echo time; in a stack
each echo is a role of its own, named by :func:`echo_role` (``echo_magnitude_4.60ms``), so
stacks, stitching and completion treat an echo like any other role.

The scan and the stack finder build these records from DICOM headers; stitching, the
processing of a study and the SEG/SR writers read them (a SEG references its source images
through a stack's frames). They hold identity and geometry only, never pixels, so they live
below every stage that uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from common.geometry import VolumeGeometry

REQUIRED_ROLES = ("water", "fat", "in_phase", "out_of_phase")
ECHO_MAGNITUDE = "echo_magnitude"
ECHO_PHASE = "echo_phase"
ECHO_KINDS = (ECHO_MAGNITUDE, ECHO_PHASE)
# Echo times closer than this are one echo (the stack role holds the time to 0.01 ms).
ECHO_TIME_DIGITS = 2
_ECHO_ROLE = re.compile(r"^(echo_magnitude|echo_phase)_(\d+(?:\.\d+)?)ms$")


def echo_role(kind: str, echo_time_ms: float) -> str:
    """The stack role of one echo: ``echo_magnitude_3.45ms`` (kind, time to 0.01 ms)."""
    if kind not in ECHO_KINDS:
        raise ValueError(f"unknown echo kind {kind!r}; use one of {', '.join(ECHO_KINDS)}")
    return f"{kind}_{echo_time_ms:.{ECHO_TIME_DIGITS}f}ms"


def parse_echo_role(role: str) -> tuple[str, float] | None:
    """(kind, echo time in ms) of an echo stack role; None for any other role."""
    found = _ECHO_ROLE.match(role)
    return (found.group(1), float(found.group(2))) if found else None


@dataclass(frozen=True)
class Frame:
    """One 2D image with everything needed to place it in patient space."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None  # 1-based frame of a multi-frame instance, None if single-frame
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    series_description: str
    acquisition_number: int | None
    stack_id: str | None  # Enhanced MR FrameContent StackID, when given
    frame_of_reference_uid: str
    role: str | None
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]  # (row spacing dy, column spacing dx), mm
    rows: int
    columns: int
    slice_thickness: float | None
    manufacturer: str
    echo_time_ms: float | None = None  # EchoTime, or the frame's EffectiveEchoTime
    echo_number: int | None = None  # EchoNumbers, when the header gives one
    field_strength_t: float | None = None  # MagneticFieldStrength (or from ImagingFrequency)

    @property
    def stack_role(self) -> str | None:
        """The role this frame fills in a stack: its rule role, or for an echo image the role
        of its echo (:func:`echo_role`)."""
        if self.role in ECHO_KINDS and self.echo_time_ms is not None:
            return echo_role(self.role, self.echo_time_ms)
        return self.role


@dataclass
class Stack:
    """One acquisition: a regular grid and, per role, the frame at every slice (or None)."""

    index: int
    geometry: VolumeGeometry
    roles: dict[str, list[Frame | None]]
    series: dict[str, str]  # role -> SeriesInstanceUID
    # Roles taken from an echo (e.g. in_phase -> echo_magnitude_4.60ms): the same frames
    # appear under both names in ``roles``.
    derived: dict[str, str] = field(default_factory=dict)
    # The echo magnitudes make a Dixon set (an in- and an out-of-phase echo, or three echoes):
    # the stack can be processed without the scanner's reconstructions.
    echo_set: bool = False

    @property
    def z_range_mm(self) -> tuple[float, float]:
        """Offsets along the slice normal of the first and last slice centres."""
        offsets = self.geometry.slice_offsets()
        return float(offsets[0]), float(offsets[-1])

    def missing_roles(self, required: tuple[str, ...] = REQUIRED_ROLES) -> list[str]:
        """Required roles that have no frame at all in this stack; none for a stack whose
        echoes make a Dixon set (its FF and model inputs come from the echoes)."""
        if self.echo_set:
            return []
        return [role for role in required if role not in self.roles]

    def echo_times_ms(self, kind: str = ECHO_MAGNITUDE) -> list[float]:
        """Echo times (ascending) of this stack's echo roles of ``kind``."""
        found = [parse_echo_role(role) for role in self.roles]
        return sorted(echo[1] for echo in found if echo is not None and echo[0] == kind)

    def acquired_roles(self) -> list[str]:
        """The roles whose frames were recognised as such (``derived`` ones left out), sorted."""
        return sorted(role for role in self.roles if role not in self.derived)


@dataclass
class StudyStacks:
    """All stacks of one study, with every geometry problem found as a readable warning."""

    study_instance_uid: str
    stacks: list[Stack]
    warnings: list[str] = field(default_factory=list)
    ignored_frames: int = 0  # frames without a Dixon role (localizers, phase images, ...)
    field_strength_t: float | None = None  # of the study's Dixon and echo frames
    # Echo images that form no stack yet (too few echoes): the study may still be arriving.
    incomplete_echoes: list[str] = field(default_factory=list)
