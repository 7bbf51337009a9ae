"""Faults of a real node (``serve`` in a subprocess) between a scanner and a PACS stand-in
that keeps every copy it receives: kill -9 while receiving and while processing, the PACS
down then up, an unknown calling AE, garbage and truncated datasets, a full disk."""

import signal
import time
from pathlib import Path

import pynetdicom
import pytest
from node_helpers import (
    NodeProcess,
    Receiver,
    free_port,
    wait_for,
)
from peers import scu_peer
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset

from dicom_node.node import disk

RESULTS_PER_STUDY = 3  # two SEGs (one per stack) and one SR


@pytest.fixture()
def pacs(tmp_path):
    receiver = Receiver(tmp_path / "pacs", free_port())
    yield receiver
    receiver.stop()


@pytest.fixture()
def node_for(tmp_path, tiny_pipeline, pacs):
    """Makes the test's node (delivering to ``pacs``); stops it whatever the outcome."""
    made = []

    def make(**sections) -> NodeProcess:
        node = NodeProcess(tmp_path / "node", tiny_pipeline, destinations=[
            {"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1",
             "port": pacs.port}], **sections)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


def assert_delivered_once(pacs: Receiver, node: NodeProcess) -> None:
    def settled() -> bool:
        # every delivery acknowledged by the PACS: nothing is left that could arrive twice
        open_ = node.query("SELECT COUNT(*) n FROM deliveries WHERE state != 'sent'")[0]["n"]
        return open_ == 0 and len(pacs.files()) >= RESULTS_PER_STUDY

    wait_for(settled, 60, "every result delivered to the PACS")
    uids = pacs.sop_instance_uids()
    assert len(uids) == RESULTS_PER_STUDY and len(set(uids)) == RESULTS_PER_STUDY, uids
    sent = node.query("SELECT COUNT(*) n FROM deliveries WHERE state = 'sent'")[0]["n"]
    assert sent == RESULTS_PER_STUDY


def spool_files(node: NodeProcess) -> list[Path]:
    return sorted((node.data_dir / "spool").rglob("*.dcm"))


