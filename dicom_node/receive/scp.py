"""The receiving side of the node: a C-ECHO / C-STORE SCP that never acknowledges what it has
not kept.

Below that, ``transport`` holds every connection to deadlines and every PDU and message to
a size (the listening socket is a ``GuardedAssociationServer``).

Each association is checked before it is accepted (source address, calling and called AE
title, capacity) and rejected with the DICOM reason (PS3.8 9.3.4, Table 9-21):

=====================================  ======  ======  ======
reason                                 result  source  reason
=====================================  ======  ======  ======
source address not in allowed list     1 perm  1 user  1 no-reason-given (PS3.8 has no
                                                          code for an address)
calling AE title not in allowed list   1 perm  1 user  3 calling-AE-title-not-recognized
called AE title is not ours            1 perm  1 user  7 called-AE-title-not-recognized
``limits.max_associations`` reached    2 trans 3 pres. 2 local-limit-exceeded
=====================================  ======  ======  ======

C-STORE statuses (PS3.4 B.2.3, Table B.2-1, and PS3.7 C.4; the ErrorComment says why):

* ``0x0000`` Success: the instance is durable in the spool and recorded in the state (or it
  was there already), or it is of another SOP class that the ``accept-and-ignore`` policy
  answers without storing (its dataset checked as any other first).
* ``0xA700`` Refused, Out of Resources: free disk would drop below the watermark (nothing
  is written), the disk filled up while writing (the partial file is removed), or the
  instance would decode to more than ``limits.max_decoded_mb``: a deflated dataset inflating
  past it (inflation stops there), compressed pixel data declaring more (never decoded).
* ``0xA900`` Data Set does not match SOP Class: the presentation context's abstract syntax,
  the command's Affected SOP Class UID and the dataset's SOP Class UID disagree; the
  dataset's SOP Instance UID differs from the command's; Study/Series/SOP Instance UID
  missing or invalid; image pixel attributes missing; Pixel Data missing or empty; native
  Pixel Data shorter than Rows x Columns x Frames x Samples x Bits Allocated; RLE data too
  short for the image it declares; or the SOP Instance UID is already stored in another
  study or series (one UID, one instance: the first one stays).
* ``0x0117`` Invalid SOP Instance (PS3.7 C.4): the command's Affected SOP Instance UID is
  missing, longer than 64 characters or no UID.
* ``0xC000`` Cannot Understand: the bytes are no valid encoding in the negotiated transfer
  syntax (garbage, a truncated element or sequence, a broken deflate stream), another
  command element is unusable, or compressed pixel data that the installed decoders cannot
  decode.
* ``0x0110`` Processing Failure (PS3.7 C.4): the node could not record the instance (its
  state database failed); the file it had spooled is removed again; the sender should send
  it again.

Every refused instance is quarantined with the reason, but for lack of disk and 0x0110; the
association goes on. pynetdicom aborts the association on a C-STORE command it cannot take
(a UID longer than 64 characters) and routes a request by the command's SOP class, not the
presentation context's, so each command is checked as it is decoded (``EVT_DIMSE_RECV``):
unusable values are replaced by stand-ins and the problem noted, and ``_on_store`` fails
that instance alone.
"""

from __future__ import annotations

import errno
import logging
import ssl
import threading
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from dicom_node.node import disk
from dicom_node.node.config import NodeConfig
from dicom_node.node.log import log_event
from dicom_node.node.metrics import NodeMetrics
from dicom_node.node.state import InstanceConflict
from dicom_node.receive.command import CommandProblem, repair_store_command
from dicom_node.receive.instance import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_INVALID_SOP_INSTANCE,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SUCCESS,
    MalformedInstance,
    decode_instance,
    part10_bytes,
)
from dicom_node.receive.spool import Spool, StoredInstance
from dicom_node.receive.transport import GuardedAssociationServer, TransportLimits

LOG = logging.getLogger("myonode.scp")
_MIB = 1024 * 1024


