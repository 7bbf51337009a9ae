"""``myonode inspect``: what the node would make of a folder of DICOM files.

It runs the input side without loading pixels: role recognition, stacks and the stitched grid,
so a site can check a new scanner's series before anything is processed.
"""

from __future__ import annotations

from pathlib import Path

from common.study import StudyStacks
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import plan_stitch


def _round(values: tuple[float, ...] | list[float], digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


def describe_study(study: StudyStacks) -> dict:
    """The JSON description of one study's stacks and stitched grid."""
    stacks = [
        {
            "index": stack.index,
            "roles": dict(sorted(stack.series.items())),
            "slices": stack.geometry.shape[0],
            "z_range_mm": _round(stack.z_range_mm),
        }
        for stack in study.stacks
    ]
    stitched = None
    if study.stacks:
        plan = plan_stitch(study.stacks)
        stitched = {
            "shape": list(plan.geometry.shape),
            "spacing_mm": _round(plan.geometry.spacing, 4),
            "z_range_mm": _round(plan.z_range_mm),
        }
    return {
        "study_instance_uid": study.study_instance_uid,
        "stacks": stacks,
        "stitched": stitched,
        "warnings": list(study.warnings),
    }


def inspect_folder(folder: Path, rules_path: Path | None = None) -> dict:
    """Scan ``folder`` and describe every study found; unreadable files become problems."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    rules = DixonRules.load(rules_path)
    scan = scan_folder(folder, rules)
    studies = group_studies(scan.frames)
    return {
        "studies": [describe_study(study) for study in studies],
        "problems": scan.problems,
    }


def format_report(report: dict) -> str:
    """A readable text version of :func:`inspect_folder`'s result."""
    lines = []
    for study in report["studies"]:
        lines.append(f"Study {study['study_instance_uid']}")
        for stack in study["stacks"]:
            lo, hi = stack["z_range_mm"]
            roles = ", ".join(sorted(stack["roles"]))
            lines.append(
                f"  stack {stack['index']}: {stack['slices']} slices, z {lo:.1f} .. {hi:.1f} mm;"
                f" roles: {roles}"
            )
        if study["stitched"]:
            s = study["stitched"]
            shape = "x".join(str(v) for v in s["shape"])
            spacing = " x ".join(f"{v:g}" for v in s["spacing_mm"])
            lo, hi = s["z_range_mm"]
            lines.append(
                f"  stitched: {shape} voxels of {spacing} mm, z {lo:.1f} .. {hi:.1f} mm"
            )
        for warning in study["warnings"]:
            lines.append(f"  warning: {warning}")
    if not report["studies"]:
        lines.append("No DICOM images found.")
    for problem in report["problems"]:
        lines.append(f"skipped {problem}")
    return "\n".join(lines)
