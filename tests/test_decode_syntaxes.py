"""read_image decodes every transfer syntax a PACS export holds, to the pixels of the uncompressed original.

The samples are made here from a phantom radiograph: pydicom writes the uncompressed and deflated
files and encodes RLE (its own encoder), JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg).
pydicom has no JPEG (process 1, 2&4, 14) encoder; imagecodecs' libjpeg-turbo makes those streams
(test-only dependency). GDCM's ImageChangeTransferSyntax is not used: for 12-bit samples in 16-bit
words it writes lossy JPEG with 16-bit precision, which no standard decoder reads, instead of a
12-bit process 4 stream.
A fixed window (centre 2048, width 4096) maps stored values to [0, 1] without looking at the data,
so a lossy codec's error shows as itself rather than through a changed min-max stretch.
Every file is named like an archive's (`1.2.840....` with no extension, `IM0001.001`): read by content.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID,
    generate_uid,
)
from test_decode import dicom_dataset

from medhash.data import read_image
from medhash.data.phantoms import PhantomConfig, generate_phantom

SIZE = 96
JPEG_LS_NEAR_ERROR = 3  # the near-lossless bound asked of the encoder, in stored units
JPEG_LOSSLESS_PREDICTOR = 6  # process 14 with a predictor other than SV1's, so the two syntaxes differ


def phantom_pixels(bits: int) -> np.ndarray:
    image = generate_phantom(3, PhantomConfig(size=SIZE)).image
    return np.rint(image * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def base_dataset(bits: int) -> Dataset:
    pixels = phantom_pixels(bits)
    ds = dicom_dataset(pixels, bits_stored=bits, WindowCenter=2 ** (bits - 1), WindowWidth=2**bits)
    if bits == 8:
        ds.BitsAllocated = 8
        ds.PixelData = pixels.tobytes()
    return ds


def write_uncompressed(ds: Dataset, path: Path, syntax: UID) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def write_with_pydicom_encoder(ds: Dataset, path: Path, syntax: UID, **options) -> Path:
    ds.compress(syntax, **options)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_jpeg(ds: Dataset, path: Path, syntax: UID, **options) -> Path:
    """Encapsulate one libjpeg-turbo stream of the pixels (pydicom has no encoder for these syntaxes)."""
    ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(ds.pixel_array, bitspersample=ds.BitsStored, **options)])
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


LOSSLESS = (0.0, 0.0)
# (transfer syntax, bits stored, writer, encoder options, (max, mean) error allowed in [0, 1] units)
# Lossy tolerances: JPEG-LS near-lossless has its guaranteed bound; the JPEG and JPEG 2000 ones are
# ceilings a little above what these encoders give on this noisy phantom at the quality asked for
# (measured max / mean: 8-bit JPEG q90 0.067 / 0.011, 12-bit JPEG q90 0.004 / 0.0007, JPEG 2000
# at 5:1 0.051 / 0.010), so a decoder that gets the scaling or sample order wrong fails them.
CASES = [
    (ImplicitVRLittleEndian, 12, write_uncompressed, {}, LOSSLESS),
    (ExplicitVRLittleEndian, 12, write_uncompressed, {}, LOSSLESS),
    (DeflatedExplicitVRLittleEndian, 12, write_uncompressed, {}, LOSSLESS),
    (RLELossless, 12, write_with_pydicom_encoder, {}, LOSSLESS),
    (JPEGBaseline8Bit, 8, write_jpeg, {"level": 90}, (0.1, 0.02)),
    (JPEGExtended12Bit, 12, write_jpeg, {"level": 90}, (0.01, 0.002)),
    (JPEGLossless, 12, write_jpeg, {"lossless": True, "predictor": JPEG_LOSSLESS_PREDICTOR}, LOSSLESS),
    (JPEGLosslessSV1, 12, write_jpeg, {"lossless": True, "predictor": 1}, LOSSLESS),
    (JPEGLSLossless, 12, write_with_pydicom_encoder, {}, LOSSLESS),
    (JPEGLSNearLossless, 12, write_with_pydicom_encoder, {"jls_error": JPEG_LS_NEAR_ERROR},
     (JPEG_LS_NEAR_ERROR / 4095, JPEG_LS_NEAR_ERROR / 4095)),
    (JPEG2000Lossless, 12, write_with_pydicom_encoder, {}, LOSSLESS),
    (JPEG2000, 12, write_with_pydicom_encoder, {"j2k_cr": [5]}, (0.07, 0.015)),
]


@pytest.mark.parametrize(
    ("syntax", "bits", "write", "options", "tolerance"), CASES, ids=[case[0].name for case in CASES]
)
def test_transfer_syntax_decodes_to_original_pixels(tmp_path, syntax, bits, write, options, tolerance):
    original = read_image(write_uncompressed(base_dataset(bits), tmp_path / "original.dcm", ExplicitVRLittleEndian))
    name = "IM0001.001" if syntax.is_compressed else f"{generate_uid()}"  # archive names, no .dcm
    path = write(base_dataset(bits), tmp_path / name, syntax, **options)

    stored = pydicom.dcmread(path, stop_before_pixels=True)
    assert stored.file_meta.TransferSyntaxUID == syntax  # the sample really is in this syntax
    decoded = read_image(path)

    assert decoded.dtype == np.float32 and decoded.shape == (SIZE, SIZE)
    if tolerance == LOSSLESS:
        np.testing.assert_array_equal(decoded, original)
    else:
        error = np.abs(decoded.astype(np.float64) - original.astype(np.float64))
        max_error, mean_error = tolerance
        assert 0 < error.max() <= max_error + 1e-6, f"{syntax.name}: max error {error.max():.4f}"
        assert error.mean() <= mean_error + 1e-6, f"{syntax.name}: mean error {error.mean():.4f}"


# the JPEG start-of-frame marker, and its sample precision, each JPEG syntax must carry
JPEG_FRAMES = {
    JPEGBaseline8Bit: (b"\xff\xc0", 8),
    JPEGExtended12Bit: (b"\xff\xc1", 12),
    JPEGLossless: (b"\xff\xc3", 12),
    JPEGLosslessSV1: (b"\xff\xc3", 12),
}


@pytest.mark.parametrize("syntax", list(JPEG_FRAMES), ids=lambda uid: uid.name)
def test_jpeg_samples_are_the_process_their_syntax_names(tmp_path, syntax):
    """The JPEG samples are what they claim: SOF0 8-bit, SOF1 12-bit, SOF3 with SV1's predictor or another."""
    _syntax, bits, write, options, _tolerance = next(case for case in CASES if case[0] == syntax)
    frame = get_frame(pydicom.dcmread(write(base_dataset(bits), tmp_path / "sample", syntax, **options)).PixelData, 0,
                      number_of_frames=1)
    marker, precision = JPEG_FRAMES[syntax]
    start_of_frame = frame.index(marker)
    assert frame[start_of_frame + 4] == precision
    start_of_scan = frame.index(b"\xff\xda")
    selection_value = frame[start_of_scan + 5 + 2 * frame[start_of_scan + 4]]
    if syntax == JPEGLosslessSV1:
        assert selection_value == 1
    elif syntax == JPEGLossless:
        assert selection_value == JPEG_LOSSLESS_PREDICTOR
