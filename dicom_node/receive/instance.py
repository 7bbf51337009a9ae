"""What makes received bytes an instance the node keeps: decoded, identified, its pixels there.

The storage SCP hands every C-STORE dataset to :func:`decode_instance` before anything is
written: the bytes must be a valid encoding in the negotiated transfer syntax (walked
element by element, so a truncated element or sequence is found without trusting pydicom
to fail), the instance must name itself consistently with the request, and its pixel data
must be present and no larger than its declared size or the node's decoding cap, which is
checked before any decoder runs (a compressed frame can declare gigabytes in a few bytes).
Each failure is a :class:`MalformedInstance` with the C-STORE status to answer.
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from dicom_node.node.config import is_uid
from dicom_node.receive.decoded_size import (
    CannotHold,
    TooLarge,
    check_encapsulated,
    declared_pixel_bytes,
    inflate,
)

# C-STORE statuses (PS3.4 B.2.3; 0x0110 and 0x0117 from PS3.7 C.4).
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_INVALID_SOP_INSTANCE = 0x0117
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000

# Explicit VR elements with a 4-byte length field (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO",
              b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_MAX_DEPTH = 32


class MalformedInstance(Exception):
    """A C-STORE dataset the node will not keep: ``status`` and a reason for the sender."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
                    sop_class: str, sop_instance: str, max_decoded: int,
                    pixels: bool = True) -> Dataset:
    """The C-STORE dataset, checked to be a complete instance of the SOP class the command
    names (and, with ``pixels``, a usable image) that decodes to at most ``max_decoded``
    bytes.

    Raises ``MalformedInstance`` with the status to answer (0xC000, 0xA900 or 0xA700).
    """
    implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    content = raw
    if transfer_syntax.is_deflated:
        try:
            content = inflate(raw, max_decoded)
        except TooLarge as exc:
            raise MalformedInstance(STATUS_OUT_OF_RESOURCES, str(exc)) from exc
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
        if pixels:
            _check_pixels(ds, transfer_syntax, max_decoded)
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


def _check_pixels(ds: Dataset, transfer_syntax: UID, max_decoded: int) -> None:
    """Pixel data present and complete: natively by length, compressed by decoding it once
    its declared size is known to fit (``decoded_size``)."""
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if ds.get(keyword) in (None, ""):
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} missing")
    if "PixelData" not in ds:
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, "Pixel Data missing")
    if not ds.PixelData:
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, "Pixel Data empty")
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if min(rows, columns, frames, samples) < 1 or bits not in (1, 8, 16, 32, 64):
        raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                "Rows/Columns/Frames/Samples/Bits Allocated out of range")
    declared = declared_pixel_bytes(rows, columns, frames, samples, bits)
    actual = len(ds.PixelData)
    if transfer_syntax.is_encapsulated:
        try:
            check_encapsulated(declared, actual, transfer_syntax, max_decoded)
        except CannotHold as exc:
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS, str(exc)) from exc
        except TooLarge as exc:
            raise MalformedInstance(STATUS_OUT_OF_RESOURCES, str(exc)) from exc
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise MalformedInstance(STATUS_CANNOT_UNDERSTAND,
                                    f"compressed pixel data not decodable: {exc}") from exc
        if int(np.prod(pixels.shape)) != rows * columns * frames * samples:
            raise MalformedInstance(STATUS_DOES_NOT_MATCH_SOP_CLASS,
                                    "decoded pixel data does not match Rows x Columns x Frames")
        return
    if actual < declared:
        raise MalformedInstance(
            STATUS_DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data {actual} bytes, image needs {declared}",
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
