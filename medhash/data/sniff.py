"""Recognise an image file's format from its first bytes, whatever its name.

Hospital archives name files `IM0001.001`, `1.2.840....` or nothing at all, and a `.png` may hold a
DICOM, so the name is never consulted. `sniff_bytes(head)` looks at the first `SNIFF_BYTES` bytes;
`sniff_format(path)` reads them from a file.

- PNG, JPEG and TIFF have fixed signatures (TIFF: `II*\\0` little- or `MM\\0*` big-endian).
- DICOM Part 10 files carry a 128-byte preamble and `DICM`.
- DICOM data sets written without preamble/meta (older modalities, some exports) are recognised by
  their first element: every image IOD has the SOP Common module, so its data set starts with a
  group 0x0008 element, or with group 0x0002 where the meta group was written without preamble.
  The first elements of these groups are short strings, so the element must end inside the
  sniffed bytes (read as explicit VR when a known VR follows the tag - long forms with zero
  reserved bytes - else as implicit VR), and the next element must follow in ascending tag order.
  Only little-endian encodings are accepted here: Explicit VR Big Endian is a retired syntax, and a
  Part 10 file in it is still recognised by its "DICM".
"""

from __future__ import annotations

import os
import struct
from typing import Literal

__all__ = ["SNIFF_BYTES", "ImageFormat", "has_dicom_preamble", "is_raw_dicom", "sniff_bytes", "sniff_format"]

ImageFormat = Literal["dicom", "png", "jpeg", "tiff"]

SNIFF_BYTES = 512
"""How many leading bytes the decision needs (the DICOM preamble and two or three elements)."""

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_TIFF = (b"II*\x00", b"MM\x00*")
_DICOM_MAGIC_OFFSET = 128
_RAW_DICOM_GROUPS = (0x0002, 0x0008)
# VRs whose explicit form is VR, 2 reserved zero bytes, 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LAST_GROUP = 0xFFFE  # item delimiters; anything above is not a data element


def sniff_format(path: str | os.PathLike[str]) -> ImageFormat | None:
    """The format of the file at `path` judged from its content, or None when not recognised.
    Raises OSError when the file cannot be read."""
    with open(path, "rb") as fp:
        return sniff_bytes(fp.read(SNIFF_BYTES))


def sniff_bytes(head: bytes) -> ImageFormat | None:
    """The format of a file whose first bytes are `head` (pass at least `SNIFF_BYTES` when the file
    has them), or None when not recognised."""
    if head.startswith(_PNG):
        return "png"
    if head.startswith(_JPEG):
        return "jpeg"
    if head[:4] in _TIFF:
        return "tiff"
    if has_dicom_preamble(head) or is_raw_dicom(head):
        return "dicom"
    return None


def is_raw_dicom(head: bytes) -> bool:
    """True when `head` starts like a little-endian DICOM data set without preamble (see module doc)."""
    if len(head) < 8:
        return False
    first_tag = struct.unpack_from("<HH", head, 0)
    if first_tag[0] not in _RAW_DICOM_GROUPS:
        return False
    end = _explicit_element_end(head)
    if end is None:
        end = _implicit_element_end(head)
    if end is None or end > len(head):
        return False  # the first elements of these groups are short: one that overruns is noise
    if end + 4 > len(head):
        return end == len(head)  # a file that is this one element
    next_tag = struct.unpack_from("<HH", head, end)
    return first_tag < next_tag and next_tag[0] <= _LAST_GROUP


def _explicit_element_end(head: bytes) -> int | None:
    """Offset after the first element read as explicit VR, or None when it is not one."""
    vr = head[4:6]
    if vr in _SHORT_VRS:
        (length,) = struct.unpack_from("<H", head, 6)
        return 8 + length
    if vr in _LONG_VRS and len(head) >= 12 and head[6:8] == b"\x00\x00":
        (length,) = struct.unpack_from("<I", head, 8)
        return 12 if length == _UNDEFINED_LENGTH else 12 + length  # undefined: items follow
    return None


def _implicit_element_end(head: bytes) -> int:
    """Offset after the first element read as implicit VR."""
    (length,) = struct.unpack_from("<I", head, 4)
    return 8 if length == _UNDEFINED_LENGTH else 8 + length  # undefined: a sequence's items follow


def has_dicom_preamble(head: bytes) -> bool:
    """True when `head` is a DICOM Part 10 file's start: 128-byte preamble, then "DICM"."""
    return head[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"
