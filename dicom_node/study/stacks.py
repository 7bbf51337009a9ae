"""Group Dixon frames into studies and stacks, and check each stack's geometry.

A stack is one acquisition: a set of parallel slices at the same positions for every Dixon
role. Scanners put roles in one series (Philips) or one series per role (Siemens, GE), so
stacks are found by geometry, not by series: frames of one series, role and orientation form
a *role stack*; role stacks whose slice ranges coincide form a stack. Stacks are numbered
along the slice normal (index 0 lowest), which for axial thigh stacks means knee first.

A stack's slice step is the median distance between its slice positions, never its
SliceThickness: 2D multi-slice protocols whose spacing exceeds the thickness (10 mm slices
20 mm apart) are regular stacks, and only positions missing from that step are gaps.

Echo images join stacks like any role, one role per echo (``echo_magnitude_4.60ms``). A stack
of echoes only is kept when its magnitudes make a Dixon set; one that does not (the first
echo of a study still arriving, a lone gradient-echo series) is left out and named in
``incomplete_echoes``. Where no stack has the scanner's in/out-of-phase images they are taken
from echoes (:mod:`dicom_node.study.echoes`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from common.geometry import VolumeGeometry
from common.study import Frame, Stack, StudyStacks
from dicom_node.study.echoes import (
    derive_roles,
    describe_echoes,
    has_dixon_roles,
    is_echo_set,
    study_field_strength,
)

# Two positions closer than this along the normal are the same slice (mm).
SAME_POSITION_MM = 0.05
# Role stacks belong to one stack when their slice ranges overlap by this fraction (stacks of
# one study overlap by a few tens of percent at most, roles of one stack by ~100%).
SAME_STACK_OVERLAP = 0.8
# Relative tolerance for slice spacing before a step counts as a gap or as irregular.
SPACING_TOLERANCE = 0.1
# A stack spans at most this many slice positions (thigh stacks have tens, whole-body series a
# few hundred): positions far apart at a fine step would otherwise ask for a huge grid.
MAX_SLICES = 4096


@dataclass
class RoleStack:
    """The frames of one role in one stack, sorted along the slice normal."""

    role: str
    series_instance_uid: str
    frames: list[Frame]
    offsets: np.ndarray  # position of each frame along the slice normal (mm)


def group_studies(frames: list[Frame]) -> list[StudyStacks]:
    """Split frames by study and find the stacks of each; studies in first-seen order."""
    by_study: dict[str, list[Frame]] = defaultdict(list)
    for frame in frames:
        by_study[frame.study_instance_uid].append(frame)
    return [find_stacks(uid, study_frames) for uid, study_frames in by_study.items()]


def find_stacks(study_uid: str, frames: list[Frame]) -> StudyStacks:
    """Find and check the stacks of one study's frames."""
    warnings: list[str] = []
    dixon = [f for f in frames if f.role is not None]
    role_stacks = []
    for key, group in _group_role_frames(dixon).items():
        role_stacks.extend(_split_role_group(key, group, warnings))
    clusters = _cluster(role_stacks, warnings)
    stacks = [stack for cluster in clusters
              if (stack := _build_stack(cluster, warnings)) is not None]
    field_strength = study_field_strength(dixon)
    stacks, incomplete = _usable(stacks, field_strength)
    warnings.extend(incomplete)
    stacks.sort(key=lambda s: s.z_range_mm[0])
    for index, stack in enumerate(stacks):
        stack.index = index
    warnings.extend(derive_roles(stacks, field_strength))
    _check_study(stacks, warnings)
    if not stacks:
        warnings.append("no Dixon images recognised in this study")
    return StudyStacks(study_uid, stacks, warnings, ignored_frames=len(frames) - len(dixon),
                       field_strength_t=field_strength, incomplete_echoes=incomplete)


