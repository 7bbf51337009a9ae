"""The receiving side of the node: a C-ECHO / C-STORE SCP that never acknowledges what it has
not kept.

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

C-STORE statuses (PS3.4 B.2.3, Table B.2-1; the ErrorComment says why):

* ``0x0000`` Success: the instance is durable in the spool (or it was there already, or it
  is of another SOP class that the ``accept-and-ignore`` policy answers without storing).
* ``0xA700`` Refused, Out of Resources: free disk would drop below the watermark (nothing
  is written), or the disk filled up while writing (the partial file is removed).
* ``0xA900`` Data Set does not match SOP Class: the dataset parses but is no usable
  instance of its SOP class: Study/Series/SOP Instance UID missing or invalid, SOP Class or
  Instance UID differing from the request, image pixel attributes or Pixel Data missing,
  native Pixel Data shorter than Rows x Columns x Frames x Samples x Bits Allocated.
* ``0xC000`` Cannot Understand: the bytes are no valid encoding in the negotiated transfer
  syntax (garbage, a truncated element or sequence), or compressed pixel data that the
  installed decoders cannot decode.
* ``0x0110`` Processing Failure (PS3.7 C.4): the instance was spooled but the node could not
  record it (its state database failed); the sender should send it again.

Rejected instances (0xA900, 0xC000) are quarantined with the reason; the association goes on.
"""

from __future__ import annotations

import errno
import logging
import ssl
import struct
import threading
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import decode
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.node import disk
from dicom_node.node.config import NodeConfig, is_uid
from dicom_node.node.log import log_event
from dicom_node.node.metrics import NodeMetrics
from dicom_node.receive.spool import Spool, StoredInstance

LOG = logging.getLogger("myonode.scp")

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

# (result, source, reason) of A-ASSOCIATE-RJ, PS3.8 Table 9-21.
REJECT_ADDRESS = (0x01, 0x01, 0x01)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_BUSY = (0x02, 0x03, 0x02)

# Explicit VR elements with a 4-byte length field (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
              b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32


class ReceiveListener(Protocol):
    """What the rest of the node hears from the SCP (called from association threads, so
    implementations must be thread-safe)."""

    def on_instance_stored(self, stored: StoredInstance) -> None:
        """After the file is durable, before Success is returned; also for repeats
        (``stored.new`` False). Raising makes the C-STORE fail with 0x0110."""

    def on_association_released(self, calling_ae: str, study_uids: set[str]) -> None:
        """Once per association that stored at least one instance, when it ends (released,
        aborted or its connection lost)."""


