"""Decode one image file (PNG, JPEG, TIFF or DICOM) into a float32 [H, W] array in [0, 1].

`read_image` is the single entry point (`read_dicom_header` reads a DICOM header only, for
`medhash.data.dicom_meta`). The format is recognised from the content (`medhash.data.sniff`), never
from the file name: archives hold DICOMs named `IM0001.001` or `1.2.840...`. Every failure raises
`ImageDecodeError(source, kind, reason)`; the kinds are listed in `DECODE_ERROR_KINDS`. Reasons
never quote the file's content nor DICOM patient identity: a decoder's message is kept only with
its quoted parts removed (a path may point at any file, and its first bytes are not ours to echo).

Choices worth knowing:
- Colour (RGB, RGBA, palette, CMYK...) becomes ITU-R BT.601 luminance (0.299 R + 0.587 G + 0.114 B).
  Alpha is ignored, not composited: radiographs saved with an alpha channel keep their stored
  intensities, and compositing on black would darken any semi-transparent region.
- Grey levels are divided by the full range of the stored bit depth (8-bit /255, 16-bit /65535),
  so the same intensity in an 8- and a 16-bit file gives the same value.
- DICOM: modality LUT / rescale, then VOI LUT sequence or window (PS3.3 C.11.2.1.2, output range
  taken as [0, 1]), else min-max of the data; MONOCHROME1 is inverted last.
- The pixel limit is checked on the size declared in the header, before any pixel is decoded.
  `read_image_header` reads only that header, so a caller (the server) can bound the memory a decode
  will take (`ImageHeader.decode_bytes`) before it starts one.
- One image per file: multi-frame DICOMs and multi-page TIFFs are refused, not reduced to a frame.
- Compressed DICOM goes through pydicom's pixel-data plugins (GDCM, pylibjpeg-openjpeg/-rle,
  pyjpegls), plus `medhash.data.gdcm_jpeg12` for 12-bit JPEG Extended.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from medhash.data.sniff import SNIFF_BYTES, has_dicom_preamble, sniff_bytes
from medhash.errors import ImageDecodeError

DEFAULT_MAX_PIXELS = 50_000_000
"""Refuse images whose header declares more pixels than this (decompression-bomb guard)."""

DECODE_ERROR_KINDS = (
    "empty",
    "truncated",
    "not_an_image",
    "unsupported_transfer_syntax",
    "too_large",
    "no_pixel_data",
    "multi_frame",
    "unsupported_pixel_format",
    "unreadable",
    "corrupt",
)

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# A complete file ends with this marker; a decode failure on a file without it is a truncation.
# (TIFF has none: its strips may lie anywhere, so only Pillow's own "truncated" says so.)
_END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}
_END_MARKER_WINDOW = 64  # bytes searched at the end of the file (JPEGs may carry trailing padding)


@dataclass(frozen=True)
class _Source:
    """Where the bytes come from: a file opened on demand, or bytes already in memory."""

    name: str
    path: Path | None
    data: bytes | None
    size: int

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")

    def head(self, n: int) -> bytes:
        with self.open() as fp:
            return fp.read(n)

    def tail(self, n: int) -> bytes:
        with self.open() as fp:
            fp.seek(max(0, self.size - n))
            return fp.read(n)


def read_image(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `source` (a path, or the file's bytes) into a float32, C-contiguous [H, W] array in [0, 1].

    `name` is the name used in errors (default: the path, or "<bytes>" for bytes input).
    `max_pixels` refuses images whose declared width*height exceeds it (None: no limit of ours;
    Pillow's own global limit, `PIL.Image.MAX_IMAGE_PIXELS`, still applies to PNG/JPEG).
    Raises `ImageDecodeError` for every failure.
    """
    src = _open_source(source, name)
    with _typed_errors(src):
        fmt = _detect_format(src)
        gray = _DECODERS[fmt](src, fmt, max_pixels)
        return _finish(src, gray)