def _usable(stacks: list[Stack], field_strength: float | None) -> tuple[list[Stack], list[str]]:
    """Stacks to use, and why each stack of echoes only is not (too few echoes, yet)."""
    kept, reasons = [], []
    for stack in stacks:
        echoes = stack.echo_times_ms()
        stack.echo_set = is_echo_set(echoes, field_strength)
        if stack.echo_set or has_dixon_roles(stack):
            kept.append(stack)
            continue
        series = ", ".join(sorted(set(stack.series.values())))
        found = describe_echoes(echoes, field_strength) if echoes else "phase only"
        reasons.append(
            f"echo images of series {series} ({found} at "
            f"{_tesla(field_strength)}) make no Dixon set yet (an in- and an out-of-phase "
            "echo magnitude, or three echoes): not used"
        )
    return kept, reasons


def _tesla(field_strength: float | None) -> str:
    return f"{field_strength:g} T" if field_strength is not None else "unknown field strength"


def _orientation_key(frame: Frame) -> tuple[float, ...]:
    return tuple(round(v, 3) for v in frame.orientation)


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, col = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def _group_role_frames(frames: list[Frame]) -> dict[tuple, list[Frame]]:
    groups: dict[tuple, list[Frame]] = defaultdict(list)
    for frame in frames:
        key = (frame.series_instance_uid, frame.stack_role, frame.stack_id,
               _orientation_key(frame))
        groups[key].append(frame)
    return groups


def _split_role_group(key: tuple, frames: list[Frame], warnings: list[str]) -> list[RoleStack]:
    """Sort one series/role group; split it by acquisition if it holds several stacks."""
    series_uid, role = key[0], key[1]
    unique = {(f.sop_instance_uid, f.frame_number): f for f in frames}
    frames = list(unique.values())
    normal = _normal(frames[0].orientation)
    offsets = np.array([np.dot(f.position, normal) for f in frames])
    order = np.argsort(offsets, kind="stable")
    frames = [frames[i] for i in order]
    offsets = offsets[order]
    acquisitions = {f.acquisition_number for f in frames}
    has_duplicates = bool(np.any(np.diff(offsets) < SAME_POSITION_MM))
    if has_duplicates and len(acquisitions) > 1:
        parts = []
        for acquisition in sorted(acquisitions, key=lambda a: (a is None, a or 0)):
            part = [f for f in frames if f.acquisition_number == acquisition]
            parts.extend(_split_role_group(key, part, warnings))
        return parts
    kept_frames, kept_offsets = [frames[0]], [offsets[0]]
    for frame, offset in zip(frames[1:], offsets[1:]):
        if offset - kept_offsets[-1] < SAME_POSITION_MM:
            warnings.append(
                f"series {series_uid} ({role}): duplicate slice at {offset:.2f} mm "
                f"(instances {kept_frames[-1].sop_instance_uid} and {frame.sop_instance_uid}); "
                "the first is used"
            )
            continue
        kept_frames.append(frame)
        kept_offsets.append(offset)
    return [RoleStack(role, series_uid, kept_frames, np.asarray(kept_offsets))]


def _range_overlap(a: RoleStack, b: RoleStack) -> float:
    lo = max(a.offsets[0], b.offsets[0])
    hi = min(a.offsets[-1], b.offsets[-1])
    union = max(a.offsets[-1], b.offsets[-1]) - min(a.offsets[0], b.offsets[0])
    if union <= SAME_POSITION_MM:
        return 1.0 if hi >= lo - SAME_POSITION_MM else 0.0
    return max(0.0, hi - lo) / union


def _same_grid(a: RoleStack, b: RoleStack) -> bool:
    fa, fb = a.frames[0], b.frames[0]
    if _orientation_key(fa) != _orientation_key(fb):
        return False
    if (fa.rows, fa.columns) != (fb.rows, fb.columns):
        return False
    if not np.allclose(fa.pixel_spacing, fb.pixel_spacing, atol=1e-3):
        return False
    # Same in-plane origin: the position difference has no in-plane component.
    delta = np.asarray(fa.position) - np.asarray(fb.position)
    in_plane = delta - np.dot(delta, _normal(fa.orientation)) * _normal(fa.orientation)
    return bool(np.linalg.norm(in_plane) < 0.5 * min(fa.pixel_spacing))


