"""The storage SCP's transport guard: deadlines, PDU size caps and a bound on connections
that have not (yet) become associations.

pynetdicom reads a PDU with blocking ``recv`` calls that have no timeout and buffers whatever
length its header declares; its ARTIM and idle timers are only looked at between reads, and
its server runs TLS handshakes on the accepting thread. So a sender that stops in the middle
of a PDU, declares 4 GiB, or merely opens connections holds the node's threads, memory and
admission slots for ever, and three silent TCP connections on a TLS port stall every other
sender. This module closes those holes at the depth where they arise, through pynetdicom's
extension points (a server class for ``AE.make_server``, its ``request_handler`` and an
``AssociationSocket`` subclass):

* **before the association** (one thread per connection, none of pynetdicom's yet): the TLS
  handshake and the whole A-ASSOCIATE-RQ must arrive within ``establish_s`` of the accept
  (the handshake also within ``tls_handshake_s``); the first PDU must be a decodable
  A-ASSOCIATE-RQ of at most ``ASSOCIATION_PDU_CAP`` bytes. Otherwise the node answers
  A-ABORT (where a PDU came) and closes. At most ``max_pending`` connections are in this
  phase, or handed over but not established; a new one closes the oldest of them.
* **during the association**: every PDU must arrive whole within ``read_s`` of its first
  byte (until the association is established, within the connection's ``establish_s``);
  a P-DATA-TF may not exceed the maximum PDU length the node advertised, any other PDU
  ``ASSOCIATION_PDU_CAP``; one DIMSE command or dataset may not exceed ``max_message``
  bytes; a send to a peer that does not read fails after ``read_s``. A breach is answered
  with A-ABORT (source service-provider) and the connection is closed at once, before
  anything more of the PDU is read.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from dicom_node.node.log import log_event

LOG = logging.getLogger("myonode.scp")

# Largest PDU other than P-DATA-TF (an A-ASSOCIATE-RQ with 128 presentation contexts of
# several transfer syntaxes and user identity is well under 300 KiB).
ASSOCIATION_PDU_CAP = 1 << 20

_HEADER = struct.Struct(">BBL")  # PDU type, reserved, length (PS3.8 9.3.1)
_P_DATA_TF = 0x04
_A_ASSOCIATE_RQ = 0x01
_PDU_TYPES = range(0x01, 0x08)

# A-ABORT reason/diagnostic with source 2, service-provider (PS3.8 Table 9-26).
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06


@dataclass(frozen=True)
class TransportLimits:
    """The numbers the guard enforces (from ``limits`` and ``security.tls`` of the config)."""

    establish_s: float  # accept -> association established (acse_timeout_s)
    read_s: float  # one PDU, from its first byte; one send (network_timeout_s)
    max_pdu: int  # largest P-DATA-TF accepted: the maximum PDU length advertised
    max_message: int  # largest DIMSE command or dataset, in bytes
    max_pending: int  # connections not yet established
    tls_handshake_s: float = 10.0


def abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service-provider (PS3.8 9.3.8)."""
    return _HEADER.pack(0x07, 0, 4) + bytes((0, 0, 0x02, reason))


