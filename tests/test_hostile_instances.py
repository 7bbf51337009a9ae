"""Instances that a hostile or broken sender sends: decompression bombs, SOP classes that
disagree, a SOP Instance UID reused in another study, a command UID longer than 64
characters, empty Pixel Data.

The node runs in this process (the storage SCP on 127.0.0.1 with its spool and a real state
database behind the node's own listener); pynetdicom is the sender, driven below its
``send_c_store`` where a conformant SCU would refuse to send what is sent here. Each case
asserts the failure status and its reason, the quarantine note, that the same association
then stores a good instance, and that the spool and the state database agree.
"""

from __future__ import annotations

import itertools
import json
import struct
import time
import tracemalloc
import zlib
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pytest
from peers import mr_dataset
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicom_node.node.config import LimitsConfig, NodeConfig, load_node_config
from dicom_node.node.metrics import NodeMetrics
from dicom_node.node.state import State
from dicom_node.receive.scp import StorageSCP
from dicom_node.receive.spool import Spool
from dicom_node.serve.completion import CompletionMonitor
from dicom_node.serve.service import NodeListener
from dicom_node.study.dixon_roles import DixonRules

MB = 1024 * 1024
_MESSAGE_IDS = itertools.count(1)


class HostileNode:
    """The SCP with its spool and the state database it records into, as ``serve`` wires it."""

    def __init__(self, root: Path, **limits: int) -> None:
        self.config = replace(NodeConfig(), port=0, data_dir=root / "data",
                              limits=replace(LimitsConfig(min_free_disk_mb=1), **limits))
        self.spool = Spool(self.config.data_dir / "spool")
        self.state = State.in_data_dir(self.config.data_dir)
        listener = NodeListener(self.state, CompletionMonitor(self.state, DixonRules.load()))
        self.scp = StorageSCP(self.config, self.spool, listener,
                              NodeMetrics(self.config.data_dir))
        self.scp.start()

    def stop(self) -> None:
        self.scp.stop()
        self.state.close()

    def spooled(self) -> set[str]:
        return {str(p) for p in self.spool.root.rglob("*.dcm")}

    def recorded(self) -> set[str]:
        return {row[0] for row in self.state._read("SELECT path FROM instances")}

    def studies(self) -> set[str]:
        return {s["study_uid"] for s in self.state.studies()}

    def quarantined(self) -> list[dict]:
        return [json.loads(p.read_text())
                for p in sorted(self.spool.quarantine_dir.glob("*.json"))]

    def assert_spool_and_state_agree(self) -> None:
        assert self.spooled() == self.recorded()


@pytest.fixture
def start_node(tmp_path):
    nodes: list[HostileNode] = []

    def start(**limits: int) -> HostileNode:
        node = HostileNode(tmp_path / f"node{len(nodes)}", **limits)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def associate(node: HostileNode, *contexts: tuple[str, str]):
    ae = AE(ae_title="HOSTILE")
    ae.dimse_timeout = 30
    for sop_class, syntax in contexts or ((MRImageStorage, ExplicitVRLittleEndian),):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MYONODE")
    assert assoc.is_established
    return assoc


def send_store(assoc, dataset: bytes, sop_class: str, sop_instance: str,
               context_class: str = MRImageStorage,
               syntax: str = ExplicitVRLittleEndian) -> tuple[int, str]:
    """One C-STORE-RQ as a broken sender builds it: any command values, on the presentation
    context of ``context_class``, with ``dataset`` sent as it is."""
    context = next(cx for cx in assoc.accepted_contexts
                   if cx.abstract_syntax == context_class and cx.transfer_syntax[0] == syntax)
    request = C_STORE()
    request.MessageID = next(_MESSAGE_IDS)
    request.Priority = 2
    request.AffectedSOPClassUID = sop_class
    # pynetdicom's setter refuses a UID longer than 64 characters; this sender does not ask.
    request._affected_sop_instance_uid = UID(sop_instance)
    request.DataSet = BytesIO(dataset)
    # As Association.send_c_store does: hold the reactor while waiting for the response.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None, "no C-STORE response (the association was aborted?)"
    return int(response.Status), str(response.ErrorComment or "")


def explicit(ds: Dataset) -> bytes:
    return encode(ds, False, True)


def assert_good_instance_still_stored(node: HostileNode, assoc) -> None:
    """The association that carried the bad instance goes on: a good one is stored."""
    assert assoc.is_established
    good = mr_dataset()
    assert send_store(assoc, explicit(good), MRImageStorage, good.SOPInstanceUID) == (0, "")
    assert any(p.endswith(f"{good.SOPInstanceUID}.dcm") for p in node.recorded())
    node.assert_spool_and_state_agree()


