"""Who the phantom's subjects are: sex, age, height and BMI, and what follows from them.

A model trained on the phantom must meet the people it will see: lean and obese, young and
old, men and women. Each subject is drawn as a person first; the anatomy's size factors
(subcutaneous fat thickness, muscle bulk, bone size, atrophy with age, intermuscular fat)
follow from that person with some individual scatter. Sources of the numbers are in
``docs/phantom.md`` (Anatomy); the nominal atlas is a young adult of 1.70 m.
"""

from __future__ import annotations

import numpy as np

NOMINAL_HEIGHT_M = 1.70
NOMINAL_AGE = 25.0  # the atlas sizes are those of young adults; atrophy counts from here
AGE_RANGE = (18.0, 78.0)
HEIGHT_M = {"M": (1.77, 0.07), "F": (1.64, 0.065)}  # mean, SD
BMI_MEDIAN, BMI_LOG_SD, BMI_RANGE = 25.5, 0.16, (17.0, 45.0)
# Mid-thigh subcutaneous fat at BMI 24, mm (adult averages: about 5-8 mm in men, 10-15 mm in
# women), growing with BMI to 30-40 mm in obese women.
SUBCUTANEOUS_MM = {"M": 6.5, "F": 12.5}
SUBCUTANEOUS_BMI_POWER = 2.0
SUBCUTANEOUS_LOG_SD = 0.3
SUBCUTANEOUS_RANGE = (2.0, 45.0)
# Muscle cross-section (area) relative to the nominal atlas, on top of the body-size scaling
# (men have about a third more thigh and calf muscle area than women of average height).
MUSCLE_AREA_SEX = {"M": 1.08, "F": 0.93}
MUSCLE_AREA_BMI_POWER = 0.4
MUSCLE_BULK_RANGE = (0.85, 1.2)  # linear factor
# Loss of cross-sectional area with age, % per year after NOMINAL_AGE (Naruse et al. 2023:
# quadriceps 0.53, rectus femoris 0.66, hamstrings 0.39, adductors 0.27, psoas 0.58, triceps
# surae 0.28 with soleus 0.13, dorsiflexors 0.19). Muscles without a figure: ``OTHER``.
ATROPHY_PCT_PER_YEAR = {
    "RF": 0.66, "VL": 0.5, "VM": 0.5, "VI": 0.5,
    "BFL": 0.39, "BFB": 0.39, "ST": 0.39, "SM": 0.39,
    "PC": 0.27, "AB": 0.27, "AL": 0.27, "AM": 0.27, "GC": 0.27,
    "iliopsoas": 0.58,
    "SOL": 0.13, "MG": 0.4, "LG": 0.4,
    "TA": 0.19, "EDL": 0.19, "EHL": 0.19,
}
OTHER_ATROPHY_PCT_PER_YEAR = 0.25


def draw_person(rng: np.random.Generator) -> dict[str, float | str]:
    """Sex, age, height (m) and BMI of one subject."""
    sex = "M" if rng.random() < 0.5 else "F"
    mean, sd = HEIGHT_M[sex]
    height = float(np.clip(rng.normal(mean, sd), mean - 2.5 * sd, mean + 2.5 * sd))
    bmi = float(np.clip(rng.lognormal(np.log(BMI_MEDIAN), BMI_LOG_SD), *BMI_RANGE))
    return {"sex": sex, "age_years": float(rng.uniform(*AGE_RANGE)), "height_m": height,
            "bmi": bmi}


def body_factors(rng: np.random.Generator, person: dict) -> dict[str, float]:
    """The anatomy's size factors that follow from ``person`` (with individual scatter)."""
    sex, bmi, age = person["sex"], person["bmi"], person["age_years"]
    relative_height = person["height_m"] / NOMINAL_HEIGHT_M
    subcutaneous = (SUBCUTANEOUS_MM[sex] * (bmi / 24.0) ** SUBCUTANEOUS_BMI_POWER
                    * rng.lognormal(0.0, SUBCUTANEOUS_LOG_SD))
    area = MUSCLE_AREA_SEX[sex] * (bmi / 24.0) ** MUSCLE_AREA_BMI_POWER * rng.lognormal(0.0, 0.1)
    septum = rng.uniform(0.6, 1.0) * np.sqrt(bmi / 24.0) * (1.0 + 0.006 * (age - 40.0))
    streaks = 0.05 + 0.009 * (age - 20.0) + rng.normal(0.0, 0.08)
    return {
        "length_scale": float(np.clip(relative_height, 0.86, 1.14)),
        "girth_scale": float(relative_height * rng.uniform(0.97, 1.03)),
        "subcutaneous_mm": float(np.clip(subcutaneous, *SUBCUTANEOUS_RANGE)),
        "muscle_bulk": float(np.clip(np.sqrt(area), *MUSCLE_BULK_RANGE)),
        "septum_mm": float(np.clip(septum, 0.45, 2.0)),
        "streaks": float(np.clip(streaks, 0.0, 0.8)),
    }


def age_size_factor(name: str, code: str | None, age_years: float) -> float:
    """Linear size factor of a muscle structure at an age (area loss since NOMINAL_AGE)."""
    rate = ATROPHY_PCT_PER_YEAR.get(code or name, OTHER_ATROPHY_PCT_PER_YEAR)
    area = 1.0 - rate / 100.0 * max(age_years - NOMINAL_AGE, 0.0)
    return float(np.sqrt(max(area, 0.5)))