class _Violation(Exception):
    """Why a connection is closed: a name for the log and the A-ABORT reason (None: none)."""

    def __init__(self, reason: str, abort: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.abort = abort


def _peer(address: object) -> str:
    return "%s:%s" % tuple(address)[:2] if isinstance(address, tuple) else str(address)


def _read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    """``count`` bytes by ``deadline`` (monotonic), else ``_Violation``. What has arrived
    (or the end of the stream) is still read once the deadline is past; waiting is not."""
    data = bytearray()
    while len(data) < count:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            chunk = sock.recv(min(65536, count - len(data)))
        except TimeoutError:
            raise _Violation("deadline", ABORT_NOT_SPECIFIED) from None
        except OSError:
            raise _Violation("connection_lost", None) from None
        if not chunk:
            raise _Violation("connection_lost", None)
        data += chunk
    return bytes(data)


def _close(sock: socket.socket, abort: int | None) -> None:
    """Send an A-ABORT (best effort, bounded) and close."""
    try:
        if abort is not None:
            sock.settimeout(1.0)
            sock.sendall(abort_pdu(abort))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _cut(sock: socket.socket) -> None:
    """Shut a connection down from another thread than its reader's: the reader sees the
    end of the stream at once; the file descriptor stays its to close (no reuse race)."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Connection:
    """One accepted connection not yet established: its socket and, once handed over, its
    association."""

    def __init__(self, sock: socket.socket, address: object) -> None:
        self.sock = sock
        self.peer = _peer(address)
        self.opened_at = time.monotonic()
        self.assoc: Association | None = None

    @property
    def settled(self) -> bool:
        """Established (counted by the node's admission from now on) or its thread ended."""
        return self.assoc is not None and (self.assoc.is_established
                                           or not self.assoc.is_alive())


class PendingConnections:
    """At most ``limit`` connections that are not established; a new one closes the oldest.

    Keyed by the accepted socket object itself (not its ``id``, which could be reused).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[socket.socket, _Connection] = {}
        self._lock = threading.Lock()

    def admit(self, sock: socket.socket, address: object) -> None:
        with self._lock:
            for key in [k for k, c in self._open.items() if c.settled]:
                del self._open[key]
            while len(self._open) >= self.limit:
                oldest = self._open.pop(next(iter(self._open)))
                _cut(oldest.sock)
                log_event(LOG, "connection.closed", logging.WARNING, reason="evicted",
                          peer=oldest.peer, pending=self.limit)
            self._open[sock] = _Connection(sock, address)

    def get(self, sock: socket.socket) -> _Connection | None:
        with self._lock:
            return self._open.get(sock)

    def drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def cut_all(self) -> None:
        with self._lock:
            for connection in self._open.values():
                _cut(connection.sock)
            self._open.clear()


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket with deadlines and size caps on every PDU read (see the module
    docstring); it first replays the A-ASSOCIATE-RQ the request handler read."""

    def __init__(self, assoc: Association, client_socket: socket.socket,
                 limits: TransportLimits, opened_at: float, first_pdu: bytes) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self._limits = limits
        # Until the association is first established (None from then on).
        self._establish_by: float | None = opened_at + limits.establish_s
        self._replay = bytearray(first_pdu)
        self._body: tuple[int, float] | None = None  # (PDU type, deadline) of the next read
        self._message = {True: 0, False: 0}  # bytes of the command / dataset in progress

    @property
    def ready(self) -> bool:
        return bool(self._replay) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        """The DUL reads a 6-byte header, then the body it declares; both are checked."""
        if self._replay:
            data = self._replay[:nr_bytes]
            del self._replay[:nr_bytes]
            return data
        if self.socket is None:
            return bytearray()
        pdu_type = None
        if self._body is None:
            now = time.monotonic()
            deadline = now + self._limits.read_s
            if self._establish_by is not None and self.assoc.is_established:
                self._establish_by = None
            if self._establish_by is not None:
                if now >= self._establish_by:  # a stream of PDUs does not extend it
                    self._shut(_Violation("deadline", ABORT_NOT_SPECIFIED))
                    return bytearray()
                deadline = min(deadline, self._establish_by)
        else:
            pdu_type, deadline = self._body
            self._body = None
        try:
            data = bytearray(_read_exactly(self.socket, nr_bytes, deadline))
            if pdu_type is None:
                self._check_header(data, deadline)
            elif pdu_type == _P_DATA_TF:
                self._count_message(data)
        except _Violation as exc:
            self._shut(exc)
            return bytearray()
        finally:
            if self.socket is not None:
                self.socket.settimeout(self._limits.read_s)
        return data

    def send(self, bytestream: bytes) -> None:
        """Send with the read deadline; a socket already closed (the node stopping, or a
        breach) is a closed transport, as pynetdicom treats a failed send."""
        if self.socket is not None:
            try:
                self.socket.settimeout(self._limits.read_s)
            except OSError:
                self.event_queue.put("Evt17")  # transport connection closed
                return
        super().send(bytestream)

    def _check_header(self, header: bytearray, deadline: float) -> None:
        pdu_type, _, length = _HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            return  # pynetdicom answers an unknown PDU type itself (A-ABORT)
        cap = ASSOCIATION_PDU_CAP
        if pdu_type == _P_DATA_TF:
            cap = self._limits.max_pdu or self._limits.max_message
        if length > cap:
            raise _Violation("pdu_too_large", ABORT_INVALID_PARAMETER)
        self._body = (pdu_type, deadline)

    def _count_message(self, body: bytearray) -> None:
        """Sum the PDV fragments of the command and of the dataset being assembled."""
        pos = 0
        while pos + 6 <= len(body):
            (length,) = struct.unpack_from(">L", body, pos)
            control = body[pos + 5]
            command = bool(control & 0x01)
            self._message[command] += max(length - 2, 0)
            if self._message[command] > self._limits.max_message:
                raise _Violation("message_too_large", ABORT_INVALID_PARAMETER)
            if control & 0x02:
                self._message[command] = 0
            pos += 4 + length

    def _shut(self, violation: _Violation) -> None:
        """Abort and close now; the DUL then sees a short read (one "connection closed")."""
        sock = self.socket
        if sock is None:
            return
        if violation.abort is not None:
            requestor = self.assoc.requestor
            log_event(LOG, "connection.closed", logging.WARNING, reason=violation.reason,
                      peer=f"{requestor.address}:{requestor.port}",
                      established=self.assoc.is_established)
        self.socket = None
        self._is_connected = False
        _close(sock, violation.abort)


class GuardedRequestHandler(RequestHandler):
    """Runs the connection's TLS handshake and reads its A-ASSOCIATE-RQ (see the module
    docstring), then hands the connection to pynetdicom on a ``GuardedSocket``."""

    server: GuardedAssociationServer

    def handle(self) -> None:
        pending = self.server.pending
        connection = pending.get(self.request)
        if connection is None:  # evicted before its thread ran
            _close(self.request, None)
            return
        limits = self.server.limits
        deadline = connection.opened_at + limits.establish_s
        sock = self.request
        try:
            if self.server.ssl_context is not None:
                sock = self._handshake(sock, min(deadline, time.monotonic()
                                                 + limits.tls_handshake_s))
                connection.sock = sock
            header = _read_exactly(sock, _HEADER.size, deadline)
            pdu_type, _, length = _HEADER.unpack(header)
            if pdu_type != _A_ASSOCIATE_RQ:
                raise _Violation("not_an_association_request", ABORT_UNEXPECTED_PDU)
            if length > ASSOCIATION_PDU_CAP:
                raise _Violation("pdu_too_large", ABORT_INVALID_PARAMETER)
            first_pdu = header + _read_exactly(sock, length, deadline)
            try:
                A_ASSOCIATE_RQ().decode(first_pdu)
            except Exception:  # pynetdicom raises many kinds on malformed items
                raise _Violation("invalid_association_request",
                                 ABORT_INVALID_PARAMETER) from None
        except _Violation as exc:
            pending.drop(self.request)
            if exc.abort is not None:
                log_event(LOG, "connection.closed", logging.WARNING, reason=exc.reason,
                          peer=_peer(self.client_address), established=False)
            _close(sock, exc.abort)
            return
        self.request = sock
        assoc = self._create_association()
        # pynetdicom wrapped the connection in a plain AssociationSocket, which queued the
        # transport-connection indication (Evt5); the guarded socket replaces it and
        # queues its own.
        assoc.dul.event_queue.get_nowait()
        assoc.dul.socket = None
        assoc.set_socket(GuardedSocket(assoc, sock, limits, connection.opened_at, first_pdu))
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        connection.assoc = assoc  # after start: a thread not yet started counts as ended

    def _handshake(self, sock: socket.socket, deadline: float) -> socket.socket:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            return self.server.ssl_context.wrap_socket(sock, server_side=True)
        except (OSError, ValueError) as exc:
            log_event(LOG, "tls.handshake_failed", logging.WARNING,
                      peer=_peer(self.client_address), error=str(exc) or type(exc).__name__)
            raise _Violation("tls_handshake_failed", None) from None


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server that accepts without blocking (the TLS handshake runs
    on the connection's own thread) and keeps the pending connections bounded."""

    request_queue_size = 128

    def __init__(self, *args: object, limits: TransportLimits, **kwargs: object) -> None:
        self.limits = limits
        self.pending = PendingConnections(limits.max_pending)
        super().__init__(*args, request_handler=GuardedRequestHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        return self.socket.accept()

    def process_request(self, request: socket.socket,  # type: ignore[override]
                        client_address: tuple[str, int]) -> None:
        self.pending.admit(request, client_address)
        super().process_request(request, client_address)

    def server_close(self) -> None:
        self.pending.cut_all()
        super().server_close()

    def shutdown(self) -> None:
        """Stop accepting and close (pynetdicom's own also unregisters the server from an
        ``AE.start_server`` list that this server is not on)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
