"""Write header values as a hostile sender would: any bytes, under any VR, where pydicom
would refuse to encode them (``inf`` as an Integer String, six bytes as a Floating Point
Double, text where a sequence belongs)."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
            "UC", "UI", "UR", "UT"}


def set_raw(ds: Dataset, keyword: str | tuple[int, int], vr: str, value: bytes) -> None:
    """Put ``value`` into ``ds`` as the element ``keyword`` (or (group, element)) with ``vr``,
    exactly as given (only padded to an even length, as the standard pads)."""
    tag = Tag(tag_for_keyword(keyword) if isinstance(keyword, str) else keyword)
    if len(value) % 2:
        value += b" " if vr in TEXT_VRS else b"\0"
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def write(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` (explicit VR little endian, as its file meta says) to ``path``."""
    buffer = BytesIO()
    ds.save_as(buffer)
    path.write_bytes(buffer.getvalue())
    return path
