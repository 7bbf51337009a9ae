"""Figures of a Dixon leg slice that can be measured alike on real and phantom images.

The phantom is judged against real scans by numbers, so every figure here is computed from
the in-phase (IP) and out-of-phase (OP) magnitudes only, by the same code for both, and
automatically: no hand-drawn regions. Slices are 2D arrays in display orientation (rows from
anterior to posterior, columns from patient right to patient left) with square pixels.

How the figures are found:

* **Body and legs.** Otsu threshold of IP, holes filled, opened; components below
  ``MIN_LEG_MM2`` dropped. Two legs that touch are split at the column of least body between
  them (the midline).
* **Diameter.** Of a circle of the leg's cross-sectional area.
* **Subcutaneous fat.** Along ``N_RAYS`` rays from the leg's centroid, inward from the skin:
  the first dip of OP / IP below ``DIP_FRACTION`` of its 90th percentile on the ray (the
  fat-water cancellation line of the deep fascia), searched from ``SKIN_MM`` inside the edge,
  that muscle follows (the median OP / IP over the next ``MUSCLE_RUN_MM`` at least
  ``MUSCLE_RATIO``): the skin is water-rich too, and the dip at its inner border is followed
  by fat, whose OP / IP is lower. Thickness = skin edge to the bottom of the dip. The leg's figure is the median over rays (robust to a vessel or septum on a few).
* **Muscle.** Pixels inside the fascia line (``MARGIN_MM`` from it), not bone (dark cortex and
  what it encloses), with OP / IP at least ``MUSCLE_RATIO`` (no fat-water interface) and IP
  within ``MUSCLE_BAND`` of their median (drops intermuscular fat and vessels).
* **Fat fraction.** Two-point relation W = (IP + OP) / 2, F = (IP - OP) / 2, which assumes
  fat < water: true in healthy muscle, false in fat (there it gives 100 % - FF). FF = F / (W +
  F) per pixel; the median over muscle.
* **Noise.** Background air (outside the body dilated by ``AIR_MARGIN_MM``, exact zeros left
  out, rows and columns that are all zero (padding) left out): a single-channel magnitude of
  pure noise is Rayleigh, E[M^2] = 2 sigma^2 (the mean square, not the median, because
  integer-valued images make the median coarse).
  Cross-check in a flat region: the robust spread (1.4826 MAD) of differences of horizontal
  neighbours inside muscle, divided by sqrt(2); at muscle SNR the Rician distribution is
  Gaussian, so no correction is needed there. The two disagree when the noise is correlated
  between pixels (interpolation, filtering) or the background is not Rayleigh (multi-coil
  sum of squares, masking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

MIN_LEG_MM2 = 2000.0
N_RAYS = 120
SKIN_MM = 3.0
DIP_FRACTION = 0.8
MAX_FAT_MM = 60.0
MARGIN_MM = 1.5
MUSCLE_RATIO = 0.8
MUSCLE_RUN_MM = 4.0
MUSCLE_BAND = 0.3
AIR_MARGIN_MM = 10.0
BONE_DARK = 0.35  # cortex: IP below this fraction of the median IP inside the fascia


@dataclass(frozen=True)
class LegFigures:
    """The figures of one leg in one slice."""

    diameter_mm: float
    subcutaneous_mm: float
    muscle_ip_op: float
    fat_ip_op: float
    fat_muscle_ip: float
    muscle_ff_pct: float
    muscle_ip: float
    noise_flat: float
    rays_found: float  # fraction of rays on which the fascia dip was found


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the split that maximises between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(float)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    w0, w1 = weight[:-1], total - weight[:-1]
    valid = (w0 > 0) & (w1 > 0)
    m0 = np.where(valid, mean[:-1] / np.maximum(w0, 1), 0)
    m1 = np.where(valid, (mean[-1] - mean[:-1]) / np.maximum(w1, 1), 0)
    between = np.where(valid, w0 * w1 * (m0 - m1) ** 2, -1)
    return float(edges[1:-1][int(np.argmax(between))])


def body_mask(ip: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Tissue of the slice: IP above Otsu's threshold, holes filled, small bits dropped."""
    clipped = np.minimum(ip, np.percentile(ip, 99.5))
    mask = ip > otsu_threshold(clipped[clipped > 0])
    mask = ndimage.binary_opening(mask, iterations=max(1, round(1.0 / pixel_mm)))
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    areas = ndimage.sum(mask, labels, range(1, n + 1)) * pixel_mm**2
    return np.isin(labels, 1 + np.flatnonzero(areas >= MIN_LEG_MM2))


