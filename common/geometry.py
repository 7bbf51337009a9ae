"""Voxel grids in patient coordinates.

One convention for the whole project, so that DICOM stacks, stitched volumes, phantom truth
and NIfTI files agree:

* arrays are indexed ``[k, j, i]`` = ``[slice, row, column]``, as DICOM frames stack up;
* patient coordinates are DICOM LPS millimetres;
* voxel ``(k, j, i)`` sits at ``origin + i*dx*row_dir + j*dy*col_dir + k*dz*slice_dir``,
  where ``row_dir``/``col_dir`` are DICOM ImageOrientationPatient's two vectors (the direction
  along a row, i.e. of increasing column index, then down a column) and ``slice_dir`` is the
  unit slice normal pointing towards increasing ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VolumeGeometry:
    """A regular grid of voxel centres in LPS patient space."""

    shape: tuple[int, int, int]  # (nk, nj, ni) = (slices, rows, columns)
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm: slice step, row step, column step
    origin: tuple[float, float, float]  # LPS mm of voxel (0, 0, 0)
    row_dir: tuple[float, float, float]  # unit vector of increasing column index i
    col_dir: tuple[float, float, float]  # unit vector of increasing row index j
    slice_dir: tuple[float, float, float]  # unit vector of increasing slice index k

    @classmethod
    def from_orientation(
        cls,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        origin: tuple[float, float, float],
        orientation: tuple[float, ...],
    ) -> VolumeGeometry:
        """Build from a DICOM ImageOrientationPatient; the slice normal is row x column."""
        row = np.asarray(orientation[:3], dtype=float)
        col = np.asarray(orientation[3:6], dtype=float)
        row /= np.linalg.norm(row)
        col /= np.linalg.norm(col)
        normal = np.cross(row, col)
        return cls(
            tuple(int(v) for v in shape),
            tuple(float(v) for v in spacing),
            tuple(float(v) for v in origin),
            tuple(row.tolist()),
            tuple(col.tolist()),
            tuple(normal.tolist()),
        )

    @property
    def orientation(self) -> tuple[float, ...]:
        """DICOM ImageOrientationPatient (row direction, then column direction)."""
        return tuple(self.row_dir) + tuple(self.col_dir)

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal (row x column); equals ``slice_dir`` for a right-handed grid."""
        return np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping ``(k, j, i, 1)`` to LPS millimetres."""
        dz, dy, dx = self.spacing
        affine = np.eye(4)
        affine[:3, 0] = np.asarray(self.slice_dir) * dz
        affine[:3, 1] = np.asarray(self.col_dir) * dy
        affine[:3, 2] = np.asarray(self.row_dir) * dx
        affine[:3, 3] = self.origin
        return affine

    def affine_ras_ijk(self) -> np.ndarray:
        """NIfTI affine: ``(i, j, k)`` on an array transposed to ``[i, j, k]`` -> RAS mm."""
        lps = self.affine_lps()
        reorder = lps[:, [2, 1, 0, 3]]
        return LPS_TO_RAS @ reorder

    def slice_positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice, shape ``(nk, 3)``."""
        k = np.arange(self.shape[0], dtype=float)
        return np.asarray(self.origin) + np.outer(k * self.spacing[0], self.slice_dir)

    def slice_offsets(self) -> np.ndarray:
        """Position of every slice centre along the slice normal (mm), the sort key of stacks."""
        return self.slice_positions() @ self.normal

    def voxel_to_lps(self, kji: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` in ``(k, j, i)`` order to LPS points ``(..., 3)``."""
        affine = self.affine_lps()
        return kji @ affine[:3, :3].T + affine[:3, 3]

    def lps_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """Map LPS points ``(..., 3)`` to fractional voxel indices in ``(k, j, i)`` order."""
        affine = np.linalg.inv(self.affine_lps())
        return points @ affine[:3, :3].T + affine[:3, 3]

    def sub_slab(self, start: int, stop: int) -> VolumeGeometry:
        """The grid of slices ``start:stop`` (how one stack sits inside a stitched grid)."""
        origin = np.asarray(self.origin) + start * self.spacing[0] * np.asarray(self.slice_dir)
        return VolumeGeometry(
            (stop - start, self.shape[1], self.shape[2]),
            self.spacing,
            tuple(origin.tolist()),
            self.row_dir,
            self.col_dir,
            self.slice_dir,
        )

    def slab_offset_in(self, grid: VolumeGeometry, tolerance: float = 0.02) -> int | None:
        """Slice offset of this grid inside ``grid`` when its voxels coincide with ``grid``'s
        (within ``tolerance`` voxels), else None: then data moves between the two by copying
        slices instead of resampling."""
        if self.shape[1:] != grid.shape[1:]:
            return None
        for mine, theirs in (
            (self.orientation, grid.orientation),
            (self.spacing, grid.spacing),
            (self.slice_dir, grid.slice_dir),
        ):
            if not np.allclose(mine, theirs, atol=1e-4):
                return None
        start = grid.lps_to_voxel(np.asarray(self.origin))
        offset = round(float(start[0]))
        if np.all(np.abs(start[1:]) < tolerance) and abs(start[0] - offset) < tolerance:
            return offset
        return None

    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0
