"""Stitch a study's overlapping stacks into one volume per Dixon role.

The common grid takes its orientation and in-plane grid from the stack with the finest
in-plane spacing and spans the union of all stacks along the slice normal. Stacks that sit on
that grid are copied; others (different in-plane grid, orientation or slice lattice) are
resampled with trilinear interpolation.

Overlaps are blended with linear feathering: a stack's weight at a slice is its distance to
the stack's nearest end (zero at its end slice), so the blend crosses over linearly from one
stack to the next. Coil sensitivity and distortion are worst at the ends of a stack, so this favours
each stack's centre and leaves no step at the seams. (Huysmans 2023 stitched the stacks
without saying how; Rohm 2021 blended 3-slice overlaps, which is the same idea over a shorter
distance.) Before blending, each stack's magnitude roles can be scaled by one gain estimated in
its overlap with the previous stack, because scanners scale each series on its own; one gain
for all roles of a stack leaves F/(F+W) unchanged.

Every stitched slice keeps its sources (stack, slice, weight), so results can be traced and
mapped back onto each stack's own images (the DICOM-SEG references them).

Echo magnitudes are magnitude roles like the others (same gain). Echo phases are not blended:
a stitched slice takes the phase of the stack that weighs most there (averaging two
acquisitions' phases, each with its own offset, would be neither), and interpolation works
on cos and sin so that it never crosses a wrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from common.geometry import VolumeGeometry
from common.study import ECHO_PHASE, Stack, StudyStacks, parse_echo_role
from dicom_node.study.pixels import fill_missing_slices, load_slices

MAGNITUDE_ROLES = ("water", "fat", "in_phase", "out_of_phase")
GAIN_ROLE_PREFERENCE = ("in_phase", "water", "out_of_phase", "fat")
# A slice inside this fraction of a slice of a stack's grid is taken without interpolation.
ON_GRID_TOLERANCE = 0.02


@dataclass(frozen=True)
class SliceSource:
    """Where a stitched slice comes from: a (fractional) slice of a stack, and its weight."""

    stack: int
    slice: float
    weight: float


@dataclass
class StitchPlan:
    """The common grid and, for each of its slices, the stacks that contribute."""

    geometry: VolumeGeometry
    reference_stack: int
    sources: list[list[SliceSource]]

    @property
    def z_range_mm(self) -> tuple[float, float]:
        """Offsets of the first and last stitched slice centres along the slice normal."""
        offsets = self.geometry.slice_offsets()
        return float(offsets[0]), float(offsets[-1])


@dataclass
class StitchedVolume:
    """Stitched images per role on one grid, with the plan and what was done to get them."""

    plan: StitchPlan
    images: dict[str, np.ndarray]
    gains: list[float]
    warnings: list[str] = field(default_factory=list)


def _centre_offsets(stack: Stack, normal: np.ndarray) -> np.ndarray:
    """Offsets of the stack's slice centres along ``normal``."""
    g = stack.geometry
    half = (
        (g.shape[2] - 1) / 2 * g.spacing[2] * np.asarray(g.row_dir)
        + (g.shape[1] - 1) / 2 * g.spacing[1] * np.asarray(g.col_dir)
    )
    return (g.slice_positions() + half) @ normal


