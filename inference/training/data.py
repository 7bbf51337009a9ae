"""Training cases: phantom studies made on the fly, and site data read from NIfTI files.

Every case goes through the SAME preparation as inference (``segment.prepare_legs``:
per-channel normalisation from the package's inputs, crop to the body, leg split from the
image, left leg mirrored), so a network never sees data prepared differently from what it
will be given. A case is one leg; a study gives two.

Phantom studies (``phantom_cases``) imitate how real studies arrive: the subject is rendered
directly at the model spacing over the z coverage of 1, 2 or 3 stacks of 280 mm overlapping
by 23% (Huysmans 2023: the protocol grew from 1 to 3 stacks; ``dicom_node/phantom/study``
lays studies out the same way), each stack gets its own Dixon magnitudes (its own noise and
coil falloff) and overlaps are blended with linear feathering as the stitcher does; the
whole study gets one random intensity scale (vendors scale differently) and a random SNR.

Site data (``site_cases``) is a folder with one sub-folder per case::

    DIR/<case>/in_phase.nii.gz       Dixon magnitude images, any of the roles
    DIR/<case>/out_of_phase.nii.gz   water, fat, in_phase, out_of_phase, fat_fraction
    DIR/<case>/water.nii.gz          (``.nii`` also accepted); the package's input roles
    DIR/<case>/fat.nii.gz            must be present, or water + fat (IP = W + F, OP = |W - F|)
    DIR/<case>/labels.nii.gz         integer labels, project convention: right leg muscle
                                     n -> n, left leg muscle n -> 100 + n (config/muscles.yaml),
                                     0 background

All files of a case must share one voxel grid (shape and affine). The NIfTI affine (RAS,
array ``[i, j, k]``) is turned into the project's ``[k, j, i]`` LPS grid exactly as
``VolumeGeometry.affine_ras_ijk`` writes it, so files written by myonode read back unchanged,
and any other orientation (flipped, permuted axes) is handled by the canonical reorientation.
Images are resampled to the model spacing linearly (anti-aliased), labels by interpolating
each label's mask (``resample.resample_labels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from common.geometry import LPS_TO_RAS, VolumeGeometry
from common.muscles import load_muscles
from inference.fat_fraction import fat_fraction_map, ff_from_water_fat
from inference.models.package import ROLES, ModelPackage
from inference.phantom.anatomy import PhantomVolumes, make_subject, render
from inference.phantom.signals import dixon_magnitudes
from inference.resample import (
    Canonical,
    model_grid,
    resample_image,
    resample_labels,
    same_spacing,
)
from inference.segment import (
    anatomy_image,
    overall_muscle_ff,
    prepare_legs,
    required_images,
)

LABEL_FILE = "labels"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class LegCase:
    """One leg ready for patch sampling (image stored as float16 to halve the cache)."""

    name: str
    image: np.ndarray  # float16 [C, k, j, w], normalised, medial side last
    labels: np.ndarray  # uint8 [k, j, w] network classes (0 background)
    pad_values: np.ndarray  # float32 [C]: each channel's background value


@dataclass(frozen=True)
class PhantomSettings:
    """How phantom studies are laid out and varied (``phantom:`` in training.yaml)."""

    stacks: tuple[int, ...] = (1, 2, 3)
    stack_mm: float = 280.0
    overlap_fraction: float = 0.23
    fov_mm: float = 460.0
    snr: tuple[float, float] = (20.0, 200.0)  # log-uniform; SNR of a voxel of proton density 1
    intensity_scale: tuple[float, float] = (0.2, 5.0)  # log-uniform global scale
    z_shift_mm: float = 30.0  # study centre vs. the subject's centre, uniform +-
    xy_shift_mm: float = 10.0  # field-of-view centre, uniform +- in x and y


def class_of_label(package: ModelPackage) -> np.ndarray:
    """Lookup project label (right 1..99, left offset + n) -> network class; others -> 0."""
    table = load_muscles()
    lut = np.zeros(table.left_label_offset + 100, dtype=np.uint8)
    for c, code in enumerate(package.labels, start=1):
        lut[table.label_of(code, "right")] = c
        lut[table.label_of(code, "left")] = c
    return lut


def legs_from_volume(
    images: Mapping[str, np.ndarray],
    labels: np.ndarray,
    grid: VolumeGeometry,
    package: ModelPackage,
    name: str,
) -> tuple[list[LegCase], list[str]]:
    """Two leg cases from role images and combined labels on a canonical model grid."""
    inputs, notes = required_images(images, package.roles)
    channels = np.stack([spec.normalise(inputs[spec.role]) for spec in package.inputs])
    legs, midline_notes = prepare_legs(channels, anatomy_image(inputs), left_is_high_i=grid.row_dir[0] > 0)
    notes += midline_notes
    offset = load_muscles().left_label_offset
    rows, cols = legs.crop
    right, left = legs.split.split(np.asarray(labels)[:, rows, cols], pad_value=0)
    lut = class_of_label(package)
    misplaced = int(((right >= offset).sum()) + ((left > 0) & (left < offset)).sum())
    if misplaced:
        notes.append(f"{name}: {misplaced} labelled voxels on the wrong side of the midline were dropped")
    right_classes = lut[np.where(right < offset, right, 0)]
    left_classes = lut[np.where(left >= offset, left, 0)]
    cases = [
        LegCase(f"{name}:right", legs.right.astype(np.float16), right_classes, legs.pad_values),
        LegCase(f"{name}:left", legs.left.astype(np.float16), left_classes, legs.pad_values),
    ]
    return cases, notes


def _feather(n_slices: int) -> np.ndarray:
    """Stitching weight of each slice of a stack: distance to its nearest end, plus one."""
    k = np.arange(n_slices, dtype=np.float32)
    return np.minimum(k, n_slices - 1 - k) + 1.0


def phantom_study(
    seed: int,
    infiltration: str,
    spacing: Sequence[float],
    settings: PhantomSettings,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray, VolumeGeometry]:
    """A stitched phantom study at ``spacing``: role images, true labels, grid."""
    subject = make_subject(seed, infiltration)  # type: ignore[arg-type]
    dz, dy, dx = (float(s) for s in spacing)
    stacks = int(rng.choice(settings.stacks))
    stack_slices = max(int(round(settings.stack_mm / dz)), 2)
    overlap = int(round(settings.overlap_fraction * stack_slices))
    step = stack_slices - overlap
    n_slices = step * (stacks - 1) + stack_slices
    nj, ni = int(round(settings.fov_mm / dy)), int(round(settings.fov_mm / dx))
    z_lo, z_hi = subject.z_range_mm
    centre = np.array(
        [
            rng.uniform(-settings.xy_shift_mm, settings.xy_shift_mm),
            rng.uniform(-settings.xy_shift_mm, settings.xy_shift_mm),
            (z_lo + z_hi) / 2 + rng.uniform(-settings.z_shift_mm, settings.z_shift_mm),
        ]
    )
    origin = centre - np.array([(ni - 1) / 2 * dx, (nj - 1) / 2 * dy, (n_slices - 1) / 2 * dz])
    grid = VolumeGeometry((n_slices, nj, ni), (dz, dy, dx), tuple(origin.tolist()), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    volumes = render(subject, grid)
    snr = float(np.exp(rng.uniform(*np.log(settings.snr))))
    scale = np.float32(np.exp(rng.uniform(*np.log(settings.intensity_scale))))
    roles = ("water", "fat", "in_phase", "out_of_phase")
    total = {role: np.zeros(grid.shape, dtype=np.float32) for role in roles}
    weight = np.zeros(n_slices, dtype=np.float32)
    for s in range(stacks):
        start, stop = s * step, s * step + stack_slices
        slab = PhantomVolumes(volumes.labels[start:stop], volumes.water[start:stop], volumes.fat[start:stop])
        images = dixon_magnitudes(slab, grid.sub_slab(start, stop), subject, rng, snr=snr)
        w = _feather(stop - start)
        for role in roles:
            total[role][start:stop] += images[role] * w[:, None, None]
        weight[start:stop] += w
    for role in roles:
        total[role] *= (scale / weight)[:, None, None]
    return total, volumes.labels, grid


def phantom_cases(
    seed: int,
    infiltration: str,
    package: ModelPackage,
    settings: PhantomSettings,
    rng: np.random.Generator,
) -> tuple[list[LegCase], list[str]]:
    """Both legs of one phantom study rendered at the package's spacing."""
    images, labels, grid = phantom_study(seed, infiltration, package.spacing_mm, settings, rng)
    if "fat_fraction" in package.roles:
        images["fat_fraction"] = np.nan_to_num(ff_from_water_fat(images["water"], images["fat"]), nan=0.0)
    wanted = {role: images[role] for role in package.roles}
    return legs_from_volume(wanted, labels, grid, package, f"phantom-{infiltration}-{seed}")


