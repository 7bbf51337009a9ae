"""``myonode phantom``: a synthetic Dixon study of the thighs, the calves or both, as DICOM
files, with its ground truth.

Each station (thigh: knee to hip; calf: ankle to knee) is rendered once on its stitched grid
(all of its stacks together) and each stack is a slab of it with its own noise, coil falloff
and DICOM series, so stitching can be checked against exact positions. ``region="both"``
writes the thigh and the calf station of one patient into one study, as separate series, and
a truth folder per station. The field of view stays that of the reference protocol (Huysmans
2023: 384x384 at 1.2 mm, 140 slices of 2 mm per stack) when ``slices``/``matrix`` are reduced:
small test studies cover the same anatomy at a coarser resolution.

``slice_thickness`` switches to a 2D multi-slice protocol: slices of that thickness whose
centres are ``slice_thickness + slice_gap`` apart, each the signal averaged over its slab
(``inference/phantom/thick_slices.py``); the stitched grid is then the grid of slice centres.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from dicom_node.phantom.attributes import StudyInfo
from dicom_node.phantom.echo_output import stack_images
from dicom_node.phantom.writer import StackImages, write_study
from inference.phantom.anatomy import (
    PhantomVolumes,
    make_subject,
    region_z_range_mm,
    render,
)
from inference.phantom.subject import Subject
from inference.phantom.thick_slices import render_thick

REFERENCE_MATRIX = 384
REFERENCE_PIXEL_MM = 1.2
REFERENCE_SLICES = 140
REFERENCE_SLICE_MM = 2.0
# Overlap between neighbouring stacks: the seed's 3 stacks of 140 slices gave 355 slices.
DEFAULT_OVERLAP_FRACTION = 0.23
# Protocol options that, when unset, leave the study UIDs as they were before they existed.
UID_NEUTRAL_DEFAULTS = {"slice_thickness": None, "slice_gap": 0.0, "region": "thigh",
                        "calf_stacks": 2, "dixon_output": "scanner"}
# What a seed renders: bumped whenever the anatomy or the signals change, so a study made by
# an older phantom is never mistaken for one of this phantom (truth.json records it).
PHANTOM_VERSION = 2
REGIONS = ("thigh", "calf", "both")
# What each region writes, in acquisition order: the stations of common.muscles.REGIONS.
STATIONS = {"thigh": ("thigh",), "calf": ("calf",), "both": ("thigh", "calf")}
STUDY_DESCRIPTIONS = {"thigh": "MR thighs Dixon", "calf": "MR calves Dixon",
                      "both": "MR thighs and calves Dixon"}


@dataclass(frozen=True)
class PhantomOptions:
    """Everything that defines one phantom study (the same options give the same files)."""

    seed: int = 0
    infiltration: str = "low"
    vendor: str = "siemens"
    stacks: int = 3  # stacks of the thigh station
    slices: int = REFERENCE_SLICES
    matrix: int = REFERENCE_MATRIX
    overlap: int | None = None  # slices shared by neighbouring stacks
    snr: float = 40.0
    oblique_deg: float = 0.0  # tilt of the slices about the patient's left-right axis
    slice_thickness: float | None = None  # mm; set for 2D multi-slice, None for the 3D stack
    slice_gap: float = 0.0  # mm between neighbouring 2D slices (edge to edge)
    region: str = "thigh"  # "thigh", "calf" or "both" (one study with both stations)
    calf_stacks: int = 2  # stacks of the calf station (the lower leg is ~2/3 of the thigh's length)
    # "scanner" (water, fat, IP, OP), "echoes" or "echoes+phase" (dicom_node/phantom/echo_output.py)
    dixon_output: str = "scanner"

    @property
    def stations(self) -> tuple[str, ...]:
        """The stations this study holds, in acquisition order."""
        if self.region not in STATIONS:
            raise ValueError(f"--region must be one of {', '.join(REGIONS)}, not {self.region!r}")
        return STATIONS[self.region]

    def stacks_of(self, station: str) -> int:
        """Number of stacks of one station."""
        return self.calf_stacks if station == "calf" else self.stacks

    @property
    def multi_slice(self) -> bool:
        """True for a 2D multi-slice protocol, False for the contiguous 3D stack."""
        return self.slice_thickness is not None

    def slice_spacing_mm(self) -> float:
        """Centre-to-centre distance of the slices along the normal."""
        if self.slice_thickness is None:
            if self.slice_gap:
                raise ValueError("--slice-gap needs --slice-thickness (a 2D protocol)")
            return REFERENCE_SLICE_MM * REFERENCE_SLICES / self.slices
        if not self.slice_thickness > 0 or not self.slice_gap >= 0:
            raise ValueError("--slice-thickness must be > 0 and --slice-gap >= 0 mm")
        return self.slice_thickness + self.slice_gap

    def overlap_slices(self) -> int:
        """Overlap in slices (default about 23% of a stack, as in the seed)."""
        value = (
            self.overlap
            if self.overlap is not None
            else int(round(DEFAULT_OVERLAP_FRACTION * self.slices))
        )
        if not 0 <= value < self.slices:
            raise ValueError(f"overlap must be between 0 and {self.slices - 1} slices")
        return value


def default_slices(slice_thickness: float | None, slice_gap: float = 0.0) -> int:
    """Slices per stack when none are asked for: the reference stack's 280 mm length."""
    if slice_thickness is None:
        return REFERENCE_SLICES
    length = REFERENCE_SLICE_MM * REFERENCE_SLICES
    return max(4, int(round(length / (slice_thickness + slice_gap))))