# Metric label and log reason of each refusal that is quarantined.
_KINDS = {STATUS_OUT_OF_RESOURCES: "too_large",
          STATUS_DOES_NOT_MATCH_SOP_CLASS: "does_not_match_sop_class",
          STATUS_INVALID_SOP_INSTANCE: "invalid_sop_instance",
          STATUS_CANNOT_UNDERSTAND: "cannot_understand"}

# (result, source, reason) of A-ASSOCIATE-RJ, PS3.8 Table 9-21.
REJECT_ADDRESS = (0x01, 0x01, 0x01)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_BUSY = (0x02, 0x03, 0x02)


class ReceiveListener(Protocol):
    """What the rest of the node hears from the SCP (called from association threads, so
    implementations must be thread-safe)."""

    def on_instance_stored(self, stored: StoredInstance) -> None:
        """After the file is durable, before Success is returned; also for repeats
        (``stored.new`` False). Raising ``InstanceConflict`` makes the C-STORE fail with
        0xA900 (quarantined), anything else with 0x0110; either way a file this C-STORE
        wrote is removed again."""

    def on_association_released(self, calling_ae: str, study_uids: set[str]) -> None:
        """Once per association that stored at least one instance, when it ends (released,
        aborted or its connection lost)."""


@dataclass
class _Association:
    calling_ae: str
    address: str
    port: int
    studies: set[str] = field(default_factory=set)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    ignored: int = 0
    # Message ID -> what was wrong with that C-STORE command (noted by _on_command).
    command_problems: dict[int, CommandProblem] = field(default_factory=dict)


