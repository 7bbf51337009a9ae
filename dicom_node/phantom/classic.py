"""Single-frame MR Image Storage files, as Siemens, GE and classic Philips export Dixon stacks.

One template dataset per series is filled once and only the per-image attributes (UID,
instance number, position, role labels, pixels) change between files: a full 3-stack study
is ~1700 files and must be written in seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, PrivateBlock
from pydicom.uid import MRImageStorage

from dicom_node.phantom.attributes import (
    StackPlan,
    StudyInfo,
    common_dataset,
    derived_uid,
    ds_number,
    ds_numbers,
    file_meta,
    image_pixel,
    mr_acquisition,
)
from dicom_node.phantom.flavours import (
    GE_CREATOR_ACQU,
    GE_CREATOR_PARM,
    PHILIPS_CREATOR_001,
    VendorFlavour,
)


def write_classic_stack(out_dir: Path, flavour: VendorFlavour, info: StudyInfo,
                        plan: StackPlan) -> list[Path]:
    """Write one stack as single-frame images: a series per role, or one combined series."""
    if flavour.layout == "per_role":
        groups = [([role], list(flavour.roles).index(role), role) for role in plan.roles]
    else:
        groups = [(plan.roles, 0, None)]
    paths: list[Path] = []
    for roles, role_index, series_role in groups:
        paths.extend(_write_series(out_dir, flavour, info, plan, roles, role_index, series_role))
    return paths


def series_folder(out_dir: Path, series_number: int, description: str) -> Path:
    """``<out>/<number>_<description>``: readable, and sorted like a PACS series list."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", description).strip("_")
    return out_dir / f"{series_number:04d}_{safe}"


def _write_series(out_dir: Path, flavour: VendorFlavour, info: StudyInfo, plan: StackPlan,
                  roles: list[str], role_index: int, series_role: str | None) -> list[Path]:
    geometry = plan.geometry
    nk, nj, ni = geometry.shape
    dz, dy, dx = geometry.spacing
    series_number = flavour.series_number(plan.index, role_index)
    description = flavour.series_description(plan.station, series_role)
    series_uid = derived_uid(info.study_instance_uid, "series", plan.index, series_number)
    ds = common_dataset(flavour, info, MRImageStorage, series_uid, series_number, description,
                        plan.station, flavour.acquisition_number(plan.index), plan.acquired)
    ds.AcquisitionDate, ds.AcquisitionTime = plan.acquired
    mr_acquisition(ds, flavour, plan)
    ds.ImagesInAcquisition = nk * len(roles)
    ds.ImageOrientationPatient = ds_numbers(geometry.orientation)
    ds.ImageLaterality = "B"  # both thighs in every image
    image_pixel(ds, flavour, nj, ni)
    ds.PixelSpacing = ds_numbers((dy, dx))
    private = _private_blocks(ds, flavour)
    ds.file_meta = file_meta(MRImageStorage, series_uid)

    folder = series_folder(out_dir, series_number, description)
    folder.mkdir(parents=True, exist_ok=True)
    positions = [ds_numbers(p) for p in geometry.slice_positions()]
    offsets = [ds_number(v) for v in geometry.slice_offsets()]
    paths = []
    instance = 0
    for role in roles:
        _label_role(ds, flavour, plan, role, private)
        pixels = plan.scaled.stored[role]
        for k in range(nk):
            instance += 1
            uid = derived_uid(info.study_instance_uid, "instance", series_uid, instance)
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = instance
            ds.ImagePositionPatient = positions[k]
            ds.SliceLocation = offsets[k]
            ds.PixelData = pixels[k].tobytes()
            path = folder / f"IM{instance:05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
    return paths


def _private_blocks(ds: Dataset, flavour: VendorFlavour) -> dict[str, PrivateBlock]:
    """Vendor private elements that hold role codes; returns the blocks to update per role."""
    if flavour.name == "philips":
        return {"philips": ds.private_block(0x2005, PHILIPS_CREATOR_001, create=True)}
    if flavour.name == "ge":
        ds.private_block(0x0019, GE_CREATOR_ACQU, create=True).add_new(
            0x9C, "LO", flavour.sequence_name
        )
        return {"ge": ds.private_block(0x0043, GE_CREATOR_PARM, create=True)}
    return {}


def _label_role(ds: Dataset, flavour: VendorFlavour, plan: StackPlan, role: str,
                private: dict[str, PrivateBlock]) -> None:
    """Everything that tells this role apart: ImageType, echo time, scaling, private codes."""
    label = flavour.roles[role]
    scaled = plan.scaled
    ds.ImageType = list(label.image_type)
    ds.EchoTime = ds_number(label.echo_time)
    ds.EchoNumbers = str(label.echo_number)
    centre, width = scaled.window[role]
    ds.WindowCenter = ds_number(round(centre, 3))
    ds.WindowWidth = ds_number(round(width, 3))
    intercept = scaled.intercept.get(role, 0.0)
    if flavour.scaling.rescale or intercept or scaled.slope[role] != 1.0:
        ds.RescaleIntercept = ds_number(intercept) if intercept else "0"
        ds.RescaleSlope = ds_number(scaled.slope[role])
        if flavour.scaling.rescale:
            ds.RescaleType = "US"  # unspecified: arbitrary signal units (percent for FF maps)
    else:  # a series of several roles: none of the previous role's rescale stays behind
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)
    if "philips" in private:
        block = private["philips"]
        block.add_new(0x0E, "FL", scaled.private_scale[role])
        block.add_new(0x11, "CS", str(label.private_code))
    if "ge" in private:
        block = private["ge"]
        block.add_new(0x2F, "SS", int(label.private_code or 0))
