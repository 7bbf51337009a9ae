"""How much memory a received instance takes once decoded, bounded before it is decoded.

The node decodes every image it receives once, to check it is complete. What compressed
bytes decode to is whatever their header declares: 1.7 KB of RLE can declare 65535 x 65535
pixels (4 GiB allocated before the decoder finds the data short), 509 KB of deflate inflates
to 512 MiB. So inflation runs in steps and stops past the cap, and the pixel size an image
declares (Rows x Columns x Frames x Samples x Bits Allocated) is checked before any decoder
runs: against the cap (``limits.max_decoded_mb``), and against what the encapsulated bytes
can hold where the encoding bounds it (RLE: a 2-byte replicate run gives at most 128 bytes,
PS3.5 G.3.1). JPEG, JPEG-LS and JPEG 2000 have no such bound; the cap covers them.
"""

from __future__ import annotations

import zlib

from pydicom.uid import UID, RLELossless

# PackBits (PS3.5 G.3.1): the best a segment does is a replicate run, 2 bytes -> 128 bytes.
RLE_MAX_EXPANSION = 64
_INFLATE_STEP = 1024 * 1024


class TooLarge(Exception):
    """The instance would decode to more than the cap."""


class CannotHold(Exception):
    """The encoded bytes are too few for the image they declare."""


def declared_pixel_bytes(rows: int, columns: int, frames: int, samples: int,
                         bits_allocated: int) -> int:
    """The bytes of pixel data the image attributes declare, all frames together."""
    values = rows * columns * frames * samples
    return (values + 7) // 8 if bits_allocated == 1 else values * bits_allocated // 8


def check_encapsulated(declared: int, encapsulated_bytes: int, transfer_syntax: UID,
                       cap: int) -> None:
    """Raise ``CannotHold`` or ``TooLarge`` when compressed pixel data of
    ``encapsulated_bytes`` declaring ``declared`` decoded bytes must not be decoded."""
    if transfer_syntax == RLELossless:
        capacity = RLE_MAX_EXPANSION * encapsulated_bytes
        if declared > capacity:
            raise CannotHold(f"RLE data can hold {_size(capacity)}, the image declares "
                             f"{_size(declared)}")
    if declared > cap:
        raise TooLarge(f"pixel data decodes to {_size(declared)}, over "
                       f"limits.max_decoded_mb ({_size(cap)})")


def inflate(data: bytes, cap: int) -> bytes:
    """Raw deflate (PS3.5 A.5) inflated in steps; ``TooLarge`` as soon as the output would
    exceed ``cap`` bytes, ``zlib.error`` when the stream is broken."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    chunk = inflater.decompress(data, _INFLATE_STEP)
    while chunk:
        out += chunk
        if len(out) > cap:
            raise TooLarge(f"dataset inflates past limits.max_decoded_mb ({_size(cap)})")
        chunk = inflater.decompress(inflater.unconsumed_tail, _INFLATE_STEP)
    out += inflater.flush()  # empty: the last step gave nothing more
    if len(out) > cap:
        raise TooLarge(f"dataset inflates past limits.max_decoded_mb ({_size(cap)})")
    return bytes(out)


def _size(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:.1f}".rstrip("0").rstrip(".") + " MiB" if mib >= 1 else f"{n} bytes"
