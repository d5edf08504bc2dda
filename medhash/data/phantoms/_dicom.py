"""A phantom (or any gray image) as a DICOM file: what archive-like test trees and benchmarks need.

Secondary Capture, Explicit VR Little Endian, 12 bits stored in 16, MONOCHROME2, with a fresh
SOPInstanceUID; header attributes given by keyword (PatientSex="F", ViewPosition="PA", ...) are set
as given, so tests can plant identifiers and check that they never reach an output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["write_phantom_dicom"]


def write_phantom_dicom(path: str | Path, image: np.ndarray, **header) -> None:
    """Write `image` (float [H, W] in [0, 1], or uint16 stored values) as a DICOM file at `path`."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = image if image.dtype == np.uint16 else (np.clip(image, 0, 1) * 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.Rows, ds.Columns = pixels.shape
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