def plan_stitch(stacks: list[Stack]) -> StitchPlan:
    """Choose the common grid and the blending weights of every stitched slice."""
    if not stacks:
        raise ValueError("no stacks to stitch")
    reference = min(
        stacks, key=lambda s: (s.geometry.spacing[1] * s.geometry.spacing[2], s.index)
    )
    ref = reference.geometry
    normal = ref.normal
    dz = ref.spacing[0]
    ranges = {s.index: _centre_offsets(s, normal)[[0, -1]] for s in stacks}
    lo = min(r[0] for r in ranges.values())
    hi = max(r[1] for r in ranges.values())
    n_slices = int(round((hi - lo) / dz)) + 1
    ref_lo = ranges[reference.index][0]
    origin = np.asarray(ref.origin) + (lo - ref_lo) * normal
    geometry = VolumeGeometry(
        (n_slices, ref.shape[1], ref.shape[2]),
        ref.spacing,
        tuple(origin.tolist()),
        ref.row_dir,
        ref.col_dir,
        tuple(normal.tolist()),
    )
    sources: list[list[SliceSource]] = []
    for k in range(n_slices):
        z = lo + k * dz
        entries = []
        for stack in stacks:
            s_lo, s_hi = ranges[stack.index]
            s_dz = stack.geometry.spacing[0]
            position = (z - s_lo) / s_dz
            if -ON_GRID_TOLERANCE <= position <= stack.geometry.shape[0] - 1 + ON_GRID_TOLERANCE:
                # Zero at the stack's end slice (the tiny floor keeps an end that no other
                # stack covers).
                weight = max(min(z - s_lo, s_hi - z), 0.0) + 1e-3 * s_dz
                entries.append(SliceSource(stack.index, float(position), float(weight)))
        total = sum(e.weight for e in entries) or 1.0
        sources.append([SliceSource(e.stack, e.slice, e.weight / total) for e in entries])
    return StitchPlan(geometry, reference.index, sources)


