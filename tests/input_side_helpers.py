"""Synthetic studies with a known analytic image, for checking stacks and stitching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from common.geometry import VolumeGeometry
from dicom_node.phantom.attributes import StudyInfo
from dicom_node.phantom.writer import StackImages, write_study


def smooth_field(points: np.ndarray) -> np.ndarray:
    """A smooth positive image of patient position, so any misplacement changes values."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return (
        1000.0
        + 300.0 * np.sin(x / 37.0)
        + 200.0 * np.cos(y / 23.0)
        + 250.0 * np.sin(z / 41.0 + 0.3)
    ).astype(np.float32)


def grid(
    n_slices: int,
    matrix: int = 24,
    pixel: float = 4.0,
    dz: float = 5.0,
    tilt_deg: float = 0.0,
    z0: float = -100.0,
) -> VolumeGeometry:
    """An axial (optionally tilted) grid centred on x = y = 0."""
    t = np.deg2rad(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(t), -np.sin(t)])
    normal = np.cross(row, col)
    origin = -(matrix - 1) / 2 * pixel * (row + col) + z0 * normal
    return VolumeGeometry(
        (n_slices, matrix, matrix),
        (dz, pixel, pixel),
        tuple(origin.tolist()),
        tuple(row.tolist()),
        tuple(col.tolist()),
        tuple(normal.tolist()),
    )


def field_on(geometry: VolumeGeometry) -> np.ndarray:
    """The smooth field sampled at every voxel centre of ``geometry``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in geometry.shape), indexing="ij")
    return smooth_field(geometry.voxel_to_lps(np.stack([k, j, i], axis=-1).astype(float)))


def roles_from(values: np.ndarray) -> dict[str, np.ndarray]:
    """Four Dixon roles that are fixed multiples of one image (so F/(F+W) is 0.25)."""
    return {
        "water": values * 0.75,
        "fat": values * 0.25,
        "in_phase": values,
        "out_of_phase": values * 0.5,
    }


def info(tag: str) -> StudyInfo:
    """A study identity that differs per ``tag``."""
    return StudyInfo(
        patient_name=f"TEST^{tag}",
        patient_id=f"ID-{tag}",
        birth_date="19800101",
        sex="F",
        study_instance_uid=generate_uid(entropy_srcs=["test-study", tag]),
        study_date="20260101",
        study_time="090000",
        accession=tag[:16],
        frame_of_reference_uid=generate_uid(entropy_srcs=["test-for", tag]),
    )


def write_geometries(
    folder: Path,
    geometries: list[VolumeGeometry],
    vendor: str = "siemens",
    tag: str = "a",
    seed: int = 0,
) -> list[Path]:
    """Write one study with a stack per geometry, each carrying the smooth field."""
    stacks = [StackImages(geometry=g, images=roles_from(field_on(g))) for g in geometries]
    return write_study(folder, vendor, info(tag), stacks, np.random.default_rng(seed))


def write_stacks(
    folder: Path,
    stitched: VolumeGeometry,
    slabs: list[tuple[int, int]],
    vendor: str = "siemens",
    tag: str = "a",
    seed: int = 0,
) -> list[Path]:
    """Write slabs of ``stitched`` as separate stacks of one study."""
    geometries = [stitched.sub_slab(start, stop) for start, stop in slabs]
    return write_geometries(folder, geometries, vendor, tag, seed)
