"""The spool: every accepted instance, durable on disk before its C-STORE is acknowledged.

A sender deletes or forgets what it was told is stored, so an instance must survive a crash
or power loss the moment Success goes back. Each file is written to a temporary name in its
final folder, flushed and fsynced, renamed into place and the folder fsynced. A crash leaves
at most a hidden ``.*.tmp`` file, never a truncated ``.dcm`` (``remove_partial_files``
clears them at start-up). The layout is ``spool/<study>/<series>/<sop>.dcm``; a SOP Instance
UID that is already there is not written again. Malformed input goes to ``quarantine/`` with
a JSON note of why, when and from whom.

The spool and the state database agree: the SCP stores and records one SOP Instance UID at a
time (``holding``), and a file it wrote that could then not be recorded is removed again
(``discard``) before the failure goes back, so no spool file is unknown to the state (but for
a crash between the two, whose sender never heard Success and sends again).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.node.config import is_uid
from dicom_node.node.permissions import make_dir

_TMP_SUFFIX = ".tmp"
_INSTANCE_LOCKS = 64


@dataclass(frozen=True)
class StoredInstance:
    """One instance in the spool; ``new`` is False when its SOP Instance UID was there already."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    calling_ae: str
    peer: str
    new: bool


class Spool:
    """Durable storage of received instances under ``root`` (quarantine beside it)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.quarantine_dir = self.root.parent / "quarantine"
        self.root.mkdir(parents=True, exist_ok=True)
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        # Serialises the "already there?" check with the rename, so two associations that
        # deliver the same instance at once both see exactly one of them as new.
        self._publish = threading.Lock()
        self._instance_locks = [threading.Lock() for _ in range(_INSTANCE_LOCKS)]

    @contextmanager
    def holding(self, sop_instance_uid: str) -> Iterator[None]:
        """Keep other threads from storing or discarding this SOP Instance UID meanwhile."""
        with self._instance_locks[hash(sop_instance_uid) % _INSTANCE_LOCKS]:
            yield

    def discard(self, stored: StoredInstance) -> None:
        """Remove a file that ``store`` has just written (``stored.new``) and that is not to
        be kept; call it ``holding`` the UID, so that no repeat saw the file meanwhile."""
        if not stored.new:
            raise ValueError("only a file this store wrote can be discarded")
        stored.path.unlink(missing_ok=True)
        fsync_dir(stored.path.parent)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives; UIDs are checked first (they become file names)."""
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                          ("SOPInstanceUID", sop_instance_uid)):
            if not is_uid(uid):
                raise ValueError(f"{name} {uid!r} is not a valid UID")
        return self.root / study_uid / series_uid / f"{sop_instance_uid}.dcm"

    def store(self, ds: Dataset, file_meta: FileMetaDataset, calling_ae: str, peer: str,
              encoded: bytes | None = None) -> StoredInstance:
        """Write ``ds`` durably and return where it is.

        ``encoded``: the complete DICOM file as received (preamble, file meta, dataset); it
        is written byte for byte. Without it, ``ds`` is encoded with ``file_meta``.
        """
        study, series, sop = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                              str(ds.SOPInstanceUID))
        final = self.path_for(study, series, sop)
        stored = StoredInstance(
            study_uid=study, series_uid=series, sop_instance_uid=sop,
            sop_class_uid=str(ds.get("SOPClassUID", "")), path=final,
            calling_ae=calling_ae, peer=peer, new=True,
        )
        if final.exists():  # the common repeat: no need to write anything
            return _replace_new(stored, False)
        data = encoded if encoded is not None else _encode(ds, file_meta)
        _make_dirs(final.parent)
        temp = _write_temp(final.parent, final.name, data)
        try:
            with self._publish:
                if final.exists():
                    return _replace_new(stored, False)
                os.replace(temp, final)
            fsync_dir(final.parent)
        finally:
            if temp.exists():
                temp.unlink()
        return stored

    def quarantine(self, raw: bytes | Dataset, reason: str, calling_ae: str, peer: str,
                   details: dict | None = None) -> Path:
        """Keep rejected input with a ``.json`` note (reason, time, peer and ``details``)."""
        stamp = datetime.now(UTC)
        name = f"{stamp.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:12]}"
        data = raw if isinstance(raw, bytes) else _encode(raw, getattr(raw, "file_meta", None))
        target = self.quarantine_dir / f"{name}.dcm"
        temp = _write_temp(self.quarantine_dir, target.name, data)
        os.replace(temp, target)
        note = {
            "reason": reason, "time": stamp.isoformat(), "calling_ae": calling_ae,
            "peer": peer, "bytes": len(data), "file": target.name, **(details or {}),
        }
        note_path = self.quarantine_dir / f"{name}.json"
        temp = _write_temp(self.quarantine_dir, note_path.name,
                           (json.dumps(note, indent=2, default=str) + "\n").encode())
        os.replace(temp, note_path)
        fsync_dir(self.quarantine_dir)
        return target

    def remove_partial_files(self) -> int:
        """Delete temporary files a crash left behind (never acknowledged); returns how many."""
        removed = 0
        for folder in (self.root, self.quarantine_dir):
            for temp in folder.rglob(f".*{_TMP_SUFFIX}"):
                temp.unlink(missing_ok=True)
                removed += 1
        return removed


def _replace_new(stored: StoredInstance, new: bool) -> StoredInstance:
    return StoredInstance(**{**stored.__dict__, "new": new})


def _encode(ds: Dataset, file_meta: FileMetaDataset | None) -> bytes:
    """A DICOM file (Part 10) of ``ds``; the file meta is completed from the dataset where it
    can be, and written as given otherwise (quarantine keeps whatever arrived)."""
    copy = Dataset(ds)
    meta = FileMetaDataset(file_meta) if file_meta is not None else FileMetaDataset()
    meta.setdefault("TransferSyntaxUID", ExplicitVRLittleEndian)
    if ds.get("SOPClassUID"):
        meta.setdefault("MediaStorageSOPClassUID", ds.SOPClassUID)
    if ds.get("SOPInstanceUID"):
        meta.setdefault("MediaStorageSOPInstanceUID", ds.SOPInstanceUID)
    copy.file_meta = meta
    copy.preamble = b"\0" * 128
    complete = "MediaStorageSOPClassUID" in meta and "MediaStorageSOPInstanceUID" in meta
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, copy, enforce_file_format=complete)
    return buffer.getvalue()


def _write_temp(folder: Path, final_name: str, data: bytes) -> Path:
    """``data`` in a hidden temporary file of ``folder``, flushed to stable storage."""
    temp = folder / f".{final_name}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return temp


def _make_dirs(folder: Path) -> None:
    """Create ``folder`` (the node's folder mode) and fsync each parent that gained an entry,
    so the path survives a crash."""
    make_dir(folder, on_created=lambda made: fsync_dir(made.parent))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries, so a rename or new file in it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