def geometry_from_nifti(affine: np.ndarray, shape_ijk: Sequence[int]) -> VolumeGeometry:
    """The ``[k, j, i]`` LPS grid of a NIfTI array ``[i, j, k]`` with RAS ``affine``
    (the inverse of ``VolumeGeometry.affine_ras_ijk``; handedness is kept as given)."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)  # the flip is its own inverse
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"NIfTI affine has a zero-length axis: {affine.tolist()}")
    dirs = lps[:3, :3] / spacing
    return VolumeGeometry(
        (int(shape_ijk[2]), int(shape_ijk[1]), int(shape_ijk[0])),
        (float(spacing[2]), float(spacing[1]), float(spacing[0])),
        tuple(float(v) for v in lps[:3, 3]),
        tuple(float(v) for v in dirs[:, 0]),
        tuple(float(v) for v in dirs[:, 1]),
        tuple(float(v) for v in dirs[:, 2]),
    )


def _nifti_file(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def list_site_cases(root: str | Path) -> list[Path]:
    """Case folders under ``root`` (those holding a labels file), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"site data folder {root} does not exist")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and _nifti_file(p, LABEL_FILE))
    if not cases:
        raise ValueError(f"no case folders with {LABEL_FILE}.nii[.gz] under {root}")
    return cases