def stitched_grid(options: PhantomOptions, subject: Subject,
                  station: str = "thigh") -> VolumeGeometry:
    """The grid of all stacks of one station together, centred on that part of the legs."""
    stacks = options.stacks_of(station)
    if not 1 <= stacks <= 3:
        raise ValueError("--stacks must be 1, 2 or 3")
    if options.slices < 4 or options.matrix < 16:
        raise ValueError("a phantom needs at least 4 slices and a 16x16 matrix")
    pixel = REFERENCE_PIXEL_MM * REFERENCE_MATRIX / options.matrix
    dz = options.slice_spacing_mm()
    step = options.slices - options.overlap_slices()
    n_slices = step * (stacks - 1) + options.slices
    tilt = np.deg2rad(options.oblique_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    normal = np.cross(row, col)
    z_lo, z_hi = region_z_range_mm(subject, station)
    centre = np.array([0.0, 0.0, (z_lo + z_hi) / 2])
    origin = (
        centre
        - (options.matrix - 1) / 2 * pixel * (row + col)
        - (n_slices - 1) / 2 * dz * normal
    )
    return VolumeGeometry(
        (n_slices, options.matrix, options.matrix),
        (dz, pixel, pixel),
        tuple(origin.tolist()),
        tuple(row.tolist()),
        tuple(col.tolist()),
        tuple(normal.tolist()),
    )


def stack_slabs(options: PhantomOptions, station: str = "thigh") -> list[tuple[int, int]]:
    """(start, stop) slice ranges of each stack of a station inside its stitched grid."""
    step = options.slices - options.overlap_slices()
    return [(s * step, s * step + options.slices) for s in range(options.stacks_of(station))]


def study_info(options: PhantomOptions) -> StudyInfo:
    """Patient and study identity, derived from the options so reruns give the same UIDs."""
    fields = {name: value for name, value in options.__dict__.items()
              if name not in UID_NEUTRAL_DEFAULTS or value != UID_NEUTRAL_DEFAULTS[name]}
    key = json.dumps(fields, sort_keys=True)
    return StudyInfo(
        patient_name=f"PHANTOM^{options.region.upper()}^{options.seed}",
        patient_id=f"MYONODE-PH{options.seed:06d}",
        birth_date="19700101",
        sex="O",
        study_instance_uid=generate_uid(entropy_srcs=["study", key]),
        study_date="20260101",
        study_time="080000",
        accession=f"PH{options.seed:06d}",
        frame_of_reference_uid=generate_uid(entropy_srcs=["frame-of-reference", key]),
        study_description=STUDY_DESCRIPTIONS[options.region],
    )


def station_truth(volumes: PhantomVolumes, station: str) -> PhantomVolumes:
    """The truth of one station: labels of muscles of other regions become background.

    A thigh station reaches below the knee and a calf station above it; their truths hold
    the muscles their region's model segments (``config/muscles.yaml``), so a score of one
    station never counts the other region's muscles as missed.
    """
    table = load_muscles()
    own = np.zeros(table.left_label_offset + 100, dtype=bool)
    own[list(table.for_region(station).combined_labels())] = True
    labels = np.where(own[volumes.labels], volumes.labels, 0).astype(np.int16)
    return PhantomVolumes(labels, volumes.water, volumes.fat)


def truth_summary(volumes: PhantomVolumes, geometry: VolumeGeometry) -> dict:
    """True volume and mean noise-free FF of every muscle and side present."""
    table = load_muscles()
    inside = volumes.labels > 0
    labels = volumes.labels[inside]
    fat = volumes.fat[inside]
    total = volumes.water[inside] + fat
    ff = np.divide(100.0 * fat, total, out=np.zeros_like(total), where=total > 0)
    counts = np.bincount(labels, minlength=201)
    sums = np.bincount(labels, weights=ff, minlength=201)
    muscles = []
    for label, (code, side) in sorted(table.combined_labels().items()):
        if counts[label] == 0:
            continue
        muscles.append(
            {
                "code": code,
                "side": side,
                "label": label,
                "voxels": int(counts[label]),
                "volume_ml": round(float(counts[label]) * geometry.voxel_volume_ml(), 3),
                "ff_mean_pct": round(float(sums[label] / counts[label]), 3),
            }
        )
    overall = float(ff.mean()) if ff.size else float("nan")
    return {"muscles": muscles, "overall_ff_pct": round(overall, 3)}


def write_truth(truth_dir: Path, volumes: PhantomVolumes, geometry: VolumeGeometry,
                options: PhantomOptions, station: str) -> None:
    """``labels.nii.gz`` (RAS affine, array in i,j,k order) and ``truth.json`` of a station."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(volumes.labels.transpose(2, 1, 0))
    image = nib.Nifti1Image(data, geometry.affine_ras_ijk())
    image.header.set_xyzt_units("mm")
    image.set_qform(geometry.affine_ras_ijk(), code=1)
    image.set_sform(geometry.affine_ras_ijk(), code=1)
    nib.save(image, truth_dir / "labels.nii.gz")
    summary = truth_summary(volumes, geometry)
    summary["label_convention"] = (
        "right leg muscle n has label n, left leg muscle n has label 100 + n "
        "(n as in config/muscles.yaml); 0 is background"
    )
    summary["region"] = station
    summary["slices"] = {
        "acquisition": "2D" if options.multi_slice else "3D",
        "thickness_mm": options.slice_thickness or geometry.spacing[0],
        "spacing_mm": geometry.spacing[0],
        "labels": "at each slice centre",
        "ff": (
            "noise-free FF of the signal averaged over each slice's thickness"
            if options.multi_slice
            else "noise-free FF at each voxel centre"
        ),
    }
    summary["phantom"] = dict(options.__dict__)
    summary["phantom_version"] = PHANTOM_VERSION
    with open(truth_dir / "truth.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)


def make_phantom(out_dir: Path, options: PhantomOptions) -> list[Path]:
    """Write one phantom study (DICOM files and truth) under ``out_dir``; returns the files.

    The truth of a single station is ``truth/``; with both stations ``truth/thigh/`` and
    ``truth/calf/``, each on its own stitched grid.
    """
    subject = make_subject(options.seed, options.infiltration)  # type: ignore[arg-type]
    rng = np.random.default_rng([options.seed, 1])
    info = study_info(options)
    stacks: list[StackImages] = []
    for station in options.stations:
        grid = stitched_grid(options, subject, station)
        volumes = _render_station(subject, grid, options)
        stacks += _station_stacks(volumes, grid, subject, options, station, rng)
        truth_dir = out_dir / "truth" / station if options.region == "both" else out_dir / "truth"
        write_truth(truth_dir, station_truth(volumes, station), grid, options, station)
    return write_study(out_dir / "dicom", options.vendor, info, stacks, rng)


def _render_station(subject: Subject, grid: VolumeGeometry,
                    options: PhantomOptions) -> PhantomVolumes:
    if options.slice_thickness is None:
        return render(subject, grid)
    return render_thick(subject, grid, options.slice_thickness)


def _station_stacks(volumes: PhantomVolumes, grid: VolumeGeometry, subject: Subject,
                    options: PhantomOptions, station: str,
                    rng: np.random.Generator) -> list[StackImages]:
    """The stacks of one station, each a slab of its stitched grid with its own noise."""
    stacks = []
    for start, stop in stack_slabs(options, station):
        slab = PhantomVolumes(
            volumes.labels[start:stop], volumes.water[start:stop], volumes.fat[start:stop]
        )
        geometry = grid.sub_slab(start, stop)
        # The falloff models a 3D slab's excitation profile; 2D slices are excited one by one.
        images = stack_images(slab, geometry, subject, rng, options.dixon_output,
                              options.vendor, snr=options.snr,
                              stack_falloff=not options.multi_slice)
        stacks.append(StackImages(geometry=geometry, images=images,
                                  slice_thickness=options.slice_thickness))
    return stacks
