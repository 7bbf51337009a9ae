"""What every stage knows of a study: its frames (2D images placed in patient space) and its
stacks (one acquisition each, with the frame of every Dixon role at every slice).

The scan and the stack finder build these records from DICOM headers; stitching, the
processing of a study and the SEG/SR writers read them (a SEG references its source images
through a stack's frames). They hold identity and geometry only, never pixels, so they live
below every stage that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.geometry import VolumeGeometry

REQUIRED_ROLES = ("water", "fat", "in_phase", "out_of_phase")


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


@dataclass
class Stack:
    """One acquisition: a regular grid and, per role, the frame at every slice (or None)."""

    index: int
    geometry: VolumeGeometry
    roles: dict[str, list[Frame | None]]
    series: dict[str, str]  # role -> SeriesInstanceUID

    @property
    def z_range_mm(self) -> tuple[float, float]:
        """Offsets along the slice normal of the first and last slice centres."""
        offsets = self.geometry.slice_offsets()
        return float(offsets[0]), float(offsets[-1])

    def missing_roles(self, required: tuple[str, ...] = REQUIRED_ROLES) -> list[str]:
        """Required roles that have no frame at all in this stack."""
        return [role for role in required if role not in self.roles]


@dataclass
class StudyStacks:
    """All stacks of one study, with every geometry problem found as a readable warning."""

    study_instance_uid: str
    stacks: list[Stack]
    warnings: list[str] = field(default_factory=list)
    ignored_frames: int = 0  # frames without a Dixon role (localizers, phase images, ...)