def read_site_case(folder: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray, VolumeGeometry]:
    """Images (every role present), labels and grid of one case, arrays ``[k, j, i]``."""
    folder = Path(folder)
    label_path = _nifti_file(folder, LABEL_FILE)
    if label_path is None:
        raise ValueError(f"{folder}: no {LABEL_FILE}.nii[.gz]")
    label_image = nib.load(str(label_path))
    geometry = geometry_from_nifti(label_image.affine, label_image.shape[:3])
    labels = np.rint(np.asanyarray(label_image.dataobj)).astype(np.int16).transpose(2, 1, 0)
    images = {}
    for role in ROLES:
        path = _nifti_file(folder, role)
        if path is None:
            continue
        image = nib.load(str(path))
        if image.shape[:3] != label_image.shape[:3] or not np.allclose(image.affine, label_image.affine, atol=1e-3):
            raise ValueError(f"{path}: grid differs from {label_path.name} (shape or affine)")
        images[role] = np.asanyarray(image.dataobj).astype(np.float32).transpose(2, 1, 0)
    if not images:
        raise ValueError(f"{folder}: no image files ({', '.join(ROLES)})")
    return images, labels, geometry


def site_case_on_grid(
    folder: str | Path, spacing: Sequence[float]
) -> tuple[dict[str, np.ndarray], np.ndarray, VolumeGeometry]:
    """A site case reoriented to the canonical frame and resampled to ``spacing``."""
    images, labels, geometry = read_site_case(folder)
    canonical = Canonical.of(geometry)
    source = canonical.geometry
    grid = source if same_spacing(source.spacing, spacing) else model_grid(source, spacing)
    on_grid = {role: resample_image(canonical.forward(v), source, grid) for role, v in images.items()}
    canonical_labels = np.ascontiguousarray(canonical.forward(labels))
    if grid is source:
        return on_grid, canonical_labels, grid
    return on_grid, resample_labels(canonical_labels, source, grid), grid


def site_cases(
    folder: str | Path, package: ModelPackage
) -> tuple[list[LegCase], float, list[str]]:
    """Both legs of one site case, its overall muscle FF (NaN if no FF source) and notes."""
    folder = Path(folder)
    images, labels, grid = site_case_on_grid(folder, package.spacing_mm)
    try:
        ff = fat_fraction_map(images).ff_pct
        overall = overall_muscle_ff(labels, ff)
    except ValueError:
        overall = float("nan")
    cases, notes = legs_from_volume(images, labels, grid, package, f"site-{folder.name}")
    return cases, overall, notes


def sample_patch(
    case: LegCase, patch: Sequence[int], rng: np.random.Generator, foreground: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``patch`` of a leg: a random window where the leg is larger, a random
    placement inside background padding where it is smaller.

    With ``foreground`` the window is centred (with jitter of a quarter patch) on a random
    voxel of a muscle drawn uniformly from those present in the leg. Uniform windows rarely
    meet the small proximal muscles (pectineus, gluteus medius/minimus, TFL), which the
    first model never learned; nnU-Net oversamples foreground the same way (a third of
    its patches).
    """
    image = np.empty((case.image.shape[0], *patch), dtype=np.float32)
    image[...] = case.pad_values.reshape(-1, 1, 1, 1)
    labels = np.zeros(tuple(patch), dtype=np.int64)
    centre = _foreground_voxel(case.labels, rng) if foreground else None
    src, dst = [], []
    for axis, (n, p) in enumerate(zip(case.labels.shape, patch)):
        if n >= p:
            if centre is None:
                start = int(rng.integers(0, n - p + 1))
            else:
                jitter = int(rng.integers(-(p // 4), p // 4 + 1))
                start = min(max(int(centre[axis]) - p // 2 + jitter, 0), n - p)
            src.append(slice(start, start + p))
            dst.append(slice(0, p))
        else:
            start = int(rng.integers(0, p - n + 1))
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    image[(slice(None), *dst)] = case.image[(slice(None), *src)]
    labels[tuple(dst)] = case.labels[tuple(src)]
    return image, labels


def _foreground_voxel(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``[k, j, i]`` of a random voxel of a random class present in ``labels`` (None if
    the leg has no foreground)."""
    present = np.flatnonzero(np.bincount(labels.ravel()))
    present = present[present > 0]
    if present.size == 0:
        return None
    chosen = int(rng.choice(present))
    voxels = np.flatnonzero(labels.ravel() == chosen)
    return np.array(np.unravel_index(int(rng.choice(voxels)), labels.shape))


def split_site_cases(cases: Sequence[Path], folds: int, fold: int) -> tuple[list[Path], list[Path]]:
    """(training, validation) case folders of ``fold`` (0-based): with ``folds >= 2`` every
    ``folds``-th case (by sorted name) is held out; with one fold all cases train."""
    if folds < 2:
        return list(cases), []
    held = [c for n, c in enumerate(cases) if n % folds == fold]
    return [c for c in cases if c not in held], held
