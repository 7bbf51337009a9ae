"""The node's storage SCP against real peers (DCMTK or dcm4che, see tests/peers.py) and a
pynetdicom SCU for what the tools cannot script (raw bytes, exact reject reasons, statuses).

Everything listens on 127.0.0.1 on ephemeral ports.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
import pytest
from peers import TlsFiles, make_throwaway_pki, mr_dataset, scu_peer, tls_peer
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.node import disk
from dicom_node.node.config import (
    LimitsConfig,
    LogConfig,
    NodeConfig,
    SecurityConfig,
    StorageConfig,
    TlsConfig,
)
from dicom_node.node.log import setup_logging
from dicom_node.node.metrics import NodeMetrics
from dicom_node.phantom.study import PhantomOptions, make_phantom
from dicom_node.receive.instance import encoding_problem
from dicom_node.receive.scp import StorageSCP, offered_transfer_syntaxes
from dicom_node.receive.spool import Spool, StoredInstance


class Recorder:
    """A ReceiveListener that remembers what it was told."""

    def __init__(self) -> None:
        self.stored: list[StoredInstance] = []
        self.released: list[tuple[str, set[str]]] = []
        self._lock = threading.Lock()

    def on_instance_stored(self, stored: StoredInstance) -> None:
        assert stored.path.is_file(), "told before the file was durable"
        with self._lock:
            self.stored.append(stored)

    def on_association_released(self, calling_ae: str, study_uids: set[str]) -> None:
        with self._lock:
            self.released.append((calling_ae, study_uids))

    def wait_released(self, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.released) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.released) >= count, "association end never reported"


class Node:
    """A running SCP with its spool, listener and metrics."""

    def __init__(self, root: Path, **changes: object) -> None:
        self.config = replace(NodeConfig(), port=0, data_dir=root / "data", **changes)
        self.spool = Spool(self.config.data_dir / "spool")
        self.listener = Recorder()
        self.metrics = NodeMetrics(self.config.data_dir)
        self.scp = StorageSCP(self.config, self.spool, self.listener, self.metrics)
        self.scp.start()

    @property
    def port(self) -> int:
        return self.scp.port

    def spooled(self) -> list[Path]:
        return sorted(self.spool.root.rglob("*.dcm"))

    def leftovers(self) -> list[Path]:
        return [p for p in self.config.data_dir.rglob("*") if p.name.endswith(".tmp")]

    def quarantined(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.spool.quarantine_dir.glob("*.json"))]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


@pytest.fixture
def start_node(tmp_path):
    nodes: list[Node] = []

    def start(**changes: object) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", **changes)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.scp.stop()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("phantom")
    make_phantom(out, PhantomOptions(stacks=1, slices=6, matrix=32))
    return sorted((out / "dicom").rglob("*.dcm"))


@pytest.fixture(scope="module")
def peer():
    return scu_peer()


def associate(port: int, calling: str = "TESTSCU", called: str = "MYONODE",
              syntaxes: list[str] | None = None, sop_classes: tuple[str, ...] = (MRImageStorage,)
              ) -> pynetdicom.association.Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, syntaxes or [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=called)


def reject_reason(assoc) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    return rsp.result, rsp.result_source, rsp.diagnostic


def store_status(assoc, dataset) -> tuple[int, str]:
    status = assoc.send_c_store(dataset)
    return int(status.Status), str(status.get("ErrorComment", ""))


def part10(sop_instance: str, dataset_bytes: bytes, sop_class: str = MRImageStorage) -> bytes:
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta)
    return buffer.getvalue() + dataset_bytes


# -- C-ECHO and C-STORE with the real peer --------------------------------------------------


def test_echo(start_node, peer):
    node = start_node()
    run = peer.echo(node.port)
    assert run.returncode == 0, run.output
    assert node.metric("myonode_echoes_total") == 1


def test_series_is_spooled_identically_and_durably(start_node, peer, phantom):
    node = start_node()
    run = peer.store(phantom, node.port, calling="SCANNER")
    assert run.returncode == 0, run.output
    assert len(node.spooled()) == len(phantom)
    assert node.leftovers() == []
    study_uids = set()
    for sent_path in phantom:
        sent = pydicom.dcmread(sent_path)
        path = node.spool.path_for(sent.StudyInstanceUID, sent.SeriesInstanceUID,
                                   sent.SOPInstanceUID)
        kept = pydicom.dcmread(path)
        assert kept.SOPInstanceUID == sent.SOPInstanceUID
        assert kept.file_meta.SourceApplicationEntityTitle == "SCANNER"
        assert kept.PixelData == sent.PixelData
        assert kept.ImagePositionPatient == sent.ImagePositionPatient
        study_uids.add(str(sent.StudyInstanceUID))
    assert len(node.listener.stored) == len(phantom)
    assert all(s.new and s.calling_ae == "SCANNER" and s.peer == "127.0.0.1"
               for s in node.listener.stored)
    node.listener.wait_released()
    assert node.listener.released == [("SCANNER", study_uids)]
    assert node.metric("myonode_instances_received_total") == len(phantom)
    assert node.metric("myonode_received_bytes_total") > sum(
        len(pydicom.dcmread(p).PixelData) for p in phantom)


def test_repeated_send_is_idempotent(start_node, peer, phantom):
    node = start_node()
    files = phantom[:4]
    assert peer.store(files, node.port).returncode == 0
    first = {p: p.stat().st_mtime_ns for p in node.spooled()}
    run = peer.store(files, node.port)
    assert run.returncode == 0, run.output
    assert {p: p.stat().st_mtime_ns for p in node.spooled()} == first
    assert [s.new for s in node.listener.stored] == [True] * 4 + [False] * 4
    assert node.metric("myonode_instances_duplicate_total") == 4
    assert node.leftovers() == []


@pytest.mark.parametrize("syntax", [JPEGLSLossless, RLELossless, DeflatedExplicitVRLittleEndian])
def test_compressed_transfer_syntax_is_stored_and_decodes(start_node, peer, phantom, tmp_path,
                                                          syntax):
    node = start_node()
    original = pydicom.dcmread(phantom[0])
    pixels = original.pixel_array.copy()
    if syntax == DeflatedExplicitVRLittleEndian:
        original.file_meta.TransferSyntaxUID = syntax
    else:
        original.compress(syntax)
    sent = tmp_path / "compressed.dcm"
    original.save_as(sent, enforce_file_format=True)
    run = peer.store([sent], node.port, syntax=syntax)
    assert run.returncode == 0, run.output
    (path,) = node.spooled()
    kept = pydicom.dcmread(path)
    assert kept.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(kept.pixel_array, pixels)


def test_jpeg_lossless_from_dcmtk_is_stored_and_decodes(start_node, peer, phantom, tmp_path):
    if not offered_transfer_syntaxes((JPEGLosslessSV1,)):
        pytest.skip("no JPEG Lossless decoder installed (python-gdcm)")
    encoder = shutil.which("dcmcjpeg")
    if encoder is None:
        pytest.skip("DCMTK's dcmcjpeg is needed to make a JPEG Lossless file")
    sent = tmp_path / "jpeg-lossless.dcm"
    subprocess.run([encoder, "+e1", str(phantom[0]), str(sent)], check=True,
                   capture_output=True, timeout=60)  # +e1: lossless, selection value 1
    assert pydicom.dcmread(sent).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    node = start_node()
    run = peer.store([sent], node.port, syntax=JPEGLosslessSV1)
    assert run.returncode == 0, run.output
    (path,) = node.spooled()
    kept = pydicom.dcmread(path)
    assert kept.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    np.testing.assert_array_equal(kept.pixel_array, pydicom.dcmread(phantom[0]).pixel_array)


# -- association admission -------------------------------------------------------------------


def test_unknown_calling_ae_is_rejected(start_node, peer, phantom):
    node = start_node(security=SecurityConfig(allowed_calling_aets=("SCANNER",)))
    run = peer.store(phantom[:1], node.port, calling="INTRUDER")
    assert run.rejected and run.returncode != 0, run.output
    assert node.spooled() == []
    # PS3.8 Table 9-21: rejected-permanent, service-user, calling-AE-title-not-recognized
    assert reject_reason(associate(node.port, calling="INTRUDER")) == (1, 1, 3)
    assert peer.echo(node.port, calling="SCANNER").returncode == 0
    assert node.metric("myonode_association_rejections_total",
                       reason="calling_ae_not_recognised") == 2


def test_wrong_called_ae_is_rejected(start_node, peer):
    node = start_node()
    run = peer.echo(node.port, called="SOMEONE")
    assert run.rejected and run.returncode != 0, run.output
    assert reject_reason(associate(node.port, called="SOMEONE")) == (1, 1, 7)


def test_source_address_outside_allowed_networks_is_rejected(start_node, peer):
    node = start_node(security=SecurityConfig(allowed_addresses=("10.0.0.0/8", "::1/128")))
    run = peer.echo(node.port)
    assert run.rejected and run.returncode != 0, run.output
    assert reject_reason(associate(node.port)) == (1, 1, 1)
    allowed = start_node(security=SecurityConfig(allowed_addresses=("127.0.0.0/8",)))
    assert peer.echo(allowed.port).returncode == 0


def test_associations_beyond_the_limit_are_rejected_transiently(start_node, peer):
    node = start_node(limits=LimitsConfig(max_associations=1))
    holder = associate(node.port)
    assert holder.is_established
    run = peer.echo(node.port)
    assert run.rejected and run.returncode != 0, run.output
    # rejected-transient, service-provider (presentation), local-limit-exceeded
    assert reject_reason(associate(node.port)) == (2, 3, 2)
    holder.release()
    deadline = time.monotonic() + 5
    while node.metric("myonode_active_associations") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert peer.echo(node.port).returncode == 0


def test_rejections_are_logged_as_json_lines(start_node):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    try:
        setup_logging(LogConfig(level="INFO"), stream=stream)
        node = start_node(security=SecurityConfig(allowed_calling_aets=("SCANNER",)))
        associate(node.port, calling="INTRUDER")
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    rejected = [e for e in events if e["event"] == "association.rejected"]
    assert len(rejected) == 1
    assert rejected[0]["reason"] == "calling_ae_not_recognised"
    assert rejected[0]["calling_ae"] == "INTRUDER" and rejected[0]["diagnostic"] == 3
    assert rejected[0]["level"] == "warning"
    assert any(e["event"] == "scp.started" for e in events)


# -- malformed input --------------------------------------------------------------------------


def test_garbage_and_truncated_datasets_are_refused_quarantined_and_the_node_goes_on(
        start_node, peer, phantom, tmp_path, monkeypatch):
    node = start_node()
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(part10(generate_uid(), np.random.default_rng(5).bytes(3000)))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(phantom[0].read_bytes()[:-100])

    assoc = associate(node.port)
    garbage_status, garbage_comment = store_status(assoc, garbage)
    truncated_status, truncated_comment = store_status(assoc, truncated)
    assert garbage_status == 0xC000 and "cannot decode" in garbage_comment
    assert truncated_status == 0xC000 and "(7FE0,0010)" in truncated_comment
    assert assoc.is_established
    assert store_status(assoc, phantom[1])[0] == 0x0000  # the same association goes on
    assoc.release()

    notes = node.quarantined()
    assert len(notes) == 2
    assert {n["peer"] for n in notes} == {"127.0.0.1"}
    assert all(n["reason"].startswith("cannot decode dataset") for n in notes)
    for note in notes:
        kept = node.spool.quarantine_dir / note["file"]
        assert kept.stat().st_size == note["bytes"]
    assert node.metric("myonode_instances_quarantined_total") == 2
    assert node.metric("myonode_instances_rejected_total", reason="cannot_understand") == 2
    assert len(node.spooled()) == 1
    assert peer.store(phantom[2:3], node.port).returncode == 0  # and so does the next one
    assert len(node.spooled()) == 2


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_datasets_that_do_not_match_their_sop_class_get_0xA900(start_node):
    node = start_node()
    short_pixels = mr_dataset(rows=8, columns=8)
    short_pixels.Rows = 16  # Pixel Data now holds half the image
    no_study = mr_dataset()
    del no_study.StudyInstanceUID
    bad_uid = mr_dataset()
    bad_uid.SeriesInstanceUID = "1.2.3/../../etc"
    no_pixels = mr_dataset()
    del no_pixels.PixelData
    assoc = associate(node.port)
    results = [store_status(assoc, ds) for ds in (short_pixels, no_study, bad_uid, no_pixels)]
    assoc.release()
    assert [status for status, _ in results] == [0xA900] * 4
    assert "Pixel Data 128 bytes, image needs 256" in results[0][1]
    assert "StudyInstanceUID missing" in results[1][1]
    assert "SeriesInstanceUID is not a valid UID" in results[2][1]
    assert "Pixel Data missing" in results[3][1]
    assert node.spooled() == []
    assert len(node.quarantined()) == 4


def test_encoding_check_finds_cut_elements_and_unclosed_sequences():
    ds = mr_dataset()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, ds)
    whole = buffer.getvalue()
    assert encoding_problem(whole, False, True) is None
    assert "needs 128 bytes" in encoding_problem(whole[:-10], False, True)
    assert "header cut off" in encoding_problem(whole + b"\x08\x00", False, True)
    # an undefined-length sequence without its delimiter
    sequence_start = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"  # (0008,1115) SQ, undefined
    open_sequence = sequence_start + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # one empty item
    assert "not closed" in encoding_problem(open_sequence, False, True)
    closed = open_sequence + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert encoding_problem(closed, False, True) is None


def test_an_instance_the_node_cannot_record_fails_and_its_resend_succeeds(start_node):
    node = start_node()
    calls = []

    def flaky(stored: StoredInstance) -> None:
        calls.append(stored.new)
        if len(calls) == 1:
            raise RuntimeError("state database is locked")

    node.listener.on_instance_stored = flaky
    ds = mr_dataset()
    assoc = associate(node.port)
    first, comment = store_status(assoc, ds)
    unrecorded = node.spooled()
    second, _ = store_status(assoc, ds)
    assoc.release()
    assert (first, second) == (0x0110, 0x0000) and "send it again" in comment
    assert unrecorded == []  # what the node could not record it does not keep
    assert calls == [True, True]  # so the resend is stored and recorded as new
    assert len(node.spooled()) == 1


def test_the_configured_maximum_pdu_is_advertised(start_node):
    node = start_node(limits=LimitsConfig(max_pdu=65536))
    assoc = associate(node.port)
    assert assoc.acceptor.maximum_length == 65536
    assoc.release()


# -- resources ------------------------------------------------------------------------------


def test_below_the_disk_watermark_store_is_out_of_resources_and_nothing_is_written(
        start_node, peer, phantom, monkeypatch):
    node = start_node(limits=LimitsConfig(min_free_disk_mb=1024))
    monkeypatch.setattr(disk, "free_bytes", lambda path: 1000 * 1024 * 1024)
    peer.store(phantom[:1], node.port)
    assoc = associate(node.port)
    status, comment = store_status(assoc, pydicom.dcmread(phantom[0]))
    assoc.release()
    assert status == 0xA700 and "watermark" in comment
    assert node.spooled() == [] and node.leftovers() == []
    assert node.listener.stored == []
    assert node.metric("myonode_instances_rejected_total", reason="out_of_resources") == 2
    monkeypatch.undo()
    assert peer.store(phantom[:2], node.port).returncode == 0
    assert len(node.spooled()) == 2


# -- SOP class policy ---------------------------------------------------------------------------


def test_other_sop_classes_are_accepted_and_ignored_or_rejected_per_config(start_node):
    capture = mr_dataset()
    capture.SOPClassUID = SecondaryCaptureImageStorage
    capture.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage

    ignoring = start_node()
    assoc = associate(ignoring.port, sop_classes=(MRImageStorage, SecondaryCaptureImageStorage))
    assert store_status(assoc, capture)[0] == 0x0000
    assoc.release()
    assert ignoring.spooled() == []
    assert ignoring.metric("myonode_instances_ignored_total") == 1

    rejecting = start_node(storage=StorageConfig(other_sop_classes="reject"))
    assoc = associate(rejecting.port, sop_classes=(MRImageStorage, SecondaryCaptureImageStorage))
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assoc.release()
    assert MRImageStorage in accepted and SecondaryCaptureImageStorage not in accepted


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_throwaway_pki(tmp_path_factory.mktemp("pki"))


def test_tls_with_client_certificate_and_refusal_without(start_node, peer, phantom, pki):
    tls = tls_peer(peer)
    node = start_node(security=SecurityConfig(tls=TlsConfig(
        cert=pki.server_cert, key=pki.server_key, ca=pki.ca, require_client_cert=True)))
    client = TlsFiles(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    assert tls.echo(node.port, tls=client).returncode == 0
    run = tls.store(phantom[:2], node.port, tls=client)
    assert run.returncode == 0, run.output
    assert len(node.spooled()) == 2
    anonymous = tls.store(phantom[2:3], node.port, tls=TlsFiles(ca=pki.ca))
    assert anonymous.returncode != 0
    plain = tls.echo(node.port)
    assert plain.returncode != 0
    assert len(node.spooled()) == 2