def _cluster(role_stacks: list[RoleStack], warnings: list[str]) -> list[list[RoleStack]]:
    """Put role stacks of one acquisition together (biggest first, so references are full)."""
    clusters: list[list[RoleStack]] = []
    for candidate in sorted(role_stacks, key=lambda r: -len(r.frames)):
        home = next(
            (
                cluster
                for cluster in clusters
                if _same_grid(cluster[0], candidate)
                and _range_overlap(cluster[0], candidate) >= SAME_STACK_OVERLAP
            ),
            None,
        )
        if home is None:
            clusters.append([candidate])
            continue
        twin = next((r for r in home if r.role == candidate.role), None)
        if twin is not None:
            warnings.append(
                f"{candidate.role} images of series {candidate.series_instance_uid} repeat those "
                f"of series {twin.series_instance_uid} at the same positions; the latter are used"
            )
            continue
        home.append(candidate)
    return clusters


def _slice_step(offsets: np.ndarray) -> float:
    steps = np.diff(offsets)
    return float(np.median(steps)) if len(steps) else 0.0


def _build_stack(cluster: list[RoleStack], warnings: list[str]) -> Stack | None:
    """The stack of one cluster; None (with a warning) when its slices do not fit one grid."""
    reference = cluster[0]
    first = reference.frames[0]
    lo = min(r.offsets[0] for r in cluster)
    hi = max(r.offsets[-1] for r in cluster)
    step = _slice_step(reference.offsets) or float(first.slice_thickness or 1.0)
    span = (hi - lo) / step if np.isfinite(hi - lo) and step > 0 else float("inf")
    if not span < MAX_SLICES:
        series = ", ".join(sorted({r.series_instance_uid for r in cluster}))
        warnings.append(
            f"series {series}: {sum(len(r.frames) for r in cluster)} slice(s) spread over "
            f"{hi - lo:.6g} mm at a step of {step:.6g} mm (more than {MAX_SLICES} slice "
            "positions); not used as a stack"
        )
        return None
    n_slices = int(round(span)) + 1
    normal = _normal(first.orientation)
    origin = np.asarray(first.position) + (lo - reference.offsets[0]) * normal
    geometry = VolumeGeometry.from_orientation(
        (n_slices, first.rows, first.columns),
        (step, first.pixel_spacing[0], first.pixel_spacing[1]),
        tuple(origin.tolist()),
        first.orientation,
    )
    roles: dict[str, list[Frame | None]] = {}
    series: dict[str, str] = {}
    for role_stack in cluster:
        slots: list[Frame | None] = [None] * n_slices
        positions = (role_stack.offsets - lo) / step
        for frame, position in zip(role_stack.frames, positions):
            k = int(round(position))
            if abs(position - k) * step > max(SAME_POSITION_MM, SPACING_TOLERANCE * step):
                warnings.append(
                    f"series {role_stack.series_instance_uid} ({role_stack.role}): slice at "
                    f"{role_stack.offsets[0] + (position * step):.2f} mm is off the regular "
                    f"{step:.3f} mm grid; it is placed at the nearest slice"
                )
            slots[k] = frame
        roles[role_stack.role] = slots
        series[role_stack.role] = role_stack.series_instance_uid
    return Stack(0, geometry, roles, series)


def _check_study(stacks: list[Stack], warnings: list[str]) -> None:
    """Warnings a user needs: missing slices and roles, mixed orientations and frames."""
    for stack in stacks:
        label = f"stack {stack.index}"
        for role in stack.missing_roles():
            warnings.append(f"{label}: no {role} images")
        for role in stack.acquired_roles():
            slots = stack.roles[role]
            missing = [k for k, frame in enumerate(slots) if frame is None]
            if missing:
                offsets = stack.geometry.slice_offsets()
                where = ", ".join(f"{offsets[k]:.1f}" for k in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                warnings.append(
                    f"{label} {role}: {len(missing)} missing slice(s) of {len(slots)} "
                    f"at {where}{more} mm along the slice normal"
                )
    if len({tuple(round(v, 3) for v in s.geometry.orientation) for s in stacks}) > 1:
        warnings.append(
            "stacks have different orientations; they are resampled onto the orientation of "
            "the stack with the finest in-plane spacing"
        )
    frames_of_reference = {
        f.frame_of_reference_uid for s in stacks for slots in s.roles.values() for f in slots if f
    }
    if len(frames_of_reference) > 1:
        warnings.append(
            "stacks have different frames of reference; their positions may not be comparable"
        )
