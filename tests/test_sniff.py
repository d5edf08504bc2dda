"""sniff: formats recognised by their first bytes, never by the file name."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medhash.data.sniff import SNIFF_BYTES, sniff_bytes, sniff_format


def pillow_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def dataset(with_meta_group: bool = False) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 4, 4
    if with_meta_group:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def raw_dicom(implicit: bool) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset(), implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def part10_dicom() -> bytes:
    buffer = io.BytesIO()
    dataset(with_meta_group=True).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def meta_group_without_preamble() -> bytes:
    return part10_dicom()[132:]  # group 0x0002 first, explicit VR


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: pillow_bytes("PNG"), "png"),
        (lambda: pillow_bytes("JPEG"), "jpeg"),
        (lambda: pillow_bytes("TIFF"), "tiff"),
        (lambda: b"MM\x00*" + b"\x00" * 12, "tiff"),
        (part10_dicom, "dicom"),
        (lambda: raw_dicom(implicit=True), "dicom"),
        (lambda: raw_dicom(implicit=False), "dicom"),
        (meta_group_without_preamble, "dicom"),
    ],
    ids=["png", "jpeg", "tiff-le", "tiff-be", "dicom-part10", "dicom-raw-implicit", "dicom-raw-explicit",
         "dicom-raw-meta"],
)
def test_recognised_whatever_the_name(tmp_path, make, expected):
    data = make()
    assert sniff_bytes(data[:SNIFF_BYTES]) == expected
    for name in ("IM0001.001", "1.2.840.113619.2.55.3", "picture.png", "noext"):
        path = tmp_path / name
        path.write_bytes(data)
        assert sniff_format(path) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"root:x:0:0:root:/root:/bin/bash\n" * 4,
        b"%PDF-1.7\n" + b"\x00" * 200,
        b"\x00" * 600,  # zero preamble without DICM
        b"GIF89a" + b"\x00" * 100,
        b"\x08\x00\x05\x00" + b"\xff\xff\xff\x7f" + b"\x00" * 100,  # group 0008, length past the bytes
        b"\x08\x00\x16\x00UI\x04\x001234" + b"\x02\x00\x00\x00UL",  # next tag goes backwards
        b"\x10\x00\x10\x00PN\x04\x00Doe^",  # group 0010 first: not where an image data set starts
        b"\x08\x00\x16\x00",  # too short to judge
    ],
    ids=["empty", "passwd", "pdf", "zeros", "gif", "overlong", "descending", "group-0010", "short"],
)
def test_not_recognised(head):
    assert sniff_bytes(head) is None
