"""The spool keeps every instance durably, once, under its UIDs, and quarantines with a note."""

from __future__ import annotations

import json
import os
import stat
import threading
from io import BytesIO

import pydicom
import pytest
from peers import mr_dataset

from dicom_node.receive import spool as spool_module
from dicom_node.receive.spool import Spool


@pytest.fixture
def spool(tmp_path) -> Spool:
    return Spool(tmp_path / "data" / "spool")


def files_under(spool: Spool) -> list[str]:
    return sorted(str(p.relative_to(spool.root.parent)) for p in spool.root.parent.rglob("*")
                  if p.is_file())


def test_store_writes_the_layout_and_reads_back(spool):
    ds = mr_dataset()
    stored = spool.store(ds, ds.file_meta, "SCANNER", "10.0.0.7")
    assert stored.new and stored.calling_ae == "SCANNER" and stored.peer == "10.0.0.7"
    assert stored.path == spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / (
        ds.SOPInstanceUID + ".dcm")
    assert (stored.study_uid, stored.series_uid, stored.sop_instance_uid, stored.sop_class_uid) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
    kept = pydicom.dcmread(stored.path)
    assert kept.PixelData == ds.PixelData
    assert kept.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert files_under(spool) == [str(stored.path.relative_to(spool.root.parent))]


def test_encoded_bytes_are_kept_verbatim_and_a_repeat_is_not_written_again(spool):
    ds = mr_dataset()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    encoded = buffer.getvalue()
    first = spool.store(ds, ds.file_meta, "A", "127.0.0.1", encoded=encoded)
    assert first.path.read_bytes() == encoded
    before = first.path.stat().st_mtime_ns
    again = spool.store(ds, ds.file_meta, "B", "127.0.0.2", encoded=b"different bytes")
    assert not again.new and again.path == first.path and again.calling_ae == "B"
    assert first.path.read_bytes() == encoded and first.path.stat().st_mtime_ns == before


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uids_that_are_not_uids_never_become_paths(spool):
    ds = mr_dataset()
    ds.SeriesInstanceUID = "../../escape"
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        spool.store(ds, ds.file_meta, "A", "127.0.0.1")
    assert files_under(spool) == []


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(spool, monkeypatch):
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the instance file, not its folders
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(spool_module.os, "fsync", disk_full)
    ds = mr_dataset()
    with pytest.raises(OSError):
        spool.store(ds, ds.file_meta, "A", "127.0.0.1")
    assert [p for p in spool.root.rglob("*") if p.is_file()] == []
    assert (spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID).is_dir()  # got that far


def test_concurrent_deliveries_of_one_instance_yield_exactly_one_new(spool):
    ds = mr_dataset()
    results = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        barrier.wait()
        results.append(spool.store(ds, ds.file_meta, "A", "127.0.0.1"))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.new for r in results) == [False] * 5 + [True]
    assert len(files_under(spool)) == 1


def test_quarantine_keeps_bytes_and_a_note(spool):
    path = spool.quarantine(b"not dicom at all", "cannot decode dataset: junk", "PACS",
                            "10.1.2.3", details={"sop_instance": "1.2.3"})
    assert path.parent == spool.quarantine_dir
    assert path.read_bytes() == b"not dicom at all"
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["reason"] == "cannot decode dataset: junk"
    assert (note["calling_ae"], note["peer"], note["sop_instance"]) == ("PACS", "10.1.2.3", "1.2.3")
    assert note["bytes"] == 16 and note["file"] == path.name and note["time"].endswith("+00:00")


def test_quarantine_of_a_dataset_without_uids_still_writes_it(spool):
    ds = mr_dataset()
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    path = spool.quarantine(ds, "SOPInstanceUID missing", "A", "127.0.0.1")
    assert pydicom.dcmread(path).PixelData == ds.PixelData


def test_partial_files_from_a_crash_are_removed_and_nothing_else(spool):
    ds = mr_dataset()
    kept = spool.store(ds, ds.file_meta, "A", "127.0.0.1").path
    crash = kept.parent / f".{kept.name}.1234abcd.tmp"
    crash.write_bytes(b"half an instance")
    note_crash = spool.quarantine_dir / ".x.json.0000.tmp"
    note_crash.write_bytes(b"{")
    assert spool.remove_partial_files() == 2
    assert kept.is_file() and not crash.exists() and not note_crash.exists()
    assert os.listdir(kept.parent) == [kept.name]
