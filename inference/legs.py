"""Mid-sagittal split into single-leg halves, the left one mirrored to look like a right leg.

Huysmans 2023 (2.2) split each volume "in two equal halves along the mid-sagittal plane" and
mirrored the left leg (also Rohm 2021), so one network segments one (right-looking) leg. The
midline is found from the image, not the matrix centre: patients rarely lie centred in the
field of view. We look for the column with the least body signal between the thighs; if
there is no such gap (e.g. a slab covering only the pelvis) we fall back to the body's centre
of mass and warn.

Array terms: the split is along the column index ``i``. ``left_is_high_i`` says whether
increasing ``i`` points to the patient's left (true for the usual axial orientation, row
direction +x in LPS). Both halves are padded on their LATERAL side to one width, so the
midline is the last column of both halves (after mirroring the left one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from inference.fat_fraction import robust_max


def body_mask(image: np.ndarray, fraction: float = 0.1, percentile: float = 99.0) -> np.ndarray:
    """Voxels brighter than ``fraction`` of a robust maximum (a percentile, not the max,
    so a few bright artefact voxels do not raise the threshold)."""
    return np.asarray(image) > fraction * robust_max(image, percentile)


def find_midline(
    image: np.ndarray,
    fraction: float = 0.1,
    central: float = 0.5,
    valley_ratio: float = 0.75,
) -> tuple[int, str]:
    """Split column ``c`` (halves are ``[:c]`` and ``[c:]``) and the method used.

    ``image`` is ``[k, j, i]`` (e.g. the in-phase volume). The body-voxel count per column
    (projection along k and j) is searched in the ``central`` fraction of the body's column
    extent; a gap needs its minimum below ``valley_ratio`` x the lower of the two peaks
    either side. A flat gap (legs apart) is split at its centre. Returns ``(c, "gap")``,
    ``(c, "centre_of_mass")`` (with a warning) or, for an empty image, ``(c, "matrix_centre")``.
    """
    mask = body_mask(image, fraction)
    profile = mask.sum(axis=(0, 1)).astype(np.float64)
    ni = profile.size
    occupied = np.flatnonzero(profile > 0)
    if occupied.size == 0:
        warnings.warn("no body signal found; splitting at the matrix centre", stacklevel=2)
        return max(ni // 2, 1), "matrix_centre"
    lo, hi = int(occupied[0]), int(occupied[-1]) + 1
    margin = (1.0 - central) / 2.0 * (hi - lo)
    a, b = int(round(lo + margin)), int(round(hi - margin))
    if b - a >= 1:
        m = a + int(np.argmin(profile[a:b]))
        low = profile[m]
        left_peak, right_peak = profile[lo : m + 1].max(), profile[m:hi].max()
        if low < valley_ratio * min(left_peak, right_peak):
            start = stop = m
            while start - 1 >= a and profile[start - 1] == low:
                start -= 1
            while stop + 1 < b and profile[stop + 1] == low:
                stop += 1
            return (start + stop + 1) // 2, "gap"
    columns = np.arange(ni, dtype=np.float64)
    centre = int(round(float((profile * columns).sum() / profile.sum()) + 0.5))
    warnings.warn(
        f"no gap between the legs found; splitting at the body's centre of mass (column {centre})",
        stacklevel=2,
    )
    return min(max(centre, 1), ni - 1), "centre_of_mass"


@dataclass(frozen=True)
class LegSplit:
    """How a volume of ``columns`` columns is cut at column ``midline`` into two legs."""

    columns: int
    midline: int
    left_is_high_i: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.midline < self.columns:
            raise ValueError(f"midline {self.midline} must leave columns on both sides of 0..{self.columns}")

    @property
    def width(self) -> int:
        """Width of both halves after padding."""
        return max(self.midline, self.columns - self.midline)

    def _halves(self) -> tuple[slice, slice]:
        low, high = slice(0, self.midline), slice(self.midline, self.columns)
        return (low, high) if self.left_is_high_i else (high, low)  # (right, left)

    def split(self, volume: np.ndarray, pad_value: float = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(right, left_mirrored)``, each ``[..., k, j, width]``, medial side at the end.

        Works on any leading axes (channels). The high-i half is flipped so that its midline
        comes last too: with ``left_is_high_i`` that is the left leg (the seed's mirroring);
        otherwise the image itself is mirrored, the low-i left leg already looks like a
        right leg, and the high-i right leg is flipped back to the usual view. Other axes
        (anterior/posterior, slice order) are the caller's to standardise.
        """
        if volume.shape[-1] != self.columns:
            raise ValueError(f"volume has {volume.shape[-1]} columns, split expects {self.columns}")
        right_cols, left_cols = self._halves()
        halves = []
        for cols in (right_cols, left_cols):
            half = volume[..., cols]
            halves.append(self._pad(half if cols.start == 0 else half[..., ::-1], pad_value))
        return halves[0], halves[1]

    def _pad(self, half: np.ndarray, pad_value: float) -> np.ndarray:
        extra = self.width - half.shape[-1]
        widths = [(0, 0)] * (half.ndim - 1) + [(extra, 0)]  # lateral side = start
        return np.pad(half, widths, mode="constant", constant_values=pad_value)

    def join(self, right: np.ndarray, left: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`split`: two single-leg arrays back into the full volume."""
        right_cols, left_cols = self._halves()
        out = np.empty(right.shape[:-1] + (self.columns,), dtype=np.result_type(right, left))
        for half, cols in ((right, right_cols), (left, left_cols)):
            n = cols.stop - cols.start
            piece = half[..., self.width - n :]  # drop the lateral padding
            out[..., cols] = piece if cols.start == 0 else piece[..., ::-1]
        return out

    def merge_labels(self, right: np.ndarray, left: np.ndarray, left_offset: int = 100) -> np.ndarray:
        """Combined label volume: right leg labels ``n`` stay ``n``, left leg ``n`` -> ``offset + n``."""
        left = np.asarray(left)
        shifted = np.where(left > 0, left.astype(np.int32) + left_offset, 0)
        dtype = np.uint8 if max(int(right.max(initial=0)), int(shifted.max(initial=0))) < 256 else np.uint16
        return self.join(np.asarray(right).astype(dtype), shifted.astype(dtype))

    def split_labels(self, combined: np.ndarray, left_offset: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Combined labels into single-leg labels 1..n (training data; the inverse of merge).

        A left-offset label found in the right half (or a right label in the left half)
        is an error, since it cannot be mapped back.
        """
        right, left = self.split(combined)
        if (right >= left_offset).any() or ((left > 0) & (left < left_offset)).any():
            raise ValueError("a label lies on the wrong side of the midline")
        return right, np.where(left > 0, left - left_offset, 0).astype(combined.dtype)


def split_legs(
    image: np.ndarray, left_is_high_i: bool = True, **midline_options: float
) -> tuple[LegSplit, str]:
    """Find the midline of ``image`` ``[k, j, i]`` and return the split and the method used."""
    midline, method = find_midline(image, **midline_options)
    return LegSplit(columns=image.shape[-1], midline=midline, left_is_high_i=left_is_high_i), method