class MalformedInstance(Exception):
    """A C-STORE dataset the node will not keep: ``status`` and a reason for the sender."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        self._server: ThreadedAssociationServer | None = None
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
        # logging the reason); pynetdicom's own thread-count limit is kept out of the way.
        ae.maximum_associations = max(64, 4 * limits.max_associations)
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
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        address = (self.config.host, self.config.port)
        self._server = ae.start_server(
            address, block=False, evt_handlers=handlers, ssl_context=self._tls_context()
        )
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
        if self._ae is None:
            return
        port = self.port
        self._ae.shutdown()
        self._ae = None
        self._server = None
        log_event(LOG, "scp.stopped", port=port)

    # -- association admission ------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.security.tls
        if not tls.enabled:
            return None
        context = _ServerTlsContext(ssl.PROTOCOL_TLS_SERVER)
        context.handshake_timeout = tls.handshake_timeout_s
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
        facts = {"calling_ae": calling, "peer": peer, "sop_class": sop_class,
                 "sop_instance": sop_instance, "transfer_syntax": str(transfer_syntax)}

        if sop_class not in self._image_classes:
            if state:
                state.ignored += 1
            self.metrics.instances_ignored.inc()
            log_event(LOG, "instance.ignored", logging.DEBUG, **facts)
            return _status(STATUS_SUCCESS)

        meta = event.file_meta
        meta.SourceApplicationEntityTitle = calling
        encoded = part10_bytes(meta, raw)
        min_free = self.config.limits.min_free_disk_mb * 1024 * 1024
        if not disk.has_room(self.spool.root, len(encoded), min_free):
            return self._refuse(state, STATUS_OUT_OF_RESOURCES, "out_of_resources",
                                "free disk space below the node's watermark", facts)
        try:
            ds = decode_instance(raw, transfer_syntax, meta, sop_class, sop_instance)
        except MalformedInstance as exc:
            kind = "cannot_understand" if exc.status == STATUS_CANNOT_UNDERSTAND \
                else "does_not_match_sop_class"
            path = self.spool.quarantine(encoded, exc.reason, calling, peer, details=facts)
            self.metrics.instances_quarantined.inc()
            log_event(LOG, "instance.quarantined", logging.WARNING, reason=exc.reason,
                      status=f"0x{exc.status:04X}", file=str(path), **facts)
            return self._refuse(state, exc.status, kind, exc.reason, facts)

        try:
            stored = self.spool.store(ds, meta, calling, peer, encoded=encoded)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            LOG.exception("spool write failed", extra={"myonode_event": "spool.write_failed"})
            return self._refuse(state, STATUS_OUT_OF_RESOURCES if full
                                else STATUS_PROCESSING_FAILURE,
                                "out_of_resources" if full else "write_failed",
                                f"cannot write the instance ({exc.strerror})", facts)
        try:
            self.listener.on_instance_stored(stored)
        except Exception:
            LOG.exception("listener failed on a stored instance",
                          extra={"myonode_event": "listener.failed"})
            return self._refuse(state, STATUS_PROCESSING_FAILURE, "processing_failure",
                                "instance kept but not recorded; send it again", facts)
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

    def _refuse(self, state: _Association | None, status: int, kind: str, comment: str,
                facts: dict) -> Dataset:
        if state:
            state.failed += 1
        self.metrics.instances_rejected.labels(reason=kind).inc()
        log_event(LOG, "instance.rejected", logging.WARNING, reason=kind,
                  status=f"0x{status:04X}", comment=comment, **facts)
        return _status(status, comment)


class _ServerTlsContext(ssl.SSLContext):
    """Bounds the TLS handshake of an accepted connection in time (pynetdicom runs it on
    the listening thread) and logs failed handshakes, e.g. a missing client certificate."""

    handshake_timeout: float = 10.0

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        try:
            peer = "%s:%s" % sock.getpeername()[:2]
        except OSError:
            peer = "unknown"
        sock.settimeout(self.handshake_timeout)
        try:
            wrapped = super().wrap_socket(sock, *args, **kwargs)
        except OSError as exc:
            log_event(LOG, "tls.handshake_failed", logging.WARNING, peer=peer,
                      error=str(exc) or type(exc).__name__)
            sock.close()
            raise
        wrapped.settimeout(None)
        return wrapped


def _subject_of(cert: dict | None) -> str | None:
    if not cert:
        return None
    parts = [f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ",".join(parts) or None


def _status(status: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    if comment:
        # LO: at most 64 characters, and no backslash (it would split the value).
        ds.ErrorComment = comment.replace("\\", "/")[:64]
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


def part10_bytes(file_meta: FileMetaDataset, dataset_bytes: bytes) -> bytes:
    """A DICOM file: preamble, ``DICM``, the file meta group and the dataset as received."""
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, file_meta, enforce_standard=True)
    buffer.write(dataset_bytes)
    return buffer.getvalue()


def decode_instance(raw: bytes, transfer_syntax: UID, file_meta: FileMetaDataset,
                    sop_class: str, sop_instance: str) -> Dataset:
    """The C-STORE dataset, checked to be a complete, usable image of its SOP class.

    Raises ``MalformedInstance`` with the status to answer (0xC000 or 0xA900).
    """
    implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    content = raw
    if transfer_syntax.is_deflated:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            content = inflater.decompress(raw) + inflater.flush()
        except zlib.error as exc:
            raise MalformedInstance(STATUS_CANNOT_UNDERSTAND,
                                    f"deflate stream broken: {exc}") from exc
    problem = encoding_problem(content, implicit, little)
    if problem:
        raise MalformedInstance(STATUS_CANNOT_UNDERSTAND, f"cannot decode dataset: {problem}")
    try:
        ds = decode(BytesIO(content), implicit, little)
        ds.file_meta = file_meta
        _check_identity(ds, sop_class, sop_instance)
        _check_pixels(ds, transfer_syntax)
    except MalformedInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds on values it cannot convert
        raise MalformedInstance(STATUS_CANNOT_UNDERSTAND,
                                f"cannot read dataset: {type(exc).__name__}: {exc}") from exc
    return ds


def _check_identity(ds: Dataset, sop_class: str, sop_instance: str) -> None:
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "")
        if not value:
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} missing")
        if not is_uid(value):
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                    f"{keyword} is not a valid UID")
    if str(ds.SOPClassUID) != sop_class:
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                "SOPClassUID differs from the request's")
    if str(ds.SOPInstanceUID) != sop_instance:
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                "SOPInstanceUID differs from the request's")


def _check_pixels(ds: Dataset, transfer_syntax: UID) -> None:
    """Pixel data present and complete: natively by length, compressed by decoding it."""
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) in (None, ""):
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} missing")
    if "PixelData" not in ds:
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, "Pixel Data missing")
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if min(rows, columns, frames, samples) < 1 or bits not in (1, 8, 16, 32, 64):
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                "Rows/Columns/Frames/Samples/Bits Allocated out of range")
    values = rows * columns * frames * samples
    if transfer_syntax.is_encapsulated:
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise MalformedInstance(STATUS_CANNOT_UNDERSTAND,
                                    f"compressed pixel data not decodable: {exc}") from exc
        if int(np.prod(pixels.shape)) != values:
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                    "decoded pixel data does not match Rows x Columns x Frames")
        return
    expected = (values + 7) // 8 if bits == 1 else values * bits // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise MalformedInstance(
            STATUS_DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data {actual} bytes, image needs {expected}",
        )


def encoding_problem(data: bytes, implicit_vr: bool, little_endian: bool) -> str | None:
    """Why ``data`` is not a complete dataset in this encoding (None when it is).

    pydicom reads truncated or garbage input silently (a short value, missing elements), so
    the element structure is walked here first: every length must fit, every explicit VR
    must exist, every undefined-length sequence must be closed.
    """
    try:
        _walk(data, 0, len(data), implicit_vr, "<" if little_endian else ">", 0, False)
    except _Broken as exc:
        return str(exc)
    return None


class _Broken(Exception):
    pass


def _walk(data: bytes, pos: int, end: int, implicit: bool, order: str, depth: int,
          in_item: bool) -> int:
    """Walk elements from ``pos``; returns the position after the last one (or after the
    item delimiter that closes an undefined-length item when ``in_item``)."""
    if depth > _MAX_DEPTH:
        raise _Broken("sequences nested too deeply")
    tag_struct = struct.Struct(order + "HH")
    while pos < end:
        if pos + 8 > end:
            raise _Broken(f"element header cut off at byte {pos}")
        group, element = tag_struct.unpack_from(data, pos)
        tag = (group << 16) | element
        if tag == _ITEM_END:
            if not in_item:
                raise _Broken(f"item delimiter outside an item at byte {pos}")
            return pos + 8
        if group == 0xFFFE:
            raise _Broken(f"misplaced delimiter ({group:04X},{element:04X}) at byte {pos}")
        vr = b""
        if implicit:
            (length,) = struct.unpack_from(order + "L", data, pos + 4)
            header = 8
        else:
            vr = data[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise _Broken(f"element header cut off at byte {pos}")
                (length,) = struct.unpack_from(order + "L", data, pos + 8)
                header = 12
            elif vr in _SHORT_VRS:
                (length,) = struct.unpack_from(order + "H", data, pos + 6)
                header = 8
            else:
                raise _Broken(f"invalid VR {vr!r} in ({group:04X},{element:04X}) at byte {pos}")
        pos += header
        if length == _UNDEFINED:
            # Undefined-length SQ, encapsulated pixel data or UN holding implicit VR items
            # (PS3.5 6.2.2).
            pos = _walk_items(data, pos, end, implicit or vr == b"UN", order, depth + 1)
        else:
            if pos + length > end:
                raise _Broken(f"({group:04X},{element:04X}) needs {length} bytes, "
                              f"{end - pos} left")
            pos += length
    if in_item:
        raise _Broken("item not closed before the end of the data")
    return pos


def _walk_items(data: bytes, pos: int, end: int, implicit: bool, order: str,
                depth: int) -> int:
    tag_struct = struct.Struct(order + "HHL")
    while True:
        if pos + 8 > end:
            raise _Broken("sequence not closed before the end of the data")
        group, element, length = tag_struct.unpack_from(data, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _Broken(f"expected an item, found ({group:04X},{element:04X}) at byte {pos - 8}")
        if length == _UNDEFINED:
            pos = _walk(data, pos, end, implicit, order, depth + 1, True)
        else:
            if pos + length > end:
                raise _Broken(f"item needs {length} bytes, {end - pos} left")
            pos += length
