"""Which stitched images feed the fat fraction, and how results.json says what was used.

A study may carry the scanner's water/fat or FF map, echo images (magnitudes, maybe phases),
or only in/out-of-phase images; ``fat_fraction.prefer`` orders the sources
(``inference.fat_fraction.SOURCES``). Echoes are stitched only when an echo source comes
before every other source the study can give (:func:`needs_echoes`), because stitching every
echo of a full study costs as much as stitching all other roles together.
"""

from __future__ import annotations

import numpy as np

from common.study import ECHO_MAGNITUDE, StudyStacks, parse_echo_role
from inference.dixon.echoes import EchoSet
from inference.fat_fraction import FatFractionMap

ECHO_SOURCES = ("complex_echoes", "magnitude_echoes")
# Roles each other FF source needs (in_phase/out_of_phase may be taken from echoes).
SOURCE_ROLES = {"water_fat": ("water", "fat"), "fat_fraction": ("fat_fraction",),
                "ip_op": ("in_phase", "out_of_phase")}


def _in_every_stack(study: StudyStacks, roles: tuple[str, ...]) -> bool:
    return all(role in stack.roles for stack in study.stacks for role in roles)


def study_echo_roles(study: StudyStacks) -> list[str]:
    """Echo roles (magnitudes, then phases, each by echo time) present in every stack."""
    common = set.intersection(*(set(stack.roles) for stack in study.stacks))
    echoes = [(echo, role) for role in common if (echo := parse_echo_role(role)) is not None]
    return [role for _, role in sorted(echoes)]


def needs_echoes(study: StudyStacks, prefer: tuple[str, ...]) -> bool:
    """True when an echo FF source comes before every other source the study can give, so
    the echoes are worth stitching."""
    if not study_echo_roles(study):
        return False
    for source in prefer:
        if source in ECHO_SOURCES:
            return True
        if source in SOURCE_ROLES and _in_every_stack(study, SOURCE_ROLES[source]):
            return False
    return False


def echo_set(study: StudyStacks, images: dict[str, np.ndarray],
             echo_roles: list[str]) -> EchoSet | None:
    """The stitched echoes for the FF methods: magnitudes by echo time, with phases when
    every magnitude has one; None without two magnitudes or a known field strength."""
    magnitudes: dict[float, np.ndarray] = {}
    phases: dict[float, np.ndarray] = {}
    for role in echo_roles:
        echo = parse_echo_role(role)
        if echo is not None:
            (magnitudes if echo[0] == ECHO_MAGNITUDE else phases)[echo[1]] = images[role]
    if len(magnitudes) < 2 or study.field_strength_t is None:
        return None
    times = sorted(magnitudes)
    return EchoSet(
        echo_times_ms=tuple(times),
        magnitudes=tuple(magnitudes[te] for te in times),
        phases=tuple(phases[te] for te in times) if set(times) <= set(phases) else None,
        field_strength_t=study.field_strength_t,
    )


def fat_fraction_record(study: StudyStacks, ff: FatFractionMap, echoes: EchoSet | None) -> dict:
    """``results.json["fat_fraction"]``: which images the FF came from, how, its limits, and
    the echo times (the echoes fitted, or those standing in for in/out-of-phase)."""
    times: list[float] | None = None
    if ff.source in ECHO_SOURCES and echoes is not None:
        times = list(echoes.echo_times_ms)
    elif ff.source == "ip_op":
        derived = [parse_echo_role(source) for source in derived_roles(study).values()]
        times = sorted(echo[1] for echo in derived if echo is not None) or None
    return {"source": ff.source, "method": ff.method, "limits": ff.limits,
            "echo_times_ms": times, "field_strength_t": study.field_strength_t}


def derived_roles(study: StudyStacks) -> dict[str, str]:
    """Roles every stack takes from an echo (in_phase -> echo_magnitude_4.60ms)."""
    if not study.stacks:
        return {}
    first = study.stacks[0].derived
    return {role: source for role, source in sorted(first.items())
            if all(stack.derived.get(role) == source for stack in study.stacks)}