def test_kill_9_while_receiving_then_the_sender_repeats(node_for, pacs, small_study):
    quiet_s = 10
    pacs.start()
    node = node_for(completion={"quiet_period_s": quiet_s, "max_wait_s": 600}).start()
    half = small_study[: len(small_study) // 2]
    scanner = AE(ae_title="SCANNER")
    scanner.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = scanner.associate("127.0.0.1", node.port, ae_title="MYONODE")
    assert assoc.is_established
    try:
        assert [int(assoc.send_c_store(path).Status) for path in half] == [0] * len(half)
        node.kill(signal.SIGKILL)  # mid-study, the association still open
    finally:
        assoc.abort()
    [last] = node.query("SELECT MAX(received_at) t, COUNT(*) n FROM instances")
    assert last["n"] == len(half)  # each Success was recorded before it was sent
    # down for longer than the quiet period: the downtime must not count as quiet time
    wait_for(lambda: time.time() - last["t"] > quiet_s + 1, quiet_s + 30, "the quiet period")
    node.start()
    assert not list((node.data_dir / "spool").rglob(".*.tmp"))
    run = scu_peer().store(small_study, node.port, calling="SCANNER")  # the scanner repeats
    assert run.returncode == 0, run.output
    [job] = node.wait_jobs({"done", "failed"})
    assert job["state"] == "done" and job["input_count"] == len(small_study), dict(job)
    assert job["trigger"] == "complete"
    assert len(node.jobs()) == 1  # repeats of stored instances open no new version
    # done: nothing is sent any more, so what the PACS holds now is all it gets
    wait_for(lambda: len(pacs.files()) >= RESULTS_PER_STUDY, 30, "the results at the PACS")
    uids = pacs.sop_instance_uids()
    assert len(uids) == RESULTS_PER_STUDY and len(set(uids)) == RESULTS_PER_STUDY, uids
    sent = node.query("SELECT COUNT(*) n FROM deliveries WHERE state = 'sent'")[0]["n"]
    assert sent == RESULTS_PER_STUDY


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_9_while_processing_then_restart(node_for, pacs, small_study):
    pacs.start()
    node = node_for().start()
    assert scu_peer().store(small_study, node.port, calling="SCANNER").returncode == 0
    node.wait_jobs({"processing"}, timeout_s=60)
    children = wait_for(node.children, 30, "the job's child process", interval_s=0.05)
    node.kill(signal.SIGKILL)
    # the pipeline child dies with the node (no orphan writing results)
    wait_for(lambda: not any(running(pid) for pid in children), 5, "the child to end")
    assert node.jobs()[0]["state"] == "processing"
    assert not pacs.files()
    node.start()
    [job] = node.wait_jobs({"done", "failed"})
    assert job["state"] == "done" and job["attempts"] == 2, dict(job)
    assert node.events("jobs.resumed")
    # the killed attempt never finished: no orphan went on to write its results
    attempts = node.data_dir / "jobs" / f"job-{job['id']}"
    assert not (attempts / "attempt-1" / "manifest.json").exists()
    assert (attempts / "attempt-2" / "manifest.json").exists()
    assert_delivered_once(pacs, node)


def test_pacs_down_then_up(node_for, pacs, small_study):
    node = node_for().start()  # the PACS is not running yet
    assert scu_peer().store(small_study, node.port, calling="SCANNER").returncode == 0
    node.wait_jobs({"sending"})
    wait_for(lambda: node.query("SELECT MIN(attempts) a FROM deliveries")[0]["a"], 60,
             "failed delivery attempts")
    pending = node.query("SELECT state, last_error FROM deliveries")
    assert {r["state"] for r in pending} == {"pending"}
    assert "Connection refused" in pending[0]["last_error"], pending[0]["last_error"]
    status = node.cli("status")
    assert "pending" in status.stdout and "sending" in status.stdout
    pacs.start()
    [job] = node.wait_jobs({"done", "failed"})
    assert job["state"] == "done", dict(job)
    assert_delivered_once(pacs, node)


def test_an_unknown_calling_ae_is_rejected(node_for, pacs, small_study):
    node = node_for(
        security={"allowed_calling_aets": ["SCANNER"]}).start()
    peer = scu_peer()
    intruder = peer.store(small_study[:4], node.port, calling="INTRUDER")
    assert intruder.returncode != 0 and intruder.rejected, intruder.output
    assert not spool_files(node)
    [rejection] = node.events("association.rejected")
    assert rejection["reason"] == "calling_ae_not_recognised" and rejection["diagnostic"] == 3
    echo = peer.echo(node.port, calling="SCANNER")
    assert echo.returncode == 0, echo.output


def raw_file(path: Path, dataset_bytes: bytes, sop_instance: str) -> Path:
    """A Part 10 file whose dataset is ``dataset_bytes`` as they are (sent unparsed)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as handle:
        handle.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(handle, meta, enforce_standard=True)
        handle.write(dataset_bytes)
    return path


def c_store_statuses(port: int, files: list[Path]) -> list[int]:
    """C-STORE statuses of ``files``, each sent as the bytes it holds, never re-encoded
    (pynetdicom streams the dataset from the file in chunked mode)."""
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MYONODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()


def test_garbage_and_truncated_datasets_fail_and_the_node_still_serves(
        tmp_path, node_for, pacs, small_study, monkeypatch):
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    pacs.start()
    # a long quiet period: the single good instance waits for the rest of its study
    node = node_for(completion={"quiet_period_s": 100, "max_wait_s": 200}).start()
    good = small_study[0]
    garbage = raw_file(tmp_path / "garbage.dcm", bytes(range(256)) * 40, generate_uid())
    meta, offset = split_dataset(good)
    dataset = good.read_bytes()[offset:]
    truncated = raw_file(tmp_path / "truncated.dcm", dataset[: len(dataset) * 6 // 10],
                         str(meta.MediaStorageSOPInstanceUID))
    statuses = c_store_statuses(node.port, [garbage, truncated, good])
    assert statuses[0] == 0xC000 and statuses[1] in (0xC000, 0xA900) and statuses[2] == 0
    quarantined = sorted((node.data_dir / "quarantine").glob("*.json"))
    assert len(quarantined) == 2
    assert [p.name for p in spool_files(node)] == [f"{meta.MediaStorageSOPInstanceUID}.dcm"]
    # the association went on, and the node serves the whole study afterwards
    assert scu_peer().store(small_study, node.port, calling="SCANNER").returncode == 0
    [job] = node.wait_jobs({"done", "failed"})
    assert job["state"] == "done", dict(job)
    assert_delivered_once(pacs, node)


def test_disk_below_the_watermark_is_out_of_resources(tmp_path, node_for, small_study):
    free_mb = disk.free_bytes(tmp_path) // 2**20
    node = node_for(
        limits={"min_free_disk_mb": free_mb + 100_000}).start()
    statuses = c_store_statuses(node.port, small_study[:3])
    assert statuses == [0xA700] * 3
    run = scu_peer().store(small_study[:3], node.port, calling="SCANNER")
    assert run.returncode != 0 or "a700" in run.output.lower() or "resources" in \
        run.output.lower(), run.output
    assert not list((node.data_dir / "spool").rglob("*"))  # nothing, not even a temp file
    assert node.query("SELECT COUNT(*) n FROM instances")[0]["n"] == 0
    assert scu_peer().echo(node.port, calling="SCANNER").returncode == 0
