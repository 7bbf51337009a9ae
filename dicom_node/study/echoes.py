"""Which echoes of a study can stand in for the scanner's Dixon images, and when echoes are
enough to process a stack.

A study that carries only echo images (magnitudes, maybe phases) has no in-phase or
out-of-phase reconstruction for the model and no water/fat for the FF map. Each echo time is
classed in-phase, out-of-phase or other at the study's field strength
(:func:`inference.dixon.echoes.echo_phase_class`); where the scanner's images are absent, the
earliest in-phase echo magnitude becomes the stack's ``in_phase`` role and the earliest
out-of-phase one its ``out_of_phase`` role (the earliest: least T2* decay, best SNR). A stack
of echoes is usable when its magnitudes make a Dixon set: an in- and an out-of-phase echo, or
at least three echoes (a multi-echo fit needs no particular times); such a set without an
echo of one class (6 echoes 1.3 ms apart at 1.5 T) gives the model the echo nearest to it.
"""

from __future__ import annotations

from collections import Counter

from common.study import ECHO_MAGNITUDE, Frame, Stack, echo_role
from dicom_node.study.dixon_roles import ROLES
from inference.dixon.echoes import echo_phase_class, phase_echo_time_ms

# Roles an echo magnitude can stand in for.
DERIVABLE_ROLES = ("in_phase", "out_of_phase")
MIN_ECHOES = 3  # a set of echoes of any times


def study_field_strength(frames: list[Frame]) -> float | None:
    """The most common field strength (0.01 T) of the frames with a role; None if none says."""
    values = Counter(round(f.field_strength_t, 2) for f in frames
                     if f.role is not None and f.field_strength_t is not None)
    return values.most_common(1)[0][0] if values else None


def echo_classes(echo_times_ms: list[float], field_strength_t: float | None) -> dict[float, str]:
    """Echo time -> ``in_phase``, ``out_of_phase`` or ``other`` (all other without a field)."""
    if field_strength_t is None:
        return {te: "other" for te in echo_times_ms}
    return {te: echo_phase_class(te, field_strength_t) for te in echo_times_ms}


def has_dixon_roles(stack: Stack) -> bool:
    """The stack holds some scanner reconstruction (water, fat, IP, OP or an FF map)."""
    return any(role in stack.roles for role in ROLES)


def is_echo_set(echo_times_ms: list[float], field_strength_t: float | None) -> bool:
    """Magnitudes at these times make a Dixon set (an IP and an OP echo, or three echoes)."""
    classes = set(echo_classes(echo_times_ms, field_strength_t).values())
    return len(echo_times_ms) >= MIN_ECHOES or set(DERIVABLE_ROLES) <= classes


def cycles_from(echo_time_ms: float, field_strength_t: float, kind: str) -> float:
    """How far (in cycles of the fat-water frequency difference, 0..0.5) an echo is from
    being exactly ``kind`` (in_phase or out_of_phase)."""
    fraction = (echo_time_ms / phase_echo_time_ms(field_strength_t, "in_phase")) % 1.0
    if kind == "in_phase":
        return min(fraction, 1.0 - fraction)
    return abs(fraction - 0.5)


def derive_roles(stacks: list[Stack], field_strength_t: float | None) -> list[str]:
    """Take in_phase/out_of_phase from echoes where no stack has the scanner's image: the
    earliest echo magnitude of that class present in every stack; for stacks whose echoes
    make a set but have none of that class, the echo nearest to it (a warning says so).
    Each stack gets those roles (the echo's frames) and notes them in ``derived``; returns
    the warnings."""
    if not stacks:
        return []
    common = sorted(set.intersection(*(set(s.echo_times_ms(ECHO_MAGNITUDE)) for s in stacks)))
    classes = echo_classes(common, field_strength_t)
    derived: dict[str, float] = {}
    warnings = []
    for role in DERIVABLE_ROLES:
        if any(role in stack.roles for stack in stacks):
            continue
        times = [te for te in common if classes[te] == role]
        if times:
            derived[role] = times[0]
            continue
        others = [te for te in common if te not in derived.values()]
        if field_strength_t is None or not others or not all(s.echo_set for s in stacks):
            continue
        nearest = min(others, key=lambda te: cycles_from(te, field_strength_t, role))
        derived[role] = nearest
        echoes = describe_echoes(common, field_strength_t)
        warnings.append(
            f"no {role} echo at {field_strength_t:g} T ({echoes}): the {nearest:.2f} ms echo, "
            f"{cycles_from(nearest, field_strength_t, role):.2f} cycles from {role}, stands in"
        )
    for stack in stacks:
        for role, echo_time in derived.items():
            source = echo_role(ECHO_MAGNITUDE, echo_time)
            stack.roles[role] = stack.roles[source]
            stack.series[role] = stack.series[source]
            stack.derived[role] = source
    return warnings


def describe_echoes(echo_times_ms: list[float], field_strength_t: float | None) -> str:
    """``3.45 (out_of_phase), 4.60 (in_phase) ms``: the echoes and their classes."""
    classes = echo_classes(echo_times_ms, field_strength_t)
    return ", ".join(f"{te:.2f} ({classes[te]})" for te in echo_times_ms) + " ms"