def split_legs(body: np.ndarray, pixel_mm: float) -> list[np.ndarray]:
    """The legs of a body mask, patient right first (lower column index in display order).

    Separate components are taken as they are; a single component spanning both legs is cut
    at the column with the least body in the middle half of its width.
    """
    labels, n = ndimage.label(body)
    parts = [labels == k for k in range(1, n + 1)]
    if len(parts) == 1:
        columns = np.flatnonzero(parts[0].any(axis=0))
        lo, hi = columns[0], columns[-1]
        middle = np.arange(lo + (hi - lo) // 4, hi - (hi - lo) // 4 + 1)
        cut = middle[int(np.argmin(parts[0][:, middle].sum(axis=0)))]
        left_of_cut = np.zeros_like(body)
        left_of_cut[:, :cut] = True
        parts = [parts[0] & left_of_cut, parts[0] & ~left_of_cut]
        parts[1][:, cut] = False
    parts = [p for p in parts if p.sum() * pixel_mm**2 >= MIN_LEG_MM2]
    parts.sort(key=lambda p: ndimage.center_of_mass(p)[1])
    return parts


def equivalent_diameter_mm(leg: np.ndarray, pixel_mm: float) -> float:
    """Diameter of the circle with the leg's area."""
    return float(2.0 * np.sqrt(leg.sum() * pixel_mm**2 / np.pi))


def fascia_depths(ip: np.ndarray, op: np.ndarray, leg: np.ndarray,
                  pixel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per ray: the angle, the skin edge's distance from the centroid and the fascia's depth
    below the skin (mm, NaN where no dip was found). See the module docstring."""
    ratio = ndimage.gaussian_filter(op, 0.7) / np.maximum(ndimage.gaussian_filter(ip, 0.7),
                                                          1e-6)
    centre = np.asarray(ndimage.center_of_mass(leg))
    step = 0.25  # pixels
    radii = np.arange(0.0, max(leg.shape), step)
    angles = np.linspace(0.0, 2 * np.pi, N_RAYS, endpoint=False)
    edges = np.full(N_RAYS, np.nan)
    depths = np.full(N_RAYS, np.nan)
    for n, angle in enumerate(angles):
        points = centre[:, None] + np.outer([np.sin(angle), np.cos(angle)], radii)
        inside = ndimage.map_coordinates(leg.astype(np.float32), points, order=0, cval=0) > 0
        if inside.all() or not inside[0]:
            continue
        edge = int(np.argmin(inside)) - 1  # last sample inside before the first outside
        edges[n] = radii[edge] * pixel_mm
        along = ndimage.map_coordinates(ratio, points[:, :edge + 1], order=1)[::-1]
        depth_mm = np.arange(along.size) * step * pixel_mm
        search = (depth_mm >= SKIN_MM) & (depth_mm <= MAX_FAT_MM)
        if not search.any():
            continue
        threshold = DIP_FRACTION * np.percentile(along[search], 90)
        depths[n] = _fascia_dip(along, depth_mm, search & (along < threshold),
                                int(round(MUSCLE_RUN_MM / (step * pixel_mm))))
    return angles, edges, depths


def _fascia_dip(along: np.ndarray, depth_mm: np.ndarray, below: np.ndarray, run: int) -> float:
    """Depth of the bottom of the first run of ``below`` samples that muscle follows."""
    n = 0
    while n < along.size:
        if not below[n]:
            n += 1
            continue
        stop = n
        while stop + 1 < along.size and below[stop + 1]:
            stop += 1
        after = along[stop + 1:stop + 1 + run]
        if after.size == run and np.median(after) >= MUSCLE_RATIO:
            return float(depth_mm[n + int(np.argmin(along[n:stop + 1]))])
        n = stop + 1
    return float("nan")


def _polygon_mask(shape: tuple[int, int], centre: np.ndarray, angles: np.ndarray,
                  radii_px: np.ndarray) -> np.ndarray:
    """Pixels inside the closed polygon of points at ``radii_px`` along ``angles``."""
    rows = centre[0] + radii_px * np.sin(angles)
    cols = centre[1] + radii_px * np.cos(angles)
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(list(zip(cols.tolist(), rows.tolist())), fill=1)
    return np.asarray(canvas, dtype=bool)


def _fill_gaps(values: np.ndarray) -> np.ndarray:
    """NaNs of a periodic profile filled by linear interpolation between found values."""
    found = np.flatnonzero(np.isfinite(values))
    if found.size == 0:
        return values
    index = np.arange(values.size)
    return np.interp(index, found, values[found], period=values.size)


def tissue_regions(ip: np.ndarray, op: np.ndarray, leg: np.ndarray,
                   pixel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subcutaneous fat mask, muscle mask and per-ray fascia depths (mm) of one leg."""
    angles, edges, depths = fascia_depths(ip, op, leg, pixel_mm)
    centre = np.asarray(ndimage.center_of_mass(leg))
    # Outlying rays (a septum inside the fat, a missed fascia) are smoothed over for the masks.
    smooth = ndimage.median_filter(_fill_gaps(depths), size=9, mode="wrap")
    fascia_r = (_fill_gaps(edges) - smooth) / pixel_mm
    margin = MARGIN_MM / pixel_mm
    inner = _polygon_mask(leg.shape, centre, angles, np.maximum(fascia_r - margin, 0)) & leg
    outer = _polygon_mask(leg.shape, centre, angles, fascia_r + margin)
    skin = ndimage.distance_transform_edt(leg) * pixel_mm >= SKIN_MM
    fat = leg & skin & ~outer
    ratio = op / np.maximum(ip, 1e-6)
    reference = np.median(ip[inner]) if inner.any() else 0.0
    bone = ndimage.binary_fill_holes(inner & (ip < BONE_DARK * reference)) | ~inner
    bone = ndimage.binary_dilation(bone, iterations=max(1, round(1.0 / pixel_mm)))
    candidate = inner & ~bone & (ratio >= MUSCLE_RATIO)
    if not candidate.any():
        return fat, candidate, depths
    median = np.median(ip[candidate])
    muscle = candidate & (np.abs(ip - median) <= MUSCLE_BAND * median)
    return fat, muscle, depths


def fat_fraction_pct(ip: np.ndarray, op: np.ndarray) -> np.ndarray:
    """Two-point FF % from magnitudes, assuming fat < water: F / (W + F) = (IP - OP) / 2 IP."""
    return 100.0 * (ip - op) / np.maximum(2.0 * ip, 1e-6)


def noise_background(image: np.ndarray, body: np.ndarray, pixel_mm: float) -> float:
    """Noise sigma from background air, Rayleigh-corrected: sqrt(mean(M^2) / 2)."""
    air = ~ndimage.binary_dilation(body, iterations=max(1, round(AIR_MARGIN_MM / pixel_mm)))
    air[:2, :] = air[-2:, :] = air[:, :2] = air[:, -2:] = False
    air &= ~np.all(image == 0, axis=0)[None, :] & ~np.all(image == 0, axis=1)[:, None]
    values = image[air]
    if values.size < 100:
        return float("nan")
    return float(np.sqrt(np.mean(values**2) / 2.0))


def noise_flat(image: np.ndarray, region: np.ndarray) -> float:
    """Noise sigma in a flat region: 1.4826 MAD of horizontal neighbour differences / sqrt 2."""
    both = region[:, 1:] & region[:, :-1]
    diffs = (image[:, 1:] - image[:, :-1])[both]
    if diffs.size < 50:
        return float("nan")
    # Integer-valued images make the MAD itself coarse: use the SD within 4 robust SDs.
    spread = 1.4826 * np.median(np.abs(diffs - np.median(diffs))) + 0.5
    kept = diffs[np.abs(diffs - np.median(diffs)) <= 4.0 * spread]
    return float(np.std(kept) / np.sqrt(2.0))


def measure_leg(ip: np.ndarray, op: np.ndarray, leg: np.ndarray, pixel_mm: float) -> LegFigures:
    """All figures of one leg (see the module docstring for how each is found)."""
    fat, muscle, depths = tissue_regions(ip, op, leg, pixel_mm)
    ratio = ip / np.maximum(op, 1e-6)
    muscle_ip = float(np.median(ip[muscle])) if muscle.any() else float("nan")
    fat_ip = float(np.median(ip[fat])) if fat.any() else float("nan")
    return LegFigures(
        diameter_mm=equivalent_diameter_mm(leg, pixel_mm),
        subcutaneous_mm=float(np.nanmedian(depths)) if np.isfinite(depths).any() else np.nan,
        muscle_ip_op=float(np.median(ratio[muscle])) if muscle.any() else float("nan"),
        fat_ip_op=float(np.median(ratio[fat])) if fat.any() else float("nan"),
        fat_muscle_ip=fat_ip / muscle_ip,
        muscle_ff_pct=float(np.median(fat_fraction_pct(ip, op)[muscle])) if muscle.any()
        else float("nan"),
        muscle_ip=muscle_ip,
        noise_flat=noise_flat(ip, ndimage.binary_erosion(muscle)),
        rays_found=float(np.isfinite(depths).mean()),
    )


def measure_slice(ip: np.ndarray, op: np.ndarray,
                  pixel_mm: float) -> tuple[list[LegFigures], float]:
    """The figures of each leg of a slice, and the slice's background noise sigma of IP."""
    ip = np.asarray(ip, dtype=np.float64)
    op = np.asarray(op, dtype=np.float64)
    body = body_mask(ip, pixel_mm)
    legs = [measure_leg(ip, op, leg, pixel_mm) for leg in split_legs(body, pixel_mm)]
    return legs, noise_background(ip, body, pixel_mm)
