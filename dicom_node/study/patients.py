"""Whose images are these? One study's instances must all name the same patient.

A StudyInstanceUID is meant to belong to one patient, but worklist errors, merges and
hand-edited exports produce studies whose instances name two. Results computed from such a
study would mix patients, so the node holds it until a person has looked (see
:mod:`dicom_node.serve.completion`). The identity compared is the Patient ID with its issuer
(exactly, an absent value counting as one value), and the patient's name and birth date
where instances give them (names compared without case, spaces and trailing ``^``, because
systems format them differently).

The reason given names the attributes that differ and, for each value, the series and the
number of instances, never the values themselves: it goes to the log and ``myonode status``,
which should not spread patient identifiers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

# attribute -> whether an absent value counts as a value of its own
_COMPARED = {"PatientID": True, "IssuerOfPatientID": True, "PatientName": False,
             "PatientBirthDate": False}


@dataclass(frozen=True)
class PatientIdentity:
    """The identifying attributes of one instance (normalised text; "" when absent,
    ``"<unreadable>"`` when the element's bytes cannot be read)."""

    patient_id: str
    issuer: str
    name: str
    birth_date: str

    def value(self, keyword: str) -> str:
        """The value compared for ``keyword``."""
        return {"PatientID": self.patient_id, "IssuerOfPatientID": self.issuer,
                "PatientName": self.name, "PatientBirthDate": self.birth_date}[keyword]


def identity_of(ds: Dataset) -> PatientIdentity:
    """The patient identity a dataset names (never raises for hostile values)."""
    return PatientIdentity(
        patient_id=_text(ds, "PatientID"),
        issuer=_text(ds, "IssuerOfPatientID"),
        name=" ".join(_text(ds, "PatientName").upper().rstrip("^ ").replace("^", " ").split()),
        birth_date=_text(ds, "PatientBirthDate"),
    )


def patient_mismatch(instances: Iterable[tuple[str, PatientIdentity]]) -> str | None:
    """Why these instances (series UID, identity) cannot be one patient; None when they can."""
    instances = list(instances)
    reasons = []
    for keyword, absent_counts in _COMPARED.items():
        series: dict[str, set[str]] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for series_uid, identity in instances:
            value = identity.value(keyword)
            if value or absent_counts:
                series[value].add(series_uid)
                counts[value] += 1
        if len(counts) > 1:
            parts = "; ".join(
                f"{counts[value]} instance(s) of series {', '.join(sorted(series[value]))}"
                for value in sorted(counts, key=lambda v: (-counts[v], v))
            )
            reasons.append(f"{len(counts)} different {keyword} values ({parts})")
    if not reasons:
        return None
    return "instances of more than one patient: " + "; ".join(reasons)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom converts untrusted bytes when first used
        return "<unreadable>"
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \0")