class StorageSCP:
    """C-ECHO and C-STORE service on ``config.host:config.port`` (TLS when configured)."""

    def __init__(self, config: NodeConfig, spool: Spool, listener: ReceiveListener,
                 metrics: NodeMetrics | None = None) -> None:
        self.config = config
        self.spool = spool
        self.listener = listener
        self.metrics = metrics or NodeMetrics(spool.root)
        self.transfer_syntaxes = offered_transfer_syntaxes(config.storage.transfer_syntaxes)
        self._image_classes = frozenset(config.storage.sop_classes)
        self._ae: AE | None = None
        self._server: GuardedAssociationServer | None = None
        self._serving: threading.Thread | None = None
        self._associations: dict[int, _Association] = {}
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually bound (``node.port`` 0 picks a free one)."""
        if self._server is None:
            raise RuntimeError("the storage SCP is not running")
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Bind and serve in background threads; returns at once."""
        removed = self.spool.remove_partial_files()
        if removed:
            log_event(LOG, "spool.partial_files_removed", logging.WARNING, count=removed)
        dropped = [ts for ts in self.config.storage.transfer_syntaxes
                   if ts not in self.transfer_syntaxes]
        for ts in dropped:
            log_event(LOG, "transfer_syntax.unavailable", logging.WARNING, uid=ts,
                      name=UID(ts).name, why="no pixel-data decoder installed")
        ae = AE(ae_title=self.config.ae_title)
        limits = self.config.limits
        ae.acse_timeout = limits.acse_timeout_s
        ae.dimse_timeout = limits.dimse_timeout_s
        ae.network_timeout = limits.network_timeout_s
        ae.maximum_pdu_size = limits.max_pdu
        # The node admits associations itself (counting admitted ones, not threads, and
        # logging the reason) and bounds pending connections in its transport guard;
        # pynetdicom's own count of live association threads is kept out of the way.
        ae.maximum_associations = 2 * (limits.max_associations
                                       + limits.max_pending_connections)
        ae.require_called_aet = False
        ae.require_calling_aet = []
        ae.add_supported_context(Verification)
        for sop_class in self.config.storage.sop_classes:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        if self.config.storage.other_sop_classes == "accept-and-ignore":
            for context in AllStoragePresentationContexts:
                if context.abstract_syntax not in self._image_classes:
                    ae.add_supported_context(context.abstract_syntax, self.transfer_syntaxes)
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_DIMSE_RECV, self._on_command),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        address = (self.config.host, self.config.port)
        transport = TransportLimits(
            establish_s=limits.acse_timeout_s, read_s=limits.network_timeout_s,
            max_pdu=limits.max_pdu, max_message=limits.max_message_mb * 1024 * 1024,
            max_pending=limits.max_pending_connections,
            tls_handshake_s=self.config.security.tls.handshake_timeout_s)
        self._server = ae.make_server(
            address, evt_handlers=handlers, ssl_context=self._tls_context(),
            server_class=GuardedAssociationServer, limits=transport)
        self._serving = threading.Thread(target=self._server.serve_forever,
                                         name="myonode-scp-accept", daemon=True)
        self._serving.start()
        self._ae = ae
        self.metrics.active_associations.set_function(lambda: len(self._associations))
        self.metrics.add_check("dicom_scp", self._health)
        log_event(LOG, "scp.started", ae_title=self.config.ae_title, host=self.config.host,
                  port=self.port, tls=self.config.security.tls.enabled,
                  transfer_syntaxes=len(self.transfer_syntaxes),
                  other_sop_classes=self.config.storage.other_sop_classes)

    def _health(self) -> tuple[bool, str]:
        return (True, f"port {self.port}") if self.running else (False, "not running")

    def stop(self) -> None:
        """Stop listening and abort open associations (unacknowledged instances are resent
        by their senders; acknowledged ones are already durable)."""
        if self._ae is None or self._server is None:
            return
        port = self.port
        for assoc in self._server.active_associations:
            assoc.abort()
        self._server.shutdown()
        if self._serving is not None:
            self._serving.join()
        self._ae = None
        self._server = None
        self._serving = None
        log_event(LOG, "scp.stopped", port=port)

    # -- association admission ------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.security.tls
        if not tls.enabled:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca is not None:
            context.load_verify_locations(cafile=str(tls.ca))
            context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert \
                else ssl.CERT_OPTIONAL
        return context

    def _on_requested(self, event: Event) -> None:
        assoc = event.assoc
        address, port = assoc.requestor.address, assoc.requestor.port
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        security = self.config.security
        rejection: tuple[tuple[int, int, int], str] | None = None
        if not security.address_allowed(address):
            rejection = (REJECT_ADDRESS, "source_address_not_allowed")
        elif security.allowed_calling_aets and calling not in security.allowed_calling_aets:
            rejection = (REJECT_CALLING_AE, "calling_ae_not_recognised")
        elif security.require_called_aet and called != self.config.ae_title:
            rejection = (REJECT_CALLED_AE, "called_ae_not_recognised")
        else:
            with self._lock:
                if len(self._associations) >= self.config.limits.max_associations:
                    rejection = (REJECT_BUSY, "local_limit_exceeded")
                else:
                    self._associations[id(assoc)] = _Association(calling, address, port)
        if rejection is None:
            return
        (result, source, reason), name = rejection
        self.metrics.associations.labels(result="rejected").inc()
        self.metrics.association_rejections.labels(reason=name).inc()
        log_event(LOG, "association.rejected", logging.WARNING, reason=name, result=result,
                  source=source, diagnostic=reason, calling_ae=calling, called_ae=called,
                  peer=f"{address}:{port}", active=len(self._associations))
        assoc.acse.send_reject(result, source, reason)
        # As pynetdicom's own rejections do: wait until the A-ASSOCIATE-RJ is out and the
        # peer closed the connection (else the socket is shut before the PDU is sent).
        assoc.kill()

    def _on_established(self, event: Event) -> None:
        state = self._associations.get(id(event.assoc))
        if state is None:
            return
        self.metrics.associations.labels(result="accepted").inc()
        fields = {}
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if isinstance(sock, ssl.SSLSocket):
            fields["tls_client"] = _subject_of(sock.getpeercert())
        log_event(LOG, "association.accepted", calling_ae=state.calling_ae,
                  peer=f"{state.address}:{state.port}", **fields)

    def _on_end(self, event: Event) -> None:
        with self._lock:
            state = self._associations.pop(id(event.assoc), None)
        if state is None:
            return
        how = {"EVT_RELEASED": "released", "EVT_ABORTED": "aborted"}.get(
            event.event.name, "connection_closed")
        log_event(LOG, "association.ended", how=how, calling_ae=state.calling_ae,
                  peer=f"{state.address}:{state.port}", stored=state.stored,
                  duplicates=state.duplicates, failed=state.failed, ignored=state.ignored,
                  studies=sorted(state.studies))
        if state.studies:
            try:
                self.listener.on_association_released(state.calling_ae, set(state.studies))
            except Exception:  # the next association must still be served
                LOG.exception("listener failed on association end",
                              extra={"myonode_event": "listener.failed"})

    # -- services -------------------------------------------------------------------------

    def _on_echo(self, event: Event) -> int:
        self.metrics.echoes.inc()
        state = self._associations.get(id(event.assoc))
        log_event(LOG, "echo", logging.DEBUG,
                  calling_ae=state.calling_ae if state else None)
        return STATUS_SUCCESS

    def _on_command(self, event: Event) -> None:
        """A DIMSE message decoded, before pynetdicom makes it a request: a C-STORE command
        that it could not take or would route past ``_on_store`` is made routable, and its
        problem noted for ``_on_store`` to answer."""
        message = event.message
        if not isinstance(message, C_STORE_RQ):
            return
        state = self._associations.get(id(event.assoc))
        message_id = message.command_set.get("MessageID")
        context = next((cx for cx in event.assoc.accepted_contexts
                        if cx.context_id == message.context_id), None)
        if state is None or context is None or message_id is None:
            return  # pynetdicom drops or aborts these itself: there is nothing to answer
        problem = repair_store_command(message.command_set, str(context.abstract_syntax))
        if problem is not None:
            state.command_problems[int(message_id)] = problem

    def _on_store(self, event: Event) -> Dataset:
        state = self._associations.get(id(event.assoc))
        calling = state.calling_ae if state else str(event.assoc.requestor.ae_title).strip()
        peer = state.address if state else str(event.assoc.requestor.address)
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        transfer_syntax = UID(str(event.context.transfer_syntax))
        raw = event.encoded_dataset(include_meta=False)
        self.metrics.bytes_received.inc(len(raw))
        facts: dict = {"calling_ae": calling, "peer": peer, "sop_class": sop_class,
                       "sop_instance": sop_instance, "transfer_syntax": str(transfer_syntax)}
        meta = event.file_meta
        meta.SourceApplicationEntityTitle = calling
        encoded = part10_bytes(meta, raw)

        problem = state.command_problems.pop(int(request.MessageID), None) if state else None
        if problem is not None:  # the values as sent, not pynetdicom's stand-ins
            facts["sop_class"] = problem.sent.get("AffectedSOPClassUID", sop_class)
            facts["sop_instance"] = problem.sent.get("AffectedSOPInstanceUID", sop_instance)
            facts["command"] = problem.sent
            return self._reject(state, problem.status, problem.reason, encoded, facts,
                                response=problem.response)
        min_free = self.config.limits.min_free_disk_mb * 1024 * 1024
        if not disk.has_room(self.spool.root, len(encoded), min_free):
            return self._refuse(state, STATUS_OUT_OF_RESOURCES, "out_of_resources",
                                "free disk space below the node's watermark", facts)
        image = sop_class in self._image_classes
        try:
            ds = decode_instance(raw, transfer_syntax, meta, sop_class, sop_instance,
                                 self.config.limits.max_decoded_mb * _MIB, pixels=image)
        except MalformedInstance as exc:
            return self._reject(state, exc.status, exc.reason, encoded, facts)
        if not image:
            if state:
                state.ignored += 1
            self.metrics.instances_ignored.inc()
            log_event(LOG, "instance.ignored", logging.DEBUG, **facts)
            return _status(STATUS_SUCCESS)

        # One SOP Instance UID at a time from spool to state, so that a file removed again
        # below is never one that another association was just told is stored.
        with self.spool.holding(sop_instance):
            try:
                stored = self.spool.store(ds, meta, calling, peer, encoded=encoded)
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                LOG.exception("spool write failed",
                              extra={"myonode_event": "spool.write_failed"})
                return self._refuse(state, STATUS_OUT_OF_RESOURCES if full
                                    else STATUS_PROCESSING_FAILURE,
                                    "out_of_resources" if full else "write_failed",
                                    f"cannot write the instance ({exc.strerror})", facts)
            try:
                self.listener.on_instance_stored(stored)
            except InstanceConflict as exc:
                self._unspool(stored)
                facts.update(study=stored.study_uid, series=stored.series_uid,
                             stored_study=exc.study_uid, stored_series=exc.series_uid)
                return self._reject(state, STATUS_DOES_NOT_MATCH_SOP_CLASS, str(exc),
                                    encoded, facts, kind="uid_conflict")
            except Exception:
                LOG.exception("listener failed on a stored instance",
                              extra={"myonode_event": "listener.failed"})
                self._unspool(stored)
                return self._refuse(state, STATUS_PROCESSING_FAILURE, "processing_failure",
                                    "instance not recorded, not kept; send it again", facts)
        if state:
            state.studies.add(stored.study_uid)
            if stored.new:
                state.stored += 1
            else:
                state.duplicates += 1
        (self.metrics.instances_received if stored.new
         else self.metrics.instances_duplicate).inc()
        log_event(LOG, "instance.stored", logging.DEBUG, new=stored.new,
                  study=stored.study_uid, series=stored.series_uid, **facts)
        return _status(STATUS_SUCCESS)

    def _unspool(self, stored: StoredInstance) -> None:
        """Remove the file of an instance that is not kept, if this C-STORE wrote it."""
        if not stored.new:
            return
        try:
            self.spool.discard(stored)
        except OSError:
            LOG.exception("cannot remove an unkept instance from the spool",
                          extra={"myonode_event": "spool.discard_failed"})

    def _reject(self, state: _Association | None, status: int, reason: str, encoded: bytes,
                facts: dict, kind: str | None = None,
                response: dict[str, str] | None = None) -> Dataset:
        """Quarantine what was sent, with the reason, and refuse it."""
        calling, peer = facts["calling_ae"], facts["peer"]
        try:
            path = self.spool.quarantine(encoded, reason, calling, peer, details=facts)
        except OSError:
            LOG.exception("cannot quarantine a refused instance",
                          extra={"myonode_event": "quarantine.failed"})
        else:
            self.metrics.instances_quarantined.inc()
            log_event(LOG, "instance.quarantined", logging.WARNING, reason=reason,
                      status=f"0x{status:04X}", file=str(path), **facts)
        return self._refuse(state, status, kind or _KINDS[status], reason, facts, response)

    def _refuse(self, state: _Association | None, status: int, kind: str, comment: str,
                facts: dict, response: dict[str, str] | None = None) -> Dataset:
        if state:
            state.failed += 1
        self.metrics.instances_rejected.labels(reason=kind).inc()
        log_event(LOG, "instance.rejected", logging.WARNING, reason=kind,
                  status=f"0x{status:04X}", comment=comment, **facts)
        return _status(status, comment, response)


def _subject_of(cert: dict | None) -> str | None:
    if not cert:
        return None
    parts = [f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ",".join(parts) or None


def _status(status: int, comment: str | None = None,
            response: dict[str, str] | None = None) -> Dataset:
    """The status dataset pynetdicom copies into the C-STORE response; ``response`` sets
    other response elements (an empty UID leaves the element out)."""
    ds = Dataset()
    ds.Status = status
    if comment:
        # LO: at most 64 characters, and no backslash (it would split the value).
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    for keyword, value in (response or {}).items():
        setattr(ds, keyword, value)
    return ds


def offered_transfer_syntaxes(configured: tuple[str, ...]) -> list[str]:
    """The configured transfer syntaxes whose pixel data this installation can decode."""
    offered = []
    for uid in configured:
        syntax = UID(uid)
        if not syntax.is_encapsulated:
            offered.append(uid)
            continue
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if available:
            offered.append(uid)
    return offered


