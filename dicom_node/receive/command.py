"""A C-STORE command checked as it is decoded, before pynetdicom acts on it.

pynetdicom aborts the whole association on a command it cannot turn into a request (a UID
longer than 64 characters, say) and routes a request by the command's SOP class rather than
the presentation context's. The SCP therefore checks each command as it arrives
(``EVT_DIMSE_RECV``): unusable values are replaced by stand-ins and the problem noted, so
that the request reaches the C-STORE handler and only that instance fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.receive.instance import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_INVALID_SOP_INSTANCE,
)

# Replaces an unusable command UID so that pynetdicom passes the request on to be failed.
_STAND_IN_UID = "2.25.0"
_NOTE_CHARS = 256  # of a command value kept in the quarantine note


@dataclass(frozen=True)
class CommandProblem:
    """Why a C-STORE command cannot be served as sent (see ``repair_store_command``)."""

    status: int
    reason: str
    sent: dict[str, str]  # the unusable values as sent, for the quarantine note
    response: dict[str, str]  # response elements instead of the stand-ins ("": left out)


def repair_store_command(command: Dataset, abstract_syntax: str) -> CommandProblem | None:
    """What makes a C-STORE-RQ command unusable as sent (None when nothing does).

    pynetdicom aborts the association on a command value its primitive refuses (a UID longer
    than 64 characters), ignores a request without Affected SOP Instance UID (no response
    at all), and routes a request by the command's SOP class rather than the presentation
    context's (an unknown one aborts). So the values it would stumble on are replaced in
    ``command`` by stand-ins (another optional element is dropped), and the problem says
    which status to answer, why, and what the response carries instead of the stand-ins.
    """
    probe = C_STORE()
    found: list[tuple[int, str]] = []
    sent: dict[str, str] = {}
    response: dict[str, str] = {}

    instance = _command_uid(command, "AffectedSOPInstanceUID")
    why = _uid_problem(probe, "AffectedSOPInstanceUID", instance)
    if why:
        found.append((STATUS_INVALID_SOP_INSTANCE, f"Affected SOP Instance UID {why}"))
        sent["AffectedSOPInstanceUID"] = (instance or "")[:_NOTE_CHARS]
        command.AffectedSOPInstanceUID = _STAND_IN_UID
        response["AffectedSOPInstanceUID"] = ""

    sop_class = _command_uid(command, "AffectedSOPClassUID")
    why = _uid_problem(probe, "AffectedSOPClassUID", sop_class)
    if why or sop_class != abstract_syntax:
        found.append((STATUS_DOES_NOT_MATCH_SOP_CLASS,
                      f"Affected SOP Class UID {why}" if why
                      else "command SOP class differs from the presentation context's"))
        sent["AffectedSOPClassUID"] = (sop_class or "")[:_NOTE_CHARS]
        command.AffectedSOPClassUID = abstract_syntax
        response["AffectedSOPClassUID"] = "" if why else str(sop_class)

    for elem in list(command):
        if elem.keyword in ("AffectedSOPInstanceUID", "AffectedSOPClassUID", "MessageID") \
                or not hasattr(probe, elem.keyword):
            continue
        value = elem.value[0] if isinstance(elem.value, MultiValue) else elem.value
        try:
            setattr(probe, elem.keyword, value)
        except (TypeError, ValueError, OverflowError):
            found.append((STATUS_CANNOT_UNDERSTAND, f"{elem.keyword} unusable"))
            sent[elem.keyword] = str(value)[:_NOTE_CHARS]
            del command[elem.tag]
    if not found:
        return None
    return CommandProblem(found[0][0], "; ".join(reason for _, reason in found), sent,
                          response)


def _command_uid(command: Dataset, keyword: str) -> str | None:
    value = command.get(keyword)
    if isinstance(value, MultiValue):  # pynetdicom takes the first value too
        value = value[0] if value else None
    return None if value in (None, "") else str(value)


def _uid_problem(probe: C_STORE, keyword: str, value: str | None) -> str | None:
    if value is None:
        return "missing"
    if len(value) > 64:
        return "longer than 64 characters"
    try:
        setattr(probe, keyword, value)
    except ValueError:
        return "not a valid UID"
    return None
