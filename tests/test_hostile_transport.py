"""The storage SCP against hostile senders at the transport level: raw sockets on 127.0.0.1
that send garbage, stop mid-PDU, declare huge PDUs or just stay open, while real senders
(DCMTK via tests/peers.py, pynetdicom) must still be served.

Every wait is for an event (the node closing a socket, the thread count falling back) with a
bounded overall timeout; the configured deadlines are short, the bounds generous.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from peers import TlsFiles, make_throwaway_pki, scu_peer, tls_peer
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification

from dicom_node.node.config import LimitsConfig, NodeConfig, SecurityConfig, TlsConfig
from dicom_node.node.metrics import NodeMetrics
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.spool import Spool, StoredInstance

GRACE_S = 15.0  # on top of a configured deadline, for a loaded machine
STREAM_LIMIT = 256 * 1024 * 1024  # what a hostile sender tries to push
CONTEXT_MR, CONTEXT_ECHO = 1, 3


class Listener:
    """A ReceiveListener that keeps nothing (these tests store no instance)."""

    def on_instance_stored(self, stored: StoredInstance) -> None:
        pass

    def on_association_released(self, calling_ae: str, study_uids: set[str]) -> None:
        pass


@pytest.fixture
def start_node(tmp_path: Path):
    scps: list[StorageSCP] = []

    def start(**changes: object) -> StorageSCP:
        config = replace(NodeConfig(), port=0, data_dir=tmp_path / f"node{len(scps)}",
                         **changes)
        scp = StorageSCP(config, Spool(config.data_dir / "spool"), Listener(),
                         NodeMetrics(config.data_dir))
        scp.start()
        scps.append(scp)
        return scp

    yield start
    for scp in scps:
        scp.stop()


def limits(**changes: object) -> LimitsConfig:
    return replace(LimitsConfig(), **changes)


# -- raw DICOM upper layer (PS3.8 9.3) ------------------------------------------------------


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def association_rq(calling: bytes = b"HOSTILE", length_delta: int = 0) -> bytes:
    """An A-ASSOCIATE-RQ for MR Image Storage and Verification (implicit VR little endian);
    ``length_delta`` makes its length field lie."""
    body = struct.pack(">HH", 1, 0) + b"MYONODE".ljust(16) + calling.ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context, syntax in ((CONTEXT_MR, MRImageStorage), (CONTEXT_ECHO, Verification)):
        body += _item(0x20, bytes((context, 0, 0, 0)) + _item(0x30, syntax.encode())
                      + _item(0x40, ImplicitVRLittleEndian.encode()))
    body += _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3.4"))
    return struct.pack(">BBL", 0x01, 0, len(body) + length_delta) + body


def p_data(context: int, control: int, fragment: bytes) -> bytes:
    pdv = struct.pack(">LBB", len(fragment) + 2, context, control) + fragment
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def store_command() -> bytes:
    """The command set of a C-STORE-RQ for one MR image (PS3.7 9.3.1.1)."""
    command = Dataset()
    command.AffectedSOPClassUID = MRImageStorage
    command.CommandField = 0x0001
    command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = generate_uid()
    command.CommandGroupLength = 0
    command.CommandGroupLength = len(encode(command, True, True)) - 12  # the rest of group 0
    return encode(command, True, True)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))
    return sock


def read_pdu(sock: socket.socket) -> bytes:
    """One whole PDU from the node."""
    header = _read(sock, 6)
    return header + _read(sock, struct.unpack(">L", header[2:])[0])


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "the node closed the connection"
        data += chunk
    return data


def established(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(association_rq())
    answer = read_pdu(sock)
    assert answer[0] == 0x02, f"no A-ASSOCIATE-AC: {answer[:16]!r}"
    return sock


def wait_closed(sock: socket.socket, within_s: float) -> bytes:
    """What the node sent before closing ``sock``; fails if it is open after ``within_s``."""
    deadline = time.monotonic() + within_s
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the node kept the connection open for {within_s:.0f} s")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def is_open(sock: socket.socket) -> bool:
    """Whether the node still holds ``sock`` (what it sent is read and dropped)."""
    sock.settimeout(0.0)
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not chunk:
            return False


def stream(sock: socket.socket, limit: int = STREAM_LIMIT) -> int:
    """Push up to ``limit`` bytes; how many went out before the node cut the connection."""
    chunk = bytes(1 << 16)
    sent = 0
    sock.settimeout(GRACE_S)
    try:
        while sent < limit:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return sent
    except TimeoutError:
        pytest.fail(f"the node stopped reading after {sent} bytes but kept the connection")
    pytest.fail(f"the node read all {sent} bytes of a PDU it should have refused")


def is_abort(data: bytes, reason: int | None = None) -> bool:
    """``data`` starts with an A-ABORT from the service-provider (source 2)."""
    ok = len(data) >= 10 and data[0] == 0x07 and data[8] == 0x02
    return ok and (reason is None or data[9] == reason)


def wait_threads(baseline: int, within_s: float = GRACE_S) -> None:
    deadline = time.monotonic() + within_s
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the count; the bound is the deadline
    assert threading.active_count() <= baseline, (
        f"{threading.active_count() - baseline} node threads still running")


# -- before the association -------------------------------------------------------------------

ACSE_S = 2.0


@pytest.mark.parametrize("attack", [
    pytest.param(lambda: random.Random(7).randbytes(4096), id="random-bytes"),
    pytest.param(lambda: association_rq(length_delta=400), id="rq-longer-than-sent"),
    pytest.param(lambda: association_rq(length_delta=-40) + bytes(3), id="rq-length-short"),
    pytest.param(lambda: b"\x01\x00\x00", id="header-cut-after-3-bytes"),
])
def test_a_connection_that_never_associates_is_closed_by_its_deadline(start_node, attack):
    node = start_node(limits=limits(acse_timeout_s=ACSE_S, network_timeout_s=120))
    baseline = threading.active_count()
    sock = connect(node.port)
    sock.sendall(attack())
    wait_closed(sock, ACSE_S + GRACE_S)
    sock.close()
    wait_threads(baseline)


def test_a_slow_trickle_does_not_extend_the_deadline(start_node):
    node = start_node(limits=limits(acse_timeout_s=ACSE_S, network_timeout_s=120))
    baseline = threading.active_count()
    sock = connect(node.port)
    request = association_rq()
    closed = threading.Event()

    def trickle() -> None:  # one byte every 0.2 s: the whole request would take minutes
        for byte in request:
            if closed.wait(0.2):
                return
            try:
                sock.send(bytes((byte,)))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        wait_closed(sock, ACSE_S + GRACE_S)
    finally:
        closed.set()
        sender.join()
    sock.close()
    wait_threads(baseline)


def test_a_pdu_declaring_4_gib_is_refused_at_its_header(start_node):
    node = start_node(limits=limits(acse_timeout_s=60, network_timeout_s=120))
    baseline = threading.active_count()
    sock = connect(node.port)
    sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
    sent = stream(sock)
    # Only what the kernel's socket buffers hold went out before the node cut it.
    assert sent < 32 * 1024 * 1024, sent
    sock.close()
    wait_threads(baseline)


# -- during the association -------------------------------------------------------------------


def test_an_association_cut_mid_p_data_is_closed_by_the_read_deadline(start_node):
    node = start_node(limits=limits(acse_timeout_s=60, network_timeout_s=2))
    baseline = threading.active_count()
    sock = established(node.port)
    pdu = p_data(CONTEXT_MR, 0x03, store_command())
    sock.sendall(pdu[:len(pdu) // 2])
    assert is_abort(wait_closed(sock, 2 + GRACE_S))
    sock.close()
    wait_threads(baseline)


@pytest.mark.parametrize("declared", [16384 + 100, 0xFFFFFFFF], ids=["max+100", "4GiB"])
def test_p_data_beyond_the_negotiated_maximum_pdu_is_aborted(start_node, declared):
    node = start_node(limits=limits(max_pdu=16384, acse_timeout_s=60, network_timeout_s=120))
    baseline = threading.active_count()
    sock = established(node.port)
    header = struct.pack(">BBL", 0x04, 0, declared)
    pdv = struct.pack(">LBB", declared - 4, CONTEXT_MR, 0x03)
    if declared < 1 << 20:
        sock.sendall(header + pdv + bytes(declared - 6))
        assert is_abort(wait_closed(sock, GRACE_S), reason=6)
    else:
        sock.sendall(header + pdv)
        assert stream(sock) < 32 * 1024 * 1024
    sock.close()
    wait_threads(baseline)


def test_a_message_larger_than_the_limit_is_aborted_while_it_arrives(start_node):
    node = start_node(limits=limits(max_pdu=16384, max_message_mb=1, acse_timeout_s=60,
                                    network_timeout_s=120))
    baseline = threading.active_count()
    sock = established(node.port)
    sock.sendall(p_data(CONTEXT_MR, 0x03, store_command()))
    fragment = p_data(CONTEXT_MR, 0x00, bytes(16384 - 12))
    for _ in range(2 * 1024 * 1024 // len(fragment)):
        try:
            sock.sendall(fragment)
        except (BrokenPipeError, ConnectionResetError):
            break
    wait_closed(sock, GRACE_S)
    sock.close()
    wait_threads(baseline)


# -- crowds -----------------------------------------------------------------------------------


def test_silent_and_refused_connections_do_not_crowd_out_a_real_sender(start_node):
    pending = 16
    node = start_node(limits=limits(acse_timeout_s=60, network_timeout_s=120,
                                    max_pending_connections=pending),
                      security=SecurityConfig(allowed_addresses=("127.0.0.1/32",)))
    baseline = threading.active_count()
    hostile = [connect(node.port) for _ in range(40)]  # silent, from an allowed address
    for _ in range(40):  # refused address: a request, the A-ASSOCIATE-RJ, and then silence
        sock = connect(node.port, source="127.0.0.3")
        hostile.append(sock)
        sock.sendall(association_rq())
        try:
            answer = read_pdu(sock)
        except (AssertionError, ConnectionResetError):
            continue  # already closed to make room (the newest is never the one closed)
        assert answer[0] == 0x03
    try:
        run = scu_peer().echo(node.port)
        assert run.returncode == 0, run.output
        still_open = sum(is_open(sock) for sock in hostile)
        assert still_open <= pending, still_open
        deadline = time.monotonic() + GRACE_S
        while (threading.active_count() - baseline > 2 * pending
               and time.monotonic() < deadline):
            time.sleep(0.05)  # polling the count; the bound is the deadline
        assert threading.active_count() - baseline <= 2 * pending
    finally:
        for sock in hostile:
            sock.close()
    wait_threads(baseline)


# -- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_throwaway_pki(tmp_path_factory.mktemp("pki"))


def test_idle_connections_on_the_tls_port_do_not_stall_a_tls_client(start_node, pki):
    tls = tls_peer(scu_peer())
    node = start_node(limits=limits(acse_timeout_s=3, network_timeout_s=120),
                      security=SecurityConfig(tls=TlsConfig(
                          cert=pki.server_cert, key=pki.server_key, handshake_timeout_s=60)))
    baseline = threading.active_count()
    idle = [connect(node.port) for _ in range(3)]
    run = tls.echo(node.port, tls=TlsFiles(ca=pki.ca))
    assert run.returncode == 0, run.output
    for sock in idle:  # each handshake ends by the connection's deadline, not the 60 s
        wait_closed(sock, 3 + GRACE_S)
        sock.close()
    wait_threads(baseline)
