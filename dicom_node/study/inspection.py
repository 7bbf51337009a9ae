"""``myonode inspect``: what the node would make of a folder of DICOM files.

It runs the input side without loading pixels: role recognition, stacks and the stitched grid,
so a site can check a new scanner's series before anything is processed. For echo images it
shows each echo's time, number and class (in/out-of-phase at the study's field strength),
which images it has, and which echo stands in for the in/out-of-phase image.
"""

from __future__ import annotations

from pathlib import Path

from common.study import (
    ECHO_MAGNITUDE,
    ECHO_PHASE,
    Stack,
    StudyStacks,
    echo_role,
    parse_echo_role,
)
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.echoes import echo_classes
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import plan_stitch


def _round(values: tuple[float, ...] | list[float], digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in values]


def echo_entries(stack: Stack, field_strength_t: float | None) -> list[dict]:
    """Every echo of a stack: time, number, class at the field, which images it has."""
    classes = echo_classes(stack.echo_times_ms(ECHO_MAGNITUDE) + stack.echo_times_ms(ECHO_PHASE),
                           field_strength_t)
    used = {source: role for role, source in stack.derived.items()}
    echoes = []
    for echo_time in sorted(classes):
        magnitude = echo_role(ECHO_MAGNITUDE, echo_time)
        phase = echo_role(ECHO_PHASE, echo_time)
        frame = next(f for role in (magnitude, phase) for f in stack.roles.get(role, []) if f)
        echoes.append({
            "echo_time_ms": echo_time,
            "echo_number": frame.echo_number,
            "class": classes[echo_time],
            "magnitude": stack.series.get(magnitude),
            "phase": stack.series.get(phase),
            "used_as": used.get(magnitude),
        })
    return echoes


def describe_study(study: StudyStacks) -> dict:
    """The JSON description of one study's stacks and stitched grid."""
    stacks = [
        {
            "index": stack.index,
            "roles": dict(sorted(stack.series.items())),
            "slices": stack.geometry.shape[0],
            "z_range_mm": _round(stack.z_range_mm),
            **({"echoes": echo_entries(stack, study.field_strength_t),
                "field_strength_t": study.field_strength_t,
                "derived": dict(sorted(stack.derived.items()))}
               if stack.echo_times_ms(ECHO_MAGNITUDE) or stack.echo_times_ms(ECHO_PHASE)
               else {}),
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


def _field(tesla: float | None) -> str:
    return f"{tesla:g} T" if tesla is not None else "unknown field strength"


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
            echoes = stack.get("echoes", [])
            roles = ", ".join(sorted(r for r in stack["roles"] if parse_echo_role(r) is None))
            lines.append(
                f"  stack {stack['index']}: {stack['slices']} slices, z {lo:.1f} .. {hi:.1f} mm;"
                f" roles: {roles or '-'}"
            )
            if echoes:
                lines.append(f"    {len(echoes)} echoes at {_field(stack['field_strength_t'])}:")
            for echo in echoes:
                kinds = "magnitude + phase" if echo["magnitude"] and echo["phase"] else (
                    "magnitude" if echo["magnitude"] else "phase")
                number = f"echo {echo['echo_number']}, " if echo["echo_number"] else ""
                used = f"; used as {echo['used_as']}" if echo["used_as"] else ""
                lines.append(f"      {number}TE {echo['echo_time_ms']:.2f} ms "
                             f"({echo['class']}): {kinds}{used}")
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