def read_dicom_header(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, name: str | None = None
):
    """The DICOM header of `source` (a path or the file's bytes) as a pydicom Dataset without pixels.

    Recognised by content like `read_image`; anything that is not a DICOM raises
    `ImageDecodeError` ("not_an_image"), as do unreadable or corrupt headers.
    """
    src = _open_source(source, name)
    with _typed_errors(src):
        fmt = _detect_format(src)
        if fmt not in ("DICOM", "DICOM_RAW"):
            raise ImageDecodeError(src.name, "not_an_image", f"a {fmt} image, not a DICOM file")
        return _read_dicom(src, force=fmt == "DICOM_RAW", stop_before_pixels=True)


@contextmanager
def _typed_errors(src: _Source) -> Iterator[None]:
    """Every failure inside becomes an ImageDecodeError naming `src`."""
    try:
        yield
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(src.name, "too_large", "out of memory while decoding") from exc
    except OSError as exc:
        raise ImageDecodeError(src.name, "unreadable", _describe(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure must surface as a typed error
        raise ImageDecodeError(src.name, "corrupt", _describe(exc)) from exc


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding a pixel."""

    format: str  # PNG, JPEG, DICOM or DICOM_RAW
    width: int
    height: int
    frames: int = 1
    channels: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames

    @property
    def decode_bytes(self) -> int:
        """About the peak memory read_image takes for this image: the stored frame plus the float64 working
        copies (one per channel, then the grey result) and the float32 output; 24 bytes a pixel for grey."""
        return self.pixels * (16 + 8 * self.channels)


def read_image_header(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, name: str | None = None
) -> ImageHeader:
    """The size an image declares (Pillow's size before load; DICOM Rows x Columns x frames), decoding no
    pixel. Raises `ImageDecodeError` for every failure, as read_image would."""
    src = _open_source(source, name)
    try:
        fmt = _detect_format(src)
        return _HEADER_READERS[fmt](src, fmt)
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError(src.name, "unreadable", _describe(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any header failure must surface as a typed error
        raise ImageDecodeError(src.name, "corrupt", _describe(exc)) from exc


def _pillow_header(src: _Source, fmt: str) -> ImageHeader:
    from PIL import Image

    with src.open() as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the caller judges the size
        try:
            image = Image.open(fp, formats=[fmt])
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(src.name, "too_large", str(exc)) from exc
        except (OSError, EOFError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(src.name, _pillow_failure_kind(src, fmt, exc), _describe(exc)) from exc
        with image:
            return ImageHeader(fmt, image.width, image.height, 1, len(image.getbands()))


def _dicom_header(src: _Source, fmt: str) -> ImageHeader:
    header = _read_dicom(src, force=fmt == "DICOM_RAW", stop_before_pixels=True)
    try:
        channels = int(header.get("SamplesPerPixel") or 1)
        rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(src.name, "corrupt", "unreadable Rows, Columns or SamplesPerPixel") from exc
    return ImageHeader(fmt, columns, rows, _number_of_frames(src, header), max(1, channels))


# ---------------------------------------------------------------------------------------------
# source and format detection


def _open_source(source: object, name: str | None) -> _Source:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        src = _Source(name or "<bytes>", None, data, len(data))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(path)
        try:
            if not path.is_file():
                reason = "is a directory" if path.is_dir() else "not a regular file" if path.exists() else "no such file"
                raise ImageDecodeError(label, "unreadable", reason)
            size = path.stat().st_size
        except OSError as exc:
            raise ImageDecodeError(label, "unreadable", _describe(exc)) from exc
        src = _Source(label, path, None, size)
    else:
        raise TypeError(f"read_image takes a path or bytes, not {type(source).__name__}")
    if src.size == 0:
        raise ImageDecodeError(src.name, "empty", "the file has zero bytes")
    return src


def _detect_format(src: _Source) -> str:
    """The decoder key: PNG, JPEG, TIFF (Pillow's format names), DICOM or DICOM_RAW (no preamble)."""
    head = src.head(SNIFF_BYTES)
    fmt = sniff_bytes(head)
    if fmt is None:
        # never quote the bytes: the path may lead anywhere (a symlink to /etc/passwd once did)
        raise ImageDecodeError(
            src.name, "not_an_image", "not a PNG, JPEG, TIFF or DICOM file (no known signature at its start)"
        )
    if fmt == "dicom":
        return "DICOM" if has_dicom_preamble(head) else "DICOM_RAW"
    return fmt.upper()


def _finish(src: _Source, gray: np.ndarray) -> np.ndarray:
    if gray.ndim != 2 or 0 in gray.shape:
        raise ImageDecodeError(src.name, "corrupt", f"decoded to an array of shape {gray.shape}")
    if not np.isfinite(gray).all():
        raise ImageDecodeError(src.name, "corrupt", "pixel values include NaN or infinity")
    out = np.clip(gray, 0.0, 1.0).astype(np.float32, copy=False)  # clip: float rounding only
    return np.ascontiguousarray(out)


# Quoted parts of a decoder's message ('...', "...", b'...'): they may hold the file's bytes or values.
_QUOTED = re.compile(r"b?'[^']*'|b?\"[^\"]*\"")


def _describe(exc: BaseException) -> str:
    """The exception's type and message, with quoted parts replaced (see module docstring)."""
    text = _QUOTED.sub("<...>", str(exc)).strip()
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_pixel_count(src: _Source, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            src.name,
            "too_large",
            f"header declares {width}x{height} = {width * height} pixels, limit is {max_pixels}",
        )


# ---------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF through Pillow

# Grey modes and the value of full intensity in each.
_GRAY_FULL_SCALE = {
    "1": 1.0,
    "L": 255.0,
    "I;16": 65535.0,
    "I;16L": 65535.0,
    "I;16B": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,  # PNG and JPEG hold at most 16 bits per sample (TIFF's 32-bit "I" is refused)
}
_GRAY_WITH_ALPHA = {"LA": 255.0, "La": 255.0}
# TIFF may also hold 32-bit integers, floats or signed samples, which have no full scale to divide
# by; only these modes (8/16-bit grey, colour, palette) are read.
_TIFF_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I;16L", "I;16B", "I;16N"})


@contextmanager
def _pillow_bomb_guard(max_pixels: int | None) -> Iterator[None]:
    """Make Pillow's own DecompressionBombWarning an exception while our limit is the stricter
    one; when the caller allowed more than Pillow would, silence it (our check decides).
    Note: warnings.catch_warnings is process-global state; concurrent threads may interleave it,
    which at worst changes how this one warning category is treated."""
    from PIL import Image

    pillow_limit = Image.MAX_IMAGE_PIXELS
    stricter = max_pixels is not None and pillow_limit is not None and max_pixels <= pillow_limit
    with warnings.catch_warnings():
        warnings.simplefilter("error" if stricter else "ignore", Image.DecompressionBombWarning)
        yield


def _decode_pillow(src: _Source, fmt: str, max_pixels: int | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    with src.open() as fp, _pillow_bomb_guard(max_pixels):
        try:
            image = Image.open(fp, formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(src.name, "too_large", str(exc)) from exc
        except UnidentifiedImageError as exc:
            kind = _pillow_failure_kind(src, fmt, exc)
            raise ImageDecodeError(src.name, kind, f"Pillow could not read the {fmt} header") from exc
        except (OSError, EOFError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(src.name, _pillow_failure_kind(src, fmt, exc), _describe(exc)) from exc
        with image:
            width, height = image.size
            _check_pixel_count(src, width, height, max_pixels)
            _check_tiff_page(src, fmt, image)
            try:
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _pillow_to_gray(upright)
            except (OSError, EOFError, SyntaxError, ValueError) as exc:
                kind = _pillow_failure_kind(src, fmt, exc)
                raise ImageDecodeError(src.name, kind, _describe(exc)) from exc


def _check_tiff_page(src: _Source, fmt: str, image) -> None:
    """A TIFF must hold one page (like a DICOM one frame) in a mode with a known full scale."""
    if fmt != "TIFF":
        return
    pages = getattr(image, "n_frames", 1)
    if pages > 1:
        raise ImageDecodeError(src.name, "multi_frame", f"{pages} pages; only single-page TIFFs are read")
    if image.mode not in _TIFF_MODES:
        raise ImageDecodeError(
            src.name, "unsupported_pixel_format", f"TIFF pixel mode {image.mode} (read: 8/16-bit grey, RGB, palette)"
        )


def _pillow_failure_kind(src: _Source, fmt: str, exc: BaseException) -> str:
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return "truncated"
    end_marker = _END_MARKERS.get(fmt)
    if end_marker is not None and end_marker not in src.tail(_END_MARKER_WINDOW):
        return "truncated"
    return "corrupt"


def _pillow_to_gray(image) -> np.ndarray:  # image: PIL.Image.Image
    mode = image.mode
    if mode in _GRAY_FULL_SCALE:
        return np.asarray(image).astype(np.float64) / _GRAY_FULL_SCALE[mode]
    if mode in _GRAY_WITH_ALPHA:  # alpha ignored, see module docstring
        return np.asarray(image)[..., 0].astype(np.float64) / _GRAY_WITH_ALPHA[mode]
    rgb = np.asarray(image.convert("RGB")).astype(np.float64)  # palette, RGBA, CMYK, YCbCr...
    return (rgb @ _LUMA_WEIGHTS) / 255.0


# ---------------------------------------------------------------------------------------------
# DICOM through pydicom

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _decode_dicom(src: _Source, fmt: str, max_pixels: int | None) -> np.ndarray:
    force = fmt == "DICOM_RAW"
    header = _read_dicom(src, force=force, stop_before_pixels=True)
    frames = _number_of_frames(src, header)
    if frames > 1:
        raise ImageDecodeError(src.name, "multi_frame", f"{frames} frames; only single-frame images are read")
    rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
    _check_pixel_count(src, columns, rows, max_pixels)
    transfer_syntax = _transfer_syntax(header)
    _require_decoder(src, transfer_syntax)

    ds = _read_dicom(src, force=force, stop_before_pixels=False)
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        if not _dicom_ends_cleanly(ds, src.size, transfer_syntax):
            raise ImageDecodeError(src.name, "truncated", "the file ends inside a data element")
        raise ImageDecodeError(src.name, "no_pixel_data", "the data set has no Pixel Data element")
    if rows == 0 or columns == 0:
        raise ImageDecodeError(src.name, "corrupt", "Pixel Data without Rows/Columns")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = transfer_syntax  # preamble-less files carry no meta
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warnings may quote header values
            stored = ds.pixel_array
    except ValueError as exc:
        kind = "truncated" if "less than expected" in str(exc) else "corrupt"
        raise ImageDecodeError(src.name, kind, _redact(_describe(exc), header)) from exc
    except Exception as exc:  # noqa: BLE001 - plugin errors come in many types
        raise ImageDecodeError(src.name, "corrupt", _redact(_describe(exc), header)) from exc
    if stored.ndim == 3:  # colour (pydicom already converted YBR to RGB)
        return (stored.astype(np.float64) @ _LUMA_WEIGHTS) / float(2 ** int(ds.BitsStored) - 1)
    return _monochrome_to_unit(ds, stored)


def _read_dicom(src: _Source, *, force: bool, stop_before_pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with src.open() as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warnings may quote header values
            return pydicom.dcmread(fp, force=force, stop_before_pixels=stop_before_pixels)
    except EOFError as exc:
        raise ImageDecodeError(src.name, "truncated", _describe(exc)) from exc
    except InvalidDicomError as exc:
        raise ImageDecodeError(src.name, "corrupt", _describe(exc)) from exc


def _number_of_frames(src: _Source, header) -> int:
    try:
        return int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise ImageDecodeError(src.name, "corrupt", "unreadable NumberOfFrames") from exc


def _transfer_syntax(header):
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(header, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(meta.TransferSyntaxUID)
    # No file meta (preamble-less file): pydicom guessed the encoding while parsing.
    implicit_vr, little_endian = header.original_encoding
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _require_decoder(src: _Source, transfer_syntax) -> None:
    from pydicom.pixels import get_decoder

    from medhash.data import gdcm_jpeg12  # imports pydicom and gdcm: only once a DICOM is decoded

    gdcm_jpeg12.register()
    uid = str(transfer_syntax)
    label = uid if transfer_syntax.name == uid else f"{transfer_syntax.name} ({uid})"
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise ImageDecodeError(src.name, "unsupported_transfer_syntax", f"no decoder exists for {label}") from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageDecodeError(
            src.name, "unsupported_transfer_syntax", f"no decoder plugin installed for {label} (needs {missing})"
        )


def _dicom_ends_cleanly(ds, file_size: int, transfer_syntax) -> bool:
    """pydicom stops silently at end of file; the last element's declared end must be the file's end."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    if transfer_syntax == DeflatedExplicitVRLittleEndian or len(ds) == 0:
        return True  # offsets refer to the inflated stream / nothing to measure
    last = ds.get_item(max(ds.keys()))
    value_tell = getattr(last, "value_tell", None)
    length = getattr(last, "length", None)
    if value_tell is None or length is None or length == 0xFFFFFFFF:
        return True  # already converted or undefined length: no claim either way
    return value_tell + length == file_size


def _monochrome_to_unit(ds, stored: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(stored, ds)
    unit = _voi_lut_to_unit(ds, values)
    if unit is None:
        unit = _window_to_unit(ds, values)
    if unit is None:
        unit = _min_max_to_unit(values)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: low values are white
    return unit


def _voi_lut_to_unit(ds, values: np.ndarray) -> np.ndarray | None:
    from pydicom.pixels import apply_voi

    sequence = ds.get("VOILUTSequence")
    if not sequence or "LUTDescriptor" not in sequence[0] or "LUTData" not in sequence[0]:
        return None
    entries, first_mapped, _bits = (int(v) for v in sequence[0].LUTDescriptor)
    entries = entries or 2**16
    if np.issubdtype(values.dtype, np.floating):  # rescale gives floats; the LUT indexes integers
        values = np.rint(values).astype(np.int64)
    mapped = apply_voi(values, ds).astype(np.float64)
    # Normalise over the LUT's own output range, which is often narrower than its declared depth.
    lut_out = apply_voi(np.arange(first_mapped, first_mapped + entries, dtype=np.int64), ds)
    low, high = float(lut_out.min()), float(lut_out.max())
    if high <= low:
        return np.zeros_like(mapped)
    return (mapped - low) / (high - low)


def _window_to_unit(ds, values: np.ndarray) -> np.ndarray | None:
    """PS3.3 C.11.2.1.2/.3 with output range [0, 1]; an invalid window is ignored (min-max instead)."""
    center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    x = values.astype(np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width)) if width > 0 else None
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0) if width > 0 else None
    if function != "LINEAR" or width < 1:
        return None
    if width == 1:  # the LINEAR formula degenerates to a threshold
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _first_value(element_value) -> float | None:
    """WindowCenter/Width may hold several alternative windows; the first is the default one."""
    from pydicom.multival import MultiValue

    if isinstance(element_value, (MultiValue, list, tuple)):
        element_value = element_value[0] if len(element_value) else None
    try:
        return None if element_value in (None, "") else float(element_value)
    except (TypeError, ValueError):
        return None


def _min_max_to_unit(values: np.ndarray) -> np.ndarray:
    x = values.astype(np.float64)
    low, high = float(x.min()), float(x.max())
    if high <= low:
        return np.zeros_like(x)  # a constant image has no contrast to stretch
    return (x - low) / (high - low)


_IDENTITY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "AccessionNumber",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
)


def _redact(text: str, header) -> str:
    """Remove identity values from an error text built from a pydicom exception (defensive)."""
    for keyword in _IDENTITY_KEYWORDS:
        value = str(header.get(keyword, "") or "")
        if len(value) >= 3:  # shorter values would also erase unrelated digits
            text = text.replace(value, "<redacted>")
    return text


_DECODERS: dict[str, Callable[[_Source, str, int | None], np.ndarray]] = {
    "PNG": _decode_pillow,
    "JPEG": _decode_pillow,
    "TIFF": _decode_pillow,
    "DICOM": _decode_dicom,
    "DICOM_RAW": _decode_dicom,
}

_HEADER_READERS: dict[str, Callable[[_Source, str], ImageHeader]] = {
    "PNG": _pillow_header,
    "JPEG": _pillow_header,
    "DICOM": _dicom_header,
    "DICOM_RAW": _dicom_header,
}
