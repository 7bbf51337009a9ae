"""C-STORE SCU: send result files (SEG, SR) to one destination over one association.

Why per-file outcomes: the outbox records delivery per destination and instance, so a
partial success (the PACS accepts the SR, rejects a SEG, or the link drops half-way) is
remembered exactly and only what did not arrive is sent again. A failed outcome says what
happened, in PS3.8 terms (:mod:`dicom_node.send.reasons`): the refused presentation context,
the A-ASSOCIATE-RJ or A-ABORT with its source and reason, the connection error, a timeout.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.presentation import PresentationContext

from dicom_node.send.reasons import AssociationWitness, rejected_context, sop_class_name

log = logging.getLogger("myonode.scu")

# C-STORE statuses that mean the instance is stored (PS3.4 B.2.3: 0000 success; B000, B007,
# B006 warnings: coercion of data elements, data set does not match SOP class, elements
# discarded).
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts in one association


@dataclass(frozen=True)
class Peer:
    """Where to send: the remote AE (and TLS settings, when the link is encrypted)."""

    name: str
    ae_title: str
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None


@dataclass(frozen=True)
class SendOutcome:
    """The fate of one file: stored or not, the DICOM status and a readable error."""

    path: Path
    sop_instance_uid: str
    stored: bool
    status: int | None
    error: str | None


def _file_facts(path: Path) -> tuple[str, str, str]:
    meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return (
        str(meta.file_meta.MediaStorageSOPClassUID),
        str(meta.file_meta.TransferSyntaxUID),
        str(meta.file_meta.MediaStorageSOPInstanceUID),
    )


def _contexts(facts: list[tuple[str, str, str]]) -> list[PresentationContext]:
    syntaxes: dict[str, list[str]] = {}
    for sop_class, syntax, _ in facts:
        wanted = syntaxes.setdefault(sop_class, [])
        for candidate in (syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if candidate not in wanted:
                wanted.append(candidate)
    if len(syntaxes) > MAX_CONTEXTS:
        raise ValueError(f"{len(syntaxes)} SOP classes in one association (at most {MAX_CONTEXTS})")
    return [build_context(sop_class, wanted) for sop_class, wanted in syntaxes.items()]


def send_files(
    peer: Peer,
    paths: Sequence[Path],
    calling_ae: str,
    timeout_s: float = 30.0,
    max_pdu: int = 16382,
    on_outcome: Callable[[SendOutcome], None] | None = None,
) -> list[SendOutcome]:
    """C-STORE every file to ``peer`` in one association; one outcome per file, in order.

    ``on_outcome`` sees each outcome as soon as the peer answered, so the caller can record
    it before the next file goes. Never raises for network or peer problems: they become
    outcomes with ``stored`` False."""
    outcomes: list[SendOutcome] = []

    def note(outcome: SendOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    facts = [_file_facts(Path(p)) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.requested_contexts = _contexts(facts)
    tls = (peer.ssl_context, peer.server_hostname or peer.host) if peer.ssl_context else None
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    witness = AssociationWitness()
    try:
        with witness.watching():
            assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, max_pdu=max_pdu,
                                 tls_args=tls, evt_handlers=witness.handlers)
    except (OSError, ssl.SSLError) as exc:
        for path, fact in zip(paths, facts):
            note(_failed(path, fact, f"cannot connect to {where}: {exc}"))
        return outcomes
    if not assoc.is_established:
        reason = witness.failure(assoc, where, timeout_s)
        for path, fact in zip(paths, facts):
            note(_failed(path, fact, reason))
        return outcomes
    try:
        for path, (sop_class, syntax, sop_uid) in zip(paths, facts):
            if not assoc.is_established:
                note(_failed(path, (sop_class, syntax, sop_uid),
                             f"association ended before this instance: {_ended(witness)}"))
                continue
            accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
            if not accepted:
                refused = [c for c in assoc.rejected_contexts if c.abstract_syntax == sop_class]
                why = (rejected_context(refused[0]) if refused else
                       f"no presentation context for SOP class {sop_class_name(sop_class)}")
                note(_failed(path, (sop_class, syntax, sop_uid), f"{where}: {why}"))
                continue
            note(_store(assoc, Path(path), sop_uid, syntax, accepted[0], witness))
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _ended(witness: AssociationWitness) -> str:
    """Why an established association is gone (the peer's A-ABORT, else the connection)."""
    aborted = witness.aborted_by_peer()
    if aborted is not None:
        return f"aborted by the destination: {aborted}"
    return ("the destination closed the connection" if witness.closed_by_peer
            else "aborted here (no answer within the DIMSE or network timeout)")


def _store(assoc, path: Path, sop_uid: str, syntax: str, context,
           witness: AssociationWitness) -> SendOutcome:
    try:
        # Sent from the file when the transfer syntax is the file's own (no re-encoding).
        dataset = path if context.transfer_syntax[0] == syntax else pydicom.dcmread(path)
        status = assoc.send_c_store(dataset)
    except (OSError, ValueError, RuntimeError, AttributeError) as exc:
        return SendOutcome(path, sop_uid, False, None, f"C-STORE failed: {exc}")
    code = int(status.Status) if status and "Status" in status else None
    if code in STORED_STATUSES:
        return SendOutcome(path, sop_uid, True, code, None)
    error = (f"C-STORE status 0x{code:04X}" if code is not None
             else f"no C-STORE response: {_ended(witness)}")
    return SendOutcome(path, sop_uid, False, code, error)


def _failed(path: Path, facts: tuple[str, str, str], error: str) -> SendOutcome:
    return SendOutcome(Path(path), facts[2], False, None, error)


def echo(peer: Peer, calling_ae: str, timeout_s: float = 10.0) -> int | None:
    """C-ECHO the peer; the status (0 is success) or None when no association was made."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    ae.add_requested_context("1.2.840.10008.1.1")
    tls = (peer.ssl_context, peer.server_hostname or peer.host) if peer.ssl_context else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()