def stack_on_grid(
    volume: np.ndarray, stack: VolumeGeometry, grid: VolumeGeometry, k: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """One stitched slice ``k`` of a stack volume, and where it is valid (None: everywhere)."""
    offset = stack.slab_offset_in(grid, ON_GRID_TOLERANCE)
    if offset is not None:
        return volume[k - offset], None
    jj, ii = np.meshgrid(np.arange(grid.shape[1]), np.arange(grid.shape[2]), indexing="ij")
    kji = np.stack([np.full(jj.shape, k, dtype=float), jj, ii], axis=-1)
    coords = stack.lps_to_voxel(grid.voxel_to_lps(kji))
    inside = np.all(
        (coords >= -0.5) & (coords <= np.asarray(stack.shape) - 0.5), axis=-1
    )
    values = ndimage.map_coordinates(
        volume, np.moveaxis(coords, -1, 0), order=1, mode="nearest", prefilter=False
    )
    return values.astype(np.float32), inside


def _load_role(stack: Stack, role: str, warnings: list[str]) -> np.ndarray:
    slots = stack.roles[role]
    volume, present = load_slices(slots, stack.geometry.shape[1:])
    if not present.all():
        warnings.append(
            f"stack {stack.index} {role}: {int((~present).sum())} missing slice(s) filled by "
            "interpolation between neighbours"
        )
    return fill_missing_slices(volume, present)


def _overlap_gain(
    prev: tuple[Stack, np.ndarray], cur: tuple[Stack, np.ndarray], plan: StitchPlan
) -> float | None:
    """Median intensity ratio previous/current stack over their shared body voxels."""
    shared = [
        k
        for k, entries in enumerate(plan.sources)
        if {prev[0].index, cur[0].index} <= {e.stack for e in entries}
    ]
    ratios = []
    for k in shared:
        a, valid_a = stack_on_grid(prev[1], prev[0].geometry, plan.geometry, k)
        b, valid_b = stack_on_grid(cur[1], cur[0].geometry, plan.geometry, k)
        threshold = 0.1 * max(float(np.percentile(a, 99)), 1e-6)
        body = (a > threshold) & (b > threshold)
        for valid in (valid_a, valid_b):
            if valid is not None:
                body &= valid
        ratios.append(a[body] / b[body])
    values = np.concatenate(ratios) if ratios else np.empty(0)
    return float(np.median(values)) if values.size >= 100 else None


def _gains(study: StudyStacks, plan: StitchPlan, warnings: list[str]) -> list[float]:
    gains = [1.0] * len(study.stacks)
    role = next(
        (r for r in GAIN_ROLE_PREFERENCE if all(r in s.roles for s in study.stacks)), None
    )
    if role is None or len(study.stacks) < 2:
        return gains
    previous = None
    for stack in study.stacks:
        volume = _load_role(stack, role, [])
        if previous is not None:
            ratio = _overlap_gain(previous, (stack, volume), plan)
            if ratio is None:
                warnings.append(
                    f"stack {stack.index}: overlap with stack {previous[0].index} too small "
                    "to match intensities; no gain applied"
                )
            else:
                gains[stack.index] = gains[previous[0].index] * ratio
        previous = (stack, volume)
    return gains


def _blend(study: StudyStacks, plan: StitchPlan,
           load: Callable[[Stack], list[np.ndarray]], winner_only: bool) -> list[np.ndarray]:
    """Blend the volumes ``load`` gives for each stack onto the plan's grid with the plan's
    weights; ``winner_only``: every stitched slice from its highest-weighted stack alone."""
    shape = plan.geometry.shape
    totals: list[np.ndarray] = []
    weight_sum = np.zeros(shape, dtype=np.float32)
    chosen = [max(entries, key=lambda e: e.weight) for entries in plan.sources]
    for stack in study.stacks:
        volumes = load(stack)
        if not totals:
            totals = [np.zeros(shape, dtype=np.float32) for _ in volumes]
        for k, entries in enumerate(plan.sources):
            for entry in entries:
                if entry.stack != stack.index or (winner_only and entry is not chosen[k]):
                    continue
                weight = np.float32(1.0 if winner_only else entry.weight)
                valid = None
                for total, volume in zip(totals, volumes):
                    values, valid = stack_on_grid(volume, stack.geometry, plan.geometry, k)
                    total[k] += weight * values if valid is None else weight * values * valid
                weight_sum[k] += weight if valid is None else weight * valid
    for total in totals:
        np.divide(total, weight_sum, out=total, where=weight_sum > 0)
    return totals


def _stitch_role(study: StudyStacks, role: str, plan: StitchPlan, gains: list[float],
                 warnings: list[str]) -> np.ndarray:
    echo = parse_echo_role(role)
    if echo is not None and echo[0] == ECHO_PHASE:
        return _stitch_phase(study, role, plan, warnings)
    magnitude = role in MAGNITUDE_ROLES or echo is not None

    def load(stack: Stack) -> list[np.ndarray]:
        volume = _load_role(stack, role, warnings)
        if magnitude and gains[stack.index] != 1.0:
            volume *= np.float32(gains[stack.index])
        return [volume]

    return _blend(study, plan, load, winner_only=False)[0]


def _stitch_phase(study: StudyStacks, role: str, plan: StitchPlan,
                  warnings: list[str]) -> np.ndarray:
    """Phase (radians) is not blended: each stitched slice takes the phase of the stack that
    weighs most there, so every voxel's echoes keep the phase offsets of one acquisition.
    Interpolation (missing slices, resampling) works on cos and sin, never across a wrap."""

    def load(stack: Stack) -> list[np.ndarray]:
        volume, present = load_slices(stack.roles[role], stack.geometry.shape[1:])
        if not present.all():
            warnings.append(
                f"stack {stack.index} {role}: {int((~present).sum())} missing slice(s) "
                "filled by interpolation between neighbours"
            )
        return [fill_missing_slices(np.cos(volume), present),
                fill_missing_slices(np.sin(volume), present)]

    cosine, sine = _blend(study, plan, load, winner_only=True)
    return np.arctan2(sine, cosine).astype(np.float32)


def _derived_from(study: StudyStacks, role: str) -> str | None:
    """The echo role every stack takes ``role`` from (in_phase from an echo), else None."""
    sources = {stack.derived.get(role) for stack in study.stacks}
    return sources.pop() if len(sources) == 1 else None


def stitch(
    study: StudyStacks, roles: list[str] | None = None, match_intensity: bool = True
) -> StitchedVolume:
    """Load and stitch the given roles (default: every role present in all stacks); a role
    taken from an echo is that echo's stitched image (loaded once)."""
    plan = plan_stitch(study.stacks)
    available = set.intersection(*(set(s.roles) for s in study.stacks))
    wanted = [r for r in (roles or sorted(available)) if r in available]
    warnings: list[str] = []
    gains = _gains(study, plan, warnings) if match_intensity else [1.0] * len(study.stacks)
    stitched: dict[str, np.ndarray] = {}
    for role in wanted:
        source = _derived_from(study, role) or role
        if source not in stitched:
            stitched[source] = _stitch_role(study, source, plan, gains, warnings)
    images = {role: stitched[_derived_from(study, role) or role] for role in wanted}
    return StitchedVolume(plan, images, gains, warnings)
