"""Chemical-shift water/fat separation from multi-echo gradient-echo images (arrays only).

Why a package: the fat fraction a trial tracks (1-2 percentage points a year) is biased by
several points when the fat spectrum is taken as one peak and T2* decay is ignored, so the
echo signal model, the echo-set bookkeeping and the two fitting methods (magnitude-only and
complex) live here, shared by ``inference.fat_fraction`` and the phantom that simulates them.
"""
