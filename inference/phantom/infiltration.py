"""Per-muscle fat replacement of a phantom subject: how much fat, where, and how much atrophy.

Muscular dystrophies replace muscle by fat in disease-specific patterns, so a segmentation model
meets muscles that look healthy next to muscles that look like fat. The patterns below are
simplified from the muscle-MRI literature (sources in ``docs/phantom.md`` (Anatomy)):

* Becker muscular dystrophy: gluteus maximus, adductors, hamstrings and quadriceps affected,
  gracilis, sartorius and semitendinosus spared; in the calf the posterior compartment
  (gastrocnemius, soleus) more than the anterior; the calf keeps its size (its enlargement
  in Becker is largely true hypertrophy, Monforte et al. 2014), so no calf atrophy.
* Posterior limb-girdle types (LGMD R12, anoctamin-5, the main disease in Huysmans 2023; LGMD
  R9): adductor magnus and the hamstrings first, often asymmetrically, sparing rectus femoris,
  gracilis and sartorius; in the calf medial gastrocnemius and soleus, anterior spared.
* Dysferlinopathy (LGMD R2, Miyoshi): medial gastrocnemius and soleus the most commonly and
  earliest affected muscles, then the adductors, hamstrings and vasti.
* Facioscapulohumeral dystrophy: hamstrings (semimembranosus first), adductor magnus and
  rectus femoris in the thigh; tibialis anterior and medial gastrocnemius in the calf, the
  peroneal muscles and the lateral gastrocnemius spared; often asymmetric, and fattier
  distally within a muscle.

Fat replacement is also uneven along a muscle (Huysmans 2023 motivates volumetric
quantification with that) and within it. FF values here are tissue fat signal fractions; the
muscle means that the ground truth reports also include the partial volume of the thin fat
septa at muscle borders and of the intramuscular fat streaks.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from inference.phantom.calf_layout import CALF_CODES
from inference.phantom.layout import MUSCLE_CODES

Infiltration = Literal["low", "high"]


def _pattern(thigh: tuple[float, ...], calf: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(MUSCLE_CODES, thigh, strict=True)) | dict(zip(CALF_CODES, calf, strict=True))


# Severity (0 spared .. 1 first and most affected) of every labelled muscle, in the order
# RF VL VM VI PC AB AL AM BFL BFB ST SM SR TFL GC Gma Gme Gmi (thigh) and
# TA EDL EHL PL PB TP FDL FHL SOL MG LG POP (calf).
PATTERNS: dict[str, dict[str, float]] = {
    "becker": _pattern(
        (0.55, 0.8, 0.75, 0.85, 0.65, 0.8, 0.75, 0.95, 0.85, 0.7, 0.2, 0.7, 0.1, 0.45, 0.1, 0.95,
         0.8, 0.75),
        (0.25, 0.3, 0.25, 0.4, 0.35, 0.15, 0.3, 0.3, 0.65, 0.7, 0.5, 0.4)),
    "posterior": _pattern(
        (0.15, 0.45, 0.5, 0.5, 0.5, 0.6, 0.6, 1.0, 0.9, 0.55, 0.5, 0.95, 0.15, 0.3, 0.1, 0.6,
         0.5, 0.55),
        (0.15, 0.15, 0.1, 0.3, 0.25, 0.3, 0.35, 0.35, 0.85, 0.95, 0.6, 0.3)),
    "adductor_posterior": _pattern(
        (0.2, 0.5, 0.5, 0.6, 0.7, 0.9, 0.8, 1.0, 0.9, 0.6, 0.6, 0.9, 0.1, 0.3, 0.1, 0.8, 0.7,
         0.7),
        (0.2, 0.2, 0.15, 0.3, 0.25, 0.25, 0.3, 0.3, 0.7, 0.75, 0.5, 0.3)),
    "dysferlinopathy": _pattern(
        (0.3, 0.6, 0.6, 0.6, 0.5, 0.7, 0.7, 0.85, 0.7, 0.6, 0.6, 0.8, 0.3, 0.3, 0.35, 0.5, 0.6,
         0.7),
        (0.35, 0.35, 0.3, 0.5, 0.45, 0.3, 0.5, 0.5, 0.95, 1.0, 0.7, 0.5)),
    "fshd": _pattern(
        (0.6, 0.3, 0.4, 0.25, 0.3, 0.5, 0.5, 0.75, 0.75, 0.5, 0.7, 0.85, 0.3, 0.35, 0.35, 0.3,
         0.25, 0.25),
        (0.85, 0.45, 0.35, 0.15, 0.15, 0.1, 0.2, 0.25, 0.6, 0.8, 0.2, 0.2)),
}
# Left/right asymmetry of severity (anoctamin-5 myopathy and FSHD are typically asymmetric).
PATTERN_ASYMMETRY = {"becker": 0.04, "posterior": 0.12, "adductor_posterior": 0.06,
                     "dysferlinopathy": 0.06, "fshd": 0.15}
# Mean proximodistal tendency (FF change from the distal to the proximal end at FF 50 %):
# FSHD muscles are fattier distally.
PATTERN_TENDENCY = {"fshd": -0.1}
NO_ATROPHY = {"becker": frozenset(CALF_CODES)}  # affected muscles that keep their size
HEALTHY_SHARE = 0.4  # share of low-infiltration subjects without a disease pattern

# Columns of a parameter row.
FF_MID, FF_GRADIENT, HETEROGENEITY, PERIPHERY, ATROPHY = range(5)
N_PARAMS = 5


def healthy_ff(age_years: float) -> float:
    """Typical FF of healthy muscle at an age: about 2.5 % at 20 rising to 5 % at 75."""
    return 0.025 + 0.00045 * max(age_years - 20.0, 0.0)


def draw_fat_parameters(rng: np.random.Generator, infiltration: Infiltration,
                        codes: tuple[str | None, ...],
                        age_years: float = 45.0) -> tuple[str, float, np.ndarray]:
    """Fat parameters of every muscle structure of both legs.

    ``codes`` lists the muscle structures (a muscle code, or None for unlabelled muscles
    such as iliopsoas). Returns the pattern name, the disease stage (0..1) and an array
    ``[2 sides (right, left), len(codes), N_PARAMS]``: mid-muscle FF, the FF change from the
    distal to the proximal end, the within-muscle heterogeneity (logit amplitude), the extra
    fat along the muscle border (logit) and the atrophy (fraction of the muscle radius lost).
    """
    params = np.zeros((2, len(codes), N_PARAMS))
    if infiltration == "low":
        diseased = rng.random() >= HEALTHY_SHARE
        pattern = str(rng.choice(list(PATTERNS))) if diseased else "healthy"
        stage = float(rng.uniform(0.0, 1.0)) if diseased else 0.0
        base = healthy_ff(age_years) + rng.normal(0.0, 0.005)
        for index, code in enumerate(codes):
            severity = PATTERNS[pattern][code] if diseased and code is not None else 0.0
            for side in range(2):
                ff = base + rng.normal(0.0, 0.006) + 0.04 * stage * severity
                params[side, index] = (float(np.clip(ff, 0.018, 0.1)), rng.normal(0.0, 0.01),
                                       0.15, 0.2, 0.0)
        return pattern, stage, params
    if infiltration != "high":
        raise ValueError(f"infiltration must be 'low' or 'high', not {infiltration!r}")
    pattern = str(rng.choice(list(PATTERNS)))
    stage = float(rng.uniform(0.35, 1.0))
    # Some muscles fatten distally first, others proximally; a subject tends one way.
    tendency = PATTERN_TENDENCY.get(pattern, 0.0) + rng.normal(0.0, 0.08)
    for index, code in enumerate(codes):
        if code is None:
            severity = rng.uniform(0.0, 0.4)
        else:
            severity = PATTERNS[pattern][code] + rng.normal(0.0, 0.1)
        for side in range(2):
            sev = float(np.clip(severity + rng.normal(0.0, PATTERN_ASYMMETRY[pattern]), 0.0, 1.1))
            load = np.clip(sev * (0.3 + 1.0 * stage) + rng.normal(0.0, 0.04), 0.0, 1.0)
            ff = 0.22 + 0.66 * load
            spread = 4.0 * ff * (1.0 - ff)  # 1 at FF 50 %, small for spared or end-stage muscle
            gradient = (tendency + rng.normal(0.0, 0.12)) * spread
            keeps_size = code is None or code in NO_ATROPHY.get(pattern, ())
            atrophy = 0.0 if keeps_size else float(np.clip(0.45 * sev * stage - 0.05, 0.0, 0.35))
            params[side, index] = (ff, gradient, 0.35 + 0.8 * spread, 0.6 * spread, atrophy)
    return pattern, stage, params


def tissue_fat_fraction(ff_mid: np.ndarray, gradient: np.ndarray, heterogeneity: np.ndarray,
                        periphery: np.ndarray, along: np.ndarray, texture: np.ndarray,
                        border_mm: np.ndarray) -> np.ndarray:
    """FF of muscle tissue at points: the muscle's level-dependent mean, texture and border.

    ``along`` is the position along the muscle (0 distal end .. 1 proximal end), ``texture`` a
    smooth zero-mean random field (about unit variance) and ``border_mm`` the distance to the
    nearest muscle border; fat replacement is patchy and starts along the septa.
    """
    mean = np.clip(ff_mid + gradient * (along - 0.5), 0.02, 0.92)
    logit = np.log(mean / (1.0 - mean))
    logit = logit + heterogeneity * texture + periphery * np.exp(-border_mm / 3.0)
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
