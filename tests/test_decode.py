"""read_image: PNG/JPEG/DICOM decoding to float32 [H, W] in [0, 1], and the typed failures."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_windowing
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medhash.data.decode import DECODE_ERROR_KINDS, DEFAULT_MAX_PIXELS, read_image
from medhash.errors import ImageDecodeError

RNG = np.random.default_rng(7)
LUMA = np.array([0.299, 0.587, 0.114])


def assert_valid_output(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.float32
    assert arr.shape == shape
    assert arr.flags.c_contiguous
    assert np.isfinite(arr).all()
    assert arr.min() >= 0.0 and arr.max() <= 1.0


def expect_error(source, kind: str, label: str, **kwargs) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as info:
        read_image(source, **kwargs)
    err = info.value
    assert err.kind == kind, f"expected {kind}, got {err.kind}: {err}"
    assert label in str(err)
    return err


def save_png(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, "PNG", **kwargs)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR declaring width x height, one tiny IDAT and IEND (a few bytes)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def dicom_dataset(pixels: np.ndarray | None, *, bits_stored: int = 12, **attrs) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-4711"
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.PixelData = pixels.astype("<u2").tobytes()
    else:
        ds.Rows, ds.Columns = 4, 5
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def write_dicom(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def pydicom_reference(ds: Dataset) -> np.ndarray:
    """Independent oracle: pydicom's own rescale + windowing, scaled from its output range to [0, 1]."""
    stored = ds.pixel_array
    windowed = apply_windowing(apply_modality_lut(stored, ds), ds)
    y_min = 0 * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    y_max = (2 ** int(ds.BitsStored) - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return (windowed - y_min) / (y_max - y_min)


# ---------------------------------------------------------------------------------------------
# PNG / JPEG


def test_gray8_png_divides_by_255(tmp_path):
    pixels = RNG.integers(0, 256, (6, 9), dtype=np.uint8)
    path = save_png(tmp_path / "gray.png", Image.fromarray(pixels))
    out = read_image(path)
    assert_valid_output(out, (6, 9))
    np.testing.assert_allclose(out, pixels / 255.0, rtol=0, atol=1e-7)


def test_gray16_png_divides_by_65535_exactly(tmp_path):
    pixels = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    pixels[0, 0], pixels[0, 1] = 0, 65535
    path = save_png(tmp_path / "gray16.png", Image.fromarray(pixels))
    with Image.open(path) as stored:
        assert stored.mode.startswith("I;16")
    out = read_image(path)
    assert_valid_output(out, (5, 7))
    np.testing.assert_array_equal(out, (pixels / 65535.0).astype(np.float32))
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0
    # a 16-bit value that is not a multiple of 257 must not collapse to 8 bits
    assert out.flat[2] == np.float32(pixels.flat[2] / 65535.0)


def test_rgb_png_becomes_luminance(tmp_path):
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    path = save_png(tmp_path / "rgb.png", Image.fromarray(rgb, "RGB"))
    out = read_image(path)
    assert_valid_output(out, (4, 6))
    np.testing.assert_allclose(out, rgb @ LUMA / 255.0, atol=1e-6)


def test_rgba_png_ignores_alpha(tmp_path):
    rgba = RNG.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[..., 3] = RNG.integers(0, 256, (4, 6))  # varied alpha must not change the result
    path = save_png(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"))
    out = read_image(path)
    assert_valid_output(out, (4, 6))
    np.testing.assert_allclose(out, rgba[..., :3] @ LUMA / 255.0, atol=1e-6)


def test_palette_png_uses_palette_colours(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [255, 255, 255]], dtype=np.uint8)
    indices = RNG.integers(0, 4, (5, 5), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.flatten().tolist())
    path = save_png(tmp_path / "palette.png", image)
    with Image.open(path) as stored:
        assert stored.mode == "P"
    out = read_image(path)
    assert_valid_output(out, (5, 5))
    np.testing.assert_allclose(out, palette[indices] @ LUMA / 255.0, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    height, width = 32, 48
    pixels = np.full((height, width), 20, dtype=np.uint8)
    pixels[:8, :8] = 235  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)

    out = read_image(path)
    assert_valid_output(out, (width, height))  # transposed shape
    # after a clockwise quarter turn the stored top-left corner is the displayed top-right corner
    assert out[:8, -8:].mean() > 0.8
    assert out[:8, :8].mean() < 0.2 and out[-8:, -8:].mean() < 0.2
    np.testing.assert_allclose(out, np.rot90(pixels, k=-1) / 255.0, atol=0.06)


def test_bytes_input_matches_path_and_names_errors(tmp_path):
    pixels = RNG.integers(0, 256, (3, 4), dtype=np.uint8)
    path = save_png(tmp_path / "b.png", Image.fromarray(pixels))
    np.testing.assert_array_equal(read_image(path.read_bytes()), read_image(path))
    expect_error(b"not an image at all", "not_an_image", "<bytes>")
    expect_error(b"not an image at all", "not_an_image", "upload-17.png", name="upload-17.png")


def test_format_is_detected_by_content_not_extension(tmp_path):
    pixels = RNG.integers(0, 256, (3, 4), dtype=np.uint8)
    path = tmp_path / "actually_png.dcm"
    Image.fromarray(pixels).save(path, "PNG")
    np.testing.assert_allclose(read_image(path), pixels / 255.0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# DICOM


def test_dicom_monochrome2_min_max(tmp_path):
    pixels = RNG.integers(100, 4000, (6, 8)).astype(np.uint16)
    path = write_dicom(tmp_path / "m2.dcm", dicom_dataset(pixels))
    out = read_image(path)
    assert_valid_output(out, (6, 8))
    np.testing.assert_allclose(out, (pixels - pixels.min()) / (pixels.max() - pixels.min()), atol=1e-6)


def test_dicom_negative_rescale_slope_flips_contrast(tmp_path):
    pixels = RNG.integers(0, 4096, (6, 8)).astype(np.uint16)
    plain = read_image(write_dicom(tmp_path / "plain.dcm", dicom_dataset(pixels)))
    ds = dicom_dataset(pixels, RescaleSlope=-2, RescaleIntercept=100)
    flipped = read_image(write_dicom(tmp_path / "flipped.dcm", ds))
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_then_window(tmp_path, photometric):
    pixels = np.arange(0, 4096, 4096 // 48, dtype=np.uint16)[:48].reshape(6, 8)
    # stored 0..4095 -> rescaled -1024..3071; the window only covers part of that range,
    # so reading the window against stored (un-rescaled) values would give a different image
    attrs = dict(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    ds = dicom_dataset(pixels, PhotometricInterpretation=photometric, **attrs)
    path = write_dicom(tmp_path / f"{photometric}.dcm", ds)
    out = read_image(path)
    assert_valid_output(out, (6, 8))
    expected = pydicom_reference(pydicom.dcmread(path))
    if photometric == "MONOCHROME1":
        expected = 1.0 - expected
    np.testing.assert_allclose(out, expected, atol=1e-6)
    rescaled = pixels.astype(float) - 1024
    below, above = rescaled < 40 - 200, rescaled > 40 + 200
    low, high = (1.0, 0.0) if photometric == "MONOCHROME1" else (0.0, 1.0)
    assert below.any() and above.any()
    assert np.all(out[below] == low) and np.all(out[above] == high)
    inside = ~below & ~above
    assert inside.any() and np.all((out[inside] > 0) & (out[inside] < 1))


def test_dicom_window_without_rescale(tmp_path):
    pixels = RNG.integers(0, 4096, (8, 8)).astype(np.uint16)
    ds = dicom_dataset(pixels, WindowCenter=2048, WindowWidth=1024)
    out = read_image(write_dicom(tmp_path / "win.dcm", ds))
    x = pixels.astype(float)
    expected = np.clip((x - 2047.5) / 1023 + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 LINEAR
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out == 0).any() and (out == 1).any()


def test_dicom_voi_lut_sequence(tmp_path):
    pixels = RNG.integers(0, 256, (4, 6)).astype(np.uint16)
    lut = (np.arange(256)[::-1] // 2).astype(np.uint16)  # inverted, half-range LUT: values 0..127
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new("LUTData", "US", lut.tolist())
    ds = dicom_dataset(pixels, bits_stored=8, VOILUTSequence=[item])
    out = read_image(write_dicom(tmp_path / "lut.dcm", ds))
    np.testing.assert_allclose(out, lut[pixels] / 127.0, atol=1e-6)


def test_dicom_constant_image_gives_zeros(tmp_path):
    out = read_image(write_dicom(tmp_path / "flat.dcm", dicom_dataset(np.full((3, 4), 700, np.uint16))))
    assert_valid_output(out, (3, 4))
    assert not out.any()


def test_dicom_rgb_becomes_luminance(tmp_path):
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    ds = dicom_dataset(None, bits_stored=8, SamplesPerPixel=3, PhotometricInterpretation="RGB",
                       PlanarConfiguration=0, BitsAllocated=8, Rows=4, Columns=5)
    ds.PixelData = rgb.tobytes()
    out = read_image(write_dicom(tmp_path / "rgb.dcm", ds))
    assert_valid_output(out, (4, 5))
    np.testing.assert_allclose(out, rgb @ LUMA / 255.0, atol=1e-6)


def test_dicom_without_preamble_is_detected(tmp_path):
    pixels = RNG.integers(0, 4096, (4, 5)).astype(np.uint16)
    ds = dicom_dataset(pixels)
    del ds.file_meta
    path = tmp_path / "raw_dataset"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    out = read_image(path)
    np.testing.assert_allclose(out, (pixels - pixels.min()) / (pixels.max() - pixels.min()), atol=1e-6)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", dicom_dataset(None))
    err = expect_error(path, "no_pixel_data", "nopix.dcm")
    assert "Doe" not in str(err) and "SECRET-4711" not in str(err)


def test_dicom_multi_frame_refused(tmp_path):
    frames = RNG.integers(0, 4096, (3, 4, 5)).astype(np.uint16)
    ds = dicom_dataset(frames, NumberOfFrames=3)
    path = write_dicom(tmp_path / "cine.dcm", ds)
    err = expect_error(path, "multi_frame", "cine.dcm")
    assert "3" in err.reason


def test_dicom_truncated_pixel_data(tmp_path):
    pixels = RNG.integers(0, 4096, (16, 16)).astype(np.uint16)
    data = write_dicom(tmp_path / "full.dcm", dicom_dataset(pixels)).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-100])
    err = expect_error(cut, "truncated", "cut.dcm")
    assert "SECRET-4711" not in str(err)
    # cut inside the Pixel Data element's own header: pydicom silently drops it
    cut.write_bytes(data[: len(data) - pixels.nbytes - 6])
    expect_error(cut, "truncated", "cut.dcm")


def test_dicom_unknown_transfer_syntax(tmp_path):
    ds = dicom_dataset(RNG.integers(0, 4096, (4, 4)).astype(np.uint16))
    ds.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.999.1"  # private, no decoder anywhere
    ds.PixelData = encapsulate([b"\x00" * 16])
    path = tmp_path / "private_ts.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    err = expect_error(path, "unsupported_transfer_syntax", "private_ts.dcm")
    assert "1.2.826.0.1.3680043.999.1" in err.reason


def test_dicom_pixel_limit_checked_from_header(tmp_path):
    # the header claims 60000 x 60000 but the file holds 32 bytes: refused before decoding
    ds = dicom_dataset(RNG.integers(0, 4096, (4, 4)).astype(np.uint16))
    ds.Rows, ds.Columns = 60000, 60000
    path = write_dicom(tmp_path / "huge.dcm", ds)
    err = expect_error(path, "too_large", "huge.dcm")
    assert str(DEFAULT_MAX_PIXELS) in err.reason
    small = write_dicom(tmp_path / "small.dcm", dicom_dataset(RNG.integers(0, 9, (4, 5)).astype(np.uint16)))
    expect_error(small, "too_large", "small.dcm", max_pixels=19)
    assert read_image(small, max_pixels=20).shape == (4, 5)


@pytest.mark.shared
def test_shared_dicom_samples_decode(shared_data):
    folder = shared_data / "dicom-samples"
    paths = sorted(folder.glob("test*.dcm"))
    assert len(paths) == 6
    decoded = {p.name: read_image(p) for p in paths}
    for name, arr in decoded.items():
        assert_valid_output(arr, (1024, 1024))
        assert arr.min() == 0.0 and arr.max() == 1.0, name
        assert 0.05 < float(arr.mean()) < 0.95 and float(arr.std()) > 0.05, name
    # SOURCES.md: tests 1, 4, 5 and 6 carry the same pixels with varied headers
    for name in ("test4.dcm", "test5.dcm", "test6.dcm"):
        np.testing.assert_array_equal(decoded[name], decoded["test1.dcm"])
    assert not np.array_equal(decoded["test2.dcm"], decoded["test1.dcm"])


# ---------------------------------------------------------------------------------------------
# failures of any format


def test_truncated_png(tmp_path):
    pixels = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    data = save_png(tmp_path / "whole.png", Image.fromarray(pixels)).read_bytes()
    for cut in (len(data) // 2, 20, 30):  # inside IDAT, inside IHDR, just after IHDR's length
        path = tmp_path / f"half_{cut}.png"
        path.write_bytes(data[:cut])
        expect_error(path, "truncated", path.name)


def test_truncated_jpeg(tmp_path):
    pixels = RNG.integers(0, 256, (32, 32), dtype=np.uint8)
    path = tmp_path / "cut.jpg"
    Image.fromarray(pixels).save(path, "JPEG")
    path.write_bytes(path.read_bytes()[:-200])
    expect_error(path, "truncated", "cut.jpg")


def test_corrupt_png_with_intact_end(tmp_path):
    pixels = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    data = bytearray(save_png(tmp_path / "whole.png", Image.fromarray(pixels)).read_bytes())
    data[60:80] = b"\x00" * 20  # damage the compressed stream, keep IEND
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    expect_error(path, "corrupt", "damaged.png")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    expect_error(path, "empty", "empty.png")
    expect_error(b"", "empty", "<bytes>")


def test_text_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("patient notes, definitely not pixels\n" * 20)
    expect_error(path, "not_an_image", "notes.png")


def test_missing_file_and_directory(tmp_path):
    expect_error(tmp_path / "nowhere.png", "unreadable", "nowhere.png")
    expect_error(tmp_path, "unreadable", tmp_path.name)


def test_png_over_small_pixel_limit(tmp_path):
    path = save_png(tmp_path / "ten_by_ten.png", Image.new("L", (10, 10)))
    err = expect_error(path, "too_large", "ten_by_ten.png", max_pixels=99)
    assert "100" in err.reason
    assert read_image(path, max_pixels=100).shape == (10, 10)


# 56 MP: over our limit only; 100 MP: also over Pillow's warning limit; 400 MP: over Pillow's error limit
@pytest.mark.parametrize("side", [7500, 10000, 20000])
def test_png_bomb_over_default_limit_refused_from_header(tmp_path, side):
    path = tmp_path / f"bomb_{side}.png"
    path.write_bytes(png_header_only(side, side))
    assert path.stat().st_size < 200
    expect_error(path, "too_large", path.name)


# ---------------------------------------------------------------------------------------------
# TIFF, recognition by content, and error messages that never quote the file


def test_tiff_gray8_gray16_rgb(tmp_path):
    gray8 = RNG.integers(0, 256, (6, 9), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "g8.tif")
    np.testing.assert_allclose(read_image(tmp_path / "g8.tif"), gray8 / 255.0, atol=1e-7)

    gray16 = RNG.integers(0, 65536, (6, 9), dtype=np.uint16)
    for order, name in (("<", "g16_le.tiff"), (">", "g16_be.tiff")):
        mode = "I;16" if order == "<" else "I;16B"
        Image.frombytes(mode, (9, 6), gray16.astype(order + "u2").tobytes()).save(tmp_path / name)
        out = read_image(tmp_path / name)
        assert_valid_output(out, (6, 9))
        np.testing.assert_array_equal(out, (gray16 / 65535.0).astype(np.float32))

    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.tif", compression="tiff_lzw")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.tif"), rgb @ LUMA / 255.0, atol=1e-6)


def test_tiff_multi_page_refused(tmp_path):
    pages = [Image.fromarray(RNG.integers(0, 256, (4, 4), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    err = expect_error(tmp_path / "stack.tif", "multi_frame", "stack.tif")
    assert "3 pages" in err.reason


@pytest.mark.parametrize("mode", ["F", "I"])
def test_tiff_float_and_32bit_refused(tmp_path, mode):
    values = RNG.random((4, 4)).astype(np.float32) if mode == "F" else RNG.integers(0, 2**31, (4, 4)).astype(np.int32)
    Image.fromarray(values, mode).save(tmp_path / "deep.tif")
    err = expect_error(tmp_path / "deep.tif", "unsupported_pixel_format", "deep.tif")
    assert mode in err.reason


def test_truncated_tiff(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "whole.tif")
    cut = tmp_path / "cut.tif"
    cut.write_bytes((tmp_path / "whole.tif").read_bytes()[:2000])
    err = expect_error(cut, "truncated", "cut.tif")
    assert err.kind in DECODE_ERROR_KINDS


@pytest.mark.parametrize("name", ["1.2.840.113619.2.55.3.604688119", "IM0001.001", "image.png", "scan.jpg"])
def test_dicom_decoded_by_content_whatever_the_name(tmp_path, name):
    pixels = RNG.integers(0, 4096, (4, 5)).astype(np.uint16)
    path = write_dicom(tmp_path / name, dicom_dataset(pixels))
    np.testing.assert_allclose(read_image(path), (pixels - pixels.min()) / (pixels.max() - pixels.min()), atol=1e-6)


def test_dicom_compressed_syntax_refused_when_plugin_missing(tmp_path, monkeypatch):
    """A syntax whose plugins are all missing names the syntax and the packages it needs."""
    import pydicom.pixels
    from pydicom.uid import JPEGLSLossless

    class Unavailable:
        is_available = False
        missing_dependencies = ["gdcm - requires gdcm>=3.0.10"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    ds = dicom_dataset(RNG.integers(0, 4096, (4, 4)).astype(np.uint16))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 14])
    err = expect_error(write_dicom(tmp_path / "jls.dcm", ds), "unsupported_transfer_syntax", "jls.dcm")
    assert JPEGLSLossless.name in err.reason and "gdcm" in err.reason


DISTINCTIVE = b"root:x:0:0:root:/root:/bin/bash\nQUOKKA-7f3a9 patient notes\n"


def _wrapped_contents() -> dict[str, bytes]:
    """Files whose start looks like an image format, followed by distinctive text instead of data."""
    return {
        "plain.txt": DISTINCTIVE * 8,
        "text.dcm": DISTINCTIVE * 8,
        "IM0002.001": DISTINCTIVE * 8,
        "part10.dcm": b"\x00" * 128 + b"DICM" + DISTINCTIVE * 8,
        "fake.png": b"\x89PNG\r\n\x1a\n" + DISTINCTIVE * 8,
        "fake.jpg": b"\xff\xd8\xff\xe0" + DISTINCTIVE * 8,
        "fake.tif": b"II*\x00\x08\x00\x00\x00" + DISTINCTIVE * 8,
        "fake_be.tif": b"MM\x00*\x00\x00\x00\x08" + DISTINCTIVE * 8,
        # a raw data set whose second element (a UI of the text's length) holds the text
        "raw.dcm": b"\x08\x00\x16\x00UI\x04\x001234\x08\x00\x18\x00UI" + bytes([len(DISTINCTIVE), 0])
        + DISTINCTIVE * 8,
    }


@pytest.mark.parametrize("name", list(_wrapped_contents()))
def test_errors_never_quote_file_contents(tmp_path, name):
    target = tmp_path / name
    target.write_bytes(_wrapped_contents()[name])
    link = tmp_path / f"link_to_{name}"
    link.symlink_to(target)
    for source in (target, link, target.read_bytes()):
        with pytest.raises(ImageDecodeError) as info:
            read_image(source)
        message = str(info.value)
        assert info.value.kind in DECODE_ERROR_KINDS
        for fragment in ("root:x", "QUOKKA", "bin/bash", "patient notes", "1234"):
            assert fragment not in message, f"{name}: {message}"
