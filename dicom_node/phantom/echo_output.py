"""What a phantom stack holds: the scanner's Dixon reconstructions, or only its echo images.

Many 2- and 3-point Dixon protocols export the echoes (magnitude, sometimes phase) instead of
water/fat/in/out-of-phase, so the phantom writes either (``--dixon-output``): ``scanner``
(water, fat, in- and out-of-phase magnitudes), ``echoes`` (one magnitude per echo) or
``echoes+phase`` (and its phase), at the echo times and field strength of the vendor's echo
export (``EchoExport`` in :mod:`dicom_node.phantom.flavours`). The truth does not change: its
FF is the proton-density FF of the phantom's water and fat.
"""

from __future__ import annotations

import numpy as np

from common.geometry import VolumeGeometry
from common.study import ECHO_MAGNITUDE, ECHO_PHASE, echo_role
from dicom_node.phantom.flavours import FLAVOURS, EchoExport
from inference.phantom.anatomy import PhantomVolumes
from inference.phantom.signals import dixon_magnitudes, echo_images
from inference.phantom.subject import Subject

DIXON_OUTPUTS = ("scanner", "echoes", "echoes+phase")


def echo_export(vendor: str) -> EchoExport:
    """The vendor flavour's echo export; ValueError for a flavour that has none."""
    export = FLAVOURS[vendor].echoes if vendor in FLAVOURS else None
    if export is None:
        known = ", ".join(name for name, flavour in FLAVOURS.items() if flavour.echoes)
        raise ValueError(f"--dixon-output echoes is written for {known}, not {vendor!r}")
    return export


def stack_images(volumes: PhantomVolumes, geometry: VolumeGeometry, subject: Subject,
                 rng: np.random.Generator, output: str, vendor: str, snr: float,
                 stack_falloff: bool) -> dict[str, np.ndarray]:
    """The images of one stack for ``output`` (one of :data:`DIXON_OUTPUTS`), by role."""
    if output not in DIXON_OUTPUTS:
        raise ValueError(f"--dixon-output must be one of {', '.join(DIXON_OUTPUTS)}, "
                         f"not {output!r}")
    if output == "scanner":
        return dixon_magnitudes(volumes, geometry, subject, rng, snr=snr,
                                stack_falloff=stack_falloff)
    export = echo_export(vendor)
    echoes = echo_images(volumes, geometry, subject, rng, list(export.echo_times_ms),
                         export.field_strength, snr=snr, stack_falloff=stack_falloff)
    images = {echo_role(ECHO_MAGNITUDE, te): magnitude
              for te, magnitude in zip(export.echo_times_ms, echoes["magnitude"])}
    if output == "echoes+phase":
        images.update({echo_role(ECHO_PHASE, te): phase
                       for te, phase in zip(export.echo_times_ms, echoes["phase"])})
    return images
