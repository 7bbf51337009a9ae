"""Write a synthetic Dixon study as DICOM files the way a given scanner vendor exports it.

The phantom must look like real studies from each vendor (how roles are labelled, how series
are cut, single-frame or Enhanced MR, how pixels are scaled) so the folder scanner, the role
rules and the stitching are tested on realistic input. Vendor conventions and their sources
are in ``dicom_node/phantom/flavours.py``; the writers are ``vendor_classic`` and ``vendor_enhanced``.

A stack of echo images (magnitudes, and phases if given, keyed by echo role) is written as
the vendor exports its echoes (``EchoExport`` in flavours.py), instead of the reconstructions.

Reading back: real-world value = stored * RescaleSlope + RescaleIntercept (identity when
absent; per frame in the Pixel Value Transformation functional group of Enhanced MR). Within
one stack every magnitude role has the same factor to the input, so F/(F+W) is preserved;
fat fraction maps come back in percent. Factors differ between stacks, as on scanners.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.geometry import VolumeGeometry
from common.study import ECHO_PHASE, parse_echo_role
from dicom_node.phantom.attributes import (
    StackPlan,
    StudyInfo,
    scale_stack,
    shifted_datetime,
)
from dicom_node.phantom.classic import write_classic_stack
from dicom_node.phantom.enhanced import write_enhanced_stack
from dicom_node.phantom.flavours import (
    FAT_FRACTION,
    FLAVOURS,
    MAGNITUDE_ROLES,
    VendorFlavour,
    echo_flavour,
)

VENDORS = ("siemens", "philips", "philips-enhanced", "ge")

# Stacks are separate acquisitions: the first starts 5 min into the study, then one per 7 min.
FIRST_STACK_S = 300.0
STACK_INTERVAL_S = 420.0


@dataclass
class StackImages:
    """One stack (a separate acquisition) of a Dixon study."""

    geometry: VolumeGeometry  # this stack's grid (LPS), arrays are [k, j, i]
    # role -> float32 [k, j, i]; magnitudes >= 0, FF in percent; or echo images by echo role
    # (``echo_magnitude_3.45ms``, ``echo_phase_3.45ms`` in radians) at the vendor's echo times
    images: dict[str, np.ndarray]
    # 2D multi-slice: each slice's thickness (mm, at most the spacing); None: a 3D stack whose
    # slices are as thick as they are apart.
    slice_thickness: float | None = None


def write_study(out_dir: Path, vendor: str, info: StudyInfo, stacks: list[StackImages],
                rng: np.random.Generator) -> list[Path]:
    """Write every stack under ``out_dir`` in the vendor's flavour; returns the file paths.

    Roles a vendor does not export are not written: fat fraction maps only by the Philips
    flavours. The same inputs and rng state give byte-identical files (UIDs are derived from
    the study UID and series/instance indices).
    """
    if vendor not in FLAVOURS:
        raise ValueError(f"unknown vendor {vendor!r}; choose one of {', '.join(VENDORS)}")
    if not stacks:
        raise ValueError("a study needs at least one stack")
    flavour = _flavour_for(FLAVOURS[vendor], stacks)
    out_dir = Path(out_dir)
    paths: list[Path] = []
    for index, stack in enumerate(stacks):
        _check_stack(index, stack)
        scaled = scale_stack(stack.images, flavour, rng)
        roles = [role for role in flavour.roles if role in scaled.stored]
        if not roles:
            raise ValueError(
                f"stack {index}: none of its roles ({', '.join(sorted(stack.images))}) is "
                f"exported by {vendor}"
            )
        acquired = shifted_datetime(info.study_date, info.study_time,
                                    FIRST_STACK_S + STACK_INTERVAL_S * index)
        plan = StackPlan(index, stack.geometry, roles, scaled, acquired,
                         slice_thickness=stack.slice_thickness)
        if flavour.layout == "enhanced":
            paths.extend(write_enhanced_stack(out_dir, flavour, info, plan))
        else:
            paths.extend(write_classic_stack(out_dir, flavour, info, plan))
    return paths


def _flavour_for(flavour: VendorFlavour, stacks: list[StackImages]) -> VendorFlavour:
    """The vendor's scanner export, or its echo export when the stacks hold echo images
    (phases written when they are given)."""
    roles = {role for stack in stacks for role in stack.images}
    echoes = {role: parse_echo_role(role) for role in roles}
    if not any(echoes.values()):
        return flavour
    if not all(echoes.values()):
        raise ValueError("a phantom study holds either echo images or the scanner's Dixon "
                         f"images, not both ({', '.join(sorted(roles))})")
    exported = echo_flavour(flavour, phases=any(e[0] == ECHO_PHASE for e in echoes.values()
                                                if e is not None))
    unknown = sorted(roles - set(exported.roles))
    if unknown:
        times = sorted({label.echo_time for label in exported.roles.values()})
        raise ValueError(f"{', '.join(unknown)}: not an echo of the {flavour.name} export "
                         f"({', '.join(f'{te:g}' for te in times)} ms)")
    return exported


def _check_stack(index: int, stack: StackImages) -> None:
    known = (*MAGNITUDE_ROLES, FAT_FRACTION)
    thickness = stack.slice_thickness
    if thickness is not None and not 0 < thickness <= stack.geometry.spacing[0] + 1e-6:
        raise ValueError(
            f"stack {index}: slice thickness {thickness} mm must be > 0 and at most the slice "
            f"spacing {stack.geometry.spacing[0]} mm"
        )
    if not stack.images:
        raise ValueError(f"stack {index} has no images")
    for role, values in stack.images.items():
        if role not in known and parse_echo_role(role) is None:
            raise ValueError(f"stack {index}: unknown role {role!r}; roles are {known}")
        if tuple(values.shape) != tuple(stack.geometry.shape):
            raise ValueError(
                f"stack {index}: {role} has shape {values.shape}, the geometry "
                f"{stack.geometry.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"stack {index}: {role} contains NaN or infinite values")
