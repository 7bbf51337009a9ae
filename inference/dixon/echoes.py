"""A multi-echo gradient-echo acquisition as arrays, and which of its echoes are in/out of phase.

The DICOM side hands the fitting methods one :class:`EchoSet` (echo times, magnitudes and,
when the scanner saved them, phases in radians) whatever the vendor; the methods need to know
which echoes have water and the main fat peak in phase or opposed, and the classic three-point
Dixon pattern (out, in, out of phase, equally spaced) is found here from the echo times alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, pairwise

import numpy as np

from inference.dixon.spectrum import HAMILTON_2011

IN_PHASE, OUT_OF_PHASE, OTHER = "in_phase", "out_of_phase", "other"
SPACING_TOLERANCE = 0.02  # relative difference of the two echo spacings of a triple


@dataclass(frozen=True)
class EchoSet:
    """Echoes of one grid: magnitudes float32 ``[k, j, i]``, phases radians in [-pi, pi)."""

    echo_times_ms: tuple[float, ...]  # ascending
    magnitudes: tuple[np.ndarray, ...]  # one per echo, same shape
    phases: tuple[np.ndarray, ...] | None  # one per echo, or None (magnitude-only series)
    field_strength_t: float  # B0 in tesla

    def __post_init__(self) -> None:
        times = tuple(float(t) for t in self.echo_times_ms)
        if len(times) < 2 or any(b <= a for a, b in pairwise(times)) or times[0] <= 0:
            raise ValueError(f"echo times must be positive and ascending, got {times}")
        if len(self.magnitudes) != len(times):
            raise ValueError(f"{len(times)} echo times but {len(self.magnitudes)} magnitudes")
        if self.phases is not None and len(self.phases) != len(times):
            raise ValueError(f"{len(times)} echo times but {len(self.phases)} phase images")
        shapes = {np.shape(m) for m in self.magnitudes}
        shapes |= {np.shape(p) for p in self.phases or ()}
        if len(shapes) != 1:
            raise ValueError(f"echo images differ in shape: {sorted(shapes)}")
        if not self.field_strength_t > 0:
            raise ValueError(f"field strength must be positive, got {self.field_strength_t}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.magnitudes[0]))


def echo_phase_class(echo_time_ms: float, field_strength_t: float, tolerance: float = 0.1) -> str:
    """``in_phase``, ``out_of_phase`` or ``other`` for the main (methylene) fat peak.

    ``tolerance`` is in cycles of the fat-water frequency difference: 0.1 accepts echoes
    within 36 degrees of exact (at 3 T, +-0.23 ms).
    """
    cycles = abs(HAMILTON_2011.main_peak_hz(field_strength_t)) * echo_time_ms * 1e-3
    fraction = cycles % 1.0
    if min(fraction, 1.0 - fraction) <= tolerance:
        return IN_PHASE
    if abs(fraction - 0.5) <= tolerance:
        return OUT_OF_PHASE
    return OTHER


def phase_echo_time_ms(field_strength_t: float, kind: str, order: int = 1) -> float:
    """The ``order``-th out-of-phase or in-phase echo time (ms) of the main fat peak."""
    period_ms = 1e3 / abs(HAMILTON_2011.main_peak_hz(field_strength_t))
    if kind == OUT_OF_PHASE:
        return (order - 0.5) * period_ms
    if kind == IN_PHASE:
        return order * period_ms
    raise ValueError(f"kind must be {IN_PHASE!r} or {OUT_OF_PHASE!r}, got {kind!r}")


def dixon_triple(echo_times_ms, field_strength_t: float,
                 equally_spaced: bool = False) -> tuple[int, int, int] | None:
    """Indices of three echoes whose outer two share a phase class (both out of phase, or
    both in phase) and whose middle one has the other: the pair gives R2*, the middle one the
    fat-water contrast. The tightest such triple wins (least decay between its echoes);
    ``equally_spaced`` also requires equal spacing (the complex method's closed form).
    None when the echo set has no such triple."""
    times = [float(t) for t in echo_times_ms]
    classes = [echo_phase_class(t, field_strength_t) for t in times]
    best = None
    for a, b, c in combinations(range(len(times)), 3):
        ends, middle = classes[a], classes[b]
        if ends == OTHER or middle == OTHER or ends != classes[c] or ends == middle:
            continue
        first, second = times[b] - times[a], times[c] - times[b]
        if equally_spaced and abs(first - second) > SPACING_TOLERANCE * max(first, second):
            continue
        span = times[c] - times[a]
        if best is None or span < best[0] - 1e-9:
            best = (span, (a, b, c))
    return None if best is None else best[1]