def the_quarantine_note(node: HostileNode, reason: str) -> dict:
    (note,) = node.quarantined()
    assert reason in note["reason"]
    assert note["calling_ae"] == "HOSTILE" and note["peer"] == "127.0.0.1"
    assert (node.spool.quarantine_dir / note["file"]).stat().st_size == note["bytes"]
    return note


def peak_memory_while(action) -> tuple[object, int]:
    """``action()``'s result and the most memory Python code in this process (the node's
    threads included) held above what it held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = action()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak - before


# -- decompression bombs -----------------------------------------------------------------------


def rle_image(rows: int, columns: int, segment: bytes) -> Dataset:
    """An 8-bit RLE Lossless MR image whose one frame is ``segment`` (PS3.5 Annex G)."""
    header = struct.pack("<16L", 1, 64, *([0] * 14))
    ds = mr_dataset()
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([header + segment])
    ds["PixelData"].VR = "OB"
    return ds


def test_an_rle_frame_declaring_more_than_its_bytes_can_hold_is_refused_undecoded(
        start_node):
    node = start_node()
    # 1.7 KB of replicate runs (each: 128 zero bytes) declaring 16384 x 16384 (256 MiB).
    bomb = rle_image(16384, 16384, b"\x81\x00" * 850)
    encoded = encode(bomb, False, True)
    assert len(encoded) < 3000
    assoc = associate(node, (MRImageStorage, RLELossless))
    (status, comment), grown = peak_memory_while(
        lambda: send_store(assoc, encoded, MRImageStorage, bomb.SOPInstanceUID,
                           syntax=RLELossless))
    assert status == 0xA900 and "RLE data can hold" in comment
    assert grown < 32 * MB, f"the node's memory grew by {grown / MB:.0f} MiB"
    note = the_quarantine_note(node, "RLE data can hold")
    assert note["sop_instance"] == bomb.SOPInstanceUID
    assert node.recorded() == set()
    assoc.release()
    assoc = associate(node)
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


def test_an_rle_image_decoding_past_the_cap_is_refused_out_of_resources(start_node):
    node = start_node(max_decoded_mb=1)
    # A valid all-zero 1024 x 1536 image (1.5 MiB decoded): 12 runs of 128 bytes a row.
    image = rle_image(1024, 1536, b"\x81\x00" * 12 * 1024)
    assoc = associate(node, (MRImageStorage, RLELossless), (MRImageStorage,
                                                            ExplicitVRLittleEndian))
    status, comment = send_store(assoc, encode(image, False, True), MRImageStorage,
                                 image.SOPInstanceUID, syntax=RLELossless)
    assert status == 0xA700 and "max_decoded_mb" in comment
    the_quarantine_note(node, "over limits.max_decoded_mb (1 MiB)")
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


def deflated_bomb(rows: int, columns: int) -> tuple[Dataset, bytes]:
    """A Deflated Explicit VR Little Endian MR dataset with rows x columns 16-bit zeros,
    compressed chunk by chunk (the test never holds the inflated bytes)."""
    ds = mr_dataset()
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    size = rows * columns * 2
    head = encode(ds, False, True) + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<L", size)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head)]
    zeros = bytes(4 * MB)
    for _ in range(size // len(zeros)):
        parts.append(deflater.compress(zeros))
    parts.append(deflater.flush())
    return ds, b"".join(parts)


def test_a_deflated_dataset_inflating_past_the_cap_is_refused_with_bounded_memory(
        start_node):
    node = start_node(max_decoded_mb=16)
    ds, deflated = deflated_bomb(8192, 16384)  # 256 MiB of pixels
    assert len(deflated) < 512 * 1024
    assoc = associate(node, (MRImageStorage, DeflatedExplicitVRLittleEndian),
                      (MRImageStorage, ExplicitVRLittleEndian))
    (status, comment), grown = peak_memory_while(
        lambda: send_store(assoc, deflated, MRImageStorage, ds.SOPInstanceUID,
                           syntax=DeflatedExplicitVRLittleEndian))
    assert status == 0xA700 and "inflates past" in comment
    assert grown < 64 * MB, f"the node's memory grew by {grown / MB:.0f} MiB"
    note = the_quarantine_note(node, "inflates past limits.max_decoded_mb (16 MiB)")
    assert note["bytes"] < len(deflated) + 1024  # the bytes as sent, not inflated
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


# -- SOP class agreement -----------------------------------------------------------------------


@pytest.mark.parametrize(("context_class", "command_class", "reason"), [
    (MRImageStorage, CTImageStorage, "SOP class differs from the presentation context"),
    (MRImageStorage, "1.2.3.4.5", "SOP class differs from the presentation context"),
    (CTImageStorage, CTImageStorage, "SOPClassUID differs from the request's"),
], ids=["context-MR-command-CT", "context-MR-command-unknown", "context-CT-command-CT"])
def test_sop_classes_that_disagree_fail_and_nothing_is_acknowledged_unkept(
        start_node, context_class, command_class, reason):
    node = start_node()
    ds = mr_dataset()  # the dataset says MR Image Storage
    assoc = associate(node, (MRImageStorage, ExplicitVRLittleEndian),
                      (CTImageStorage, ExplicitVRLittleEndian))
    status, comment = send_store(assoc, explicit(ds), command_class, ds.SOPInstanceUID,
                                 context_class=context_class)
    assert status == 0xA900 and reason in comment
    note = the_quarantine_note(node, reason)
    assert note["sop_instance"] == ds.SOPInstanceUID
    assert node.recorded() == set()
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


# -- one SOP Instance UID, two places ------------------------------------------------------------


@pytest.mark.parametrize("where", ["another study", "another series"])
def test_a_sop_instance_uid_already_stored_elsewhere_is_refused_and_quarantined(
        start_node, where):
    node = start_node()
    first = mr_dataset()
    second = mr_dataset(study_uid=first.StudyInstanceUID if where == "another series"
                        else None)
    second.SOPInstanceUID = first.SOPInstanceUID
    assoc = associate(node)
    assert send_store(assoc, explicit(first), MRImageStorage, first.SOPInstanceUID) == (0, "")
    status, comment = send_store(assoc, explicit(second), MRImageStorage,
                                 second.SOPInstanceUID)
    assert status == 0xA900 and f"SOP Instance UID already stored in {where}" in comment
    note = the_quarantine_note(node, f"SOP Instance UID already stored in {where}")
    assert note["stored_study"] == first.StudyInstanceUID
    assert note["stored_series"] == first.SeriesInstanceUID
    assert node.studies() == {first.StudyInstanceUID}
    (path,) = node.recorded()
    assert first.SeriesInstanceUID in path
    node.assert_spool_and_state_agree()
    # A plain repeat of the first is still a repeat: Success, nothing new.
    assert send_store(assoc, explicit(first), MRImageStorage, first.SOPInstanceUID) == (0, "")
    assert len(node.recorded()) == 1
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


# -- malformed commands and pixel data -----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The value length")  # the sender encoding the long UID
def test_a_command_sop_instance_uid_longer_than_64_characters_fails_that_instance_only(
        start_node):
    node = start_node()
    long_uid = "1.2.826.0.1.3680043.8.498." + "1" * 50
    assert len(long_uid) > 64
    ds = mr_dataset()
    assoc = associate(node)
    status, comment = send_store(assoc, explicit(ds), MRImageStorage, long_uid)
    assert status == 0x0117
    assert "Affected SOP Instance UID longer than 64 characters" in comment
    note = the_quarantine_note(node, "Affected SOP Instance UID longer than 64 characters")
    assert note["command"]["AffectedSOPInstanceUID"] == note["sop_instance"] == long_uid
    assert node.recorded() == set()
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


def test_empty_pixel_data_fails_with_a_readable_reason(start_node):
    node = start_node()
    ds = mr_dataset()
    ds.PixelData = b""
    assoc = associate(node)
    status, comment = send_store(assoc, explicit(ds), MRImageStorage, ds.SOPInstanceUID)
    assert (status, comment) == (0xA900, "Pixel Data empty")
    the_quarantine_note(node, "Pixel Data empty")
    assert_good_instance_still_stored(node, assoc)
    assoc.release()


def test_an_unrecorded_instance_leaves_no_spool_file_behind(start_node):
    node = start_node()
    ds = mr_dataset()
    node.state.close()  # the state database fails (closed under the node)
    assoc = associate(node)
    status, comment = send_store(assoc, explicit(ds), MRImageStorage, ds.SOPInstanceUID)
    assoc.release()
    assert status == 0x0110 and "send it again" in comment
    assert node.spooled() == set()  # nothing in the spool that the state does not know


def test_the_decoded_size_cap_is_a_setting(tmp_path):
    assert load_node_config().limits.max_decoded_mb == 256
    site = tmp_path / "node.yaml"
    site.write_text("limits: {max_decoded_mb: 1024}\n", encoding="utf-8")
    assert load_node_config(site).limits.max_decoded_mb == 1024
    site.write_text("limits: {max_decoded_mb: 0}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="limits.max_decoded_mb: must be >= 1"):
        load_node_config(site)
