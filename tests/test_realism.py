"""The realism figures mean what they say: checked on synthetic slices with known answers
(a disc of muscle in a ring of fat of known thickness, known FF and noise sigma)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import realism_measures as rm  # noqa: E402

PIXEL = 0.8


def _leg_slice(muscle_r: float, skin_r: float, ff: float, sigma: float, seed: int = 0,
               dermis_mm: float = 0.0, fat_water: float = 0.05):
    """IP, OP of two legs: muscle disc (fat fraction ``ff``) in a fat ring (water share
    ``fat_water``), partial volume; ``dermis_mm`` of water-rich skin outside the fat ring."""
    up = 4
    n_rows, n_cols = 300, 600
    rows = (np.arange(n_rows * up) + 0.5) / up
    cols = (np.arange(n_cols * up) + 0.5) / up
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    water = np.zeros_like(rr)
    fat = np.zeros_like(rr)
    for centre in (150.0, 450.0):
        dist = np.hypot(rr - 150.0, cc - centre) * PIXEL
        in_muscle, in_fat = dist < muscle_r, (dist >= muscle_r) & (dist < skin_r)
        in_skin = (dist >= skin_r) & (dist < skin_r + dermis_mm)
        water[in_muscle], fat[in_muscle] = 1 - ff, ff
        water[in_fat], fat[in_fat] = fat_water, 1.0 - fat_water
        water[in_skin], fat[in_skin] = 0.8, 0.2
    shrink = lambda a: a.reshape(n_rows, up, n_cols, up).mean(axis=(1, 3)) * 1000.0  # noqa: E731
    w, f = shrink(water), shrink(fat)
    rng = np.random.default_rng(seed)

    def rician(signal):
        return np.hypot(signal + rng.normal(0, sigma, signal.shape),
                        rng.normal(0, sigma, signal.shape))

    return rician(w + f), rician(np.abs(w - f))


def test_disc_in_fat_ring_gives_diameter_fat_thickness_ff_and_noise() -> None:
    ip, op = _leg_slice(muscle_r=60.0, skin_r=72.0, ff=0.03, sigma=10.0)
    legs, noise_air = rm.measure_slice(ip, op, PIXEL)
    assert len(legs) == 2
    for leg in legs:
        assert abs(leg.diameter_mm - 144.0) < 2.0
        assert abs(leg.subcutaneous_mm - 12.0) < 1.0
        assert abs(leg.muscle_ff_pct - 3.0) < 0.5
        assert abs(leg.muscle_ip_op - 1.0 / 0.94) < 0.01
        assert abs(leg.fat_ip_op - 1.0 / 0.9) < 0.02
        assert abs(leg.noise_flat - 10.0) < 1.0
    assert abs(noise_air - 10.0) < 0.5


def test_the_fascia_is_found_below_the_fat_not_at_the_skin() -> None:
    """Skin is water-rich: the cancellation line at its inner border is not the fascia.

    Fat's OP / IP is that of real fat at 3 T, 3.45 / 4.60 ms (about 0.75, docs/phantom.md),
    below muscle's; a single-peak fat with 12 % water share gives the same ratio."""
    ip, op = _leg_slice(muscle_r=60.0, skin_r=72.0, ff=0.03, sigma=5.0, dermis_mm=2.5,
                        fat_water=0.12)
    legs, _ = rm.measure_slice(ip, op, PIXEL)
    assert len(legs) == 2
    for leg in legs:
        assert abs(leg.subcutaneous_mm - 14.5) < 1.0  # 12 mm of fat under 2.5 mm of skin


def test_touching_legs_are_split_at_the_midline() -> None:
    body = np.zeros((100, 200), dtype=bool)
    rr, cc = np.mgrid[:100, :200]
    body |= np.hypot(rr - 50, cc - 55) < 48
    body |= np.hypot(rr - 50, cc - 145) < 48
    body[45:55, 90:110] = True  # a bridge between them
    legs = rm.split_legs(body, 1.0)
    assert len(legs) == 2
    assert legs[0][:, 100:].sum() < 60 and legs[1][:, :100].sum() < 60


def test_background_noise_is_rayleigh_corrected() -> None:
    rng = np.random.default_rng(1)
    air = np.hypot(rng.normal(0, 7.0, (200, 200)), rng.normal(0, 7.0, (200, 200)))
    body = np.zeros_like(air, dtype=bool)
    body[80:120, 80:120] = True
    assert abs(rm.noise_background(air, body, 1.0) - 7.0) < 0.2
